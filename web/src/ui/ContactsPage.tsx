// Local names for user ids (kept in this browser only) and their safety numbers.
import { useState, type FormEvent } from "react";
import { errorText } from "./format";
import { ErrorText } from "./LabelledValue";
import { SafetyNumber } from "./SafetyNumber";
import { useSnapshot, useStore } from "./state";

export function ContactsPage() {
  const { contacts } = useSnapshot();
  return (
    <div className="page-narrow">
      <h1 tabIndex={-1}>Contacts</h1>
      <AddContact />
      {contacts.length === 0 ? (
        <p className="empty">No contacts yet. Names you give here are kept in this browser and never sent anywhere.</p>
      ) : (
        <ul className="contacts" aria-label="Contacts">
          {contacts.map((c) => (
            <li key={c.userId} className="card contact">
              <div className="contact-head">
                <h2>{c.name}</h2>
                {c.verified && !c.mismatch && <span className="badge badge-ok">✓ Verified</span>}
                <RemoveContact userId={c.userId} name={c.name} />
              </div>
              <p className="mono hint">{c.userId}</p>
              <SafetyNumber userId={c.userId} />
            </li>
          ))}
        </ul>
      )}
    </div>
  );
}

function AddContact() {
  const store = useStore();
  const [userId, setUserId] = useState("");
  const [name, setName] = useState("");
  const [error, setError] = useState<string | null>(null);
  const submit = (e: FormEvent) => {
    e.preventDefault();
    setError(null);
    store.client.setContact(userId.trim(), name.trim()).then(
      async () => {
        await store.loadContacts();
        setUserId("");
        setName("");
      },
      (err: unknown) => setError(errorText(err)),
    );
  };
  return (
    <form className="card" onSubmit={submit}>
      <h2>Add a contact</h2>
      <div className="row">
        <label className="field grow">
          User id
          <input value={userId} onChange={(e) => setUserId(e.target.value)} required className="mono" spellCheck={false} />
        </label>
        <label className="field">
          Name
          <input value={name} onChange={(e) => setName(e.target.value)} required maxLength={64} />
        </label>
      </div>
      <ErrorText text={error} />
      <div className="actions start">
        <button type="submit" className="primary" disabled={!userId.trim() || !name.trim()}>Add contact</button>
      </div>
    </form>
  );
}

function RemoveContact(props: { userId: string; name: string }) {
  const store = useStore();
  return (
    <button type="button" className="link-button"
      onClick={() => store.client.removeContact(props.userId).then(() => store.loadContacts(), () => undefined)}>
      Forget {props.name}
    </button>
  );
}
