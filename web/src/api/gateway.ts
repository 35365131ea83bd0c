// The gateway WebSocket (§9): ticket login, HELLO, HEARTBEAT -> HEARTBEAT_ACK,
// events, reconnection with backoff, and a connection state for the UI. The
// socket is a doorbell: the mailbox holds the messages, so after every
// (re)connect the client syncs.

export type GatewayState = "Connected" | "Connecting" | "Offline";
export type GatewayOp = "HELLO" | "DM_NOTIFY" | "DM_STATUS" | "CONVERSATION_UPDATE" | "DEVICE_ADD" | "DEVICE_REVOKE" | "PREKEYS_LOW";

export const CLOSE_BAD_CREDENTIALS = 4001;
export const CLOSE_HEARTBEAT_TIMEOUT = 4002;
export const CLOSE_REVOKED = 4003;
export const CLOSE_TOO_MANY = 4008;
export const CLOSE_CHANNEL_LOST = 4010;

export const BACKOFF_MS = [500, 1000, 2000, 5000, 10000, 30000];

export interface GatewayFrame {
  op: string;
  d: Record<string, unknown>;
  t?: number;
}

export interface MinimalSocket {
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason?: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type SocketFactory = (url: string) => MinimalSocket;

export interface GatewayOptions {
  /** The full WebSocket URL with a fresh `?ticket=` (a ticket is single use). */
  connectUrl: () => Promise<string>;
  onFrame: (frame: GatewayFrame) => void;
  onState: (state: GatewayState) => void;
  /** 4003: the device was revoked; the gateway stops for good. */
  onRevoked: () => void;
  /** 4001: credentials refused; the caller should renew its session before the next try. */
  onUnauthorized?: () => void;
  socketFactory?: SocketFactory;
  backoffMs?: number[];
}

export class Gateway {
  private socket: MinimalSocket | null = null;
  private stopped = true;
  private attempt = 0;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private _state: GatewayState = "Offline";

  constructor(private readonly o: GatewayOptions) {}

  get state(): GatewayState {
    return this._state;
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.attempt = 0;
    void this.connect();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    const s = this.socket;
    this.socket = null;
    if (s) {
      s.onclose = null;
      s.close(1000);
    }
    this.setState("Offline");
  }

  /** Reconnect at once (e.g. the browser came back online). */
  reconnectNow(): void {
    if (this.stopped || this._state === "Connected") return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.attempt = 0;
    void this.connect();
  }

  private setState(state: GatewayState): void {
    if (state === this._state) return;
    this._state = state;
    this.o.onState(state);
  }

  private scheduleReconnect(extraMs = 0): void {
    if (this.stopped) return;
    const steps = this.o.backoffMs ?? BACKOFF_MS;
    const base = steps[Math.min(this.attempt, steps.length - 1)]!;
    this.attempt++;
    // Jitter, so that many clients a restarted server dropped do not return at once.
    const delay = base + extraMs + Math.floor(Math.random() * base * 0.25);
    this.setState("Offline");
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.connect();
    }, delay);
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    this.setState("Connecting");
    let url: string;
    try {
      url = await this.o.connectUrl();
    } catch {
      this.scheduleReconnect();
      return;
    }
    if (this.stopped) return;
    const factory = this.o.socketFactory ?? ((u: string) => new WebSocket(u) as unknown as MinimalSocket);
    let socket: MinimalSocket;
    try {
      socket = factory(url);
    } catch {
      this.scheduleReconnect();
      return;
    }
    this.socket = socket;
    socket.onmessage = (ev) => {
      let frame: GatewayFrame;
      try {
        frame = JSON.parse(String(ev.data)) as GatewayFrame;
      } catch {
        return;
      }
      if (!frame || typeof frame.op !== "string" || typeof frame.d !== "object" || frame.d === null) return;
      if (frame.op === "HEARTBEAT") {
        socket.send(JSON.stringify({ op: "HEARTBEAT_ACK", d: {} }));
        return;
      }
      if (frame.op === "HELLO") {
        this.attempt = 0;
        this.setState("Connected");
      }
      this.o.onFrame(frame);
    };
    socket.onerror = () => {};
    socket.onclose = (ev) => {
      if (this.socket !== socket) return;
      this.socket = null;
      if (ev.code === CLOSE_REVOKED) {
        this.stopped = true;
        this.setState("Offline");
        this.o.onRevoked();
        return;
      }
      if (ev.code === CLOSE_BAD_CREDENTIALS) this.o.onUnauthorized?.();
      // 4008: over the connection limit; wait longer before trying again.
      this.scheduleReconnect(ev.code === CLOSE_TOO_MANY ? 10_000 : 0);
    };
  }
}
