// One conversation: its messages, warnings and changes as a log, and the composer.
import { useEffect, useRef, useState } from "react";
import type { Conversation, DeliveryStatus, Message, Retention, TimelineItem } from "../client";
import { ConversationSettings } from "./ConversationSettings";
import { conversationTitle } from "./ConversationsPage";
import { Dialog } from "./Dialog";
import { POLICY_WORDS, errorText, plural, retentionSentence, retentionWords, sentence, statusText, timeText } from "./format";
import { ErrorText } from "./LabelledValue";
import { href } from "./router";
import { useClient, useSnapshot, useStore } from "./state";

export function ConversationView(props: { conversationId: string }) {
  const { conversationId } = props;
  const store = useStore();
  const client = store.client;
  const { conversations, timelines, warnings, server, revoked } = useSnapshot();
  const listed = conversations?.find((c) => c.conversationId === conversationId) ?? null;
  const [fetched, setFetched] = useState<Conversation | null | undefined>(undefined);
  const [settingsOpen, setSettingsOpen] = useState(false);
  const items = timelines[conversationId];
  const conversation = listed ?? fetched ?? null;

  useEffect(() => {
    void store.loadTimeline(conversationId).catch(() => undefined);
    if (!listed) client.conversation(conversationId).then(setFetched, () => setFetched(null));
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [conversationId]);

  // Read while open: what arrives here counts as seen.
  const count = items?.length ?? 0;
  useEffect(() => {
    if (count && listed?.unread) void client.markRead(conversationId).then(() => store.loadConversations()).catch(() => undefined);
  }, [count, listed?.unread, conversationId, client, store]);

  if (!conversation) {
    return (
      <div className="empty">
        {fetched === null ? <p>This conversation is not here.</p> : <p aria-busy="true">Loading…</p>}
        <a href={href.conversations} className="back-link">← All conversations</a>
      </div>
    );
  }
  const title = conversationTitle(client, conversation);
  const local = warnings.filter((w) => w.conversationId === conversationId);
  return (
    <div className="conversation-view">
      <div className="pane-head conversation-head">
        <a href={href.conversations} className="back-link phone-only" aria-label="All conversations">←</a>
        <div className="conversation-heading">
          <h1 tabIndex={-1}>{title}</h1>
          <p className="hint">
            {conversation.kind === "group" ? `Group of ${conversation.participants.length} · ` : ""}
            {retentionWords(conversation.retention)}
          </p>
        </div>
        <button type="button" onClick={() => setSettingsOpen(true)}>Conversation settings</button>
      </div>
      {local.map((w, i) => (
        <div key={i} role="alert" className="banner banner-warn">
          {w.text}{" "}
          <button type="button" className="link-button" onClick={() => store.dismissWarning(w)}>Dismiss</button>
        </div>
      ))}
      <Timeline conversation={conversation} items={items} />
      {revoked ? (
        <p className="composer-closed">This device was revoked: it cannot send any more.</p>
      ) : conversation.member ? (
        <MessageComposer conversation={conversation} />
      ) : (
        <p className="composer-closed">You are no longer in this conversation. Its history stays in this browser.</p>
      )}
      {settingsOpen && (
        <ConversationSettings conversation={conversation} server={server} onClose={() => setSettingsOpen(false)} />
      )}
    </div>
  );
}

function Timeline(props: { conversation: Conversation; items: TimelineItem[] | undefined }) {
  const { items, conversation } = props;
  const outgoing = useSnapshot().outgoing[conversation.conversationId] ?? [];
  const shown = new Set(items?.map((item) => (item.kind === "message" ? item.messageId : null)));
  const pending = outgoing.filter((o) => !shown.has(o.messageId));
  const end = useRef<HTMLDivElement>(null);
  const length = (items?.length ?? 0) + pending.length;
  useEffect(() => {
    end.current?.scrollIntoView({ block: "end" });
  }, [length]);
  return (
    <div className="timeline">
      <div role="log" aria-label="Messages" className="messages">
        {items === undefined && <p className="empty" aria-busy="true">Loading messages…</p>}
        {items?.length === 0 && pending.length === 0 && (
          <p className="empty">No messages yet. {retentionSentence(conversation.retention, null)}</p>
        )}
        {items?.map((item) => <TimelineEntry key={itemKey(item)} item={item} />)}
        {pending.map((p) => (
          <article key={p.messageId} className="message mine">
            <div className="bubble"><p className="body">{p.body}</p></div>
            <p className="meta"><span role="note" aria-label="Delivery status" className="status">Sending</span></p>
          </article>
        ))}
      </div>
      <div ref={end} />
    </div>
  );
}

function itemKey(item: TimelineItem): string {
  return item.kind === "message" ? `m:${item.messageId}` : `${item.kind}:${item.id}`;
}

function TimelineEntry(props: { item: TimelineItem }) {
  const { item } = props;
  const client = useClient();
  if (item.kind === "message") return <MessageItem message={item} />;
  if (item.kind === "failed") {
    return (
      <div role="note" className="notice notice-warn">
        ⚠ A message {item.claimedSender ? `claiming to be from ${client.displayName(item.claimedSender)} ` : ""}
        was refused and not shown: {item.detail} <span className="time">({timeText(item.at)})</span>
      </div>
    );
  }
  return (
    <div role="note" className={item.warning ? "notice notice-warn" : "notice"}>
      {item.warning ? "⚠ " : ""}{sentence(item.text)} <span className="time">({timeText(item.at)})</span>
    </div>
  );
}

const RANK: Record<DeliveryStatus["summary"], number> = { sending: 0, sent: 1, delivered: 2, not_delivered: 2 };

function MessageItem(props: { message: Message }) {
  const m = props.message;
  const client = useClient();
  const { statuses } = useSnapshot();
  const latest = statuses[m.messageId];
  const status = latest && (!m.status || RANK[latest.summary] >= RANK[m.status.summary]) ? latest : m.status;
  const sender = m.mine ? "You" : client.displayName(m.sender);
  const ownHere = m.mine && m.senderDevice === client.identity.deviceId;
  return (
    <article className={m.mine ? "message mine" : "message"}>
      <p className="meta">
        <span className="sender">{sender}</span>
        <span className="device"> · {m.senderDeviceName}</span>
        <time className="time" dateTime={new Date(m.sentAt).toISOString()}> · {timeText(m.sentAt)}</time>
      </p>
      <div className="bubble"><p className="body">{m.body}</p></div>
      {m.warnings.map((w, i) => <p key={i} className="message-warning">⚠ {w}</p>)}
      {ownHere && <DeliveryStatusView messageId={m.messageId} status={status} />}
    </article>
  );
}

function DeliveryStatusView(props: { messageId: string; status: DeliveryStatus | undefined }) {
  const client = useClient();
  const [detail, setDetail] = useState<DeliveryStatus | null>(null);
  const [open, setOpen] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const toggle = () => {
    if (open) return setOpen(false);
    setOpen(true);
    setError(null);
    client.deliveryStatus(props.messageId).then(setDetail, (e: unknown) => setError(errorText(e)));
  };
  const summary = props.status?.summary ?? "sending";
  return (
    <div className="meta status-line">
      <span role="note" aria-label="Delivery status" className={`status status-${summary}`}>{statusText(props.status)}</span>
      {summary !== "sending" && (
        <button type="button" className="link-button" aria-expanded={open} onClick={toggle}>
          {open ? "Hide details" : "Details"}
        </button>
      )}
      {open && (
        <div className="status-detail">
          <ErrorText text={error} />
          {!detail && !error && <p aria-busy="true">Loading…</p>}
          {detail?.devices && (
            <ul>
              {detail.devices.map((d) => (
                <li key={d.deviceId}>
                  {client.displayName(d.userId)} · device {d.deviceId.slice(0, 8)}: {d.state}
                  {d.reason ? ` (${d.reason.replace(/_/g, " ")})` : ""}
                  {d.at ? ` · ${timeText(d.at)}` : ""}
                </li>
              ))}
            </ul>
          )}
        </div>
      )}
    </div>
  );
}

function MessageComposer(props: { conversation: Conversation }) {
  const store = useStore();
  const id = props.conversation.conversationId;
  const [text, setText] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [asking, setAsking] = useState<{ next: Retention; previous: Retention; answer: (ok: boolean) => void } | null>(null);
  const input = useRef<HTMLTextAreaElement>(null);

  const send = () => {
    const body = text;
    if (!body.trim()) return;
    const outgoing = store.addOutgoing(id, body);
    setText("");
    setError(null);
    const confirmRetention = (next: Retention, previous: Retention) =>
      new Promise<boolean>((resolve) => setAsking({ next, previous, answer: resolve }));
    store.client
      .send(id, body, { confirmRetention, messageId: outgoing.messageId })
      .then(
        () => store.loadTimeline(id),
        (e: unknown) => {
          setText((t) => t || body); // give the words back
          setError(errorText(e));
        },
      )
      .finally(() => store.removeOutgoing(id, outgoing.messageId));
  };
  const answer = (ok: boolean) => {
    asking?.answer(ok);
    setAsking(null);
    input.current?.focus();
  };
  return (
    <form className="composer" onSubmit={(e) => { e.preventDefault(); send(); }}>
      <ErrorText text={error} />
      <div className="composer-row">
        <label className="sr-only" htmlFor={`composer-${id}`}>Message</label>
        <textarea
          id={`composer-${id}`}
          ref={input}
          value={text}
          rows={2}
          placeholder="Write a message"
          onChange={(e) => setText(e.target.value)}
          onKeyDown={(e) => {
            if (e.key === "Enter" && !e.shiftKey && !e.nativeEvent.isComposing) {
              e.preventDefault();
              send();
            }
          }}
        />
        <button type="submit" className="primary" disabled={!text.trim()}>Send</button>
      </div>
      <p className="hint composer-hint">Enter sends · Shift+Enter starts a new line</p>
      {asking && (
        <Dialog title="Retention changed" onClose={() => answer(false)}>
          <p>
            Someone changed this conversation's retention from {retentionWords(asking.previous)} to{" "}
            <strong>{POLICY_WORDS[asking.next.policy]}{asking.next.policy === "ttl" ? ` (${plural(asking.next.ttl_days ?? 0, "day")})` : ""}</strong>.
          </p>
          <p>{retentionSentence(asking.next, null)}</p>
          <div className="actions">
            <button type="button" onClick={() => answer(false)}>Cancel</button>
            <button type="button" className="primary" data-autofocus onClick={() => answer(true)}>Send anyway</button>
          </div>
        </Dialog>
      )}
    </form>
  );
}
