// §6b this device's own prekeys in the local store: make, publish-state, look up by id
// for unwrapping, and erase exactly when §6b says (one-time at the ACK of the delivery
// that used it; a signed one once the replay window has passed since it was replaced).
// No network here: client.ts talks to the server and calls these.
import {
  KeyPair, spkIssue, x25519Keypair, x25519PublicOf, b64e, MAX_PREKEY_ID, type WireOtk, type WireSpk,
} from "../protocol";
import type { Store, Write } from "../store";
import { DAY_MS, REPLAY_WINDOW_MS } from "./receive";

/** One-time prekeys kept on the server, and the supply under which they are refilled. */
export const ONE_TIME_TARGET = 100;
export const ONE_TIME_LOW = 20;
/** At most this many one-time prekeys in one PUT (§6b). */
export const ONE_TIME_PER_PUT = 100;
export const SPK_ROTATE_MS = 7 * DAY_MS;
/** A v1 wrap is refused in a message sent more than this after the first signed prekey was published. */
export const V1_GRACE_MS = DAY_MS;
/** Kept after its replacement for the client's own replay window (§6): a message sent
 * before the rotation may still arrive that late. */
export const SPK_KEEP_MS = REPLAY_WINDOW_MS;

export interface SignedPrekeyRecord {
  id: number;
  priv: Uint8Array;
  wire: WireSpk;
  /** Unix ms. */
  createdAt: number;
  /** Unix ms when a newer one became current; null while current. */
  replacedAt: number | null;
  published: boolean;
}
export interface OneTimePrekeyRecord {
  id: number;
  priv: Uint8Array;
  published: boolean;
}
export interface PrekeyMeta {
  /** Unix ms of the first accepted PUT of a signed prekey; null before. */
  firstPublishedAt: number | null;
  nextSpkId: number;
  nextOtkId: number;
}

const pad16 = (n: number) => String(n).padStart(16, "0");
const META = "prekeys";

export class Prekeys {
  constructor(
    private readonly store: Store,
    private readonly device: KeyPair,
  ) {}

  async meta(): Promise<PrekeyMeta> {
    return (await this.store.get<PrekeyMeta>("meta", META)) ?? { firstPublishedAt: null, nextSpkId: 1, nextOtkId: 1 };
  }

  async signed(): Promise<SignedPrekeyRecord[]> {
    return (await this.store.list<SignedPrekeyRecord>("signedPrekeys")).map((r) => r.value);
  }
  async oneTime(): Promise<OneTimePrekeyRecord[]> {
    return (await this.store.list<OneTimePrekeyRecord>("oneTimePrekeys")).map((r) => r.value);
  }

  /** The current signed prekey (not replaced), or null before the first one. */
  async current(): Promise<SignedPrekeyRecord | null> {
    const live = (await this.signed()).filter((r) => r.replacedAt === null);
    return live.length ? live[live.length - 1]! : null;
  }

  needsRotation(current: SignedPrekeyRecord | null, nowMs: number): boolean {
    return current === null || nowMs - current.createdAt >= SPK_ROTATE_MS;
  }

  /** A new current signed prekey (id above `above` and every earlier one); the previous
   * current one is marked replaced now, and erased SPK_KEEP_MS later. */
  async rotate(nowMs: number, above = 0): Promise<SignedPrekeyRecord> {
    const meta = await this.meta();
    const id = Math.max(meta.nextSpkId, above + 1);
    if (id > MAX_PREKEY_ID) throw new Error("signed prekey ids are exhausted");
    const { priv, pub } = x25519Keypair();
    const record: SignedPrekeyRecord = {
      id, priv, createdAt: nowMs, replacedAt: null, published: false,
      wire: spkIssue({ device: this.device, id, x25519Pub: pub, createdAt: Math.floor(nowMs / 1000) }),
    };
    const writes: Write[] = [
      { table: "signedPrekeys", id: pad16(id), value: record },
      { table: "meta", id: META, value: { ...meta, nextSpkId: id + 1 } },
    ];
    for (const old of await this.signed())
      if (old.replacedAt === null) writes.push({ table: "signedPrekeys", id: pad16(old.id), value: { ...old, replacedAt: nowMs } });
    await this.store.write(writes);
    return record;
  }

