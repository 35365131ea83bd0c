import "fake-indexeddb/auto";
import { describe, expect, it } from "vitest";
import { Store, StoreError, withLock } from "./store";

let n = 0;
const fresh = async (passphrase?: string) => {
  const s = await Store.open(`test-${++n}`);
  await s.initialize(passphrase);
  return s;
};

describe("encrypted store", () => {
  it("round-trips values with bytes, lists by prefix, deletes", async () => {
    const s = await fresh();
    const seed = Uint8Array.from([1, 2, 3]);
    await s.put("meta", "identity", { seed, name: "n" });
    expect(await s.get("meta", "identity")).toEqual({ seed, name: "n" });
    await s.write([
      { table: "timeline", id: "c1/001", value: { body: "a" } },
      { table: "timeline", id: "c1/002", value: { body: "b" } },
      { table: "timeline", id: "c2/001", value: { body: "c" } },
    ]);
    expect((await s.list("timeline", "c1/")).map((r) => r.value)).toEqual([{ body: "a" }, { body: "b" }]);
    await s.delete("timeline", "c1/001");
    expect(await s.list("timeline", "c1/")).toHaveLength(1);
  });

  it("keeps nothing in clear: the raw IndexedDB values hold no plaintext and the key is not extractable", async () => {
    const s = await fresh();
    await s.put("timeline", "c/1", { body: "very secret text" });
    await s.put("meta", "identity", { seed: new Uint8Array(32).fill(0x5a) });
    const raw = JSON.stringify(await s.rawDump(), (_k, v) => (v instanceof Uint8Array ? String.fromCharCode(...v) : v));
    expect(raw).not.toContain("very secret text");
    expect(raw).not.toContain("Z".repeat(32));
    const dump = (await s.rawDump()) as { deviceKey?: CryptoKey }[];
    const ring = dump.find((r) => r && typeof r === "object" && "deviceKey" in r)!;
    expect(ring.deviceKey!.extractable).toBe(false);
  });

  it("reopens after a reload with the same device key", async () => {
    const s = await fresh();
    await s.put("contacts", "u", { name: "Bob" });
    s.close();
    const again = await Store.open(s.name);
    expect(again.initialized).toBe(true);
    expect(again.needsPassphrase).toBe(false);
    await again.unlock();
    expect(await again.get("contacts", "u")).toEqual({ name: "Bob" });
  });

  it("a record moved to another id does not open (bound to table and id)", async () => {
    const s = await fresh();
    await s.put("contacts", "a", { name: "A" });
    const db = await new Promise<IDBDatabase>((res) => {
      const r = indexedDB.open(s.name);
      r.onsuccess = () => res(r.result);
    });
    const value = await new Promise((res) => {
      const r = db.transaction("contacts").objectStore("contacts").get("a");
      r.onsuccess = () => res(r.result);
    });
    await new Promise((res) => {
      const tx = db.transaction("contacts", "readwrite");
      tx.objectStore("contacts").put(value, "b");
      tx.oncomplete = res;
    });
    await expect(s.get("contacts", "b")).rejects.toThrow();
  });

  it("with a passphrase: asked on start, a wrong one refused, changed and removed", async () => {
    const s = await fresh("correct horse");
    await s.put("meta", "x", { v: 1 });
    s.close();
    const again = await Store.open(s.name);
    expect(again.needsPassphrase).toBe(true);
    await expect(again.unlock()).rejects.toBeInstanceOf(StoreError);
    await expect(again.unlock("wrong")).rejects.toMatchObject({ code: "bad_passphrase" });
    await again.unlock("correct horse");
    expect(await again.get("meta", "x")).toEqual({ v: 1 });
    await again.setPassphrase("correct horse", "battery staple");
    again.lock();
    await expect(again.unlock("correct horse")).rejects.toMatchObject({ code: "bad_passphrase" });
    await again.unlock("battery staple");
    await again.setPassphrase("battery staple", null);
    expect(again.needsPassphrase).toBe(false);
    again.lock();
    await again.unlock();
    expect(await again.get("meta", "x")).toEqual({ v: 1 });
  }, 30_000);

  it("wipe forgets everything", async () => {
    const s = await fresh();
    await s.put("meta", "x", 1);
    await s.wipe();
    expect(s.initialized).toBe(false);
    const again = await Store.open(s.name);
    expect(again.initialized).toBe(false);
  });

  it("withLock runs one at a time", async () => {
    const order: string[] = [];
    const job = (name: string, ms: number) => withLock("t", async () => {
      order.push(`${name}+`);
      await new Promise((r) => setTimeout(r, ms));
      order.push(`${name}-`);
    });
    await Promise.all([job("a", 20), job("b", 1)]);
    expect(order).toEqual(["a+", "a-", "b+", "b-"]);
  });
});
