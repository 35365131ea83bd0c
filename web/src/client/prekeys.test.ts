// §6b this device's prekeys in the real (encrypted, fake-indexeddb) store: made, published,
// looked up, and erased exactly when §6b says; v2 wraps opened from them; the v1 downgrade rule.
import "fake-indexeddb/auto";
import { describe, expect, it } from "vitest";
import {
  KeyPair, b64e, hex, keyId, keyWrap, keyWrapV2, otkParse, seal, spkParse, x25519PublicOf, participantsSha256,
  plaintextEncode, type AnyKeyWrap,
} from "../protocol";
import { Store } from "../store";
import { ONE_TIME_TARGET, Prekeys, SPK_KEEP_MS, SPK_ROTATE_MS, V1_GRACE_MS } from "./prekeys";
import { DOWNGRADE_TEXT, DAY_MS, checkDowngrade, oneTimeIdOf, parse, unwrapV2, type Incoming } from "./receive";
import vectors from "../../../tests/vectors.json";

const v = vectors as any; // eslint-disable-line @typescript-eslint/no-explicit-any
let n = 0;
const T0 = 1_800_000_000_000;
async function fresh() {
  const store = await Store.open(`prekeys-${++n}`);
  await store.initialize();
  const device = KeyPair.generate();
  return { store, device, prekeys: new Prekeys(store, device) };
}
const rawText = async (store: Store) =>
  JSON.stringify(await store.rawDump(), (_k, val) => (val instanceof Uint8Array ? hex.encode(val) : val));

describe("store upgrade", () => {
  it("a database of version 1 (before v1.2) opens with the prekey tables added and its records kept", async () => {
    const name = `old-${++n}`;
    const open = indexedDB.open(name, 1);
    open.onupgradeneeded = () => {
      for (const t of ["keyring", "meta", "conversations", "timeline", "senderKeys", "wrapsSent"]) open.result.createObjectStore(t);
      open.result.createObjectStore("contacts").put("kept", "x");
    };
    await new Promise((resolve, reject) => ((open.onsuccess = resolve), (open.onerror = reject)));
    open.result.close();
    const store = await Store.open(name);
    const raw = (await store.rawDump()) as unknown[];
    expect(raw).toContain("kept");
    await store.initialize();
    const prekeys = new Prekeys(store, KeyPair.generate());
    expect((await prekeys.rotate(T0)).id).toBe(1);
    expect(await prekeys.signed()).toHaveLength(1);
  });
});

describe("signed prekeys", () => {
  it("rotate: a signed prekey that verifies against the device, ids increasing, the previous one replaced", async () => {
    const { store, device, prekeys } = await fresh();
    expect(await prekeys.current()).toBeNull();
    expect(prekeys.needsRotation(null, T0)).toBe(true);
    const first = await prekeys.rotate(T0);
    expect(first.id).toBe(1);
    const parsed = spkParse(first.wire, device.id);
    expect(parsed.x25519).toEqual(x25519PublicOf(first.priv));
    expect(parsed.createdAt).toBe(T0 / 1000);
    expect(prekeys.needsRotation(first, T0 + SPK_ROTATE_MS - 1)).toBe(false);
    expect(prekeys.needsRotation(first, T0 + SPK_ROTATE_MS)).toBe(true);
    const second = await prekeys.rotate(T0 + SPK_ROTATE_MS, 5); // the server holds id 5: above it
    expect(second.id).toBe(6);
    expect((await prekeys.current())!.id).toBe(6);
    const all = await prekeys.signed();
    expect(all.map((r) => [r.id, r.replacedAt])).toEqual([[1, T0 + SPK_ROTATE_MS], [6, null]]);
    expect((await prekeys.rotate(T0 + 2 * SPK_ROTATE_MS)).id).toBe(7);
    // the private key is in the store only sealed
    expect(await rawText(store)).not.toContain(hex.encode(first.priv));
  });

  it("an old signed private key is erased once the client's window has passed since it was replaced", async () => {
    const { store, prekeys } = await fresh();
    const old = await prekeys.rotate(T0);
    const replacedAt = T0 + SPK_ROTATE_MS;
    const current = await prekeys.rotate(replacedAt);
    expect(await prekeys.eraseExpiredSigned(replacedAt + SPK_KEEP_MS - 1)).toEqual([]);
    expect(await prekeys.signedPrivate(old.id)).toEqual(old.priv);
    expect(await prekeys.eraseExpiredSigned(replacedAt + SPK_KEEP_MS)).toEqual([old.id]);
    expect(await prekeys.signedPrivate(old.id)).toBeNull();
    expect(await prekeys.signedPrivate(current.id)).toEqual(current.priv); // the current one stays however old
    expect(await prekeys.eraseExpiredSigned(replacedAt + 10 * SPK_KEEP_MS)).toEqual([]);
    // gone from the database itself, not only hidden: no record for it at all
    expect((await store.list("signedPrekeys")).map((r) => r.id)).toEqual([String(current.id).padStart(16, "0")]);
  });
});

