// The list by latest activity beside (or, on a phone, instead of) the open conversation.
import { useState, type FormEvent } from "react";
import type { Conversation, DmClient, Retention } from "../client";
import { ConversationView } from "./ConversationView";
import { Dialog } from "./Dialog";
import { errorText, retentionWords, splitParticipants, timeText } from "./format";
import { ErrorText } from "./LabelledValue";
import { RetentionFields, defaultRetention } from "./RetentionFields";
import { href, navigate } from "./router";
import { useClient, useSnapshot, useStore } from "./state";

export function ConversationsPage(props: { conversationId: string | null }) {
  const [creating, setCreating] = useState(false);
  const { revoked } = useSnapshot();
  return (
    <div className={props.conversationId ? "split has-open" : "split"}>
      <section className="pane list-pane" aria-labelledby="conversations-heading">
        <div className="pane-head">
          <h1 id="conversations-heading" tabIndex={-1}>Conversations</h1>
          <button type="button" className="primary small" disabled={!!revoked} onClick={() => setCreating(true)}>
            New conversation
          </button>
        </div>
        <ConversationList openId={props.conversationId} />
      </section>
      <section className="pane view-pane">
        {props.conversationId ? (
          <ConversationView key={props.conversationId} conversationId={props.conversationId} />
        ) : (
          <div className="empty">
            <p>Choose a conversation, or start a new one.</p>
          </div>
        )}
      </section>
      {creating && <NewConversation onClose={() => setCreating(false)} />}
    </div>
  );
}

/** Everyone else in it, by NAME (contact name or short id). */
export function conversationTitle(client: DmClient, c: Conversation): string {
  const me = client.identity.userId;
  const others = c.participants.filter((p) => p !== me);
  return others.length ? others.map((p) => client.displayName(p)).join(", ") : "Only you";
}

function ConversationList(props: { openId: string | null }) {
  const { conversations, contacts } = useSnapshot();
  const client = useClient();
  void contacts; // names come from contacts: re-render when they change
  if (conversations === null) return <p className="empty" aria-busy="true">Loading conversations…</p>;
  if (conversations.length === 0) {
    return (
      <div className="empty">
        <p>No conversations yet.</p>
        <p className="hint">Start one with the user id of someone you want to write to.</p>
      </div>
    );
  }
  return (
    <ul className="conversation-list" aria-label="Conversation list">
      {conversations.map((c) => (
        <li key={c.conversationId}>
          <a href={href.conversation(c.conversationId)} aria-current={c.conversationId === props.openId ? "page" : undefined}
            className={c.member ? "conversation" : "conversation left"}>
            <span className="conversation-title">{conversationTitle(client, c)}</span>
            <span className="conversation-meta">
              {c.kind === "group" && <span>Group of {c.participants.length} · </span>}
              <span>{retentionWords(c.retention)}</span>
              {!c.member && <span> · you left</span>}
              <span className="time"> · {timeText(c.lastActivity)}</span>
            </span>
            {c.unread > 0 && <span className="unread">{c.unread} unread</span>}
          </a>
        </li>
      ))}
    </ul>
  );
}

function NewConversation(props: { onClose: () => void }) {
  const store = useStore();
  const { server, contacts } = useSnapshot();
  const [participants, setParticipants] = useState("");
  const [retention, setRetention] = useState<Retention>(defaultRetention(server));
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const submit = (e: FormEvent) => {
    e.preventDefault();
    const list = splitParticipants(participants);
    if (!list.length) return setError("Add at least one person: a user id or a contact name.");
    setBusy(true);
    setError(null);
    store.client.createConversation(list, retention).then(
      async (c) => {
        await store.loadConversations();
        props.onClose();
        navigate(href.conversation(c.conversationId));
      },
      (err: unknown) => {
        setError(errorText(err));
        setBusy(false);
      },
    );
  };
  return (
    <Dialog title="New conversation" onClose={props.onClose}>
      <form onSubmit={submit}>
        <label className="field">
          Participants
          <textarea value={participants} onChange={(e) => setParticipants(e.target.value)} rows={3} data-autofocus
            spellCheck={false} aria-describedby="participants-hint" />
        </label>
        <p id="participants-hint" className="hint">
          User ids or contact names, separated by commas, spaces or new lines. Two or more people make a group.
          {contacts.length > 0 && ` Your contacts: ${contacts.map((c) => c.name).join(", ")}.`}
        </p>
        <RetentionFields value={retention} onChange={setRetention} server={server} />
        <ErrorText text={error} />
        <div className="actions">
          <button type="button" onClick={props.onClose}>Cancel</button>
          <button type="submit" className="primary" disabled={busy}>{busy ? "Starting…" : "Start"}</button>
        </div>
      </form>
    </Dialog>
  );
}
