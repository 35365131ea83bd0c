// Before a client exists: which identity this browser stores, locked or not;
// create, restore from the recovery phrase, or link with a pasted certificate.
import { Endpoints, Http } from "../api";
import { KeyPair, ProtocolError, certCheckClient, certIssue, origin, phraseFromSeed, seedFromPhrase, type WireCert } from "../protocol";
import { Store, StoreError } from "../store";
import { DmClient, type IdentityRecord } from "./client";
import { ClientError, type Identity } from "./types";

export interface StartupOptions {
  /** The server's base URL, e.g. "https://dm.example.org" (default: the page's own origin). */
  serverUrl?: string;
  /** IndexedDB database name (tests use several). */
  dbName?: string;
}

interface PendingLink {
  serverUrl: string;
  deviceSeed: Uint8Array;
}

function defaultServer(): string {
  const loc = (globalThis as { location?: Location }).location;
  return loc && /^https?:$/.test(loc.protocol) ? loc.origin : "http://127.0.0.1:8000";
}

function checkServer(url: string): string {
  try {
    origin(url);
  } catch (exc) {
    throw new ClientError("invalid_server", (exc as ProtocolError).detail);
  }
  return url.replace(/\/+$/, "");
}

/** The state before a client exists: which store is there, locked or not. */
export class Startup {
  private constructor(
    private readonly store: Store,
    private server: string,
    private identityKnown: boolean,
    private linkKnown: boolean,
  ) {}

  /** Opens (or creates) the local store. A stored identity keeps its own server URL. */
  static async open(options: StartupOptions = {}): Promise<Startup> {
    const store = await Store.open(options.dbName ?? "decentcom");
    const server = checkServer(options.serverUrl ?? defaultServer());
    const s = new Startup(store, server, false, false);
    if (store.initialized && !store.needsPassphrase) await s.peek();
    else s.identityKnown = store.initialized;
    return s;
  }

  private async peek(passphrase?: string): Promise<IdentityRecord | undefined> {
    if (!this.store.unlocked) await this.store.unlock(passphrase);
    const identity = await this.store.get<IdentityRecord>("meta", "identity");
    const link = await this.store.get<PendingLink>("meta", "link");
    this.identityKnown = identity?.certificate != null;
    this.linkKnown = !this.identityKnown && link !== undefined;
    if (identity) this.server = identity.serverUrl;
    else if (link) this.server = link.serverUrl;
    return identity;
  }

  get hasIdentity(): boolean {
    return this.identityKnown;
  }
  get needsPassphrase(): boolean {
    return this.store.initialized && this.store.needsPassphrase && !this.store.unlocked;
  }
  get pendingLink(): boolean {
    return this.linkKnown;
  }
  get serverUrl(): string {
    return this.server;
  }
  /** Before an identity exists, the server may still be chosen. */
  setServerUrl(url: string): void {
    if (this.identityKnown) throw new ClientError("identity_exists", "this browser's identity belongs to its server");
    this.server = checkServer(url);
  }

  /** Opens the stored identity (ClientError "bad_passphrase" on a wrong one). */
  async unlock(passphrase?: string): Promise<DmClient> {
    let identity: IdentityRecord | undefined;
    try {
      identity = await this.peek(passphrase);
    } catch (exc) {
      if (exc instanceof StoreError) throw new ClientError(exc.code, exc.message);
      throw exc;
    }
    if (!identity?.certificate) throw new ClientError("no_identity", "no identity is stored in this browser");
    return this.client(identity);
  }

  private async client(identity: IdentityRecord): Promise<DmClient> {
    const client = new DmClient(this.store, identity);
    await client.init();
    return client;
  }

  private async fresh(passphrase?: string): Promise<void> {
    await this.store.initialize(passphrase || undefined);
  }

