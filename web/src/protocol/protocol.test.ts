// Every v1/v1.1 entry of tests/vectors.json, byte for byte, and every `reject`
// entry except the v1.2 ones (see the skips at the end).
import { describe, expect, it } from "vitest";
import vectors from "../../../tests/vectors.json";
import {
  H, KeyPair, b58Key, b58e, b64d, b64e, certCheckClient, certIssue, certParse, certSignedBytes, cjson, dmAad,
  dmSignedBytes, ed25519KeyUsable, hex, keyId, keyUnwrap, keyWrap, keyWrapInfo, nameProblem, origin, pad,
  participantsSha256, phraseFromSeed, safetyNumber, seal, seedFromPhrase, unpad, utf8, verify, authSignedBytes,
  x25519Private, x25519Public, x25519Shared, hkdf32, aeadDecrypt, MAX_UNIX_SECONDS, fromUtf8,
} from "./index";

const v = vectors as any; // eslint-disable-line @typescript-eslint/no-explicit-any
const seedOf = (name: string) => hex.decode(v.keys[name].ed25519_seed_hex);

describe("keys", () => {
  for (const name of Object.keys(v.keys)) {
    it(name, () => {
      const k = v.keys[name];
      const pair = new KeyPair(hex.decode(k.ed25519_seed_hex));
      expect(hex.encode(pair.publicKey)).toBe(k.ed25519_pub_hex);
      expect(pair.id).toBe(k.id_b58);
      expect(b58Key(k.id_b58)).toEqual(pair.publicKey);
      expect(hex.encode(x25519Private(pair.seed))).toBe(k.x25519_priv_hex);
      expect(hex.encode(x25519Public(pair.publicKey))).toBe(k.x25519_pub_hex);
    });
  }
});

describe("device certificates", () => {
  for (const [entry, masterName] of [["device_cert", "alice_master"], ["device_cert_no_expiry", "bob_master"]] as const) {
    it(entry, () => {
      const e = v[entry];
      expect(hex.encode(certSignedBytes(e.cert))).toBe(e.signed_bytes_hex);
      const issued = certIssue({
        master: new KeyPair(seedOf(masterName)), device: e.cert.device, name: e.cert.name,
        issuedAt: e.cert.issued_at, expiresAt: e.cert.expires_at, permissions: e.cert.permissions,
      });
      expect(issued).toEqual(e.wire);
      expect(JSON.stringify(Object.keys(issued).sort())).toBe(JSON.stringify(Object.keys(e.wire).sort()));
      expect(certParse(e.wire)).toEqual(e.wire);
      const now = e.cert.issued_at + 60;
      expect(certCheckClient(e.wire, { userId: e.cert.master, deviceId: e.cert.device, now }).name).toBe(e.cert.name);
    });
  }
  it("client check: 24 h of tolerance on times, strict master and device", () => {
    const e = v.device_cert;
    const o = { userId: e.cert.master, deviceId: e.cert.device };
    expect(() => certCheckClient(e.wire, { ...o, now: e.cert.issued_at - 24 * 3600 })).not.toThrow();
    expect(() => certCheckClient(e.wire, { ...o, now: e.cert.issued_at - 24 * 3600 - 1 })).toThrow(/future/);
    expect(() => certCheckClient(e.wire, { ...o, now: e.cert.expires_at + 24 * 3600 - 1 })).not.toThrow();
    expect(() => certCheckClient(e.wire, { ...o, now: e.cert.expires_at + 24 * 3600 })).toThrow(/expired/);
    const now = e.cert.issued_at;
    expect(() => certCheckClient(e.wire, { userId: v.keys.bob_master.id_b58, now })).toThrow(/not for this user/);
    expect(() => certCheckClient(e.wire, { ...o, deviceId: v.keys.bob_laptop.id_b58, now })).toThrow();
  });
  it("unknown permissions are ignored by clients", () => {
    const cert = certIssue({
      master: new KeyPair(seedOf("alice_master")), device: v.keys.alice_phone.id_b58, name: "p",
      issuedAt: 1764201600, expiresAt: null, permissions: ["zz_future", "manage_devices"],
    });
    expect(cert.permissions).toEqual(["manage_devices", "zz_future"]);
    expect(() => certCheckClient(cert, { userId: cert.master, now: 1764201600 })).not.toThrow();
  });
  it("the device-name rule and time range of dmclient/protocol.py", () => {
    expect(nameProblem("Alice's phone")).toBeNull();
    expect(nameProblem("x".repeat(64))).toBeNull();
    expect(nameProblem("😀".repeat(64))).toBeNull(); // code points, not UTF-16 units
    for (const bad of ["", "x".repeat(65), " \t", "a\u202eb", "a\u200bb", "a\u0085b", "a\u2028b", "a\ud800b", 5])
      expect(nameProblem(bad)).not.toBeNull();
    const master = new KeyPair(seedOf("alice_master"));
    const device = v.keys.alice_phone.id_b58;
    const ok = certIssue({ master, device, name: "n", issuedAt: MAX_UNIX_SECONDS, expiresAt: null, permissions: [] });
    expect(() => certParse(ok)).not.toThrow();
    const late = certIssue({ master, device, name: "n", issuedAt: MAX_UNIX_SECONDS + 1, expiresAt: null, permissions: [] });
    expect(() => certParse(late)).toThrow(/issued_at/);
    const negative = certIssue({ master, device, name: "n", issuedAt: -1, expiresAt: null, permissions: [] });
    expect(() => certParse(negative)).toThrow(/issued_at/);
    expect(() => certIssue({ master, device, name: "a\u202e", issuedAt: 0, expiresAt: null, permissions: [] }))
      .toThrow(/bidirectional/);
  });
});

