// §6b forward secrecy (v1.2): signed and one-time prekeys, key wrap v2, wrap version.
// Mirrors dmclient/protocol.py "§6b" check for check, with the same error codes.
import { x25519 } from "@noble/curves/ed25519.js";
import {
  KEY_LEN, NONCE_LEN, ProtocolError, SIGNATURE_LEN, WRAPPED_KEY_LEN, b58Key, b64d, b64e, cjson, concat, utf8,
} from "./encoding";
import { MAX_UNIX_SECONDS, fieldsProblem, isInt, isTime } from "./certificate";
import { KeyPair, hkdf32, verify, x25519Private, x25519Public, x25519Shared } from "./keys";
import { aeadDecrypt, aeadEncrypt, randomBytes, type KeyWrap } from "./message";

export const SIGNED_PREKEY_LABEL = utf8("decentcom/signed-prekey/v1\n");
export const KEY_WRAP_V2_LABEL = utf8("decentcom/key-wrap/v2\n");
export const MAX_PREKEY_ID = 2 ** 53 - 1;
const SPK_FIELDS = ["v", "device", "id", "x25519", "created_at"] as const;
const WRAP_V2_FIELDS = ["v", "signed_prekey_id", "one_time_id", "ephemeral", "nonce", "wrapped_key"] as const;

export const prekeyIdOk = (v: unknown): v is number => isInt(v) && v >= 1 && v <= MAX_PREKEY_ID;

/** A fresh random X25519 key pair. */
export function x25519Keypair(): { priv: Uint8Array; pub: Uint8Array } {
  const priv = randomBytes(KEY_LEN);
  return { priv, pub: x25519.getPublicKey(priv) };
}

export function x25519PublicOf(priv: Uint8Array): Uint8Array {
  return x25519.getPublicKey(priv);
}

export interface SpkBody {
  v: number;
  device: string;
  id: number;
  x25519: string;
  created_at: number;
}
export interface WireSpk extends SpkBody {
  signature: string;
}
export interface SignedPrekey {
  device: string;
  id: number;
  x25519: Uint8Array;
  createdAt: number;
  wire: WireSpk;
}
export interface WireOtk {
  id: number;
  x25519: string;
}
export interface KeyWrapV2 {
  v: 2;
  signed_prekey_id: number;
  one_time_id: number | null;
  ephemeral: string;
  nonce: string;
  wrapped_key: string;
}
export type AnyKeyWrap = KeyWrap | KeyWrapV2;

export function spkSignedBytes(spk: SpkBody): Uint8Array {
  return concat(SIGNED_PREKEY_LABEL, cjson({
    v: spk.v, device: spk.device, id: spk.id, x25519: spk.x25519, created_at: spk.created_at,
  }));
}

/** The wire form of a signed prekey, signed by the device key. */
export function spkIssue(o: { device: KeyPair; id: number; x25519Pub: Uint8Array; createdAt: number }): WireSpk {
  const spk: SpkBody = { v: 1, device: o.device.id, id: o.id, x25519: b64e(o.x25519Pub), created_at: o.createdAt };
  return { ...spk, signature: b64e(o.device.sign(spkSignedBytes(spk))) };
}

const sameKeys = (o: object, expected: readonly string[]): boolean => {
  const keys = Object.keys(o);
  return keys.length === expected.length && expected.every((k) => Object.prototype.hasOwnProperty.call(o, k));
};

/** A signed prekey of `device`: exactly the five keys and a signature, v 1, a
 * positive id, a 32-byte X25519 key, and a signature by `device`'s own key. */
