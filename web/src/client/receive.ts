// §6 "Receiving": one function per check step, named like the Python client's
// rejection reasons (dmclient/crypto.py and client.py), so the two clients
// read side by side. Each throws Rejected(reason, detail).
import {
  KeyPair, NONCE_LEN, ProtocolError, SIGNATURE_LEN, WRAPPED_KEY_LEN, H, aeadDecrypt, b58Key, b64d, certCheckClient,
  KEY_LEN, dmAad, dmSignedBytes, fromUtf8, isInt, isUuid, keyId, keyUnwrap, keyUnwrapV2, prekeyIdOk, unpad, verify,
  wrapV2Check, wrapVersion, type AnyKeyWrap, type KeyWrap, type KeyWrapV2, type Plaintext,
} from "../protocol";

export const DAY_MS = 86_400_000;
// §6 "The replay window is the client's own": a constant, never taken from the
// server or a conversation's (server-reported) retention. The longest
// retention this client sets or accepts, plus 7 days (dmclient REPLAY_WINDOW_DAYS).
export const LONGEST_RETENTION_DAYS = 365;
export const REPLAY_WINDOW_DAYS = LONGEST_RETENTION_DAYS + 7;
export const REPLAY_WINDOW_MS = REPLAY_WINDOW_DAYS * DAY_MS;
export const FUTURE_SKEW_MS = DAY_MS;

export class Rejected extends Error {
  constructor(
    readonly reason: string,
    readonly detail: string,
  ) {
    super(`${reason}: ${detail}`);
    this.name = "Rejected";
  }
}

/** A `msg` of sync or history (§7), well-formed but not yet trusted. */
export interface Incoming {
  messageId: string;
  conversationId: string;
  sender: string;
  senderDevice: string;
  senderCertificate: unknown;
  epoch: number;
  keyId: string;
  participantsSha256: string;
  nonce: string;
  ciphertext: Uint8Array;
  signature: Uint8Array;
  keyWrap: AnyKeyWrap | null;
  /** 1 or 2 by the wrap's shape (§7 check 3), null without a wrap. */
  wrapVersion: 1 | 2 | null;
  createdAt: string | null;
  expiresAt: string | null;
  policy: string;
}


function asRejected<T>(reason: string, fn: () => T): T {
  try {
    return fn();
  } catch (exc) {
    if (exc instanceof ProtocolError) throw new Rejected(reason, exc.detail);
    throw exc;
  }
}

/** `malformed`: the message's structure (§1). */
export function parse(msg: unknown): Incoming {
  return asRejected("malformed", () => {
    if (typeof msg !== "object" || msg === null || Array.isArray(msg)) throw new ProtocolError("message is not an object");
    const m = msg as Record<string, unknown>;
    if (!isUuid(m.message_id)) throw new ProtocolError("message_id must be a lower-case UUID string");
    if (!isUuid(m.conversation_id)) throw new ProtocolError("conversation_id must be a lower-case UUID string");
    b58Key(m.sender, "sender");
    b58Key(m.sender_device, "sender_device");
    if (!isInt(m.epoch) || m.epoch < 0) throw new ProtocolError("epoch must be a non-negative integer");
    b64d(m.key_id, { length: 32, what: "key_id" });
    b64d(m.participants_sha256, { length: 32, what: "participants_sha256" });
    b64d(m.nonce, { length: NONCE_LEN, what: "nonce" });
    const ciphertext = b64d(m.ciphertext, { what: "ciphertext" });
    const signature = b64d(m.signature, { length: SIGNATURE_LEN, what: "signature" });
    const wrap = m.key_wrap;
    let version: 1 | 2 | null = null;
    if (wrap !== null && wrap !== undefined) {
      const w = wrap as Record<string, unknown>;
      try {
        version = wrapVersion(wrap);
      } catch {
        throw new ProtocolError("key_wrap must be null, a v1 wrap {nonce, wrapped_key} or a v2 wrap");
      }
      if (version === 2) {
        wrapV2Check(wrap);
        b64d(w.ephemeral, { length: KEY_LEN, what: "ephemeral" });
      }
      b64d(w.nonce, { length: NONCE_LEN, what: "wrap nonce" });
      b64d(w.wrapped_key, { length: WRAPPED_KEY_LEN, what: "wrapped_key" });
    }
    if (typeof m.policy !== "string") throw new ProtocolError("policy must be a string");
    return {
      messageId: m.message_id, conversationId: m.conversation_id, sender: m.sender as string,
      senderDevice: m.sender_device as string, senderCertificate: m.sender_certificate, epoch: m.epoch,
      keyId: m.key_id as string, participantsSha256: m.participants_sha256 as string, nonce: m.nonce as string,
      ciphertext, signature, keyWrap: (wrap ?? null) as AnyKeyWrap | null, wrapVersion: version,
      createdAt: typeof m.created_at === "string" ? m.created_at : null,
      expiresAt: typeof m.expires_at === "string" ? m.expires_at : null, policy: m.policy,
    };
  });
}

