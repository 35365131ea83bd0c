// Ed25519 with libsodium's verification rules, and the X25519 keys of §2.
import { ed25519, x25519 } from "@noble/curves/ed25519.js";
import { sha512 } from "@noble/hashes/sha2.js";
import { hkdf } from "@noble/hashes/hkdf.js";
import { sha256 } from "@noble/hashes/sha2.js";
import { KEY_LEN, ProtocolError, SIGNATURE_LEN, b58e, bytesEqual, concat, ed25519KeyUsable } from "./encoding";

const L = 2n ** 252n + 27742317777372353535851937790883648493n;

function leInt(b: Uint8Array): bigint {
  let n = 0n;
  for (let i = b.length - 1; i >= 0; i--) n = (n << 8n) | BigInt(b[i]!);
  return n;
}

export function publicKey(seed: Uint8Array): Uint8Array {
  return ed25519.getPublicKey(seed);
}

export function sign(seed: Uint8Array, message: Uint8Array): Uint8Array {
  return ed25519.sign(message, seed);
}

/** Ed25519 verification as libsodium's crypto_sign_verify_detached does it:
 * canonical S (< L), canonical key of not-small order, R not of small order,
 * and the cofactorless equation R == [S]B - [k]A compared as encodings (so a
 * non-canonical R fails). noble's `zip215: false` is close but checks the
 * cofactored equation, which accepts R or A with a torsion component that
 * libsodium refuses; one rule for both clients, so it is written out here. */
export function verify(pub: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean {
  if (signature.length !== SIGNATURE_LEN || pub.length !== KEY_LEN) return false;
  const r = signature.subarray(0, 32);
  const s = leInt(signature.subarray(32));
  if (s >= L) return false;
  try {
    const A = ed25519.Point.fromBytes(pub, false);
    if (A.isSmallOrder()) return false;
    const R = ed25519.Point.fromBytes(r, false);
    if (R.isSmallOrder()) return false;
    const k = leInt(sha512(concat(r, pub, message))) % L;
    const SB = s === 0n ? ed25519.Point.ZERO : ed25519.Point.BASE.multiply(s);
    const kA = k === 0n ? ed25519.Point.ZERO : A.multiplyUnsafe(k);
    return bytesEqual(SB.subtract(kA).toBytes(), r);
  } catch {
    return false;
  }
}

/** An Ed25519 key pair from its 32-byte seed; `id` is b58 of the public key. */
export class KeyPair {
  readonly publicKey: Uint8Array;
  readonly id: string;
  constructor(readonly seed: Uint8Array) {
    if (seed.length !== KEY_LEN) throw new ProtocolError("a seed is 32 bytes");
    this.publicKey = publicKey(seed);
    this.id = b58e(this.publicKey);
  }
  static generate(): KeyPair {
    return new KeyPair(crypto.getRandomValues(new Uint8Array(KEY_LEN)));
  }
  sign(message: Uint8Array): Uint8Array {
    return sign(this.seed, message);
  }
}

/** libsodium's crypto_sign_ed25519_sk_to_curve25519: SHA-512(seed)[0..32], clamped. */
export function x25519Private(seed: Uint8Array): Uint8Array {
  const h = sha512(seed).slice(0, 32);
  h[0]! &= 248;
  h[31]! &= 127;
  h[31]! |= 64;
  return h;
}

/** libsodium's crypto_sign_ed25519_pk_to_curve25519: u = (1 + y) / (1 - y). */
export function x25519Public(ed25519Pub: Uint8Array): Uint8Array {
  if (!ed25519KeyUsable(ed25519Pub)) throw new ProtocolError("not a usable Ed25519 public key");
  return ed25519.utils.toMontgomery(ed25519Pub);
}

/** X25519; an all-zero shared secret (a small-order peer key) is refused. */
export function x25519Shared(priv: Uint8Array, peerPub: Uint8Array): Uint8Array {
  let ss: Uint8Array;
  try {
    ss = x25519.getSharedSecret(priv, peerPub);
  } catch {
    throw new ProtocolError("X25519 shared secret is all zero");
  }
  if (ss.every((b) => b === 0)) throw new ProtocolError("X25519 shared secret is all zero");
  return ss;
}

export function hkdf32(ikm: Uint8Array, info: Uint8Array): Uint8Array {
  return hkdf(sha256, ikm, new Uint8Array(32), info, 32);
}
