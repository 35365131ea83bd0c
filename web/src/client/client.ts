// One device's client (dmclient/client.py in TypeScript): session, directory,
// conversations with the §6 membership rules, send with the server's answers
// handled, sync -> check -> store -> ACK, delivery status, gateway events.
import {
  ApiError, Endpoints, Gateway, Http, NetworkError, sleep, type ClaimedPrekeys, type ConversationWire, type DirectoryDevice,
  type PrekeysWire, type SendAnswer, type StatusWire,
} from "../api";
import {
  KeyPair, ProtocolError, authSignedBytes, b58Key, b64e, certCheckClient, certIssue, isUuid, keyId, keyWrap, keyWrapV2,
  otkParse, phraseFromSeed, prekeyIdOk, plaintextEncode, safetyNumber, seal, spkParse, type AnyKeyWrap, type KeyWrap, type KeyWrapV2,
  type WireCert,
} from "../protocol";
import { Store, withLock, type Write } from "../store";
import {
  DAY_MS, FUTURE_SKEW_MS, REPLAY_WINDOW_MS, Rejected, checkCertificate, checkDowngrade, checkKeyId, checkMembership,
  checkSignature, checkTime, decrypt, oneTimeIdOf, parse, unwrap, unwrapV2, type EpochView, type Incoming,
} from "./receive";
import { ONE_TIME_LOW, Prekeys } from "./prekeys";
import {
  ClientError, type ClientEvent, type ConnectionState, type Contact, type Conversation, type ConversationEvent,
  type DeliveryStatus, type DeviceDelivery, type DeviceInfo, type Failure, type Identity, type Message, type Retention,
  type SendOptions, type ServerInfo, type TimelineItem,
} from "./types";
import { checkRetention, refusal, retentionWords, viewFromWire, type ConversationView } from "./view";

const TOKEN_MARGIN_MS = 300_000;
const SEND_ATTEMPTS = 8;
const NETWORK_BACKOFF_MS = [500, 1000, 2000, 4000, 8000];
const WRAP_PROBE_MS = 60_000;
const SYNC_PAGE = 100;
const CONVERSATION_PAGE = 100;
// §6b "Sender keys age": a new K at least every 7 days and after 1,000 messages.
const MAX_KEY_USES = 1000;
const MAX_KEY_AGE_MS = 7 * DAY_MS;
// How often a running client checks its prekeys (rotation, refill) besides start, HELLO and PREKEYS_LOW.
const PREKEY_CHECK_MS = 3_600_000;
const CERT_DEFAULT_NAME = "Linked device";

export interface IdentityRecord {
  serverUrl: string;
  userId: string | null;
  deviceSeed: Uint8Array;
  masterSeed: Uint8Array | null;
  deviceName: string;
  certificate: WireCert | null;
  revoked: string | null;
}
interface TokenRecord {
  token: string;
  expiresAt: number;
}
interface ConvRecord extends ConversationView {
  retentionAccepted: Retention;
  member: boolean;
  nextSeq: number;
  lastActivity: number;
  unread: number;
}
interface DirectoryRecord {
  devices: { deviceId: string; name: string; certificate: WireCert }[];
}
interface SenderKeyRecord {
  key: Uint8Array;
  keyId: string;
  used: number;
  probedAt: number;
  /** Unix ms; absent in a store from before v1.2 (such a key is replaced at once). */
  createdAt?: number;
}
/** Per recipient device of one sender key: known to hold it (a send without its wrap was
 * accepted), and the wrap made for it, sent again until it does (a v2 wrap used a claimed
 * one-time prekey: it is not claimed again). A store from before v1.2 holds booleans. */
interface SentWrap {
  holds: boolean;
  wrap: AnyKeyWrap | null;
}
type SentWraps = Record<string, SentWrap>;
/** Per recipient device, the highest signed prekey id a claim handed out and a v2 wrap used (§6b: never taken back, never older). */
type PrekeysSeen = Record<string, number>;
const PREKEYS_SEEN = "prekeysSeen";
interface ContactRecord {
  name: string;
  verified: boolean;
  mismatch: boolean;
}

const now = () => Date.now();
const pad15 = (n: number) => String(Math.max(0, Math.floor(n))).padStart(15, "0");
const timelineId = (cid: string, at: number, id: string) => `${cid}/${pad15(at)}/${id}`;
const parseTime = (t: string | null | undefined): number | null => (t ? Date.parse(t) : null);
const randomId = () => crypto.randomUUID();
const receivedKeyId = (m: Incoming) => `${m.conversationId}/${m.senderDevice}/${m.epoch}/${m.keyId}`;
/** A 404 from a server before v1.2 (no prekey endpoints), not this device's revocation. */
const isPreV12 = (exc: unknown): boolean => exc instanceof ApiError && exc.status === 404 && exc.code !== "device_revoked";

function summarize(counts: Record<string, number>): DeliveryStatus {
  const notDelivered = ["expired", "failed", "dropped", "skipped"].reduce((n, s) => n + (counts[s] ?? 0), 0);
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  const summary = notDelivered > 0 ? "not_delivered"
    : total > 0 && (counts.delivered ?? 0) === total ? "delivered" : "sent";
  return { summary, notDelivered, counts };
}

export class DmClient {
  private readonly api: Endpoints;
  private readonly device: KeyPair;
  private listeners = new Set<(e: ClientEvent) => void>();
  private gateway: Gateway | null = null;
  private serverInfoCache: ServerInfo | null = null;
  private refreshed: Set<string> | null = null;
  private contactCache = new Map<string, ContactRecord>();
  private syncAgain = false;
  private syncing: Promise<{ accepted: number; failed: number }> | null = null;
  private readonly prekeys: Prekeys;
  private prekeyTimer: ReturnType<typeof setInterval> | null = null;

  /** Use Startup to make one. */
  constructor(
    private readonly store: Store,
    private record: IdentityRecord,
  ) {
    this.api = new Endpoints(new Http(record.serverUrl, (code, s) => this.warn(null, `The server asked to wait ${s} s (${code}).`)));
    this.device = new KeyPair(record.deviceSeed);
    this.prekeys = new Prekeys(store, this.device);
  }

  async init(): Promise<void> {
    for (const { id, value } of await this.store.list<ContactRecord>("contacts")) this.contactCache.set(id, value);
    await this.purgeExpired();
  }

  get identity(): Identity {
    return {
      userId: this.record.userId ?? "", deviceId: this.device.id, deviceName: this.record.deviceName,
      holdsMaster: this.record.masterSeed !== null, serverUrl: this.record.serverUrl,
    };
  }
  private get userId(): string {
    return this.record.userId!;
  }
  get connection(): ConnectionState {
    return this.gateway?.state ?? "Offline";
  }
  get revoked(): string | null {
    return this.record.revoked;
  }