describe("one-time prekeys", () => {
  it("up to 100 on the server: unpublished ones first, then new ids; each private erased at its ACK", async () => {
    const { store, prekeys } = await fresh();
    const first = await prekeys.oneTimeToPublish(0);
    expect(first).toHaveLength(ONE_TIME_TARGET);
    expect(new Set(first.map((o) => o.id)).size).toBe(ONE_TIME_TARGET);
    for (const o of first) expect(otkParse(o)[0]).toBe(o.id);
    // not published yet (the PUT failed): the same ones are offered again, no new ones made
    expect((await prekeys.oneTimeToPublish(0)).map((o) => o.id)).toEqual(first.map((o) => o.id));
    await prekeys.markPublished(null, first.map((o) => o.id), T0);
    expect((await prekeys.meta()).firstPublishedAt).toBeNull(); // only a signed prekey counts
    const refill = await prekeys.oneTimeToPublish(15);
    expect(refill).toHaveLength(85);
    expect(Math.min(...refill.map((o) => o.id))).toBe(101);
    expect(await prekeys.oneTimeToPublish(100)).toEqual([]);
    expect(await prekeys.oneTime()).toHaveLength(185);

    const used = first[41]!;
    const priv = (await prekeys.oneTimePrivate(used.id))!;
    expect(b64e(x25519PublicOf(priv))).toBe(used.x25519);
    expect(await rawText(store)).not.toContain(hex.encode(priv)); // no private key in clear
    await prekeys.eraseOneTime([used.id, used.id]);
    expect(await prekeys.oneTimePrivate(used.id)).toBeNull();
    expect(await prekeys.oneTimePrivate(first[40]!.id)).not.toBeNull();
    expect(await prekeys.oneTime()).toHaveLength(184);
  });

  it("eraseAllWrites (a revoked device) leaves no prekey", async () => {
    const { store, prekeys } = await fresh();
    await prekeys.rotate(T0);
    await prekeys.oneTimeToPublish(0);
    await store.write(await prekeys.eraseAllWrites());
    expect(await prekeys.signed()).toEqual([]);
    expect(await prekeys.oneTime()).toEqual([]);
  });
});

describe("the v1 downgrade rule", () => {
  it("refuses a v1 wrap sent more than 24 h after the first signed prekey was published", async () => {
    const { prekeys } = await fresh();
    expect(await prekeys.refusesV1(T0 + 100 * DAY_MS)).toBe(false); // never published: an old client's store
    const spk = await prekeys.rotate(T0);
    await prekeys.markPublished(spk, [], T0 + 1000);
    expect(await prekeys.refusesV1(T0 + 1000 + V1_GRACE_MS)).toBe(false);
    expect(await prekeys.refusesV1(T0 + 1000 + V1_GRACE_MS + 1)).toBe(true);
    // a later publication does not move the first time
    const next = await prekeys.rotate(T0 + SPK_ROTATE_MS);
    await prekeys.markPublished(next, [], T0 + SPK_ROTATE_MS);
    expect((await prekeys.meta()).firstPublishedAt).toBe(T0 + 1000);
    const m = { wrapVersion: 1 } as Incoming;
    expect(() => checkDowngrade(m, true)).toThrow(expect.objectContaining({ reason: "downgraded_key_wrap", detail: DOWNGRADE_TEXT }));
    expect(() => checkDowngrade(m, false)).not.toThrow();
    expect(() => checkDowngrade({ wrapVersion: 2 } as Incoming, true)).not.toThrow();
    expect(() => checkDowngrade({ wrapVersion: null } as Incoming, true)).not.toThrow();
  });
});