describe("auth", () => {
  it("signed bytes and signature", () => {
    const a = v.auth;
    const bytes = authSignedBytes({ challenge: a.challenge_b64, pubkey: a.pubkey, server: a.server });
    expect(hex.encode(bytes)).toBe(a.signed_bytes_hex);
    expect(b64e(new KeyPair(seedOf("alice_phone")).sign(bytes))).toBe(a.signature_b64);
    expect(verify(b58Key(a.pubkey), bytes, b64d(a.signature_b64))).toBe(true);
  });
  it("origin (RFC 6454)", () => {
    expect(origin("https://DM.Example.org/")).toBe("https://dm.example.org");
    expect(origin("https://dm.example.org:443/api")).toBe("https://dm.example.org");
    expect(origin("http://127.0.0.1:8000")).toBe("http://127.0.0.1:8000");
    expect(origin("http://localhost:80")).toBe("http://localhost");
    expect(origin("http://[::1]:8000/x")).toBe("http://[::1]:8000");
    expect(() => origin("ftp://x.org")).toThrow();
    expect(() => origin("not a url")).toThrow();
  });
});

describe("conversations and messages", () => {
  it("participants_sha256", () => {
    expect(participantsSha256(v.participants.participants)).toBe(v.participants.participants_sha256);
    expect(participantsSha256([...v.participants.participants].reverse())).toBe(v.participants.participants_sha256);
  });
  it("key wrap v1", () => {
    const w = v.key_wrap;
    const ctx = { conversationId: w.conversation_id, epoch: w.epoch, recipientDevice: w.recipient_device, senderDevice: w.sender_device };
    const info = keyWrapInfo(ctx);
    expect(hex.encode(info)).toBe(w.info_hex);
    const ss = x25519Shared(x25519Private(seedOf("alice_phone")), x25519Public(b58Key(w.recipient_device)));
    expect(hex.encode(ss)).toBe(w.shared_secret_hex);
    expect(hex.encode(x25519Shared(x25519Private(seedOf("bob_laptop")), x25519Public(b58Key(w.sender_device))))).toBe(w.shared_secret_hex);
    expect(hex.encode(hkdf32(ss, info))).toBe(w.kek_hex);
    const groupKey = hex.decode(w.group_key_hex);
    const wrap = keyWrap({ ...ctx, senderSeed: seedOf("alice_phone"), groupKey, nonce: b64d(w.wrap.nonce) });
    expect(wrap).toEqual(w.wrap);
    expect(keyUnwrap({ ...ctx, recipientSeed: seedOf("bob_laptop"), wrap: w.wrap })).toEqual(groupKey);
    expect(() => keyUnwrap({ ...ctx, epoch: 4, recipientSeed: seedOf("bob_laptop"), wrap: w.wrap })).toThrow(/decrypt/);
  });
  it("message: key id, aad, padding, ciphertext, signed bytes, signature", () => {
    const m = v.message;
    const groupKey = hex.decode(m.group_key_hex);
    expect(keyId(groupKey)).toBe(m.key_id);
    expect(participantsSha256(v.participants.participants)).toBe(m.participants_sha256);
    const ctx = { conversationId: m.conversation_id, epoch: m.epoch, messageId: m.message_id, senderDevice: m.sender_device };
    expect(hex.encode(dmAad(ctx))).toBe(m.aad_hex);
    const plaintext = utf8(m.plaintext_utf8);
    expect(pad(plaintext).length).toBe(m.padded_len);
    const sealed = seal({
      device: new KeyPair(seedOf("alice_phone")), ...ctx, groupKey, participantsSha256: m.participants_sha256,
      plaintext, nonce: b64d(m.nonce_b64),
    });
    expect(sealed).toEqual({ key_id: m.key_id, nonce: m.nonce_b64, ciphertext: m.ciphertext_b64, signature: m.signature_b64 });
    const signed = dmSignedBytes({
      ...ctx, ciphertextSha256: H(b64d(m.ciphertext_b64)), keyId: m.key_id, nonce: m.nonce_b64,
      participantsSha256: m.participants_sha256,
    });
    expect(hex.encode(signed)).toBe(m.signed_bytes_hex);
    expect(verify(b58Key(m.sender_device), signed, b64d(m.signature_b64))).toBe(true);
    const opened = unpad(aeadDecrypt(groupKey, b64d(m.nonce_b64), b64d(m.ciphertext_b64), dmAad(ctx)));
    expect(fromUtf8(opened)).toBe(m.plaintext_utf8);
  });
  it("padding lengths", () => {
    for (const p of v.padding) {
      const padded = pad(new Uint8Array(p.in_len).fill(0x61));
      expect(padded.length).toBe(p.out_len);
      expect(unpad(padded).length).toBe(p.in_len);
    }
  });
  it("safety number, either order", () => {
    const s = v.safety_number;
    expect(safetyNumber(s.user_a, s.user_b)).toBe(s.digits);
    expect(safetyNumber(s.user_b, s.user_a)).toBe(s.digits);
  });
});