  /** Registers `device` for `master` by logging in with its certificate (v1.1 §3). */
  private async register(identity: IdentityRecord): Promise<DmClient> {
    const api = new Endpoints(new Http(identity.serverUrl));
    const session = await DmClient.login(api, new KeyPair(identity.deviceSeed), identity.certificate);
    if (session.user_id !== identity.userId) throw new ClientError("server_mismatch", "the server logged us in as another user");
    await this.store.write([
      { table: "meta", id: "identity", value: identity },
      { table: "meta", id: "token", value: { token: session.token, expiresAt: Date.parse(session.expires_at) } },
      { table: "meta", id: "link", value: null },
    ]);
    this.identityKnown = true;
    this.linkKnown = false;
    const client = await this.client(identity);
    // §6b: a signed prekey and 100 one-time prekeys at registration (start() tries again if this fails).
    await client.maintainPrekeys().catch(() => undefined);
    return client;
  }

  private static certify(master: KeyPair, device: KeyPair, name: string): WireCert {
    try {
      return certIssue({ master, device: device.id, name: name.trim(), issuedAt: Math.floor(Date.now() / 1000), expiresAt: null, permissions: ["manage_devices"] });
    } catch (exc) {
      if (exc instanceof ProtocolError) throw new ClientError("invalid_name", exc.detail);
      throw exc;
    }
  }

  /** A new master key + this browser's device, registered. The phrase is shown once (24 words). */
  async createIdentity(o: { deviceName: string; passphrase?: string }): Promise<{ client: DmClient; recoveryPhrase: string }> {
    const master = KeyPair.generate();
    const device = KeyPair.generate();
    const certificate = Startup.certify(master, device, o.deviceName);
    await this.fresh(o.passphrase);
    const client = await this.register({
      serverUrl: this.server, userId: master.id, deviceSeed: device.seed, masterSeed: master.seed,
      deviceName: certificate.name, certificate, revoked: null,
    });
    return { client, recoveryPhrase: phraseFromSeed(master.seed) };
  }

  /** Restores the master from its 24 words and registers a new device for it. */
  async restoreIdentity(o: { phrase: string; deviceName: string; passphrase?: string }): Promise<DmClient> {
    let master: KeyPair;
    try {
      master = new KeyPair(seedFromPhrase(o.phrase));
    } catch (exc) {
      if (exc instanceof ProtocolError) throw new ClientError("invalid_phrase", exc.detail);
      throw exc;
    }
    const device = KeyPair.generate();
    const certificate = Startup.certify(master, device, o.deviceName);
    await this.fresh(o.passphrase);
    return this.register({
      serverUrl: this.server, userId: master.id, deviceSeed: device.seed, masterSeed: master.seed,
      deviceName: certificate.name, certificate, revoked: null,
    });
  }

  /** This browser's device key (device_id) for linking: made once, kept across reloads. */
  async linkDeviceKey(passphrase?: string): Promise<string> {
    if (this.store.unlocked) {
      const link = await this.store.get<PendingLink>("meta", "link");
      if (link) return new KeyPair(link.deviceSeed).id;
    }
    await this.fresh(passphrase);
    const device = KeyPair.generate();
    await this.store.put("meta", "link", { serverUrl: this.server, deviceSeed: device.seed });
    this.linkKnown = true;
    return device.id;
  }

  /** Accepts a pasted certificate (JSON text) for linkDeviceKey() and registers by logging in (v1.1 §3). */
  async link(o: { certificate: string; passphrase?: string }): Promise<DmClient> {
    const link = this.store.unlocked ? await this.store.get<PendingLink>("meta", "link") : undefined;
    if (!link) throw new ClientError("no_link", "make this browser's device key first");
    const device = new KeyPair(link.deviceSeed);
    let cert: WireCert;
    try {
      const parsed = JSON.parse(o.certificate.trim()) as { master?: unknown };
      cert = certCheckClient(parsed, { userId: String(parsed?.master), deviceId: device.id, now: Math.floor(Date.now() / 1000) });
    } catch (exc) {
      const detail = exc instanceof ProtocolError ? exc.detail : "the certificate is not valid JSON";
      throw new ClientError("invalid_certificate", detail);
    }
    if (o.passphrase) await this.store.setPassphrase(null, o.passphrase);
    return this.register({
      serverUrl: link.serverUrl, userId: cert.master, deviceSeed: device.seed, masterSeed: null, deviceName: cert.name,
      certificate: cert, revoked: null,
    });
  }

  /** Deletes everything stored in this browser. */
  async wipe(): Promise<void> {
    await this.store.wipe();
    this.identityKnown = false;
    this.linkKnown = false;
  }
}
export type { Identity };