  /** `n` new one-time prekeys, stored before they are published. */
  async makeOneTime(n: number): Promise<OneTimePrekeyRecord[]> {
    if (n <= 0) return [];
    const meta = await this.meta();
    const made: OneTimePrekeyRecord[] = [];
    for (let i = 0; i < n; i++) made.push({ id: meta.nextOtkId + i, ...x25519Keypair(), published: false });
    await this.store.write([
      ...made.map((r) => ({ table: "oneTimePrekeys" as const, id: pad16(r.id), value: { id: r.id, priv: r.priv, published: false } })),
      { table: "meta", id: META, value: { ...meta, nextOtkId: meta.nextOtkId + n } },
    ]);
    return made.map((r) => ({ id: r.id, priv: r.priv, published: false }));
  }

  /** What to PUT so that the server holds ONE_TIME_TARGET: unpublished ones first, then new ones. */
  async oneTimeToPublish(serverCount: number): Promise<WireOtk[]> {
    const want = Math.min(ONE_TIME_PER_PUT, ONE_TIME_TARGET - serverCount);
    if (want <= 0) return [];
    const pending = (await this.oneTime()).filter((r) => !r.published).slice(0, want);
    const fresh = await this.makeOneTime(want - pending.length);
    return [...pending, ...fresh].map((r) => ({ id: r.id, x25519: b64e(x25519PublicOf(r.priv)) }));
  }

  /** After a PUT was accepted. */
  async markPublished(spk: SignedPrekeyRecord | null, oneTimeIds: number[], nowMs: number): Promise<void> {
    const meta = await this.meta();
    const writes: Write[] = [];
    if (spk) {
      writes.push({ table: "signedPrekeys", id: pad16(spk.id), value: { ...spk, published: true } });
      if (meta.firstPublishedAt === null) writes.push({ table: "meta", id: META, value: { ...meta, firstPublishedAt: nowMs } });
    }
    const ids = new Set(oneTimeIds);
    for (const r of await this.oneTime())
      if (ids.has(r.id) && !r.published) writes.push({ table: "oneTimePrekeys", id: pad16(r.id), value: { ...r, published: true } });
    await this.store.write(writes);
  }

  async signedPrivate(id: number): Promise<Uint8Array | null> {
    return (await this.store.get<SignedPrekeyRecord>("signedPrekeys", pad16(id)))?.priv ?? null;
  }
  async oneTimePrivate(id: number): Promise<Uint8Array | null> {
    return (await this.store.get<OneTimePrekeyRecord>("oneTimePrekeys", pad16(id)))?.priv ?? null;
  }

  /** At the ACK of the deliveries whose wraps used them (received or failed). */
  async eraseOneTime(ids: Iterable<number>): Promise<void> {
    await this.store.write([...new Set(ids)].map((id) => ({ table: "oneTimePrekeys" as const, id: pad16(id), value: null })));
  }

  /** Signed prekeys replaced more than SPK_KEEP_MS ago. */
  async eraseExpiredSigned(nowMs: number): Promise<number[]> {
    const gone = (await this.signed()).filter((r) => r.replacedAt !== null && r.replacedAt + SPK_KEEP_MS <= nowMs);
    await this.store.write(gone.map((r) => ({ table: "signedPrekeys" as const, id: pad16(r.id), value: null })));
    return gone.map((r) => r.id);
  }

  /** The writes erasing every private prekey (a revoked device), for the caller's one atomic write. */
  async eraseAllWrites(): Promise<Write[]> {
    const writes: Write[] = [];
    for (const table of ["signedPrekeys", "oneTimePrekeys"] as const)
      for (const { id } of await this.store.list(table)) writes.push({ table, id, value: null });
    return writes;
  }

  /** §6b: a v1 wrap in a message sent more than V1_GRACE_MS after this device first
   * published a signed prekey is refused (the server may have withheld its prekeys). */
  async refusesV1(sentAtMs: number): Promise<boolean> {
    const { firstPublishedAt } = await this.meta();
    return firstPublishedAt !== null && sentAtMs > firstPublishedAt + V1_GRACE_MS;
  }
}