describe("cjson", () => {
  it("sorts keys by code point, no whitespace, unicode as is", () => {
    expect(fromUtf8(cjson({ b: 1, a: [true, null, "é"], "\u{10000}": 0, "\uffff": 1 })))
      .toBe('{"a":[true,null,"é"],"b":1,"\uffff":1,"\u{10000}":0}');
    expect(fromUtf8(cjson({ q: 'a"\\b' }))).toBe('{"q":"a\\"\\\\b"}');
  });
  it("refuses floats, control characters, lone surrogates", () => {
    expect(() => cjson({ a: 1.5 })).toThrow();
    expect(() => cjson({ a: "x\ny" })).toThrow();
    expect(() => cjson({ "\u0001": 1 })).toThrow();
    expect(() => cjson({ a: "\ud800" })).toThrow();
    expect(() => cjson({ a: 2 ** 60 })).toThrow();
  });
});

describe("recovery phrase", () => {
  it("is BIP39 English of the 32-byte seed, and back", () => {
    const seed = seedOf("alice_master");
    const phrase = phraseFromSeed(seed);
    expect(phrase.split(" ")).toHaveLength(24);
    expect(seedFromPhrase(phrase)).toEqual(seed);
    expect(seedFromPhrase(`  ${phrase.toUpperCase().replace(/ /g, "\n ")} `)).toEqual(seed);
    // the all-zero seed's well-known BIP39 phrase (the same as Python's `mnemonic`)
    expect(phraseFromSeed(new Uint8Array(32))).toBe(`${"abandon ".repeat(23)}art`);
    const words = phrase.split(" ");
    [words[0], words[1]] = [words[1]!, words[0]!];
    if (words[0] !== words[1]) expect(() => seedFromPhrase(words.join(" "))).toThrow(/not a valid/);
    expect(() => seedFromPhrase("abandon abandon")).toThrow(/24 words/);
  });
});