/** `bad_certificate`: the sender's certificate, against the user the message claims (§2 client rules). */
export function checkCertificate(m: Incoming, nowS: number): string {
  return asRejected("bad_certificate", () =>
    certCheckClient(m.senderCertificate, { userId: m.sender, deviceId: m.senderDevice, now: nowS }).name);
}

/** `bad_signature`. */
export function checkSignature(m: Incoming): void {
  const signed = dmSignedBytes({
    ciphertextSha256: H(m.ciphertext), conversationId: m.conversationId, epoch: m.epoch, keyId: m.keyId,
    messageId: m.messageId, nonce: m.nonce, participantsSha256: m.participantsSha256, senderDevice: m.senderDevice,
  });
  if (!verify(b58Key(m.senderDevice), signed, m.signature))
    throw new Rejected("bad_signature", "the signature does not verify with the sender device's key");
}

/** `bad_key_wrap`, then `bad_key_id`: a v1 wrap (static keys). */
export function unwrap(device: KeyPair, m: Incoming): Uint8Array {
  const key = asRejected("bad_key_wrap", () => keyUnwrap({
    recipientSeed: device.seed, recipientDevice: device.id, senderDevice: m.senderDevice,
    conversationId: m.conversationId, epoch: m.epoch, wrap: m.keyWrap as KeyWrap,
  }));
  checkKeyId(key, m);
  return key;
}

/** The one-time prekey id a v2 wrap of `msg` names, if any (also for a message refused later:
 * its one-time private key is erased at the ACK either way). */
export function oneTimeIdOf(msg: unknown): number | null {
  const wrap = (msg as { key_wrap?: unknown } | null)?.key_wrap as Record<string, unknown> | null | undefined;
  return wrap && typeof wrap === "object" && wrap.v === 2 && prekeyIdOk(wrap.one_time_id) ? wrap.one_time_id : null;
}

/** `unknown_prekey`, `bad_key_wrap`, then `bad_key_id`: a v2 wrap (§6b), with this device's prekey private keys
 * by the wrap's ids (null where this device does not hold it, or no longer). */
export function unwrapV2(
  device: KeyPair, m: Incoming, privates: { signed: Uint8Array | null; oneTime: Uint8Array | null },
): Uint8Array {
  const wrap = m.keyWrap as KeyWrapV2;
  if (privates.signed === null)
    throw new Rejected("unknown_prekey", `the key wrap names signed prekey ${wrap.signed_prekey_id}, which this device does not hold (never made, or erased long after it was replaced)`);
  if (wrap.one_time_id !== null && privates.oneTime === null)
    throw new Rejected("unknown_prekey", `the key wrap names one-time prekey ${wrap.one_time_id}, which this device does not hold (never made, or erased once used)`);
  const key = asRejected("bad_key_wrap", () => keyUnwrapV2({
    signedPrekeyPriv: privates.signed!, oneTimePriv: wrap.one_time_id === null ? null : privates.oneTime,
    recipientDevice: device.id, senderDevice: m.senderDevice, conversationId: m.conversationId, epoch: m.epoch, wrap,
  }));
  checkKeyId(key, m);
  return key;
}

/** What a person sees for a refused v1 wrap (§6b). */
export const DOWNGRADE_TEXT =
  "This message was encrypted without forward secrecy although this device offers it; the server may have withheld this device's prekeys.";

/** `downgraded_key_wrap`: a v1 wrap in a message sent when this device's prekeys had long been published. */
export function checkDowngrade(m: Incoming, refused: boolean): void {
  if (m.wrapVersion === 1 && refused) throw new Rejected("downgraded_key_wrap", DOWNGRADE_TEXT);
}