export function spkParse(wire: unknown, device: string): SignedPrekey {
  if (typeof wire !== "object" || wire === null || Array.isArray(wire))
    throw new ProtocolError("signed prekey must be an object", "invalid_prekey");
  const fields = fieldsProblem(wire, [...SPK_FIELDS, "signature"]);
  if (fields) throw new ProtocolError(`signed prekey fields: ${fields}`, "invalid_prekey");
  const w = wire as Record<string, unknown>;
  let pub: Uint8Array;
  try {
    if (w.v !== 1) throw new ProtocolError("v must be 1");
    if (w.device !== device) throw new ProtocolError("it names another device");
    if (!prekeyIdOk(w.id)) throw new ProtocolError(`id must be an integer 1..${MAX_PREKEY_ID}`);
    if (!isTime(w.created_at))
      throw new ProtocolError(`created_at must be an integer 0..${MAX_UNIX_SECONDS}`);
    pub = b64d(w.x25519, { length: KEY_LEN, what: "x25519" });
    const signature = b64d(w.signature, { length: SIGNATURE_LEN, what: "signature" });
    if (!verify(b58Key(device, "device"), spkSignedBytes(w as unknown as SpkBody), signature))
      throw new ProtocolError("signature does not verify against the device key");
  } catch (exc) {
    const detail = exc instanceof ProtocolError ? exc.detail : String(exc);
    throw new ProtocolError(`signed prekey: ${detail}`, "invalid_prekey");
  }
  return { device, id: w.id as number, x25519: pub, createdAt: w.created_at as number, wire: { ...(w as unknown as WireSpk) } };
}

/** A one-time prekey {"id", "x25519"} as [id, public key]. */
export function otkParse(value: unknown): [number, Uint8Array] {
  if (typeof value !== "object" || value === null || Array.isArray(value) || !sameKeys(value, ["id", "x25519"]))
    throw new ProtocolError('a one-time prekey is {"id", "x25519"}', "invalid_prekey");
  const o = value as Record<string, unknown>;
  if (!prekeyIdOk(o.id))
    throw new ProtocolError(`one-time prekey id must be an integer 1..${MAX_PREKEY_ID}`, "invalid_prekey");
  try {
    return [o.id, b64d(o.x25519, { length: KEY_LEN, what: "x25519" })];
  } catch (exc) {
    const detail = exc instanceof ProtocolError ? exc.detail : String(exc);
    throw new ProtocolError(`one-time prekey: ${detail}`, "invalid_prekey");
  }
}

export interface WrapV2Context {
  conversationId: string;
  epoch: number;
  ephemeral: string;
  oneTimeId: number | null;
  recipientDevice: string;
  senderDevice: string;
  signedPrekeyId: number;
}

export function keyWrapV2Info(c: WrapV2Context): Uint8Array {
  return concat(KEY_WRAP_V2_LABEL, cjson({
    conversation_id: c.conversationId, epoch: c.epoch, ephemeral: c.ephemeral, one_time_id: c.oneTimeId,
    recipient_device: c.recipientDevice, sender_device: c.senderDevice, signed_prekey_id: c.signedPrekeyId,
  }));
}

/** Wrap K for R with a fresh ephemeral key, R's signed prekey (already verified by
 * spkParse) and one of its one-time prekeys if any. The ephemeral private key
 * lives only in this call (it is overwritten before returning). */
export function keyWrapV2(o: {
  senderSeed: Uint8Array; senderDevice: string; recipientDevice: string; conversationId: string; epoch: number;
  groupKey: Uint8Array; signedPrekey: SignedPrekey; oneTime: [number, Uint8Array] | null;
  ephemeralPriv?: Uint8Array; nonce?: Uint8Array;
}): KeyWrapV2 {
  if (o.signedPrekey.device !== o.recipientDevice)
    throw new ProtocolError("signed prekey of another device", "invalid_prekey");
  const ePriv = o.ephemeralPriv ? o.ephemeralPriv.slice() : randomBytes(KEY_LEN);
  let ikm: Uint8Array;
  let ePub: string;
  try {
    ePub = b64e(x25519PublicOf(ePriv));
    const staticPriv = x25519Private(o.senderSeed);
    ikm = concat(
      x25519Shared(ePriv, o.signedPrekey.x25519),
      x25519Shared(staticPriv, o.signedPrekey.x25519),
      o.oneTime ? x25519Shared(ePriv, o.oneTime[1]) : new Uint8Array(0),
    );
    staticPriv.fill(0);
  } finally {
    ePriv.fill(0);
  }
  const oneTimeId = o.oneTime ? o.oneTime[0] : null;
  const info = keyWrapV2Info({
    conversationId: o.conversationId, epoch: o.epoch, ephemeral: ePub, oneTimeId,
    recipientDevice: o.recipientDevice, senderDevice: o.senderDevice, signedPrekeyId: o.signedPrekey.id,
  });
  const nonce = o.nonce ?? randomBytes(NONCE_LEN);
  const wrapped = aeadEncrypt(hkdf32(ikm, info), nonce, o.groupKey, info);
  return {
    v: 2, signed_prekey_id: o.signedPrekey.id, one_time_id: oneTimeId, ephemeral: ePub,
    nonce: b64e(nonce), wrapped_key: b64e(wrapped),
  };
}

