// Typed wrappers for every endpoint the client uses (PROTOCOL.md §3-§9).
import type { AnyKeyWrap, Sealed, WireCert, WireOtk, WireSpk } from "../protocol";
import { Http } from "./http";

export type Time = string; // RFC 3339
export interface RetentionWire { policy: string; ttl_days: number | null }
export interface Session { token: string; user_id: string; device_id: string | null; expires_at: Time }
export interface DirectoryDevice {
  device_id: string; name: string; x25519: string; issued_at: Time; expires_at: Time | null;
  permissions: string[]; certificate: WireCert;
}
export interface OwnDevice extends DirectoryDevice {
  revoked_at: Time | null; last_seen_at: Time | null; pending_count: number; current: boolean;
}
export interface ConversationWire {
  conversation_id: string; kind: string; participants: string[]; participants_sha256: string;
  created_by: string | null; epoch: number; retention: RetentionWire; created_at: Time; updated_at: Time;
}
export interface ConversationPage { conversations: ConversationWire[]; has_more: boolean; cursor: string }
export interface MessageWire {
  message_id: string; conversation_id: string; sender: string; sender_device: string; sender_certificate: unknown;
  epoch: number; key_id: string; participants_sha256: string; nonce: string; ciphertext: string; signature: string;
  key_wrap: AnyKeyWrap | null; created_at: Time; expires_at: Time | null; policy: string;
}
export type MessagePage = { messages: unknown[]; has_more: boolean; cursor: string };
export interface SendBody extends Sealed {
  message_id: string; conversation_id: string; epoch: number; participants_sha256: string;
  retention: RetentionWire; recipients: { device_id: string; key_wrap: AnyKeyWrap | null }[];
}
export interface SendAnswer {
  message_id: string; created_at: Time; expires_at: Time | null; policy: string; recipients: number;
  unreachable: string[]; skipped?: { device_id: string; reason: string }[];
}
export interface StatusWire {
  message_id: string; conversation_id: string; policy: string; created_at: Time; expires_at: Time | null;
  devices: { device_id: string; user_id: string; state: string; at: Time | null; reason?: string }[];
  counts: Record<string, number>;
}
export interface ServerWire {
  protocol: string; origin: string;
  retention: { default: RetentionWire; max_ttl_days: number; permanent_allowed: boolean; max_undelivered_days: number };
  limits: Record<string, number>; gateway: { url: string; heartbeat_interval_ms: number };
}

export interface PrekeysWire { signed_prekey: WireSpk | null; one_time_count: number }
export interface ClaimedPrekeys { device_id: string; signed_prekey: unknown; one_time: unknown }

/** Endpoints, each with the token of the session it needs. */
export class Endpoints {
  constructor(readonly http: Http) {}

  server() {
    return this.http.request<ServerWire>("GET", "/server").then((r) => r.body);
  }
  challenge(pubkey: string) {
    return this.http.request<{ challenge: string; expires_at: Time }>("POST", "/auth/challenge", { json: { pubkey } })
      .then((r) => r.body);
  }
  verify(body: { pubkey: string; challenge: string; signature: string; certificate?: WireCert }) {
    return this.http.request<Session>("POST", "/auth/verify", { json: body }).then((r) => r.body);
  }
  logout(token: string) {
    return this.http.request("POST", "/auth/logout", { token, json: {} }).then(() => undefined);
  }
  userDevices(token: string, userId: string) {
    return this.http.request<{ user_id: string; devices: DirectoryDevice[] }>("GET", `/users/${encodeURIComponent(userId)}/devices`, { token })
      .then((r) => r.body);
  }
  devices(token: string) {
    return this.http.request<{ devices: OwnDevice[] }>("GET", "/devices", { token }).then((r) => r.body);
  }
  renewCertificate(token: string, certificate: WireCert) {
    return this.http.request<DirectoryDevice>("POST", "/devices", { token, json: { certificate } }).then((r) => r.body);
  }
  revoke(token: string, deviceId: string) {
    return this.http.request("DELETE", `/devices/${encodeURIComponent(deviceId)}`, { token }).then(() => undefined);
  }
  conversations(token: string, o: { limit?: number; after?: string } = {}) {
    return this.http.request<ConversationPage>("GET", "/dms/conversations", { token, query: o }).then((r) => r.body);
  }
  createConversation(token: string, body: { participants: string[]; retention?: RetentionWire }) {
    return this.http.request<ConversationWire>("POST", "/dms/conversations", { token, json: body });
  }
  conversation(token: string, id: string) {
    return this.http.request<ConversationWire>("GET", `/dms/conversations/${id}`, { token }).then((r) => r.body);
  }
  setRetention(token: string, id: string, retention: RetentionWire) {
    return this.http.request<ConversationWire>("PATCH", `/dms/conversations/${id}`, { token, json: { retention } })
      .then((r) => r.body);
  }
  addParticipants(token: string, id: string, add: string[]) {
    return this.http.request<ConversationWire>("POST", `/dms/conversations/${id}/participants`, { token, json: { add } })
      .then((r) => r.body);
  }
  removeParticipant(token: string, id: string, userId: string) {
    return this.http.request("DELETE", `/dms/conversations/${id}/participants/${encodeURIComponent(userId)}`, { token })
      .then(() => undefined);
  }
  history(token: string, id: string, o: { before?: string; limit?: number } = {}) {
    return this.http.request<MessagePage>("GET", `/dms/conversations/${id}/messages`, { token, query: o }).then((r) => r.body);
  }
  send(token: string, body: SendBody) {
    return this.http.request<SendAnswer>("POST", "/dms/send", { token, json: body }).then((r) => r.body);
  }
  sync(token: string, o: { limit?: number; after?: string } = {}) {
    return this.http.request<MessagePage>("POST", "/dms/sync", { token, json: o }).then((r) => r.body);
  }
  ack(token: string, body: { message_ids: string[]; failed?: string[] }) {
    return this.http.request<{ acked: string[]; unknown: string[] }>("POST", "/dms/ack", { token, json: body })
      .then((r) => r.body);
  }
  messageStatus(token: string, messageId: string) {
    return this.http.request<StatusWire>("GET", `/dms/messages/${messageId}/status`, { token }).then((r) => r.body);
  }
  statuses(token: string, messageIds: string[]) {
    return this.http.request<{ statuses: StatusWire[]; unknown: string[] }>("POST", "/dms/status", { token, json: { message_ids: messageIds } })
      .then((r) => r.body);
  }
  getPrekeys(token: string) {
    return this.http.request<PrekeysWire>("GET", "/devices/prekeys", { token }).then((r) => r.body);
  }
  putPrekeys(token: string, body: { signed_prekey?: WireSpk; one_time?: WireOtk[] }) {
    return this.http.request<{ signed_prekey_id: number | null; one_time_count: number }>("PUT", "/devices/prekeys", { token, json: body })
      .then((r) => r.body);
  }
  claimPrekeys(token: string, devices: string[]) {
    return this.http.request<{ prekeys: ClaimedPrekeys[] }>("POST", "/dms/prekeys/claim", { token, json: { devices } })
      .then((r) => r.body);
  }
  gatewayTicket(token: string) {
    return this.http.request<{ ticket: string; expires_at: Time }>("POST", "/gateway/ticket", { token, json: {} })
      .then((r) => r.body);
  }
}
