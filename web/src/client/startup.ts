import type { Identity } from "./types";
import type { DmClient } from "./client";

export interface StartupOptions {
  /** The server's base URL, e.g. "https://dm.example.org" (default: the page's own origin). */
  serverUrl?: string;
  /** IndexedDB database name (tests use several). */
  dbName?: string;
}

/** The state before a client exists: which store is there, locked or not. */
export class Startup {
  /** Opens (or creates) the local store. */
  static async open(_options: StartupOptions = {}): Promise<Startup> {
    throw new Error("not implemented");
  }
  /** An identity is stored (create/restore/link done). */
  get hasIdentity(): boolean {
    return false;
  }
  /** The store is also under a passphrase: ask for it, then unlock(passphrase). */
  get needsPassphrase(): boolean {
    return false;
  }
  /** A link was started: a device key waits for its certificate. */
  get pendingLink(): boolean {
    return false;
  }
  get serverUrl(): string {
    return "";
  }
  /** Opens the stored identity (ClientError "bad_passphrase" on a wrong one). */
  async unlock(_passphrase?: string): Promise<DmClient> {
    throw new Error("not implemented");
  }
  /** A new master key + this browser's device, registered. The phrase is shown once (24 words). */
  async createIdentity(_o: { deviceName: string; passphrase?: string }): Promise<{ client: DmClient; recoveryPhrase: string }> {
    throw new Error("not implemented");
  }
  /** Restores the master from its 24 words and registers a new device for it. */
  async restoreIdentity(_o: { phrase: string; deviceName: string; passphrase?: string }): Promise<DmClient> {
    throw new Error("not implemented");
  }
  /** This browser's device key (device_id) for linking: made once, kept across reloads. */
  async linkDeviceKey(): Promise<string> {
    throw new Error("not implemented");
  }
  /** Accepts a pasted certificate (JSON text) for linkDeviceKey() and registers by logging in (v1.1 §3). */
  async link(_o: { certificate: string; passphrase?: string }): Promise<DmClient> {
    throw new Error("not implemented");
  }
  /** Deletes everything stored in this browser. */
  async wipe(): Promise<void> {
    throw new Error("not implemented");
  }
}
export type { Identity };
