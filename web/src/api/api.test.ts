import { describe, expect, it } from "vitest";
import { ApiError, Http, NetworkError } from "./http";
import { Gateway, type MinimalSocket } from "./gateway";

function fakeFetch(answers: { status: number; body?: unknown; headers?: Record<string, string> }[], seen: string[] = []) {
  return (async (url: string, init: RequestInit) => {
    seen.push(`${init.method} ${url} ${init.body ?? ""} ${(init.headers as Record<string, string>).Authorization ?? ""}`);
    const a = answers.shift();
    if (!a) throw new TypeError("Failed to fetch");
    return new Response(a.body === undefined ? null : JSON.stringify(a.body), { status: a.status, headers: a.headers });
  }) as unknown as typeof fetch;
}

describe("Http", () => {
  it("sends JSON with the bearer token under /api/v1 and returns the body", async () => {
    const seen: string[] = [];
    const http = new Http("https://DM.example.org:443/", undefined, fakeFetch([{ status: 200, body: { ok: 1 } }], seen));
    expect(http.origin).toBe("https://dm.example.org");
    expect((await http.request("POST", "/dms/sync", { token: "t", json: { limit: 5 } })).body).toEqual({ ok: 1 });
    expect(seen[0]).toBe('POST https://DM.example.org:443/api/v1/dms/sync {"limit":5} Bearer t');
  });
  it("§10 errors become ApiError with code, detail and the extra fields", async () => {
    const http = new Http("http://127.0.0.1:8000", undefined, fakeFetch([
      { status: 409, body: { error: "stale_epoch", detail: "d", epoch: 4, participants: [] } },
    ]));
    const err = await http.request("POST", "/dms/send", { json: {} }).catch((e) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect([err.status, err.code, err.detail, err.body.epoch]).toEqual([409, "stale_epoch", "d", 4]);
  });
  it("waits Retry-After on 429 and sends again; mailbox_full is not retried", async () => {
    const waits: [string, number][] = [];
    const http = new Http("http://x.test", (c, s) => waits.push([c, s]), fakeFetch([
      { status: 429, body: { error: "rate_limited", detail: "" }, headers: { "Retry-After": "0" } },
      { status: 201, body: { message_id: "m" } },
      { status: 429, body: { error: "mailbox_full", detail: "", devices: ["d"] }, headers: { "Retry-After": "0" } },
    ]));
    expect((await http.request("POST", "/dms/send", { json: {} })).status).toBe(201);
    expect(waits).toEqual([["rate_limited", 0]]);
    await expect(http.request("POST", "/dms/send", { json: {} })).rejects.toMatchObject({ code: "mailbox_full" });
  });
  it("a non-JSON error and an unreachable server", async () => {
    const http = new Http("http://x.test", undefined, (async () => new Response("<html>", { status: 502 })) as unknown as typeof fetch);
    await expect(http.request("GET", "/server")).rejects.toMatchObject({ code: "http_502" });
    const down = new Http("http://x.test", undefined, fakeFetch([]));
    await expect(down.request("GET", "/server")).rejects.toBeInstanceOf(NetworkError);
  });
  it("gateway URL beside the API or from GET /server", () => {
    const http = new Http("https://dm.example.org");
    expect(http.gatewayUrl()).toBe("wss://dm.example.org/api/v1/gateway");
    expect(http.gatewayUrl("/api/v1/gateway")).toBe("wss://dm.example.org/api/v1/gateway");
  });
});

class FakeSocket implements MinimalSocket {
  static all: FakeSocket[] = [];
  readyState = 1;
  sent: string[] = [];
  onopen: MinimalSocket["onopen"] = null;
  onmessage: MinimalSocket["onmessage"] = null;
  onclose: MinimalSocket["onclose"] = null;
  onerror: MinimalSocket["onerror"] = null;
  constructor(readonly url: string) {
    FakeSocket.all.push(this);
  }
  send(data: string) {
    this.sent.push(data);
  }
  close(code = 1000) {
    this.onclose?.({ code });
  }
  frame(op: string, d: object = {}) {
    this.onmessage?.({ data: JSON.stringify({ op, d, t: 0 }) });
  }
}

const tick = (ms = 5) => new Promise((r) => setTimeout(r, ms));

describe("Gateway", () => {
  it("ticket URL, HELLO -> Connected, HEARTBEAT answered, events passed on, reconnect after a drop, 4003 stops", async () => {
    FakeSocket.all = [];
    const states: string[] = [];
    const frames: string[] = [];
    let tickets = 0;
    let revoked = false;
    const gw = new Gateway({
      connectUrl: async () => `ws://x.test/api/v1/gateway?ticket=t${++tickets}`,
      onFrame: (f) => frames.push(f.op),
      onState: (s) => states.push(s),
      onRevoked: () => (revoked = true),
      socketFactory: (u) => new FakeSocket(u),
      backoffMs: [1],
    });
    gw.start();
    await tick();
    const first = FakeSocket.all[0]!;
    expect(first.url).toBe("ws://x.test/api/v1/gateway?ticket=t1");
    first.frame("HELLO", { pending_count: 2 });
    expect(gw.state).toBe("Connected");
    first.frame("HEARTBEAT");
    expect(JSON.parse(first.sent[0]!)).toEqual({ op: "HEARTBEAT_ACK", d: {} });
    first.frame("DM_NOTIFY", { message_id: "m" });
    first.onmessage?.({ data: "not json" });
    first.close(4010);
    expect(gw.state).toBe("Offline");
    await tick(20);
    const second = FakeSocket.all[1]!;
    expect(second.url).toBe("ws://x.test/api/v1/gateway?ticket=t2"); // a fresh single-use ticket
    second.frame("HELLO", {});
    second.close(4003);
    await tick(20);
    expect(revoked).toBe(true);
    expect(FakeSocket.all).toHaveLength(2);
    expect(frames).toEqual(["HELLO", "DM_NOTIFY", "HELLO"]);
    expect(states).toEqual(["Connecting", "Connected", "Offline", "Connecting", "Connected", "Offline"]);
    gw.stop();
  });
});
