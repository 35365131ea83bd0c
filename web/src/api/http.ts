// HTTP access to a decentcom server: JSON in, JSON out, every error the §10
// body as a typed ApiError. Mirrors dmclient/api.py.
import { ProtocolError, origin } from "../protocol";

export const API_PREFIX = "/api/v1";
export const MAX_RETRY_AFTER_S = 300; // a server asking for longer is treated as an error

export class ApiError extends Error {
  readonly code: string;
  readonly detail: string;
  constructor(
    readonly status: number,
    readonly body: Record<string, unknown>,
    readonly retryAfter: number | null = null,
  ) {
    const code = typeof body.error === "string" && body.error ? body.error : `http_${status}`;
    const detail = typeof body.detail === "string" ? body.detail : "";
    super(`${status} ${code}: ${detail}`);
    this.name = "ApiError";
    this.code = code;
    this.detail = detail;
  }
}

/** The server could not be reached, or the connection broke mid-request. */
export class NetworkError extends Error {
  constructor(detail: string) {
    super(detail);
    this.name = "NetworkError";
  }
}

export interface RequestOptions {
  token?: string | null;
  json?: unknown;
  query?: Record<string, string | number | undefined>;
  signal?: AbortSignal;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** One server. `serverUrl` is where the API lives (it may differ from the page's origin). */
export class Http {
  readonly serverUrl: string;
  /** The server as this client addresses it (RFC 6454), signed in every login (§3). */
  readonly origin: string;
  constructor(
    serverUrl: string,
    private readonly onWait: (code: string, seconds: number) => void = () => {},
    private readonly fetchImpl: typeof fetch = (...a) => globalThis.fetch(...a),
  ) {
    this.serverUrl = serverUrl.replace(/\/+$/, "");
    try {
      this.origin = origin(this.serverUrl);
    } catch (exc) {
      throw exc instanceof ProtocolError ? new NetworkError(exc.detail) : exc;
    }
  }

  url(path: string, query?: RequestOptions["query"]): string {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined) params.set(k, String(v));
    const qs = params.toString();
    return `${this.serverUrl}${API_PREFIX}${path}${qs ? `?${qs}` : ""}`;
  }

  /** Sends one request; on 429 with Retry-After waits and sends it again (the
   * server refused it before doing anything, so the same body is safe) —
   * except mailbox_full, which waiting does not drain. */
  async request<T = unknown>(method: string, path: string, o: RequestOptions = {}): Promise<{ status: number; body: T }> {
    const headers: Record<string, string> = { Accept: "application/json" };
    if (o.token) headers.Authorization = `Bearer ${o.token}`;
    if (o.json !== undefined) headers["Content-Type"] = "application/json";
    for (;;) {
      let response: Response;
      try {
        response = await this.fetchImpl(this.url(path, o.query), {
          method, headers, body: o.json === undefined ? undefined : JSON.stringify(o.json),
          signal: o.signal, credentials: "omit", cache: "no-store",
        });
      } catch (exc) {
        throw new NetworkError(`${this.serverUrl}: ${(exc as Error).message}`);
      }
      let body: unknown = null;
      if (response.status !== 204) {
        const text = await response.text().catch(() => "");
        try {
          body = text ? JSON.parse(text) : null;
        } catch {
          body = { error: `http_${response.status}`, detail: text.slice(0, 200) };
        }
      }
      if (response.ok) return { status: response.status, body: body as T };
      const ra = response.headers.get("Retry-After") ?? "";
      const retryAfter = /^\d+$/.test(ra) ? Number(ra) : null;
      const errorBody = body && typeof body === "object" && !Array.isArray(body)
        ? (body as Record<string, unknown>) : { error: `http_${response.status}` };
      if (response.status === 429 && retryAfter !== null && retryAfter <= MAX_RETRY_AFTER_S
          && errorBody.error !== "mailbox_full") {
        this.onWait(String(errorBody.error ?? "rate_limited"), retryAfter);
        await sleep(retryAfter * 1000);
        continue;
      }
      throw new ApiError(response.status, errorBody, retryAfter);
    }
  }

  /** The gateway's WebSocket URL (§9): from GET /server when given, else beside the API. */
  gatewayUrl(fromServer?: string | null): string {
    if (fromServer) {
      const u = new URL(fromServer, this.serverUrl);
      if (u.protocol === "http:") u.protocol = "ws:";
      if (u.protocol === "https:") u.protocol = "wss:";
      return u.toString();
    }
    return `${this.serverUrl.replace(/^http/, "ws")}${API_PREFIX}/gateway`;
  }
}