describe("a v2 wrap from the receiver's stored prekeys, as sync delivers it", () => {
  const alice = new KeyPair(hex.decode(v.keys.alice_phone.ed25519_seed_hex));
  const cid = "0b7e6f8e-3c57-4c1e-9d7e-2a4f0b9d1c11";
  async function message(withOtk: boolean) {
    const bob = await fresh();
    const spk = await bob.prekeys.rotate(T0);
    const [otk] = await bob.prekeys.oneTimeToPublish(0);
    const groupKey = crypto.getRandomValues(new Uint8Array(32));
    const messageId = "5f0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b";
    const participants = [v.keys.alice_master.id_b58, v.keys.bob_master.id_b58];
    const sealed = seal({ device: alice, conversationId: cid, epoch: 3, messageId, groupKey,
      participantsSha256: participantsSha256(participants), plaintext: plaintextEncode({ body: "hi", sentAt: T0, seq: 1 }) });
    const wire = {
      message_id: messageId, conversation_id: cid, sender: v.keys.alice_master.id_b58, sender_device: alice.id,
      sender_certificate: v.device_cert.wire, epoch: 3, participants_sha256: participantsSha256(participants), ...sealed,
      key_wrap: keyWrapV2({ senderSeed: alice.seed, senderDevice: alice.id, recipientDevice: bob.device.id, conversationId: cid,
        epoch: 3, groupKey, signedPrekey: spkParse(spk.wire, bob.device.id), oneTime: withOtk ? otkParse(otk) : null }) as AnyKeyWrap,
      policy: "ttl",
    };
    return { bob, spk, otk: otk!, groupKey, wire, m: parse(wire) };
  }

  it("opens with the signed and one-time private keys by id; after the ACK erased the one-time key it no longer does", async () => {
    const { bob, spk, otk, groupKey, wire, m } = await message(true);
    expect(m.wrapVersion).toBe(2);
    expect(oneTimeIdOf(wire)).toBe(otk.id);
    const privates = async () => ({
      signed: await bob.prekeys.signedPrivate(spk.id), oneTime: await bob.prekeys.oneTimePrivate(otk.id),
    });
    expect(keyId(unwrapV2(bob.device, m, await privates()))).toBe(keyId(groupKey));
    await bob.prekeys.eraseOneTime([otk.id]);
    expect(() => unwrapV2(bob.device, m, { signed: spk.priv, oneTime: null }))
      .toThrow(expect.objectContaining({ reason: "unknown_prekey", detail: expect.stringContaining(`one-time prekey ${otk.id}`) }));
    // and once the signed key is erased too, the device seed alone opens nothing
    expect(() => unwrapV2(bob.device, m, { signed: null, oneTime: null }))
      .toThrow(expect.objectContaining({ reason: "unknown_prekey", detail: expect.stringContaining("signed prekey") }));
  });

  it("without a one-time prekey; a wrong key is bad_key_wrap", async () => {
    const { bob, spk, groupKey, wire, m } = await message(false);
    expect(oneTimeIdOf(wire)).toBeNull();
    expect(unwrapV2(bob.device, m, { signed: spk.priv, oneTime: null })).toEqual(groupKey);
    const other = await bob.prekeys.rotate(T0 + 1);
    expect(() => unwrapV2(bob.device, m, { signed: other.priv, oneTime: null })).toThrow(expect.objectContaining({ reason: "bad_key_wrap" }));
  });

  it("parse: v1 and v2 shapes only, each checked", async () => {
    const { bob, wire } = await message(true);
    const w = wire.key_wrap as unknown as Record<string, unknown>;
    const v1 = keyWrap({ senderSeed: alice.seed, senderDevice: alice.id, recipientDevice: bob.device.id, conversationId: cid,
      epoch: 3, groupKey: new Uint8Array(32) });
    expect(parse({ ...wire, key_wrap: v1 }).wrapVersion).toBe(1);
    expect(parse({ ...wire, key_wrap: null }).wrapVersion).toBeNull();
    for (const bad of [{ ...w, extra: 1 }, { ...w, signed_prekey_id: 0 }, { ...w, one_time_id: -1 }, { ...w, ephemeral: b64e(new Uint8Array(31)) },
      { ...w, wrapped_key: b64e(new Uint8Array(32)) }, { ...w, v: 3 }, { ...v1, v: 1 }, { nonce: w.nonce }])
      expect(() => parse({ ...wire, key_wrap: bad })).toThrow(expect.objectContaining({ reason: "malformed" }));
    expect(oneTimeIdOf({ key_wrap: { ...w, one_time_id: 0 } })).toBeNull();
    expect(oneTimeIdOf({ key_wrap: v1 })).toBeNull();
  });
});