/** 1 or 2 by shape (§7 check 3): v1 is exactly {nonce, wrapped_key}, v2 has "v": 2. */
export function wrapVersion(wrap: unknown): 1 | 2 {
  if (typeof wrap === "object" && wrap !== null && !Array.isArray(wrap)) {
    if ((wrap as Record<string, unknown>).v === 2) return 2;
    if (sameKeys(wrap, ["nonce", "wrapped_key"])) return 1;
  }
  throw new ProtocolError("key_wrap is neither a v1 nor a v2 wrap", "bad_key_wrap");
}

/** A v2 wrap's shape: exactly its six keys, and ids that are prekey ids (one_time_id may be
 * null). The three byte fields are checked where they are decoded. */
export function wrapV2Check(w: unknown): asserts w is KeyWrapV2 {
  if (typeof w !== "object" || w === null || Array.isArray(w) || !sameKeys(w, WRAP_V2_FIELDS))
    throw new ProtocolError("v2 key wrap must have exactly its six keys", "bad_key_wrap");
  const r = w as Record<string, unknown>;
  if (!prekeyIdOk(r.signed_prekey_id) || !(r.one_time_id === null || prekeyIdOk(r.one_time_id)))
    throw new ProtocolError("v2 key wrap ids must be positive integers", "bad_key_wrap");
}

/** Open a v2 wrap with this device's signed prekey (and one-time prekey, when the
 * wrap names one) private keys, looked up by the caller from the wrap's ids. */
export function keyUnwrapV2(o: {
  signedPrekeyPriv: Uint8Array; oneTimePriv: Uint8Array | null; recipientDevice: string; senderDevice: string;
  conversationId: string; epoch: number; wrap: unknown;
}): Uint8Array {
  const wrap = o.wrap;
  wrapV2Check(wrap);
  if ((wrap.one_time_id === null) !== (o.oneTimePriv === null))
    throw new ProtocolError("one-time prekey does not match the wrap", "bad_key_wrap");
  const ePub = b64d(wrap.ephemeral, { length: KEY_LEN, what: "ephemeral" });
  const nonce = b64d(wrap.nonce, { length: NONCE_LEN, what: "wrap nonce" });
  const wrapped = b64d(wrap.wrapped_key, { length: WRAPPED_KEY_LEN, what: "wrapped_key" });
  const ikm = concat(
    x25519Shared(o.signedPrekeyPriv, ePub),
    x25519Shared(o.signedPrekeyPriv, x25519Public(b58Key(o.senderDevice, "sender_device"))),
    o.oneTimePriv !== null ? x25519Shared(o.oneTimePriv, ePub) : new Uint8Array(0),
  );
  const info = keyWrapV2Info({
    conversationId: o.conversationId, epoch: o.epoch, ephemeral: wrap.ephemeral,
    oneTimeId: wrap.one_time_id, recipientDevice: o.recipientDevice, senderDevice: o.senderDevice,
    signedPrekeyId: wrap.signed_prekey_id,
  });
  const key = aeadDecrypt(hkdf32(ikm, info), nonce, wrapped, info, "bad_key_wrap");
  if (key.length !== KEY_LEN) throw new ProtocolError("wrapped key is not 32 bytes", "bad_key_wrap");
  return key;
}