describe("reject", () => {
  for (const r of v.reject.base64) it(`base64: ${r.why}`, () => expect(() => b64d(r.in)).toThrow());
  for (const r of v.reject.base58_key) it(`base58_key: ${r.why}`, () => expect(() => b58Key(r.in)).toThrow());
  for (const r of v.reject.certificate) it(`certificate: ${r.why}`, () => expect(() => certParse(r.wire)).toThrow());
  for (const r of v.reject.padding) it(`padding: ${r.why}`, () => expect(() => unpad(hex.decode(r.in_hex))).toThrow(/pad/));
  for (const r of v.reject.x25519_public)
    it(`x25519_public: ${r.why}`, () =>
      expect(() => x25519Shared(x25519Private(seedOf("alice_phone")), hex.decode(r.in_hex))).toThrow(/all zero/));
  // v1.2 (forward secrecy, §6b) is a later issue: reject.signed_prekey, signed_prekey,
  // one_time_prekey, key_wrap_v2 and key_wrap_v2_no_one_time are deliberately not implemented here.
  it.skip("v1.2: signed_prekey, one_time_prekey, key_wrap_v2*, reject.signed_prekey (§6b, a later issue)", () => {});
  it("every vectors.json section is covered or skipped on purpose", () => {
    const covered = ["about", "keys", "device_cert", "device_cert_no_expiry", "auth", "participants", "key_wrap",
      "message", "padding", "safety_number", "reject"];
    const v12 = ["signed_prekey", "one_time_prekey", "key_wrap_v2", "key_wrap_v2_no_one_time"];
    expect(Object.keys(v).sort()).toEqual([...covered, ...v12].sort());
    expect(Object.keys(v.reject).sort()).toEqual(["base58_key", "base64", "certificate", "padding", "signed_prekey", "x25519_public"]);
  });
});

describe("Ed25519 as libsodium verifies", () => {
  const pair = new KeyPair(seedOf("alice_phone"));
  const msg = utf8("decentcom/test\n");
  const sig = pair.sign(msg);
  it("accepts a good signature and refuses a changed message", () => {
    expect(verify(pair.publicKey, msg, sig)).toBe(true);
    expect(verify(pair.publicKey, utf8("other"), sig)).toBe(false);
  });
  it("refuses a non-canonical S (S + L)", () => {
    const L = 2n ** 252n + 27742317777372353535851937790883648493n;
    let s = 0n;
    for (let i = 63; i >= 32; i--) s = (s << 8n) | BigInt(sig[i]!);
    s += L;
    const bad = sig.slice();
    for (let i = 32; i < 64; i++) {
      bad[i] = Number(s & 0xffn);
      s >>= 8n;
    }
    expect(verify(pair.publicKey, msg, bad)).toBe(false);
  });
  it("refuses small-order keys and R", () => {
    const identity = hex.decode("0100000000000000000000000000000000000000000000000000000000000000");
    expect(ed25519KeyUsable(identity)).toBe(false);
    // With A = identity and R = identity, S = 0 satisfies every equation: libsodium refuses.
    expect(verify(identity, msg, new Uint8Array([...identity, ...new Uint8Array(32)]))).toBe(false);
    expect(verify(pair.publicKey, msg, new Uint8Array([...identity, ...sig.slice(32)]))).toBe(false);
  });
  it("refuses a key with a torsion component (libsodium pk_to_curve25519 does; checked against PyNaCl)", () => {
    expect(ed25519KeyUsable(hex.decode("1f4f580e73ac208f06760190e9edc6f5916775dabd9c1cdca393175c2d6d1083"))).toBe(false);
  });
  it("b58 round trip of a fresh key", () => {
    const k = KeyPair.generate();
    expect(b58Key(b58e(k.publicKey))).toEqual(k.publicKey);
  });
});
