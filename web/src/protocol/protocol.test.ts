// Every v1/v1.1 entry of tests/vectors.json, byte for byte, and every `reject`
// entry except the v1.2 ones (see the skips at the end).
import { describe, expect, it } from "vitest";
import vectors from "../../../tests/vectors.json";
import {
  H, KeyPair, b58Key, b58e, b64d, b64e, certCheckClient, certIssue, certParse, certSignedBytes, cjson, dmAad,
  dmSignedBytes, ed25519KeyUsable, hex, keyId, keyUnwrap, keyWrap, keyWrapInfo, nameProblem, origin, pad,
  participantsSha256, phraseFromSeed, safetyNumber, seal, seedFromPhrase, unpad, utf8, verify, authSignedBytes,
  x25519Private, x25519Public, x25519Shared, hkdf32, aeadDecrypt, MAX_UNIX_SECONDS, fromUtf8,
  spkSignedBytes, spkIssue, spkParse, otkParse, keyWrapV2, keyWrapV2Info, keyUnwrapV2, wrapVersion, x25519PublicOf,
  MAX_PREKEY_ID, ProtocolError, concat,
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

const codeOf = (f: () => unknown): string | undefined => {
  try {
    f();
  } catch (exc) {
    return exc instanceof ProtocolError ? exc.code : `not a ProtocolError: ${String(exc)}`;
  }
  return undefined;
};

describe("§6b prekeys and key wrap v2", () => {
  const s = v.signed_prekey;
  it("signed_prekey: bytes, issue, parse", () => {
    expect(hex.encode(spkSignedBytes(s.spk))).toBe(s.signed_bytes_hex);
    expect(b64e(x25519PublicOf(hex.decode(s.x25519_priv_hex)))).toBe(s.spk.x25519);
    // The vector's device is bob_laptop.
    const device = new KeyPair(seedOf("bob_laptop"));
    expect(device.id).toBe(s.device);
    const issued = spkIssue({ device, id: s.spk.id, x25519Pub: b64d(s.spk.x25519), createdAt: s.spk.created_at });
    expect(issued).toEqual(s.wire);
    const parsed = spkParse(s.wire, s.device);
    expect(parsed.id).toBe(7);
    expect(parsed.createdAt).toBe(s.spk.created_at);
    expect(b64e(parsed.x25519)).toBe(s.spk.x25519);
    expect(parsed.wire).toEqual(s.wire);
  });
  it("signed_prekey: the checks of spk_parse, each with code invalid_prekey", () => {
    const device = new KeyPair(seedOf("bob_laptop"));
    const pub = b64d(s.spk.x25519);
    const mk = (id: number, createdAt = s.spk.created_at) => spkIssue({ device, id, x25519Pub: pub, createdAt });
    expect(codeOf(() => spkParse(s.wire, v.keys.alice_phone.id_b58))).toBe("invalid_prekey"); // another device
    expect(codeOf(() => spkParse(null, s.device))).toBe("invalid_prekey");
    expect(codeOf(() => spkParse([s.wire], s.device))).toBe("invalid_prekey");
    const { signature: _sig, ...unsigned } = s.wire; // eslint-disable-line @typescript-eslint/no-unused-vars
    expect(codeOf(() => spkParse(unsigned, s.device))).toBe("invalid_prekey");
    expect(() => spkParse(mk(MAX_PREKEY_ID), s.device)).not.toThrow();
    expect(codeOf(() => spkParse({ ...mk(1), id: MAX_PREKEY_ID + 1 }, s.device))).toBe("invalid_prekey");
    expect(codeOf(() => spkParse({ ...mk(1), id: 1.5 }, s.device))).toBe("invalid_prekey");
    expect(codeOf(() => spkParse({ ...mk(1), id: "1" }, s.device))).toBe("invalid_prekey");
    expect(codeOf(() => spkParse({ ...mk(1), v: 2 }, s.device))).toBe("invalid_prekey");
    expect(codeOf(() => spkParse({ ...mk(1), v: true }, s.device))).toBe("invalid_prekey");
    expect(codeOf(() => spkParse(mk(1, -1), s.device))).toBe("invalid_prekey");
    expect(codeOf(() => spkParse(mk(1, MAX_UNIX_SECONDS + 1), s.device))).toBe("invalid_prekey");
    const short = spkIssue({ device, id: 1, x25519Pub: pub.slice(0, 31), createdAt: 0 });
    expect(codeOf(() => spkParse(short, s.device))).toBe("invalid_prekey");
    expect(codeOf(() => spkParse({ ...s.wire, created_at: s.spk.created_at + 1 }, s.device))).toBe("invalid_prekey");
  });
  it("one_time_prekey", () => {
    const o = v.one_time_prekey;
    expect(b64e(x25519PublicOf(hex.decode(o.x25519_priv_hex)))).toBe(o.public.x25519);
    const [id, pub] = otkParse(o.public);
    expect(id).toBe(42);
    expect(b64e(pub)).toBe(o.public.x25519);
    for (const bad of [null, [], { id: 42 }, { ...o.public, extra: 1 }, { ...o.public, id: 0 }, { ...o.public, id: -3 },
      { ...o.public, id: MAX_PREKEY_ID + 1 }, { ...o.public, x25519: "AAAA" }, { ...o.public, x25519: 5 }])
      expect(codeOf(() => otkParse(bad))).toBe("invalid_prekey");
  });
  for (const name of ["key_wrap_v2", "key_wrap_v2_no_one_time"]) {
    it(name, () => {
      const w = v[name];
      const spk = spkParse(s.wire, w.recipient_device);
      expect(spk.id).toBe(w.signed_prekey_id);
      const oneTime: [number, Uint8Array] | null = w.one_time_id === null ? null : otkParse(v.one_time_prekey.public);
      const ePriv = hex.decode(w.ephemeral_priv_hex);
      expect(b64e(x25519PublicOf(ePriv))).toBe(w.ephemeral_pub_b64);
      expect(hex.encode(x25519Shared(ePriv, spk.x25519))).toBe(w.dh_signed_prekey_hex);
      // sender alice_phone, recipient bob_laptop
      expect(new KeyPair(seedOf("alice_phone")).id).toBe(w.sender_device);
      expect(hex.encode(x25519Shared(x25519Private(seedOf("alice_phone")), spk.x25519))).toBe(w.dh_static_hex);
      const dhOne = oneTime ? hex.encode(x25519Shared(ePriv, oneTime[1])) : null;
      expect(dhOne).toBe(w.dh_one_time_hex);
      const ikm = concat(hex.decode(w.dh_signed_prekey_hex), hex.decode(w.dh_static_hex),
        w.dh_one_time_hex ? hex.decode(w.dh_one_time_hex) : new Uint8Array(0));
      expect(hex.encode(ikm)).toBe(w.ikm_hex);
      const info = keyWrapV2Info({
        conversationId: w.conversation_id, epoch: w.epoch, ephemeral: w.ephemeral_pub_b64, oneTimeId: w.one_time_id,
        recipientDevice: w.recipient_device, senderDevice: w.sender_device, signedPrekeyId: w.signed_prekey_id,
      });
      expect(hex.encode(info)).toBe(w.info_hex);
      expect(hex.encode(hkdf32(ikm, info))).toBe(w.kek_hex);
      const groupKey = hex.decode(w.group_key_hex);
      const ctx = { conversationId: w.conversation_id, epoch: w.epoch, recipientDevice: w.recipient_device,
        senderDevice: w.sender_device };
      const wrap = keyWrapV2({ ...ctx, senderSeed: seedOf("alice_phone"), groupKey, signedPrekey: spk, oneTime,
        ephemeralPriv: ePriv, nonce: b64d(w.wrap.nonce) });
      expect(wrap).toEqual(w.wrap);
      expect(hex.encode(ePriv)).toBe(w.ephemeral_priv_hex); // the caller's array is not consumed
      expect(wrapVersion(w.wrap)).toBe(2);
      const spkPriv = hex.decode(s.x25519_priv_hex);
      const otkPriv = w.one_time_id === null ? null : hex.decode(v.one_time_prekey.x25519_priv_hex);
      const open = (over: Partial<Parameters<typeof keyUnwrapV2>[0]>) => keyUnwrapV2({
        ...ctx, signedPrekeyPriv: spkPriv, oneTimePriv: otkPriv, wrap: w.wrap, ...over });
      expect(open({})).toEqual(groupKey);
      expect(codeOf(() => open({ epoch: 4 }))).toBe("bad_key_wrap");
      expect(codeOf(() => open({ senderDevice: v.keys.bob_master.id_b58 }))).toBe("bad_key_wrap");
      expect(codeOf(() => open({ oneTimePriv: otkPriv ? null : hex.decode(v.one_time_prekey.x25519_priv_hex) })))
        .toBe("bad_key_wrap");
      expect(codeOf(() => open({ wrap: { ...w.wrap, extra: 1 } }))).toBe("bad_key_wrap");
      expect(codeOf(() => open({ wrap: { ...w.wrap, signed_prekey_id: 0 } }))).toBe("bad_key_wrap");
      expect(codeOf(() => open({ wrap: { ...w.wrap, signed_prekey_id: 8 } }))).toBe("bad_key_wrap");
      expect(codeOf(() => open({ signedPrekeyPriv: hex.decode(v.one_time_prekey.x25519_priv_hex) }))).toBe("bad_key_wrap");
      // a fresh wrap (random ephemeral and nonce) opens too, and is different
      const fresh = keyWrapV2({ ...ctx, senderSeed: seedOf("alice_phone"), groupKey, signedPrekey: spk, oneTime });
      expect(fresh.ephemeral).not.toBe(w.wrap.ephemeral);
      expect(open({ wrap: fresh })).toEqual(groupKey);
      expect(codeOf(() => keyWrapV2({ ...ctx, recipientDevice: w.sender_device, senderSeed: seedOf("alice_phone"),
        groupKey, signedPrekey: spk, oneTime }))).toBe("invalid_prekey");
    });
  }
  it("wrap version by shape", () => {
    expect(wrapVersion(v.key_wrap.wrap)).toBe(1);
    expect(wrapVersion(v.key_wrap_v2.wrap)).toBe(2);
    for (const bad of [null, [], {}, { nonce: "x" }, { ...v.key_wrap.wrap, v: 1 }, { ...v.key_wrap.wrap, extra: 1 },
      { ...v.key_wrap_v2.wrap, v: "2" }, "wrap"])
      expect(codeOf(() => wrapVersion(bad))).toBe("bad_key_wrap");
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
  for (const r of v.reject.signed_prekey)
    it(`signed_prekey: ${r.why}`, () => {
      expect(() => spkParse(r.wire, r.wire.device)).toThrow(ProtocolError);
      try {
        spkParse(r.wire, r.wire.device);
      } catch (exc) {
        expect((exc as ProtocolError).code).toBe("invalid_prekey");
      }
    });
  it("every vectors.json section is covered or skipped on purpose", () => {
    const covered = ["about", "keys", "device_cert", "device_cert_no_expiry", "auth", "participants", "key_wrap",
      "message", "padding", "safety_number", "reject", "signed_prekey", "one_time_prekey", "key_wrap_v2",
      "key_wrap_v2_no_one_time"];
    expect(Object.keys(v).sort()).toEqual([...covered].sort());
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
