// The SDK's public types: what the UI sees. Plaintext and ids only, never keys.

export type ConnectionState = "Connected" | "Connecting" | "Offline";

export type RetentionPolicy = "burn_on_read" | "ttl" | "permanent";
export interface Retention {
  policy: RetentionPolicy;
  ttl_days: number | null;
}

/** GET /api/v1/server (§4): hints for the interface, never a security input. */
export interface ServerInfo {
  protocol: string;
  origin: string;
  retention: {
    default: Retention;
    max_ttl_days: number;
    permanent_allowed: boolean;
    max_undelivered_days: number;
  };
  limits: Record<string, number>;
  gateway: { url: string; heartbeat_interval_ms: number };
}

export interface Identity {
  userId: string;
  deviceId: string;
  deviceName: string;
  /** This browser holds the master seed: it can certify devices and show the recovery phrase. */
  holdsMaster: boolean;
  serverUrl: string;
}

export interface Conversation {
  conversationId: string;
  kind: "direct" | "group";
  /** Sorted user ids, the caller included. */
  participants: string[];
  createdBy: string | null;
  epoch: number;
  retention: Retention;
  /** Unix ms of the latest message or change (list order: latest first). */
  lastActivity: number;
  unread: number;
  /** False once the user left or was removed (kept for its history). */
  member: boolean;
}

/** What the sender sees of an own message's deliveries (§7a, DM_STATUS). */
export type DeliverySummary = "sending" | "sent" | "delivered" | "not_delivered";
export interface DeviceDelivery {
  deviceId: string;
  userId: string;
  state: "pending" | "delivered" | "failed" | "expired" | "dropped" | "skipped";
  at: number | null;
  reason?: string;
}
export interface DeliveryStatus {
  summary: DeliverySummary;
  /** Devices where it expired, failed, was dropped or skipped. */
  notDelivered: number;
  counts: Record<string, number>;
  /** Per-device detail, present once fetched (deliveryStatus()). */
  devices?: DeviceDelivery[];
}

export interface Message {
  kind: "message";
  messageId: string;
  conversationId: string;
  sender: string;
  senderDevice: string;
  /** The sender's device name from its certificate. */
  senderDeviceName: string;
  /** Sent by this user (this device or another of theirs: self-sync). */
  mine: boolean;
  seq: number;
  /** Unix ms, from the signed plaintext. */
  sentAt: number;
  body: string;
  policy: RetentionPolicy;
  expiresAt: number | null;
  /** Seq gaps, unverified epoch, sent before the sender's removal, ... */
  warnings: string[];
  /** Own messages sent by THIS device only. */
  status?: DeliveryStatus;
  /** Send answer: participants with no active device, devices skipped (mailbox_full). */
  unreachable?: string[];
  skipped?: { deviceId: string; userId: string | null; reason: string }[];
}

/** A message refused by a check of §6: shown as a warning, never as a message. */
export interface Failure {
  kind: "failed";
  id: string;
  messageId: string;
  conversationId: string | null;
  claimedSender: string | null;
  at: number;
  /** The check that failed, named like the Python client's reasons. */
  reason: string;
  detail: string;
}

/** A change of the conversation: membership, retention, a refusal (warning). */
export interface ConversationEvent {
  kind: "event";
  id: string;
  conversationId: string;
  at: number;
  event: "membership" | "retention" | "membership_refused" | "membership_fork" | "untrusted_device" | "key_mismatch";
  actor: string | null;
  added: string[];
  removed: string[];
  retention?: Retention;
  /** A sentence for the user. */
  text: string;
  warning: boolean;
}

export type TimelineItem = Message | Failure | ConversationEvent;

export interface DeviceInfo {
  deviceId: string;
  name: string;
  state: "active" | "revoked" | "expired";
  current: boolean;
  lastSeenAt: number | null;
  pendingCount: number;
  issuedAt: number | null;
  expiresAt: number | null;
  revokedAt: number | null;
  permissions: string[];
  certificateOk: boolean;
}

export interface Contact {
  userId: string;
  name: string;
  safetyNumber: string;
  verified: boolean;
  /** Verified, but a device of theirs no longer verifies against this user id: warn loudly. */
  mismatch: boolean;
}

export interface Warning {
  conversationId: string | null;
  text: string;
}

export type ClientEvent =
  | { type: "connection"; state: ConnectionState }
  | { type: "timeline"; conversationId: string; items: TimelineItem[] }
  | { type: "conversations" }
  | { type: "status"; conversationId: string; messageId: string; status: DeliveryStatus }
  | { type: "devices"; change: "add" | "revoke" | "refresh"; deviceId: string | null }
  | { type: "contacts" }
  | { type: "warning"; warning: Warning }
  | { type: "revoked"; text: string };

export interface SendOptions {
  /** Asked when the conversation's retention changed under the sender; true sends under it. */
  confirmRetention?: (next: Retention, previous: Retention) => Promise<boolean>;
  /** The message's id (a v4 UUID), when the caller shows it before the send ends; else a new one. */
  messageId?: string;
}

export class ClientError extends Error {
  constructor(
    readonly code: string,
    readonly detail: string,
    readonly extra: Record<string, unknown> = {},
  ) {
    super(`${code}: ${detail}`);
    this.name = "ClientError";
  }
}
