// The SDK against a real server, when one is given: DECENTCOM_LIVE_URL=http://127.0.0.1:8000
// (W2's browser tests cover the whole system; this is the cheap node-side check).
import "fake-indexeddb/auto";
import { describe, expect, it } from "vitest";
import { Startup, type Message } from "./index";

const url = (globalThis as { process?: { env: Record<string, string | undefined> } }).process?.env.DECENTCOM_LIVE_URL;
let n = 0;
const boot = (dbName = `live-${Date.now()}-${++n}`) => Startup.open({ serverUrl: url!, dbName });
const texts = async (c: Awaited<ReturnType<Startup["unlock"]>>, cid: string) =>
  (await c.timeline(cid)).filter((i): i is Message => i.kind === "message").map((m) => `${m.mine ? "me" : "them"}:${m.body}`);

describe.skipIf(!url)("live server", () => {
  it("two people, a conversation both ways, self-sync to a restored and a linked device, reload", async () => {
    const a = await (await boot()).createIdentity({ deviceName: "Alice browser" });
    const b = await (await boot()).createIdentity({ deviceName: "Bob browser" });
    const alice = a.client;
    const bob = b.client;
    expect(a.recoveryPhrase.split(" ")).toHaveLength(24);
    await alice.setContact(bob.identity.userId, "Bob");
    const conv = await alice.createConversation(["Bob"], { policy: "ttl", ttl_days: 7 });
    expect(conv.kind).toBe("direct");
    const sent = await alice.send(conv.conversationId, "hello <img src=x onerror=alert(1)>");
    expect(sent.status?.summary).toBe("sent");
    expect(await bob.sync()).toEqual({ accepted: 1, failed: 0 });
    await bob.refreshConversations();
    expect(await texts(bob, conv.conversationId)).toEqual(["them:hello <img src=x onerror=alert(1)>"]);
    expect((await bob.conversations())[0]!.unread).toBe(1);
    await bob.send(conv.conversationId, "hi Alice");
    expect((await alice.sync()).accepted).toBe(1);
    expect(await texts(alice, conv.conversationId)).toEqual(["me:hello <img src=x onerror=alert(1)>", "them:hi Alice"]);
    expect(alice.safetyNumber(bob.identity.userId)).toBe(bob.safetyNumber(alice.identity.userId));

    // a reload keeps identity, contacts and history
    const again = await boot((alice as unknown as { store: { name: string } }).store.name);
    expect(again.hasIdentity).toBe(true);
    const reloaded = await again.unlock();
    expect(reloaded.identity.userId).toBe(alice.identity.userId);
    expect(reloaded.displayName(bob.identity.userId)).toBe("Bob");
    expect(await texts(reloaded, conv.conversationId)).toHaveLength(2);

    // restore from the phrase: a new device of the same user
    const restored = await (await boot()).restoreIdentity({ phrase: a.recoveryPhrase, deviceName: "Alice laptop" });
    expect(restored.identity.userId).toBe(alice.identity.userId);
    expect(restored.identity.deviceId).not.toBe(alice.identity.deviceId);
    await alice.send(conv.conversationId, "from phone"); // stale_epoch (a device was added) is handled
    await restored.refreshConversations();
    expect((await restored.sync()).accepted).toBe(1);
    expect(await texts(restored, conv.conversationId)).toEqual(["me:from phone"]);
    expect((await bob.sync()).accepted).toBe(1);

    // link: a key shown here, certified by the master holder, pasted back
    const linking = await boot();
    const key = await linking.linkDeviceKey();
    const cert = await alice.certifyDevice(key, { name: "Alice tablet" });
    const linked = await linking.link({ certificate: cert });
    expect(linked.identity).toMatchObject({ userId: alice.identity.userId, deviceName: "Alice tablet", holdsMaster: false });
    const devices = await alice.devices();
    expect(devices.map((d) => d.name).sort()).toEqual(["Alice browser", "Alice laptop", "Alice tablet"]);
    expect(devices.find((d) => d.current)!.name).toBe("Alice browser");

    // revoke the linked device: it locks itself
    await alice.revokeDevice(linked.identity.deviceId);
    await expect(linked.sync()).rejects.toMatchObject({ code: "device_revoked" });
    expect(linked.revoked).toMatch(/revoked/);
    // and its prekey private keys are gone with its message keys (§6b)
    const linkedStore = (linked as unknown as { store: { list(t: string): Promise<unknown[]> } }).store;
    expect(await linkedStore.list("signedPrekeys")).toEqual([]);
    expect(await linkedStore.list("oneTimePrekeys")).toEqual([]);

    // a group of three, membership shown
    const carol = (await (await boot()).createIdentity({ deviceName: "Carol" })).client;
    const group = await alice.createConversation([bob.identity.userId, carol.identity.userId]);
    expect(group.kind).toBe("group");
    await carol.send(group.conversationId, "hey group");
    expect((await bob.sync()).accepted).toBe(1);
    await alice.removeMember(group.conversationId, carol.identity.userId);
    const events = (await alice.timeline(group.conversationId)).filter((i) => i.kind === "event");
    expect(events.some((e) => e.kind === "event" && e.event === "membership" && e.removed.includes(carol.identity.userId))).toBe(true);

    // retention changed under the sender: asked, then sent under the new one
    await bob.setRetention(conv.conversationId, { policy: "burn_on_read", ttl_days: null });
    let asked = "";
    const m = await alice.send(conv.conversationId, "after change", { confirmRetention: async (next) => ((asked = next.policy), true) });
    expect(asked).toBe("burn_on_read");
    expect(m.policy).toBe("burn_on_read");
    await expect(alice.send(conv.conversationId, "x", {})).resolves.toBeTruthy(); // accepted now
  }, 120_000);
});
