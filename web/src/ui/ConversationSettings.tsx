// A conversation's settings: retention; members for groups; the safety number for a direct one.
import { useState, type FormEvent } from "react";
import type { Conversation, Retention, ServerInfo } from "../client";
import { Dialog } from "./Dialog";
import { errorText, splitParticipants } from "./format";
import { ErrorText } from "./LabelledValue";
import { RetentionFields } from "./RetentionFields";
import { href, navigate } from "./router";
import { SafetyNumber } from "./SafetyNumber";
import { useStore } from "./state";

export function ConversationSettings(props: { conversation: Conversation; server: ServerInfo | null; onClose: () => void }) {
  const c = props.conversation;
  const me = useStore().client.identity.userId;
  const other = c.kind === "direct" ? c.participants.find((p) => p !== me) ?? null : null;
  return (
    <Dialog title="Conversation settings" onClose={props.onClose} wide>
      <RetentionSettings conversation={c} server={props.server} />
      {c.kind === "group" && c.member && <MemberList conversation={c} onLeft={props.onClose} />}
      {other && (
        <section className="settings-section" aria-labelledby="verify-heading">
          <h3 id="verify-heading">Verification</h3>
          <SafetyNumber userId={other} />
        </section>
      )}
    </Dialog>
  );
}

function RetentionSettings(props: { conversation: Conversation; server: ServerInfo | null }) {
  const store = useStore();
  const [value, setValue] = useState<Retention>(props.conversation.retention);
  const [state, setState] = useState<{ busy: boolean; error: string | null; saved: boolean }>({ busy: false, error: null, saved: false });
  const submit = (e: FormEvent) => {
    e.preventDefault();
    setState({ busy: true, error: null, saved: false });
    store.client.setRetention(props.conversation.conversationId, value).then(
      async () => {
        await store.loadConversations();
        setState({ busy: false, error: null, saved: true });
      },
      (err: unknown) => setState({ busy: false, error: errorText(err), saved: false }),
    );
  };
  return (
    <form className="settings-section" onSubmit={submit}>
      <RetentionFields value={value} onChange={(r) => { setValue(r); setState((s) => ({ ...s, saved: false })); }} server={props.server} />
      <p className="hint">Everyone in the conversation is asked before their next message goes out under a new policy.</p>
      <ErrorText text={state.error} />
      <div className="actions start">
        <button type="submit" className="primary" disabled={state.busy || !props.conversation.member}>Save</button>
        <span aria-live="polite" className="saved">{state.saved ? "Saved" : ""}</span>
      </div>
    </form>
  );
}

function MemberList(props: { conversation: Conversation; onLeft: () => void }) {
  const store = useStore();
  const client = store.client;
  const c = props.conversation;
  const me = client.identity.userId;
  const [adding, setAdding] = useState("");
  const [error, setError] = useState<string | null>(null);
  const run = (work: Promise<unknown>, after?: () => void) => {
    setError(null);
    work.then(async () => {
      await store.loadConversations();
      after?.();
    }, (e: unknown) => setError(errorText(e)));
  };
  const add = (e: FormEvent) => {
    e.preventDefault();
    const list = splitParticipants(adding);
    if (list.length) run(client.addMembers(c.conversationId, list), () => setAdding(""));
  };
  return (
    <section className="settings-section" aria-labelledby="members-heading">
      <h3 id="members-heading">Members</h3>
      <ul className="members">
        {c.participants.map((p) => (
          <li key={p}>
            <span>{p === me ? "You" : client.displayName(p)}</span>
            {p === c.createdBy && <span className="badge">started it</span>}
            {p !== me && c.createdBy === me && (
              <button type="button" className="link-button danger" onClick={() => run(client.removeMember(c.conversationId, p))}>
                Remove {client.displayName(p)}
              </button>
            )}
          </li>
        ))}
      </ul>
      <form className="inline-form" onSubmit={add}>
        <label className="field grow">
          Add member
          <input value={adding} onChange={(e) => setAdding(e.target.value)} spellCheck={false}
            placeholder="User id or contact name" />
        </label>
        <button type="submit" disabled={!adding.trim()}>Add</button>
      </form>
      <ErrorText text={error} />
      <div className="actions start">
        <button type="button" className="danger"
          onClick={() => run(client.leave(c.conversationId), () => { props.onLeft(); navigate(href.conversations); })}>
          Leave conversation
        </button>
      </div>
    </section>
  );
}
