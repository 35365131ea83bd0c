// §1 encodings: strict b64, b58 keys, cjson, H, uuids, origin. Pure functions.
import { sha256 } from "@noble/hashes/sha2.js";
import { base58, base64 } from "@scure/base";
import { ed25519 } from "@noble/curves/ed25519.js";

export class ProtocolError extends Error {
  constructor(
    readonly detail: string,
    readonly code: string = "invalid",
  ) {
    super(detail);
    this.name = "ProtocolError";
  }
}

export const KEY_LEN = 32;
export const NONCE_LEN = 12;
export const SIGNATURE_LEN = 64;
export const WRAPPED_KEY_LEN = 48;
export const PAD_BLOCK = 256;

const encoder = new TextEncoder();
export const utf8 = (s: string): Uint8Array => encoder.encode(s);
const strictDecoder = new TextDecoder("utf-8", { fatal: true });
export const fromUtf8 = (b: Uint8Array): string => strictDecoder.decode(b);

export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}

export const hex = {
  encode: (b: Uint8Array): string => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join(""),
  decode: (s: string): Uint8Array => {
    if (s.length % 2 || /[^0-9a-f]/i.test(s)) throw new ProtocolError("not hex");
    return Uint8Array.from(s.match(/../g) ?? [], (h) => parseInt(h, 16));
  },
};

export function b64e(data: Uint8Array): string {
  return base64.encode(data);
}

const B64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Strict, canonical RFC 4648 §4 base64 (padding required). */
export function b64d(value: unknown, opts: { length?: number; what?: string } = {}): Uint8Array {
  const what = opts.what ?? "value";
  if (typeof value !== "string") throw new ProtocolError(`${what} must be a base64 string`);
  if (!B64_RE.test(value)) throw new ProtocolError(`${what} is not valid base64`);
  let raw: Uint8Array;
  try {
    raw = base64.decode(value);
  } catch {
    throw new ProtocolError(`${what} is not valid base64`);
  }
  if (b64e(raw) !== value) throw new ProtocolError(`${what} is not canonical base64`);
  if (opts.length !== undefined && raw.length !== opts.length)
    throw new ProtocolError(`${what} must decode to ${opts.length} bytes`);
  return raw;
}

export function b58e(key: Uint8Array): string {
  return base58.encode(key);
}

const P = 2n ** 255n - 19n;

/** Canonical, on the curve, not of small order, in the prime-order subgroup:
 * what libsodium's crypto_sign_ed25519_pk_to_curve25519 accepts. */
export function ed25519KeyUsable(raw: Uint8Array): boolean {
  if (raw.length !== KEY_LEN) return false;
  let y = 0n;
  for (let i = KEY_LEN - 1; i >= 0; i--) y = (y << 8n) | BigInt(raw[i]!);
  if ((y & ((1n << 255n) - 1n)) >= P) return false;
  try {
    const point = ed25519.Point.fromBytes(raw, false);
    return !point.isSmallOrder() && point.isTorsionFree();
  } catch {
    return false;
  }
}

/** Decode a b58 Ed25519 public key; only canonical, usable keys pass. */
export function b58Key(value: unknown, what = "key"): Uint8Array {
  if (typeof value !== "string" || !value || value.length > 50)
    throw new ProtocolError(`${what} must be a base58 Ed25519 public key`);
  let raw: Uint8Array;
  try {
    raw = base58.decode(value);
  } catch {
    throw new ProtocolError(`${what} is not valid base58`);
  }
  if (raw.length !== KEY_LEN || b58e(raw) !== value) throw new ProtocolError(`${what} must encode exactly 32 bytes`);
  if (!ed25519KeyUsable(raw)) throw new ProtocolError(`${what} is not a usable Ed25519 public key`);
  return raw;
}

export function isB58Key(value: unknown): value is string {
  try {
    b58Key(value);
    return true;
  } catch {
    return false;
  }
}

// eslint-disable-next-line no-control-regex
const CONTROL_RE = /[\u0000-\u001f]/;
const LONE_SURROGATE_RE = /\p{Cs}/u;

/** Code point order (not UTF-16 order: they differ above U+D7FF), as Python sorts. */
export function compareCodePoints(a: string, b: string): number {
  const ia = a[Symbol.iterator]();
  const ib = b[Symbol.iterator]();
  for (;;) {
    const x = ia.next();
    const y = ib.next();
    if (x.done || y.done) return x.done && y.done ? 0 : x.done ? -1 : 1;
    const cx = x.value.codePointAt(0)!;
    const cy = y.value.codePointAt(0)!;
    if (cx !== cy) return cx < cy ? -1 : 1;
  }
}

function canonical(value: unknown): string {
  if (value === null) return "null";
  if (value === true || value === false) return String(value);
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value)) throw new ProtocolError("canonical JSON allows integers only");
    return String(value);
  }
  if (typeof value === "string") {
    if (CONTROL_RE.test(value)) throw new ProtocolError("strings must not contain control characters");
    if (LONE_SURROGATE_RE.test(value)) throw new ProtocolError("strings must be valid Unicode");
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  if (typeof value === "object") {
    const entries = Object.entries(value as Record<string, unknown>).filter(([, v]) => v !== undefined);
    entries.sort(([a], [b]) => compareCodePoints(a, b));
    return `{${entries.map(([k, v]) => `${canonical(k)}:${canonical(v)}`).join(",")}}`;
  }
  throw new ProtocolError(`${typeof value} is not allowed in canonical JSON`);
}

/** cjson(x) of §1: keys sorted by code point, no whitespace, integers only, no U+0000-U+001F. */
export function cjson(value: unknown): Uint8Array {
  return utf8(canonical(value));
}

export function H(data: Uint8Array): string {
  return b64e(sha256(data));
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
export function isUuid(value: unknown): value is string {
  return typeof value === "string" && UUID_RE.test(value);
}
export function parseUuid(value: unknown, what = "id"): string {
  if (!isUuid(value)) throw new ProtocolError(`${what} must be a lower-case UUID string`);
  return value;
}

/** RFC 6454 serialization: lower case, port only when not the scheme's default. */
export function origin(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url.trim());
  } catch {
    throw new ProtocolError(`${JSON.stringify(url)} is not an http(s) origin`);
  }
  if ((parsed.protocol !== "http:" && parsed.protocol !== "https:") || !parsed.hostname)
    throw new ProtocolError(`${JSON.stringify(url)} is not an http(s) origin`);
  // URL already lower-cases the host and drops a default port.
  return `${parsed.protocol}//${parsed.host}`;
}
