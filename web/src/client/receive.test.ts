import { describe, expect, it } from "vitest";
import { DAY_MS, REPLAY_WINDOW_MS, checkMembership, checkTime, decrypt, parse, type EpochView, type Incoming } from "./receive";
import vectors from "../../../tests/vectors.json";
import { hex } from "../protocol";

const v = vectors as any; // eslint-disable-line @typescript-eslint/no-explicit-any
const A = v.keys.alice_master.id_b58;
const B = v.keys.bob_master.id_b58;
const C = v.keys.bob_laptop.id_b58; // any third key works as a user id here
const msg = (o: Partial<Incoming>) => ({ epoch: 2, sender: A, participantsSha256: "h2", ...o }) as Incoming;
const seen = (entries: [number, string[], string][]) => new Map<number, EpochView>(entries.map(([e, p, h]) => [e, { participants: p, participantsSha256: h }]));

describe("epochs and membership a client accepts (§6)", () => {
  it("bad_epoch below 1 or ahead of the conversation", () => {
    expect(() => checkMembership(msg({ epoch: 0 }), seen([]), 3)).toThrow(expect.objectContaining({ reason: "bad_epoch" }));
    expect(() => checkMembership(msg({ epoch: 4 }), seen([[3, [A, B], "h3"]]), 3)).toThrow(expect.objectContaining({ reason: "bad_epoch" }));
    expect(() => checkMembership(msg({}), seen([]), null)).toThrow(expect.objectContaining({ reason: "bad_epoch" }));
  });
  it("not_a_participant and participants_mismatch at a seen epoch", () => {
    expect(() => checkMembership(msg({ sender: B }), seen([[2, [A], "h2"]]), 2)).toThrow(expect.objectContaining({ reason: "not_a_participant" }));
    expect(() => checkMembership(msg({ participantsSha256: "other" }), seen([[2, [A, B], "h2"]]), 2))
      .toThrow(expect.objectContaining({ reason: "participants_mismatch" }));
    expect(checkMembership(msg({}), seen([[2, [A, B], "h2"]]), 2)).toEqual([]);
  });
  it("an epoch never seen: the sender must be in the nearest one before or after; a warning", () => {
    expect(checkMembership(msg({}), seen([[1, [A, B], "h1"], [3, [B], "h3"]]), 3)).toEqual([
      "participants of epoch 2 not verified (this device never saw that epoch)",
      "sent before the sender was removed (epoch 3): not a current message",
    ]);
    expect(() => checkMembership(msg({}), seen([[1, [B], "h1"], [3, [B, C], "h3"]]), 3)).toThrow(expect.objectContaining({ reason: "not_a_participant" }));
  });
});

describe("time and plaintext", () => {
  it("too_old and from_the_future against the client's own window", () => {
    const now = 1_800_000_000_000;
    expect(() => checkTime({ type: "text", body: "", seq: 1, sent_at: now - REPLAY_WINDOW_MS - 1 }, now)).toThrow(expect.objectContaining({ reason: "too_old" }));
    expect(() => checkTime({ type: "text", body: "", seq: 1, sent_at: now + DAY_MS + 1 }, now)).toThrow(expect.objectContaining({ reason: "from_the_future" }));
    expect(() => checkTime({ type: "text", body: "", seq: 1, sent_at: now }, now)).not.toThrow();
  });
  it("malformed messages and undecryptable ones", () => {
    expect(() => parse({ message_id: "X" })).toThrow(expect.objectContaining({ reason: "malformed" }));
    const m = v.message;
    const incoming = parse({
      message_id: m.message_id, conversation_id: m.conversation_id, sender: A, sender_device: m.sender_device,
      sender_certificate: v.device_cert.wire, epoch: m.epoch, key_id: m.key_id, participants_sha256: m.participants_sha256,
      nonce: m.nonce_b64, ciphertext: m.ciphertext_b64, signature: m.signature_b64, key_wrap: null, policy: "ttl",
    });
    expect(decrypt(hex.decode(m.group_key_hex), incoming).body).toBe("hello bob — ünïcödé ✓");
    expect(() => decrypt(new Uint8Array(32), incoming)).toThrow(expect.objectContaining({ reason: "bad_ciphertext" }));
    // a v2 wrap's shape (wrapV2Check): good as in the vectors; an extra key or a bad id is malformed
    const withWrap = (key_wrap: unknown) => parse({
      message_id: m.message_id, conversation_id: m.conversation_id, sender: A, sender_device: m.sender_device,
      sender_certificate: v.device_cert.wire, epoch: m.epoch, key_id: m.key_id, participants_sha256: m.participants_sha256,
      nonce: m.nonce_b64, ciphertext: m.ciphertext_b64, signature: m.signature_b64, key_wrap, policy: "ttl",
    });
    const w2 = v.key_wrap_v2.wrap;
    expect(withWrap(w2).wrapVersion).toBe(2);
    for (const bad of [{ ...w2, extra: 1 }, { ...w2, signed_prekey_id: 0 }, { ...w2, one_time_id: 1.5 }])
      expect(() => withWrap(bad)).toThrow(expect.objectContaining({ reason: "malformed" }));
  });
});