/** `bad_key_id`. */
export function checkKeyId(key: Uint8Array, m: Incoming): void {
  if (keyId(key) !== m.keyId) throw new Rejected("bad_key_id", "the key does not match the message's key_id");
}

/** `bad_ciphertext`, `bad_padding`, `bad_plaintext`: {type, body, sent_at, seq}. */
export function decrypt(key: Uint8Array, m: Incoming): Plaintext {
  const aad = dmAad({ conversationId: m.conversationId, epoch: m.epoch, messageId: m.messageId, senderDevice: m.senderDevice });
  const padded = asRejected("bad_ciphertext", () => aeadDecrypt(key, b64d(m.nonce), m.ciphertext, aad));
  const raw = asRejected("bad_padding", () => unpad(padded));
  let plaintext: unknown;
  try {
    plaintext = JSON.parse(fromUtf8(raw));
  } catch {
    throw new Rejected("bad_plaintext", "the plaintext is not UTF-8 JSON");
  }
  const p = plaintext as Record<string, unknown>;
  if (typeof p !== "object" || p === null || Array.isArray(p) || p.type !== "text" || typeof p.body !== "string")
    throw new Rejected("bad_plaintext", "the plaintext is not a text message");
  for (const field of ["sent_at", "seq"] as const) {
    const value = p[field];
    if (!isInt(value) || value < (field === "seq" ? 1 : 0)) throw new Rejected("bad_plaintext", `${field} must be a positive integer`);
  }
  return p as unknown as Plaintext;
}

/** `too_old`, `from_the_future`: inside the client's own replay window (§6). */
export function checkTime(plaintext: Plaintext, nowMs: number): void {
  if (plaintext.sent_at < nowMs - REPLAY_WINDOW_MS) throw new Rejected("too_old", "sent_at is older than the replay window");
  if (plaintext.sent_at > nowMs + FUTURE_SKEW_MS) throw new Rejected("from_the_future", "sent_at is more than a day ahead");
}

export interface EpochView {
  participants: string[];
  participantsSha256: string;
}

/** §6 "Receiving" and "Epochs a client accepts", after the caller refreshed once if needed:
 * `bad_epoch`, `not_a_participant`, `participants_mismatch`. Returns the warnings to show.
 * `seen` is this device's own record of the conversation (participants per epoch it saw);
 * `current` the conversation's current epoch, or null when unknown. */
export function checkMembership(m: Incoming, seen: Map<number, EpochView>, current: number | null): string[] {
  if (m.epoch < 1) throw new Rejected("bad_epoch", `epoch ${m.epoch}: a conversation's epochs start at 1`);
  if (current === null || m.epoch > current)
    throw new Rejected("bad_epoch", `epoch ${m.epoch} is ahead of the conversation${current === null ? "" : ` (epoch ${current})`}`);
  const warnings: string[] = [];
  const view = seen.get(m.epoch);
  if (view) {
    if (!view.participants.includes(m.sender))
      throw new Rejected("not_a_participant", `the sender is not a participant at epoch ${m.epoch}`);
    if (view.participantsSha256 !== m.participantsSha256)
      throw new Rejected("participants_mismatch", `participants_sha256 differs from our view of the conversation at epoch ${m.epoch}`);
  } else {
    // An epoch this device never saw (it was offline through it): the sender must be a
    // participant in the nearest epoch we saw before it or in the nearest one after it.
    const epochs = [...seen.keys()];
    const before = Math.max(...epochs.filter((e) => e < m.epoch), -Infinity);
    const after = Math.min(...epochs.filter((e) => e > m.epoch), Infinity);
    if (![before, after].some((e) => seen.get(e)?.participants.includes(m.sender)))
      throw new Rejected("not_a_participant", `the sender was not a participant around epoch ${m.epoch} as far as this device knows`);
    warnings.push(`participants of epoch ${m.epoch} not verified (this device never saw that epoch)`);
  }
  const removedAt = Math.min(...[...seen].filter(([e, v]) => e > m.epoch && !v.participants.includes(m.sender)).map(([e]) => e), Infinity);
  if (removedAt !== Infinity)
    // A removed member (with the server's help) can still label messages with an old epoch.
    warnings.push(`sent before the sender was removed (epoch ${removedAt}): not a current message`);
  return warnings;
}