  subscribe(listener: (event: ClientEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
  private emit(event: ClientEvent): void {
    for (const l of this.listeners) {
      try {
        l(event);
      } catch {
        // a listener's bug must not stop the client
      }
    }
  }
  private warn(conversationId: string | null, text: string): void {
    this.emit({ type: "warning", warning: { conversationId, text } });
  }

  // --- sessions (§3) ----------------------------------------------------------------------

  /** Logs in with `key` (this device, with its certificate; or the master). */
  static async login(api: Endpoints, key: KeyPair, certificate?: WireCert | null) {
    const { challenge } = await api.challenge(key.id);
    const signature = b64e(key.sign(authSignedBytes({ challenge, pubkey: key.id, server: api.http.origin })));
    return api.verify({ pubkey: key.id, challenge, signature, ...(certificate ? { certificate } : {}) });
  }

  private async loginDevice(): Promise<string> {
    this.assertUsable();
    if (!this.record.certificate) throw new ClientError("no_certificate", "this device has no certificate yet");
    let session;
    try {
      session = await DmClient.login(this.api, this.device, this.record.certificate);
    } catch (exc) {
      if (exc instanceof ApiError && exc.code === "device_revoked") await this.lockRevoked("This device was revoked.");
      throw exc;
    }
    if (session.user_id !== this.userId || session.device_id !== this.device.id)
      throw new ClientError("server_mismatch", "the server logged us in as another user or device");
    await this.store.put("meta", "token", { token: session.token, expiresAt: parseTime(session.expires_at) ?? 0 });
    return session.token;
  }

  private async token(): Promise<string> {
    const t = await this.store.get<TokenRecord>("meta", "token");
    if (t && t.expiresAt > now() + TOKEN_MARGIN_MS) return t.token;
    return this.loginDevice();
  }

  /** A request in this device's session; an ended session logs in again once. */
  private async call<T>(fn: (token: string) => Promise<T>): Promise<T> {
    this.assertUsable();
    try {
      return await fn(await this.token());
    } catch (exc) {
      if (!(exc instanceof ApiError) || exc.status !== 401) {
        if (exc instanceof ApiError && exc.code === "device_revoked") await this.lockRevoked("This device was revoked.");
        throw exc;
      }
    }
    await this.store.delete("meta", "token");
    return fn(await this.loginDevice());
  }

  private async masterCall<T>(fn: (token: string) => Promise<T>): Promise<T> {
    if (!this.record.masterSeed) throw new ClientError("no_master_key", "this browser does not hold the master key");
    const session = await DmClient.login(this.api, new KeyPair(this.record.masterSeed));
    try {
      return await fn(session.token);
    } finally {
      await this.api.logout(session.token).catch(() => undefined);
    }
  }

  private assertUsable(): void {
    if (this.record.revoked) throw new ClientError("device_revoked", this.record.revoked);
  }

  /** A revoked device locks itself: its key, session and message keys are erased; history stays readable. */
  private async lockRevoked(text: string): Promise<void> {
    if (this.record.revoked) return;
    const at = new Date().toLocaleString();
    this.record = { ...this.record, revoked: `${text.replace(/\.$/, "")} on ${at}. It can no longer send or receive.` };
    this.gateway?.stop();
    const writes: Write[] = [{ table: "meta", id: "identity", value: this.record }, { table: "meta", id: "token", value: null }];
    for (const table of ["senderKeys", "receivedKeys"] as const)
      for (const { id } of await this.store.list(table)) writes.push({ table, id, value: null });
    writes.push(...await this.prekeys.eraseAllWrites());
    await this.store.write(writes);
    this.emit({ type: "revoked", text: this.record.revoked! });
    this.emit({ type: "connection", state: "Offline" });
  }

  async logout(): Promise<void> {
    this.gateway?.stop();
    const t = await this.store.get<TokenRecord>("meta", "token");
    if (t) await this.api.logout(t.token).catch(() => undefined);
    await this.store.delete("meta", "token");
  }

  async setPassphrase(passphrase: string | null, current: string | null = null): Promise<void> {
    await this.store.setPassphrase(current, passphrase);
  }

  // --- gateway (§9) --------------------------------------------------------------------------

  async start(): Promise<void> {
    if (this.record.revoked) {
      this.emit({ type: "revoked", text: this.record.revoked });
      return;
    }
    if (this.gateway) return;
    this.gateway = new Gateway({
      connectUrl: async () => {
        const info = await this.serverInfo().catch(() => null);
        const { ticket } = await this.call((t) => this.api.gatewayTicket(t));
        const url = new URL(this.api.http.gatewayUrl(info?.gateway?.url));
        url.searchParams.set("ticket", ticket);
        return url.toString();
      },
      onFrame: (f) => void this.onFrame(f.op, f.d).catch((e) => this.warn(null, `Gateway event failed: ${(e as Error).message}`)),
      onState: (state) => this.emit({ type: "connection", state }),
      onRevoked: () => void this.lockRevoked("This device was revoked."),
      onUnauthorized: () => void this.store.delete("meta", "token"),
    });
    this.gateway.start();
    if (typeof window !== "undefined") window.addEventListener("online", () => this.gateway?.reconnectNow());
    this.prekeyTimer = setInterval(() => void this.maintainPrekeysQuietly(), PREKEY_CHECK_MS);
    await this.maintainPrekeysQuietly();
  }

  async stop(): Promise<void> {
    this.gateway?.stop();
    this.gateway = null;
    if (this.prekeyTimer !== null) clearInterval(this.prekeyTimer);
    this.prekeyTimer = null;
  }

  // --- prekeys (§6b) -------------------------------------------------------------------------

  /** Publishes a signed prekey if the server lacks this device's current one (registration,
   * or a store from before v1.2), rotates it every 7 days, refills one-time prekeys under 20
   * up to 100, and erases signed private keys whose window has passed. A server before v1.2
   * (404) is left alone. */
  async maintainPrekeys(): Promise<void> {
    if (this.record.revoked) return;
    await withLock(`decentcom-prekeys-${this.store.name}`, async () => {
      for (let attempt = 0; ; attempt++) {
        try {
          await this.prekeyPass();
          return;
        } catch (exc) {
          // Our id is not above the server's (a store older than what the server holds): rotate above it, once.
          if (!(exc instanceof ApiError) || exc.code !== "stale_prekey" || attempt > 0) throw exc;
        }
      }
    });
    await this.prekeys.eraseExpiredSigned(now());
  }

  /** What the server holds of this device's prekeys, and when this device first published one. */
  async prekeyInfo(): Promise<{ signedPrekeyId: number | null; oneTimeCount: number; firstPublishedAt: number | null }> {
    const server = await this.serverPrekeys();
    return {
      signedPrekeyId: server?.signed_prekey?.id ?? null, oneTimeCount: server?.one_time_count ?? 0,
      firstPublishedAt: (await this.prekeys.meta()).firstPublishedAt,
    };
  }

  /** GET /devices/prekeys, or null from a server before v1.2. A signed prekey whose id is not
   * a prekey id (1..2^53-1) reads as none. */
  private async serverPrekeys(): Promise<PrekeysWire | null> {
    let server: PrekeysWire;
    try {
      server = await this.call((t) => this.api.getPrekeys(t));
    } catch (exc) {
      if (isPreV12(exc)) return null;
      throw exc;
    }
    return prekeyIdOk(server.signed_prekey?.id) ? server : { ...server, signed_prekey: null };
  }

  private async maintainPrekeysQuietly(): Promise<void> {
    try {
      await this.maintainPrekeys();
    } catch (exc) {
      if (!(exc instanceof NetworkError)) this.warn(null, `This device's prekeys could not be published: ${(exc as Error).message}`);
    }
  }

  private async prekeyPass(): Promise<void> {
    const server = await this.serverPrekeys();
    if (server === null) return; // a server before v1.2
    const t = now();
    const held = server.signed_prekey;
    const serverId = held?.id ?? 0;
    let current = await this.prekeys.current();
    // A server holding a newer id, or another key under our id (a store restored from a copy), gets a new one above it.
    if (current === null || this.prekeys.needsRotation(current, t) || serverId > current.id
      || (serverId === current.id && held?.x25519 !== current.wire.x25519))
      current = await this.prekeys.rotate(t, serverId);
    const sendSpk = current.id !== serverId;
    // Already there (an earlier PUT whose answer was lost): published, not sent again (that would be stale_prekey).
    if (!sendSpk && !current.published) await this.prekeys.markPublished(current, [], t);
    const count = typeof server.one_time_count === "number" ? server.one_time_count : 0;
    const oneTime = count < ONE_TIME_LOW ? await this.prekeys.oneTimeToPublish(count) : [];
    if (!sendSpk && !oneTime.length) return;
    await this.call((tok) => this.api.putPrekeys(tok, {
      ...(sendSpk ? { signed_prekey: current.wire } : {}), ...(oneTime.length ? { one_time: oneTime } : {}),
    }));
    await this.prekeys.markPublished(sendSpk ? current : null, oneTime.map((o) => o.id), now());
  }

  private async onFrame(op: string, d: Record<string, unknown>): Promise<void> {
    if (op === "HELLO") {
      await this.refreshConversations().catch(() => undefined);
      await this.sync();
      await this.maintainPrekeysQuietly();
    } else if (op === "PREKEYS_LOW") {
      await this.maintainPrekeysQuietly();
    } else if (op === "DM_NOTIFY") {
      await this.sync();
    } else if (op === "DM_STATUS") {
      if (typeof d.message_id === "string" && d.counts && typeof d.counts === "object")
        await this.applyStatus(d.message_id, d.counts as Record<string, number>);
    } else if (op === "CONVERSATION_UPDATE") {
      const change = (d.change ?? {}) as { actor?: string };
      try {
        await this.storeView(d.conversation, { actor: change.actor ?? null });
      } catch (exc) {
        if (!(exc instanceof ClientError)) throw exc;
      }
    } else if (op === "DEVICE_ADD" || op === "DEVICE_REVOKE") {
      const deviceId = typeof d.device_id === "string" ? d.device_id : null;
      await this.store.delete("directory", this.userId);
      if (op === "DEVICE_REVOKE" && deviceId === this.device.id) {
        await this.lockRevoked("This device was revoked.");
        return;
      }
      const name = typeof d.name === "string" ? d.name : "a device";
      this.warn(null, op === "DEVICE_ADD" ? `A new device was added to your account: ${name}.` : `Your device ${name} was revoked.`);
      this.emit({ type: "devices", change: op === "DEVICE_ADD" ? "add" : "revoke", deviceId });
    }
  }

  async serverInfo(): Promise<ServerInfo> {
    if (!this.serverInfoCache) this.serverInfoCache = (await this.api.server()) as ServerInfo;
    return this.serverInfoCache;
  }

  displayName(userId: string): string {
    return this.contactCache.get(userId)?.name || userId.slice(0, 8);
  }

  // --- directory: devices we encrypt to (§2 client rules) ----------------------------------

  /** `userId`'s active devices whose certificates verify against it; a device that fails is not used, and the user is told. */
  private async directory(userId: string, refresh = false): Promise<string[]> {
    const nowS = Math.floor(now() / 1000);
    if (!refresh) {
      const cached = await this.store.get<DirectoryRecord>("directory", userId);
      try {
        // checked again at each use: a certificate may have expired since it was fetched
        if (cached) return cached.devices.map((d) => certCheckClient(d.certificate, { userId, deviceId: d.deviceId, now: nowS }).device).sort();
      } catch {
        // fetch again
      }
    }
    let listed: DirectoryDevice[] = [];
    try {
      listed = (await this.call((t) => this.api.userDevices(t, userId))).devices;
    } catch (exc) {
      if (!(exc instanceof ApiError) || exc.status !== 404) throw exc;
    }
    const good: DirectoryRecord["devices"] = [];
    for (const device of listed) {
      try {
        const cert = certCheckClient(device.certificate, { userId, deviceId: device.device_id, now: nowS });
        good.push({ deviceId: cert.device, name: cert.name, certificate: cert });
      } catch (exc) {
        const reason = exc instanceof ProtocolError ? exc.detail : String(exc);
        await this.untrustedDevice(userId, String(device?.device_id), reason);
      }
    }
    await this.store.put("directory", userId, { devices: good });
    return good.map((d) => d.deviceId).sort();
  }

  private async untrustedDevice(userId: string, deviceId: string, reason: string): Promise<void> {
    const contact = this.contactCache.get(userId);
    const who = this.displayName(userId);
    let text = `A device of ${who} (${deviceId.slice(0, 8)}) is not used: its certificate does not verify (${reason}).`;
    if (contact?.verified) {
      text = `WARNING: ${who} is a verified contact, but a device shown for them does not verify against their key. Someone may be trying to listen in. ${text}`;
      const updated = { ...contact, mismatch: true };
      this.contactCache.set(userId, updated);
      await this.store.put("contacts", userId, updated);
      this.emit({ type: "contacts" });
    }
    this.warn(null, text);
  }

  // --- conversations (§5, §6) ---------------------------------------------------------------

  private async local(cid: string): Promise<ConvRecord | undefined> {
    return this.store.get<ConvRecord>("conversations", cid);
  }

  private async epochViews(cid: string): Promise<Map<number, EpochView>> {
    const out = new Map<number, EpochView>();
    for (const { id, value } of await this.store.list<EpochView>("epochs", `${cid}/`)) out.set(Number(id.slice(cid.length + 1)), value);
    return out;
  }

  private eventItem(cid: string, event: ConversationEvent["event"], text: string, extra: Partial<ConversationEvent> = {}): ConversationEvent {
    const warning = event === "membership_refused" || event === "membership_fork" || event === "untrusted_device" || event === "key_mismatch";
    return { kind: "event", id: randomId(), conversationId: cid, at: now(), event, actor: null, added: [], removed: [], text, warning, ...extra };
  }

  private names(ids: string[]): string {
    return ids.map((u) => (u === this.record.userId ? "you" : this.displayName(u))).join(", ");
  }

  /** Record what the server says a conversation is now; tell the user what changed. A view
   * that cannot be true is not recorded: the user is warned and `membership_refused` thrown. */
  private async storeView(
    wire: unknown, o: { actor?: string | null; acceptRetention?: boolean; expected?: Set<string> } = {},
  ): Promise<ConvRecord> {
    const view = viewFromWire(wire);
    const cid = view.conversationId;
    const old = await this.local(cid);
    const why = refusal(old, view, this.userId, o.expected);
    const writes: Write[] = [];
    const items: TimelineItem[] = [];
    const addItem = (item: ConversationEvent) => {
      items.push(item);
      writes.push({ table: "timeline", id: timelineId(cid, item.at, item.id), value: item });
    };
    if (why !== null) {
      addItem(this.eventItem(cid, "membership_refused",
        `The server showed this conversation with other members or kind (${why}): refused, nothing is sent to them.`,
        { added: view.participants }));
      await this.store.write(writes);
      this.emit({ type: "timeline", conversationId: cid, items });
      this.warn(cid, items[0]!.kind === "event" ? (items[0] as ConversationEvent).text : why);
      throw new ClientError("membership_refused", `conversation ${cid} refused: ${why}`, { conversationId: cid });
    }
    const known = await this.store.get<EpochView>("epochs", `${cid}/${view.epoch}`);
    if (!known) writes.push({ table: "epochs", id: `${cid}/${view.epoch}`, value: { participants: view.participants, participantsSha256: view.participantsSha256 } });
    else if (known.participantsSha256 !== view.participantsSha256)
      addItem(this.eventItem(cid, "membership_fork", "The server has shown two different memberships for the same epoch of this conversation."));
    const member = view.participants.includes(this.userId);
    let record: ConvRecord;
    if (!old) {
      record = { ...view, retentionAccepted: view.retention, member, nextSeq: 1, lastActivity: now(), unread: 0 };
    } else if (view.epoch < old.epoch) {
      return old; // older news than what we hold
    } else {
      const before = new Set(old.participants);
      const added = view.participants.filter((u) => !before.has(u));
      const removed = old.participants.filter((u) => !view.participants.includes(u));
      if (added.length || removed.length) {
        const by = o.actor ? `${this.names([o.actor])} ` : "";
        const parts = [added.length ? `${by || ""}added ${this.names(added)}` : "", removed.length ? `${by && !added.length ? by : ""}removed ${this.names(removed)}` : ""];
        addItem(this.eventItem(cid, "membership", `Members changed: ${parts.filter(Boolean).join("; ")}.`, { actor: o.actor ?? null, added, removed }));
      }
      if (JSON.stringify(old.retention) !== JSON.stringify(view.retention)) {
        const days = view.retention.policy === "ttl" ? ` (${view.retention.ttl_days} days)` : "";
        addItem(this.eventItem(cid, "retention", `${o.actor ? this.names([o.actor]) : "Someone"} changed retention to ${retentionWords(view.retention)}${days}.`,
          { actor: o.actor ?? null, retention: view.retention }));
      }
      record = {
        ...old, ...view, member, retentionAccepted: o.acceptRetention ? view.retention : old.retentionAccepted,
        lastActivity: items.length ? now() : old.lastActivity,
      };
    }
    writes.push({ table: "conversations", id: cid, value: record });
    await this.store.write(writes);
    if (items.length) this.emit({ type: "timeline", conversationId: cid, items });
    this.emit({ type: "conversations" });
    return record;
  }

  private async markLeft(cid: string): Promise<void> {
    const row = await this.local(cid);
    if (!row || !row.member) return;
    const item = this.eventItem(cid, "membership", "You are no longer in this conversation.", { removed: [this.userId] });
    await this.store.write([
      { table: "conversations", id: cid, value: { ...row, member: false } },
      { table: "timeline", id: timelineId(cid, item.at, item.id), value: item },
    ]);
    this.emit({ type: "timeline", conversationId: cid, items: [item] });
    this.emit({ type: "conversations" });
  }

  private async view(cid: string, refresh = false): Promise<ConvRecord> {
    const row = await this.local(cid);
    if (row && row.member && !refresh) return row;
    let wire: ConversationWire;
    try {
      wire = await this.call((t) => this.api.conversation(t, cid));
    } catch (exc) {
      if (!(exc instanceof ApiError) || exc.status !== 404) throw exc;
      await this.markLeft(cid);
      throw new ClientError("not_found", "no such conversation, or you are not a participant");
    }
    return this.storeView(wire);
  }

  private toConversation(r: ConvRecord): Conversation {
    return {
      conversationId: r.conversationId, kind: r.kind, participants: r.participants, createdBy: r.createdBy, epoch: r.epoch,
      retention: r.retention, lastActivity: r.lastActivity, unread: r.unread, member: r.member,
    };
  }

  async conversations(): Promise<Conversation[]> {
    const rows = await this.store.list<ConvRecord>("conversations");
    return rows.map((r) => this.toConversation(r.value)).sort((a, b) => b.lastActivity - a.lastActivity);
  }

  async refreshConversations(): Promise<Conversation[]> {
    const current = new Set<string>();
    let after: string | undefined;
    for (;;) {
      const page = await this.call((t) => this.api.conversations(t, { limit: CONVERSATION_PAGE, after }));
      for (const wire of page.conversations ?? []) {
        const cid = (wire as ConversationWire)?.conversation_id;
        if (typeof cid === "string") current.add(cid);
        try {
          await this.storeView(wire);
        } catch (exc) {
          if (!(exc instanceof ClientError)) throw exc; // refused: our record stays, the warning is shown
        }
      }
      if (!page.has_more || !page.cursor || page.cursor === after) break;
      after = page.cursor;
    }
    for (const { id, value } of await this.store.list<ConvRecord>("conversations")) if (value.member && !current.has(id)) await this.markLeft(id);
    return this.conversations();
  }

  async conversation(conversationId: string): Promise<Conversation | null> {
    const r = await this.local(conversationId);
    return r ? this.toConversation(r) : null;
  }

  /** User ids or contact names -> user ids. */
  private resolveUsers(refs: string[]): string[] {
    const out: string[] = [];
    for (const raw of refs.flatMap((r) => r.split(/[\s,]+/)).filter(Boolean)) {
      const match = [...this.contactCache].filter(([, c]) => c.name.toLowerCase() === raw.toLowerCase());
      if (match.length === 1) out.push(match[0]![0]);
      else {
        try {
          b58Key(raw, "user id");
          out.push(raw);
        } catch {
          throw new ClientError("unknown_participant", `"${raw}" is neither a user id nor a contact's name`);
        }
      }
    }
    return [...new Set(out)];
  }

  async createConversation(participants: string[], retention?: Retention): Promise<Conversation> {
    const ids = this.resolveUsers(participants).filter((u) => u !== this.userId);
    if (!ids.length) throw new ClientError("unknown_participant", "name at least one other person");
    if (retention) checkRetention(retention);
    const { body } = await this.call((t) => this.api.createConversation(t, { participants: ids.sort(), ...(retention ? { retention } : {}) }));
    return this.toConversation(await this.storeView(body, { expected: new Set([...ids, this.userId]), acceptRetention: true }));
  }

  async setRetention(conversationId: string, retention: Retention): Promise<Conversation> {
    checkRetention(retention);
    const wire = await this.call((t) => this.api.setRetention(t, conversationId, retention));
    return this.toConversation(await this.storeView(wire, { actor: this.userId, acceptRetention: true }));
  }

  async addMembers(conversationId: string, participants: string[]): Promise<Conversation> {
    const ids = this.resolveUsers(participants);
    const wire = await this.call((t) => this.api.addParticipants(t, conversationId, ids));
    return this.toConversation(await this.storeView(wire, { actor: this.userId }));
  }

  async removeMember(conversationId: string, userId: string): Promise<void> {
    await this.call((t) => this.api.removeParticipant(t, conversationId, userId));
    if (userId === this.userId) await this.markLeft(conversationId);
    else await this.view(conversationId, true);
  }

  async leave(conversationId: string): Promise<void> {
    await this.removeMember(conversationId, this.userId);
  }

  async timeline(conversationId: string): Promise<TimelineItem[]> {
    return (await this.store.list<TimelineItem>("timeline", `${conversationId}/`)).map((r) => r.value);
  }

  async markRead(conversationId: string): Promise<void> {
    const r = await this.local(conversationId);
    if (r && r.unread) {
      await this.store.put("conversations", conversationId, { ...r, unread: 0 });
      this.emit({ type: "conversations" });
    }
  }

  // --- sending (§6, §7) ------------------------------------------------------------------------

  private async senderKey(cid: string, epoch: number): Promise<SenderKeyRecord> {
    const id = `${cid}/${epoch}`;
    const row = await this.store.get<SenderKeyRecord>("senderKeys", id);
    if (row && row.used < MAX_KEY_USES && row.createdAt !== undefined && now() - row.createdAt < MAX_KEY_AGE_MS) return row;
    const key = crypto.getRandomValues(new Uint8Array(32));
    const fresh: SenderKeyRecord = { key, keyId: keyId(key), used: 0, probedAt: now(), createdAt: now() };
    if (row) await this.store.delete("wrapsSent", `${cid}/${row.keyId}`);
    await this.store.put("senderKeys", id, fresh);
    return fresh;
  }

  private async recipientDevices(view: ConversationView, refresh = false): Promise<string[]> {
    const devices: string[] = [];
    for (const u of view.participants) devices.push(...(await this.directory(u, refresh)));
    return devices.filter((d) => d !== this.device.id).sort();
  }

  private wrapFor(deviceId: string, view: ConversationView, key: Uint8Array): KeyWrap {
    return keyWrap({ senderSeed: this.device.seed, senderDevice: this.device.id, recipientDevice: deviceId,
      conversationId: view.conversationId, epoch: view.epoch, groupKey: key });
  }

  private async sentWraps(cid: string, kid: string): Promise<SentWraps> {
    const raw = (await this.store.get<Record<string, boolean | SentWrap>>("wrapsSent", `${cid}/${kid}`)) ?? {};
    const out: SentWraps = {};
    for (const [d, v] of Object.entries(raw)) out[d] = typeof v === "boolean" ? { holds: v, wrap: null } : v;
    return out;
  }

  /** device_id -> wrap, or null where the device holds the key already (dmclient _plan_wraps:
   * a device not known to hold it gets its wrap again, except in a probe at most once per
   * WRAP_PROBE_MS per key, which lets `missing_key_wraps` name those still lacking it).
   * Prekeys are claimed only for devices that have no wrap of this key yet. */
  private async planWraps(view: ConversationView, sk: SenderKeyRecord): Promise<{ wraps: Map<string, AnyKeyWrap | null>; probing: boolean }> {
    const known = await this.sentWraps(view.conversationId, sk.keyId);
    const probing = now() - sk.probedAt >= WRAP_PROBE_MS && Object.values(known).some((h) => !h.holds);
    const wraps = new Map<string, AnyKeyWrap | null>();
    const need: string[] = [];
    for (const d of await this.recipientDevices(view)) {
      if (known[d]?.holds || (probing && d in known)) wraps.set(d, null);
      else need.push(d);
    }
    const made = await this.wrapsFor(view, sk, need);
    for (const d of need) wraps.set(d, made.get(d) ?? null); // no wrap for a device the claim left out
    return { wraps, probing };
  }

  /** The stored wrap of this key for each device, or a new one (claiming prekeys) where there is none. */
  private async wrapsFor(view: ConversationView, sk: SenderKeyRecord, devices: string[]): Promise<Map<string, AnyKeyWrap>> {
    const known = await this.sentWraps(view.conversationId, sk.keyId);
    const out = new Map<string, AnyKeyWrap>();
    const missing: string[] = [];
    for (const d of devices) {
      const w = known[d]?.wrap;
      if (w) out.set(d, w);
      else missing.push(d);
    }
    for (const [d, w] of await this.newWraps(view, sk, missing)) out.set(d, w);
    return out;
  }

  /** §6b "When v2 is used": claims prekeys for exactly these devices; v2 for every device
   * with a signed prekey (verified against its certified device id), v1 only for a device
   * without one (an older client). A signed or one-time prekey that does not verify is never
   * replaced by a v1 wrap: the send is refused; so is a claim entry without a signed_prekey
   * field, "no signed prekey" for a device whose signed prekey was handed out before (a device
   * never takes it back), and a signed prekey older than one handed out before (the highest id
   * seen per device is kept in the meta record "prekeysSeen", as dmclient's prekeys_seen).
   * The wraps made are stored before sending, so a re-send uses them and does not claim again. */
  private async newWraps(view: ConversationView, sk: SenderKeyRecord, devices: string[]): Promise<Map<string, AnyKeyWrap>> {
    const out = new Map<string, AnyKeyWrap>();
    if (!devices.length) return out;
    const claimed = new Map<string, ClaimedPrekeys>();
    let noPrekeys = false;
    try {
      const answer = await this.call((t) => this.api.claimPrekeys(t, devices));
      for (const p of answer.prekeys ?? []) if (p && devices.includes(p.device_id)) claimed.set(p.device_id, p);
    } catch (exc) {
      if (!isPreV12(exc)) throw exc;
      noPrekeys = true; // a server before v1.2, where nobody has prekeys
    }
    const seen = (await this.store.get<PrekeysSeen>("meta", PREKEYS_SEEN)) ?? {};
    const newest: PrekeysSeen = {};
    const refused: { deviceId: string; detail: string }[] = [];
    for (const d of devices) {
      const c = noPrekeys ? { device_id: d, signed_prekey: null, one_time: null } : claimed.get(d);
      if (c === undefined) continue; // left out: not an active device (the server answers mismatched_devices if it is)
      if (!("signed_prekey" in c) || c.signed_prekey === undefined) {
        refused.push({ deviceId: d, detail: "the claim answer has no signed_prekey field" });
        continue;
      }
      if (c.signed_prekey === null && seen[d] !== undefined) {
        // A device never takes its signed prekey back (the server drops it only with the device).
        refused.push({ deviceId: d, detail: `the server says it has no signed prekey, but it handed out this device's signed prekey ${seen[d]} before` });
        continue;
      }
      if (c.signed_prekey === null) {
        out.set(d, this.wrapFor(d, view, sk.key)); // v1 only for a device without a signed prekey (an older client)
        continue;
      }
      let wrap: KeyWrapV2;
      try {
        const signedPrekey = spkParse(c.signed_prekey, d);
        const oneTime = c.one_time === null || c.one_time === undefined ? null : otkParse(c.one_time);
        if (signedPrekey.id < (seen[d] ?? 0)) {
          throw new ProtocolError(`signed prekey ${signedPrekey.id} is older than ${seen[d]}, handed out before`, "invalid_prekey");
        }
        wrap = keyWrapV2({ senderSeed: this.device.seed, senderDevice: this.device.id, recipientDevice: d,
          conversationId: view.conversationId, epoch: view.epoch, groupKey: sk.key, signedPrekey, oneTime });
        newest[d] = signedPrekey.id;
      } catch (exc) {
        if (!(exc instanceof ProtocolError)) throw exc;
        refused.push({ deviceId: d, detail: exc.detail });
        continue;
      }
      out.set(d, wrap);
    }
    if (Object.keys(newest).length) {
      const stored = (await this.store.get<PrekeysSeen>("meta", PREKEYS_SEEN)) ?? {}; // read again: another send may have added some
      for (const [d, id] of Object.entries(newest)) stored[d] = Math.max(stored[d] ?? 0, id);
      await this.store.put("meta", PREKEYS_SEEN, stored);
    }
    const id = `${view.conversationId}/${sk.keyId}`;
    const known = await this.sentWraps(view.conversationId, sk.keyId);
    for (const [d, w] of out) known[d] = { holds: known[d]?.holds ?? false, wrap: w };
    await this.store.put("wrapsSent", id, known);
    if (refused.length) {
      const cid = view.conversationId;
      const item = this.eventItem(cid, "untrusted_device",
        `The server gave ${refused.length === 1 ? "a device" : `${refused.length} devices`} in this conversation a prekey that does not verify (${refused.map((r) => `${r.deviceId.slice(0, 8)}: ${r.detail}`).join("; ")}): nothing was sent, and it is never sent without forward secrecy instead.`);
      await this.store.put("timeline", timelineId(cid, item.at, item.id), item);
      this.emit({ type: "timeline", conversationId: cid, items: [item] });
      throw new ClientError("invalid_prekey", `a recipient device's prekey does not verify; not sent`, { devices: refused.map((r) => r.deviceId) });
    }
    return out;
  }

  /** Encrypts and sends one text message, handling the server's answers: stale_epoch (refresh,
   * new key), retention_changed (ask the user), mismatched_devices (refresh the directory),
   * missing_key_wraps (add them), 429 (wait Retry-After, in Http), network errors (same body
   * again). Every attempt carries the same message_id. */
  async send(conversationId: string, text: string, options: SendOptions = {}): Promise<Message> {
    let view = await this.view(conversationId);
    if (!view.member) throw new ClientError("not_a_participant", "you are not in this conversation");
    const seq = view.nextSeq;
    await this.store.put("conversations", conversationId, { ...view, nextSeq: seq + 1 });
    if (options.messageId !== undefined && !isUuid(options.messageId)) throw new ClientError("invalid_message_id", "a message id is a UUID");
    const messageId = options.messageId ?? randomId();
    const sentAt = now();
    const pending: Message = {
      kind: "message", messageId, conversationId, sender: this.userId, senderDevice: this.device.id,
      senderDeviceName: this.record.deviceName, mine: true, seq, sentAt, body: text, policy: view.retentionAccepted.policy,
      expiresAt: null, warnings: [], status: { summary: "sending", notDelivered: 0, counts: {} },
    };
    this.emit({ type: "timeline", conversationId, items: [pending] });
    try {
      return await this.sendAttempts(view, pending, options);
    } catch (exc) {
      // Refused for good, so nothing was stored: give the seq back unless a later send took one.
      if (!(exc instanceof NetworkError)) {
        view = (await this.local(conversationId)) ?? view;
        if (view.nextSeq === seq + 1) await this.store.put("conversations", conversationId, { ...view, nextSeq: seq });
      }
      this.emit({ type: "timeline", conversationId, items: [{ ...pending, status: undefined, warnings: [`Not sent: ${(exc as Error).message}`] }] });
      throw exc;
    }
  }

  private async sendAttempts(first: ConvRecord, msg: Message, options: SendOptions): Promise<Message> {
    let view = first;
    const cid = view.conversationId;
    let accepted = view.retentionAccepted;
    const plaintext = plaintextEncode({ body: msg.body, sentAt: msg.sentAt, seq: msg.seq });
    let sealed: ReturnType<typeof seal> | null = null;
    let sk: SenderKeyRecord | null = null;
    let plan: { wraps: Map<string, AnyKeyWrap | null>; probing: boolean } | null = null;
    let networkFailures = 0;
    let lastMismatch: string | null = null;
    for (let attempt = 0; attempt < SEND_ATTEMPTS; attempt++) {
      if (sealed === null || sk === null) {
        sk = await this.senderKey(cid, view.epoch);
        sealed = seal({ device: this.device, conversationId: cid, epoch: view.epoch, messageId: msg.messageId, groupKey: sk.key,
          participantsSha256: view.participantsSha256, plaintext });
        plan = null;
      }
      if (plan === null) plan = await this.planWraps(view, sk);
      const body = {
        message_id: msg.messageId, conversation_id: cid, epoch: view.epoch, participants_sha256: view.participantsSha256,
        retention: accepted, ...sealed,
        recipients: [...plan.wraps].sort(([a], [b]) => (a < b ? -1 : 1)).map(([device_id, key_wrap]) => ({ device_id, key_wrap })),
      };
      let answer: SendAnswer;
      try {
        answer = await this.call((t) => this.api.send(t, body));
      } catch (exc) {
        if (exc instanceof NetworkError) {
          if (networkFailures === NETWORK_BACKOFF_MS.length) throw exc;
          await sleep(NETWORK_BACKOFF_MS[networkFailures++]!);
          continue;
        }
        if (!(exc instanceof ApiError)) throw exc;
        if (exc.code === "stale_epoch") {
          const named = exc.body.participants;
          if (view.kind === "direct" && Array.isArray(named) && [...named].map(String).sort().join() !== view.participants.join()) {
            // A direct conversation's participants can only be its two: the answer is a lie (§6).
            const item = this.eventItem(cid, "membership_refused", "The server claimed other members for this direct conversation: refused, nothing is sent to them.");
            await this.store.put("timeline", timelineId(cid, item.at, item.id), item);
            this.emit({ type: "timeline", conversationId: cid, items: [item] });
            throw new ClientError("membership_refused", `conversation ${cid} refused: a direct conversation's participants never change`);
          }
          view = await this.view(cid, true);
          for (const u of view.participants) await this.directory(u, true);
          sealed = null;
        } else if (exc.code === "retention_changed") {
          const next = exc.body.retention as Retention;
          await this.view(cid, true);
          checkRetention(next); // beyond what this client accepts (its replay window): not sent
          if (!options.confirmRetention || !(await options.confirmRetention(next, accepted)))
            throw new ClientError("retention_changed", "the conversation's retention changed; not sent", { retention: next, previous: accepted });
          accepted = next;
          const row = await this.local(cid);
          if (row) await this.store.put("conversations", cid, { ...row, retentionAccepted: next });
        } else if (exc.code === "mismatched_devices") {
          const mismatch = JSON.stringify([exc.body.missing, exc.body.extra]);
          if (mismatch === lastMismatch)
            throw new ClientError("untrusted_device", "the server requires devices whose certificates do not verify; not sent", { missing: exc.body.missing, extra: exc.body.extra });
          lastMismatch = mismatch;
          await this.recipientDevices(view, true);
          plan = null;
        } else if (exc.code === "missing_key_wraps") {
          const named = ((exc.body.devices as string[] | undefined) ?? []).filter((d) => plan!.wraps.has(d));
          for (const [d, w] of await this.wrapsFor(view, sk, named)) plan.wraps.set(d, w);
        } else if (exc.code === "mailbox_full") {
          throw new ClientError("mailbox_full", "every recipient device's mailbox is full; not sent", { devices: exc.body.devices });
        } else throw exc;
        continue;
      }
      return this.storeSent(view, msg, sk, plan, answer);
    }
    throw new ClientError("send_failed", `gave up after ${SEND_ATTEMPTS} attempts`);
  }

  private async storeSent(
    view: ConvRecord, msg: Message, sk: SenderKeyRecord, plan: { wraps: Map<string, AnyKeyWrap | null>; probing: boolean }, answer: SendAnswer,
  ): Promise<Message> {
    const cid = view.conversationId;
    const directoryUsers = new Map<string, string>();
    for (const u of view.participants) for (const d of (await this.store.get<DirectoryRecord>("directory", u))?.devices ?? []) directoryUsers.set(d.deviceId, u);
    const skipped = (answer.skipped ?? []).map((s) => ({ deviceId: s.device_id, userId: directoryUsers.get(s.device_id) ?? null, reason: s.reason || "mailbox_full" }));
    const counts: Record<string, number> = { pending: answer.recipients };
    if (skipped.length) counts.skipped = skipped.length;
    const sent: Message = {
      ...msg, policy: answer.policy as Message["policy"], expiresAt: parseTime(answer.expires_at),
      status: summarize(counts), unreachable: answer.unreachable ?? [], skipped,
    };
    const warnings: string[] = [];
    if (sent.unreachable!.length) warnings.push(`Not delivered to ${this.names(sent.unreachable!)}: no active device.`);
    if (skipped.length) warnings.push(`Not delivered to ${skipped.length} device(s): their mailbox is full.`);
    sent.warnings = warnings;
    const known = await this.sentWraps(cid, sk.keyId);
    // Accepted without a wrap: the server holds a receipt, so that device holds the key (and its wrap is not needed again).
    for (const [d, w] of plan.wraps) {
      const holds = (known[d]?.holds ?? false) || w === null;
      known[d] = { holds, wrap: holds ? null : (known[d]?.wrap ?? w) };
    }
    const tid = timelineId(cid, msg.sentAt, msg.messageId);
    const row = (await this.local(cid)) ?? view;
    await this.store.write([
      { table: "timeline", id: tid, value: sent },
      { table: "msgindex", id: msg.messageId, value: tid },
      { table: "seen", id: `${this.device.id}/${msg.messageId}`, value: { storedAt: now(), expiresAt: sent.expiresAt } },
      { table: "wrapsSent", id: `${cid}/${sk.keyId}`, value: known },
      { table: "senderKeys", id: `${cid}/${view.epoch}`, value: { ...sk, used: sk.used + 1, probedAt: plan.probing ? now() : sk.probedAt } },
      { table: "conversations", id: cid, value: { ...row, lastActivity: now() } },
    ]);
    this.emit({ type: "timeline", conversationId: cid, items: [sent] });
    this.emit({ type: "conversations" });
    return sent;
  }

  // --- delivery status (§7a) -------------------------------------------------------------

  private async applyStatus(messageId: string, counts: Record<string, number>, devices?: DeviceDelivery[]): Promise<DeliveryStatus | null> {
    const tid = await this.store.get<string>("msgindex", messageId);
    if (!tid) return null;
    const msg = await this.store.get<Message>("timeline", tid);
    if (!msg || !msg.mine) return null;
    const status: DeliveryStatus = { ...summarize(counts), ...(devices ? { devices } : msg.status?.devices ? { devices: msg.status.devices } : {}) };
    await this.store.put("timeline", tid, { ...msg, status });
    this.emit({ type: "status", conversationId: msg.conversationId, messageId, status });
    return status;
  }

  private statusDevices(s: StatusWire): DeviceDelivery[] {
    return s.devices.map((d) => ({ deviceId: d.device_id, userId: d.user_id, state: d.state as DeviceDelivery["state"], at: parseTime(d.at), ...(d.reason ? { reason: d.reason } : {}) }));
  }

  async deliveryStatus(messageId: string): Promise<DeliveryStatus> {
    const s = await this.call((t) => this.api.messageStatus(t, messageId));
    return (await this.applyStatus(messageId, s.counts, this.statusDevices(s))) ?? { ...summarize(s.counts), devices: this.statusDevices(s) };
  }

  private async refreshStatuses(messageIds: string[]): Promise<void> {
    for (let i = 0; i < messageIds.length; i += 500) {
      const page = await this.call((t) => this.api.statuses(t, messageIds.slice(i, i + 500))).catch(() => null);
      for (const s of page?.statuses ?? []) await this.applyStatus(s.message_id, s.counts, this.statusDevices(s));
    }
  }

  // --- receiving (§6) ------------------------------------------------------------------------

  /** Fetch pending messages, check and store each, then ACK the page (store first: a crash
   * before storing means the message comes again). Pages on with `after`, then finishes with
   * passes without it (§7). Calls during a sync make it run once more. */
  async sync(): Promise<{ accepted: number; failed: number }> {
    if (this.syncing) {
      this.syncAgain = true;
      return this.syncing;
    }
    this.syncing = (async () => {
      const total = { accepted: 0, failed: 0 };
      try {
        do {
          this.syncAgain = false;
          const r = await withLock(`decentcom-sync-${this.store.name}`, () => this.syncPass());
          total.accepted += r.accepted;
          total.failed += r.failed;
        } while (this.syncAgain);
      } finally {
        this.syncing = null;
      }
      return total;
    })();
    return this.syncing;
  }

  private async syncPass(): Promise<{ accepted: number; failed: number }> {
    const report = { accepted: 0, failed: 0 };
    let after: string | undefined;
    this.refreshed = new Set();
    const mine: string[] = [];
    try {
      for (;;) {
        const page = await this.call((t) => this.api.sync(t, { limit: SYNC_PAGE, ...(after ? { after } : {}) }));
        const ok: string[] = [];
        const failed: string[] = [];
        const usedOneTime: number[] = [];
        for (const msg of page.messages) {
          const { accepted, ackable, ownMessage, keyKnown } = await this.receive(msg);
          if (ackable) (accepted ? ok : failed).push(ackable);
          const oneTimeId = oneTimeIdOf(msg);
          if (ackable && keyKnown && oneTimeId !== null) usedOneTime.push(oneTimeId);
          if (ownMessage) mine.push(ownMessage);
          report[accepted ? "accepted" : "failed"]++;
        }
        if (ok.length || failed.length) await this.call((t) => this.api.ack(t, { message_ids: ok, failed }));
        // §6b: a one-time private key goes at the ACK of the delivery that used it (received or failed).
        // A wrap that did not open has not used it: the sender re-sends that wrap, and it must open then.
        if (usedOneTime.length) await this.prekeys.eraseOneTime(usedOneTime);
        if (page.has_more) after = page.cursor;
        else if (after === undefined || !(ok.length || failed.length)) break;
        else after = undefined;
      }
    } finally {
      this.refreshed = null;
    }
    if (mine.length) await this.refreshStatuses(mine); // self-sync: our other devices' messages
    return report;
  }

  /** Every check of §6 "Receiving", in its order (dmclient Client._receive). */
  private async receive(msg: unknown): Promise<{ accepted: boolean; ackable: string | null; ownMessage: string | null; keyKnown: boolean }> {
    const messageId = (msg as { message_id?: unknown })?.message_id;
    const ackable = isUuid(messageId) ? messageId : null;
    const nowMs = now();
    let keyKnown = false;
    try {
      const m = parse(msg);
      const deviceName = checkCertificate(m, Math.floor(nowMs / 1000));
      const warnings = await this.checkMembership(m);
      checkSignature(m);
      const { key, unwrapped } = await this.messageKey(m);
      keyKnown = true;
      // A v2 wrap is authenticated to the sender device: its key is kept even if a later check fails,
      // so the same wrap sent again (its one-time key then erased) still opens. Not a v1 key: the
      // downgrade rule would be bypassed by later messages without a wrap.
      if (unwrapped && m.wrapVersion === 2) await this.store.put("receivedKeys", receivedKeyId(m), key);
      const plaintext = decrypt(key, m);
      checkTime(plaintext, nowMs);
      if (m.wrapVersion === 1) checkDowngrade(m, await this.prekeys.refusesV1(plaintext.sent_at));
      await this.storeReceived(m, deviceName, key, plaintext, warnings);
      return { accepted: true, ackable, ownMessage: m.sender === this.userId ? m.messageId : null, keyKnown };
    } catch (exc) {
      if (!(exc instanceof Rejected)) throw exc;
      await this.recordFailure(msg, exc);
      return { accepted: false, ackable, ownMessage: null, keyKnown };
    }
  }

  /** The epoch, the sender's membership and participants_sha256 against our view; refresh once if not. */
  private async checkMembership(m: Incoming): Promise<string[]> {
    const cid = m.conversationId;
    let seen = await this.epochViews(cid);
    const view = seen.get(m.epoch);
    const good = view !== undefined && view.participants.includes(m.sender) && view.participantsSha256 === m.participantsSha256;
    if (!good && (this.refreshed === null || !this.refreshed.has(cid))) {
      this.refreshed?.add(cid);
      try {
        await this.view(cid, true);
      } catch (exc) {
        if (exc instanceof ClientError)
          throw new Rejected(exc.code === "membership_refused" ? "membership_refused" : "not_a_participant", exc.detail);
        throw exc;
      }
      seen = await this.epochViews(cid);
    }
    const row = await this.local(cid);
    try {
      return checkMembership(m, seen, row ? row.epoch : null);
    } catch (exc) {
      if (exc instanceof Rejected && exc.reason === "participants_mismatch") {
        const item = this.eventItem(cid, "membership_fork",
          "A message's sender saw other members than you do: the server may show different members to different people.");
        await this.store.put("timeline", timelineId(cid, item.at, item.id), item);
        this.emit({ type: "timeline", conversationId: cid, items: [item] });
      }
      throw exc;
    }
  }

  /** A key already held for key_id is used (a wrap sent again after its one-time key was used);
   * else a v1 wrap opens with the static keys, a v2 wrap with this device's prekeys by id;
   * `missing_key` when there is no wrap and no stored key for this key_id. */
  private async messageKey(m: Incoming): Promise<{ key: Uint8Array; unwrapped: boolean }> {
    const held = await this.heldKey(m);
    if (m.keyWrap !== null && !(held && m.senderDevice !== this.device.id)) {
      if (m.wrapVersion === 1) return { key: unwrap(this.device, m), unwrapped: true };
      const w = m.keyWrap as KeyWrapV2;
      return {
        key: unwrapV2(this.device, m, {
          signed: await this.prekeys.signedPrivate(w.signed_prekey_id),
          oneTime: w.one_time_id === null ? null : await this.prekeys.oneTimePrivate(w.one_time_id),
        }),
        unwrapped: true,
      };
    }
    if (!held) throw new Rejected("missing_key", "no key wrap and no stored key for this key_id");
    checkKeyId(held, m);
    return { key: held, unwrapped: false };
  }

  private async heldKey(m: Incoming): Promise<Uint8Array | undefined> {
    let key: Uint8Array | undefined;
    if (m.senderDevice === this.device.id) {
      const sk = await this.store.get<SenderKeyRecord>("senderKeys", `${m.conversationId}/${m.epoch}`);
      key = sk?.keyId === m.keyId ? sk.key : undefined;
    } else {
      key = await this.store.get<Uint8Array>("receivedKeys", receivedKeyId(m));
    }
    return key;
  }

  private async storeReceived(m: Incoming, deviceName: string, key: Uint8Array, plaintext: { body: string; sent_at: number; seq: number }, warnings: string[]): Promise<void> {
    const cid = m.conversationId;
    // `replay`: checked under the sync lock, which every writer of `seen` holds.
    if (await this.store.get("seen", `${m.senderDevice}/${m.messageId}`))
      throw new Rejected("replay", "this message was accepted before (a replay or a repeated delivery)");
    const seqId = `${cid}/${m.senderDevice}`;
    const last = await this.store.get<number>("seq", seqId);
    const notes = [...warnings];
    if (last !== undefined && plaintext.seq > last + 1)
      notes.push(`${plaintext.seq - last - 1} earlier message(s) from this device never arrived (seq ${last + 1}..${plaintext.seq - 1})`);
    else if (last !== undefined && plaintext.seq <= last) notes.push(`out of order: seq ${plaintext.seq} after ${last}`);
    const mine = m.sender === this.userId;
    const message: Message = {
      kind: "message", messageId: m.messageId, conversationId: cid, sender: m.sender, senderDevice: m.senderDevice,
      senderDeviceName: deviceName, mine, seq: plaintext.seq, sentAt: plaintext.sent_at, body: plaintext.body,
      policy: m.policy as Message["policy"], expiresAt: parseTime(m.expiresAt), warnings: notes,
      ...(mine ? { status: summarize({}) } : {}),
    };
    const tid = timelineId(cid, plaintext.sent_at, m.messageId);
    const row = await this.local(cid);
    const writes: Write[] = [
      { table: "seen", id: `${m.senderDevice}/${m.messageId}`, value: { storedAt: now(), expiresAt: message.expiresAt } },
      { table: "seq", id: seqId, value: Math.max(last ?? 0, plaintext.seq) },
      { table: "receivedKeys", id: receivedKeyId(m), value: key },
      { table: "timeline", id: tid, value: message },
      { table: "msgindex", id: m.messageId, value: tid },
    ];
    if (row) writes.push({ table: "conversations", id: cid, value: { ...row, lastActivity: Math.max(row.lastActivity, now()), unread: row.unread + (mine ? 0 : 1) } });
    await this.store.write(writes);
    this.emit({ type: "timeline", conversationId: cid, items: [message] });
    this.emit({ type: "conversations" });
  }

  private async recordFailure(msg: unknown, rejected: Rejected): Promise<void> {
    const m = (typeof msg === "object" && msg !== null ? msg : {}) as Record<string, unknown>;
    const text = (v: unknown) => (typeof v === "string" ? v : null);
    const cid = isUuid(m.conversation_id) ? m.conversation_id : null;
    const failure: Failure = {
      kind: "failed", id: randomId(), messageId: String(m.message_id), conversationId: cid, claimedSender: text(m.sender),
      at: now(), reason: rejected.reason, detail: rejected.detail,
    };
    await this.store.put("timeline", timelineId(cid ?? "_", failure.at, failure.id), failure);
    const sender = text(m.sender);
    if (rejected.reason === "bad_certificate" && sender && this.contactCache.get(sender)?.verified)
      await this.untrustedDevice(sender, String(m.sender_device), rejected.detail);
    if (cid) this.emit({ type: "timeline", conversationId: cid, items: [failure] });
    this.warn(cid, `A message${sender ? ` claiming to be from ${this.displayName(sender)}` : ""} was refused (${rejected.reason}): ${rejected.detail.replace(/\.$/, "")}.`);
  }

  /** Keep no message longer than the server would: bodies go at expiresAt; an id stays for the
   * replay window (from when it was stored, plus the day ahead a sent_at may be). */
  async purgeExpired(): Promise<void> {
    const t = now();
    const writes: Write[] = [];
    for (const { id, value } of await this.store.list<TimelineItem>("timeline"))
      if (value.kind === "message" && value.expiresAt !== null && value.expiresAt <= t) writes.push({ table: "timeline", id, value: null });
    for (const { id, value } of await this.store.list<{ storedAt: number }>("seen"))
      if (value.storedAt + REPLAY_WINDOW_MS + FUTURE_SKEW_MS < t) writes.push({ table: "seen", id, value: null });
    await this.store.write(writes);
    await this.prekeys.eraseExpiredSigned(t);
  }

  // --- devices (§2, §4) ------------------------------------------------------------------------

  async devices(): Promise<DeviceInfo[]> {
    const { devices } = await this.call((t) => this.api.devices(t));
    const nowS = Math.floor(now() / 1000);
    return devices.map((d) => {
      let certificateOk = true;
      try {
        certCheckClient(d.certificate, { userId: this.userId, deviceId: d.device_id, now: nowS });
      } catch {
        certificateOk = false;
      }
      const expiresAt = parseTime(d.expires_at);
      return {
        deviceId: d.device_id, name: d.name, current: d.current, lastSeenAt: parseTime(d.last_seen_at), pendingCount: d.pending_count,
        issuedAt: parseTime(d.issued_at), expiresAt, revokedAt: parseTime(d.revoked_at), permissions: d.permissions ?? [], certificateOk,
        state: d.revoked_at ? "revoked" : expiresAt !== null && expiresAt <= now() ? "expired" : "active",
      } satisfies DeviceInfo;
    });
  }

  /** Revoke with this device's session, or with the master key when this device may not. */
  async revokeDevice(deviceId: string): Promise<void> {
    try {
      await this.call((t) => this.api.revoke(t, deviceId));
    } catch (exc) {
      if (!(exc instanceof ApiError) || exc.status !== 403 || !this.record.masterSeed) throw exc;
      await this.masterCall((t) => this.api.revoke(t, deviceId));
    }
    await this.store.delete("directory", this.userId);
    if (deviceId === this.device.id) await this.lockRevoked("This device was revoked.");
    this.emit({ type: "devices", change: "revoke", deviceId });
  }

  /** A certificate (JSON text) for another device of this user, signed here with the master key. */
  async certifyDevice(deviceKey: string, o: { name?: string; expiresDays?: number | null; permissions?: string[] } = {}): Promise<string> {
    if (!this.record.masterSeed) throw new ClientError("no_master_key", "this browser does not hold the master key");
    const device = deviceKey.trim();
    try {
      b58Key(device, "device key");
      const issuedAt = Math.floor(now() / 1000);
      const cert = certIssue({
        master: new KeyPair(this.record.masterSeed), device, name: (o.name ?? "").trim() || CERT_DEFAULT_NAME, issuedAt,
        expiresAt: o.expiresDays ? issuedAt + o.expiresDays * 86400 : null, permissions: o.permissions ?? [],
      });
      return JSON.stringify(cert);
    } catch (exc) {
      if (exc instanceof ProtocolError) throw new ClientError(exc.code === "invalid_name" ? "invalid_name" : "invalid_device_key", exc.detail);
      throw exc;
    }
  }

  async recoveryPhrase(): Promise<string> {
    if (!this.record.masterSeed) throw new ClientError("no_master_key", "this browser does not hold the master key");
    return phraseFromSeed(this.record.masterSeed);
  }

  // --- contacts and safety numbers (§6) --------------------------------------------------------

  private toContact(userId: string, c: ContactRecord): Contact {
    return { userId, name: c.name, verified: c.verified, mismatch: c.mismatch, safetyNumber: this.safetyNumber(userId) };
  }

  async contacts(): Promise<Contact[]> {
    return [...this.contactCache].map(([u, c]) => this.toContact(u, c)).sort((a, b) => a.name.localeCompare(b.name));
  }

  async setContact(userId: string, name: string): Promise<Contact> {
    const id = userId.trim();
    try {
      b58Key(id, "user id");
    } catch (exc) {
      throw new ClientError("invalid_user_id", (exc as Error).message);
    }
    const clean = name.trim();
    if (!clean || clean.length > 64) throw new ClientError("invalid_name", "a contact's name is 1-64 characters");
    const record = { verified: false, mismatch: false, ...this.contactCache.get(id), name: clean };
    this.contactCache.set(id, record);
    await this.store.put("contacts", id, record);
    this.emit({ type: "contacts" });
    this.emit({ type: "conversations" });
    return this.toContact(id, record);
  }

  async removeContact(userId: string): Promise<void> {
    this.contactCache.delete(userId);
    await this.store.delete("contacts", userId);
    this.emit({ type: "contacts" });
  }

  safetyNumber(userId: string): string {
    return safetyNumber(this.userId, userId);
  }

  async markVerified(userId: string, verified = true): Promise<void> {
    const record = { name: userId.slice(0, 8), mismatch: false, ...this.contactCache.get(userId), verified };
    if (verified) record.mismatch = false;
    this.contactCache.set(userId, record);
    await this.store.put("contacts", userId, record);
    this.emit({ type: "contacts" });
  }
}
