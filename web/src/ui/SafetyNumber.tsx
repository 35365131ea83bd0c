// The §6 safety number with one person, and whether the user has checked it with them.
import { useState } from "react";
import { errorText } from "./format";
import { ErrorText, LabelledValue } from "./LabelledValue";
import { useSnapshot, useStore } from "./state";

export function SafetyNumber(props: { userId: string }) {
  const store = useStore();
  const { contacts } = useSnapshot();
  const contact = contacts.find((c) => c.userId === props.userId);
  const [error, setError] = useState<string | null>(null);
  let number: string | null = null;
  try {
    number = store.client.safetyNumber(props.userId);
  } catch (e) {
    return <p className="hint">No safety number yet: {errorText(e)}</p>;
  }
  const mark = (verified: boolean) => {
    setError(null);
    store.client.markVerified(props.userId, verified).then(() => store.loadContacts(), (e: unknown) => setError(errorText(e)));
  };
  return (
    <div className="safety">
      {contact?.mismatch && (
        <p role="alert" className="banner banner-danger">
          Warning: {contact.name}'s keys no longer match the ones you verified. Someone may be impersonating them:
          compare the safety number again before you trust this conversation.
        </p>
      )}
      <LabelledValue label="Safety number" value={number} className="safety-number" copy={false} />
      <p className="hint">
        Compare these digits with {contact?.name ?? store.client.displayName(props.userId)} in person or on a call.
        If they match, nobody is in between.
      </p>
      <div className="actions start">
        {contact?.verified && !contact.mismatch ? ( /* a mismatch asks to compare and verify again */
          <>
            <span className="badge badge-ok">✓ Verified</span>
            <button type="button" className="link-button" onClick={() => mark(false)}>Mark as not verified</button>
          </>
        ) : (
          <button type="button" onClick={() => mark(true)}>Mark as verified</button>
        )}
      </div>
      <ErrorText text={error} />
    </div>
  );
}
