// §3 auth bytes, §5 participants_sha256, §6 key id, key wrap v1, padding, aad, signed bytes, seal.
import { gcm } from "@noble/ciphers/aes.js";
import {
  KEY_LEN, NONCE_LEN, PAD_BLOCK, ProtocolError, WRAPPED_KEY_LEN, H, b58Key, b64d, b64e, cjson, concat,
  compareCodePoints, utf8,
} from "./encoding";
import { KeyPair, hkdf32, x25519Private, x25519Public, x25519Shared } from "./keys";

export const AUTH_LABEL = utf8("decentcom/auth/v1\n");
export const KEY_ID_LABEL = utf8("decentcom/key-id/v1\n");
export const KEY_WRAP_LABEL = utf8("decentcom/key-wrap/v1\n");
export const DM_AAD_LABEL = utf8("decentcom/dm-aad/v1\n");
export const DM_LABEL = utf8("decentcom/dm/v1\n");

export function authSignedBytes(o: { challenge: string; pubkey: string; server: string }): Uint8Array {
  return concat(AUTH_LABEL, cjson({ challenge: o.challenge, pubkey: o.pubkey, server: o.server }));
}

export function participantsSha256(participants: string[]): string {
  return H(cjson([...participants].sort(compareCodePoints)));
}

export function keyId(groupKey: Uint8Array): string {
  return H(concat(KEY_ID_LABEL, groupKey));
}

export function randomBytes(n: number): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(n));
}

export function aeadEncrypt(key: Uint8Array, nonce: Uint8Array, plaintext: Uint8Array, aad: Uint8Array): Uint8Array {
  return gcm(key, nonce, aad).encrypt(plaintext);
}

export function aeadDecrypt(
  key: Uint8Array, nonce: Uint8Array, ciphertext: Uint8Array, aad: Uint8Array, code = "bad_ciphertext",
): Uint8Array {
  try {
    return gcm(key, nonce, aad).decrypt(ciphertext);
  } catch {
    throw new ProtocolError("message does not decrypt", code);
  }
}

export interface WrapContext {
  conversationId: string;
  epoch: number;
  recipientDevice: string;
  senderDevice: string;
}
export interface KeyWrap {
  nonce: string;
  wrapped_key: string;
}

export function keyWrapInfo(c: WrapContext): Uint8Array {
  return concat(KEY_WRAP_LABEL, cjson({
    conversation_id: c.conversationId, epoch: c.epoch,
    recipient_device: c.recipientDevice, sender_device: c.senderDevice,
  }));
}

/** Wrap K for R by S (both b58 device ids); the sender's seed is S's. */
export function keyWrap(
  o: WrapContext & { senderSeed: Uint8Array; groupKey: Uint8Array; nonce?: Uint8Array },
): KeyWrap {
  const info = keyWrapInfo(o);
  const ss = x25519Shared(x25519Private(o.senderSeed), x25519Public(b58Key(o.recipientDevice)));
  const nonce = o.nonce ?? randomBytes(NONCE_LEN);
  return { nonce: b64e(nonce), wrapped_key: b64e(aeadEncrypt(hkdf32(ss, info), nonce, o.groupKey, info)) };
}

export function keyUnwrap(o: WrapContext & { recipientSeed: Uint8Array; wrap: KeyWrap }): Uint8Array {
  const info = keyWrapInfo(o);
  const ss = x25519Shared(x25519Private(o.recipientSeed), x25519Public(b58Key(o.senderDevice)));
  const nonce = b64d(o.wrap.nonce, { length: NONCE_LEN, what: "wrap nonce" });
  const wrapped = b64d(o.wrap.wrapped_key, { length: WRAPPED_KEY_LEN, what: "wrapped_key" });
  const key = aeadDecrypt(hkdf32(ss, info), nonce, wrapped, info, "bad_key_wrap");
  if (key.length !== KEY_LEN) throw new ProtocolError("wrapped key is not 32 bytes", "bad_key_wrap");
  return key;
}

export function pad(plaintext: Uint8Array): Uint8Array {
  const n = (((-(plaintext.length + 1)) % PAD_BLOCK) + PAD_BLOCK) % PAD_BLOCK;
  const out = new Uint8Array(plaintext.length + 1 + n);
  out.set(plaintext);
  out[plaintext.length] = 0x80;
  return out;
}

export function unpad(padded: Uint8Array): Uint8Array {
  if (!padded.length || padded.length % PAD_BLOCK)
    throw new ProtocolError("padded length is not a multiple of 256", "bad_padding");
  let end = padded.length;
  while (end > 0 && padded[end - 1] === 0) end--;
  if (end === 0 || padded[end - 1] !== 0x80) throw new ProtocolError("padding has no 0x80 marker", "bad_padding");
  return padded.slice(0, end - 1);
}

export interface MessageContext {
  conversationId: string;
  epoch: number;
  messageId: string;
  senderDevice: string;
}

export function dmAad(c: MessageContext): Uint8Array {
  return concat(DM_AAD_LABEL, cjson({
    conversation_id: c.conversationId, epoch: c.epoch, message_id: c.messageId, sender_device: c.senderDevice,
  }));
}

export function dmSignedBytes(o: MessageContext & {
  ciphertextSha256: string; keyId: string; nonce: string; participantsSha256: string;
}): Uint8Array {
  return concat(DM_LABEL, cjson({
    ciphertext_sha256: o.ciphertextSha256, conversation_id: o.conversationId, epoch: o.epoch, key_id: o.keyId,
    message_id: o.messageId, nonce: o.nonce, participants_sha256: o.participantsSha256,
    sender_device: o.senderDevice,
  }));
}

export interface Plaintext {
  type: "text";
  body: string;
  sent_at: number;
  seq: number;
}

/** The plaintext as cjson would write it, but any body (several lines): "any serialization" (§6). */
export function plaintextEncode(p: { body: string; sentAt: number; seq: number }): Uint8Array {
  return utf8(JSON.stringify({ body: p.body, sent_at: p.sentAt, seq: p.seq, type: "text" }));
}

export interface Sealed {
  key_id: string;
  nonce: string;
  ciphertext: string;
  signature: string;
}

/** Pad, encrypt and sign: the message fields of a send request. */
export function seal(o: {
  device: KeyPair; conversationId: string; epoch: number; messageId: string; groupKey: Uint8Array;
  participantsSha256: string; plaintext: Uint8Array; nonce?: Uint8Array;
}): Sealed {
  const nonce = o.nonce ?? randomBytes(NONCE_LEN);
  const ctx = { conversationId: o.conversationId, epoch: o.epoch, messageId: o.messageId, senderDevice: o.device.id };
  const ciphertext = aeadEncrypt(o.groupKey, nonce, pad(o.plaintext), dmAad(ctx));
  const kid = keyId(o.groupKey);
  const signed = dmSignedBytes({
    ...ctx, ciphertextSha256: H(ciphertext), keyId: kid, nonce: b64e(nonce), participantsSha256: o.participantsSha256,
  });
  return { key_id: kid, nonce: b64e(nonce), ciphertext: b64e(ciphertext), signature: b64e(o.device.sign(signed)) };
}
