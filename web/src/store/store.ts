// IndexedDB, encrypted at rest. Every record's value is AES-256-GCM under a
// random data key; that data key is sealed by a non-extractable WebCrypto key
// that never leaves this browser's IndexedDB (so a copy of the database files
// alone opens nothing), and optionally also under a passphrase (PBKDF2-SHA256
// in WebCrypto, PBKDF2_ITERATIONS rounds), which is then asked on start.
// Record ids (conversation and message ids, user ids) are plain so ranges can
// be read; everything else is ciphertext bound to its table and id.

// 2 (v1.2): the prekey tables; an upgrade adds the missing object stores and keeps the rest.
const DB_VERSION = 2;
export const TABLES = [
  "meta", // identity: seeds, certificate, server, token
  "conversations",
  "epochs", // `${cid}/${epoch}`: membership history per epoch
  "timeline", // `${cid}/${at}/${id}`: messages, failures, events
  "msgindex", // message id -> timeline id (status updates)
  "seen", // `${senderDevice}/${messageId}`: the replay window
  "seq", // `${cid}/${senderDevice}`: last seq seen
  "contacts",
  "directory", // user id -> their devices with certificates
  "senderKeys", // `${cid}/${epoch}`
  "receivedKeys", // `${cid}/${senderDevice}/${epoch}/${keyId}`
  "wrapsSent", // `${cid}/${keyId}` -> device id -> holds key (and the wrap to send again until it does)
  "signedPrekeys", // padded id -> this device's signed prekey: private key, created, replaced (§6b)
  "oneTimePrekeys", // padded id -> this device's one-time prekey: private key (§6b)
] as const;
export type Table = (typeof TABLES)[number];

export const PBKDF2_ITERATIONS = 600_000;
const KEYRING = "keyring";

interface Sealed {
  iv: Uint8Array;
  ct: Uint8Array;
}
interface KeyringRecord {
  deviceKey: CryptoKey; // non-extractable; seals the data key
  sealedDataKey: Sealed; // under deviceKey: the raw data key, or with a passphrase its passphrase seal
  passphrase: { salt: Uint8Array; iterations: number } | null;
}

export class StoreError extends Error {
  constructor(readonly code: "bad_passphrase" | "locked" | "not_initialized", detail: string) {
    super(detail);
  }
}

function req<T>(r: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}
function done(tx: IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error ?? new Error("transaction aborted"));
  });
}

const enc = new TextEncoder();
const dec = new TextDecoder();
const subtle = () => globalThis.crypto.subtle;
// WebCrypto's types want ArrayBuffer-backed views; ours always are.
const bs = (u: Uint8Array): BufferSource => u as Uint8Array<ArrayBuffer>;

async function aesEncrypt(key: CryptoKey, data: Uint8Array, aad: Uint8Array): Promise<Sealed> {
  const iv = crypto.getRandomValues(new Uint8Array(12));
  const ct = new Uint8Array(await subtle().encrypt({ name: "AES-GCM", iv, additionalData: bs(aad) }, key, bs(data)));
  return { iv, ct };
}
async function aesDecrypt(key: CryptoKey, s: Sealed, aad: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await subtle().decrypt({ name: "AES-GCM", iv: bs(s.iv), additionalData: bs(aad) }, key, bs(s.ct)));
}
async function importAes(raw: Uint8Array): Promise<CryptoKey> {
  return subtle().importKey("raw", bs(raw), "AES-GCM", false, ["encrypt", "decrypt"]);
}
async function passphraseKey(passphrase: string, salt: Uint8Array, iterations: number): Promise<CryptoKey> {
  const base = await subtle().importKey("raw", enc.encode(passphrase.normalize("NFC")), "PBKDF2", false, ["deriveKey"]);
  return subtle().deriveKey(
    { name: "PBKDF2", hash: "SHA-256", salt: bs(salt), iterations },
    base,
    { name: "AES-GCM", length: 256 },
    false,
    ["encrypt", "decrypt"],
  );
}

const DATA_KEY_AAD = enc.encode("decentcom-web/data-key/v1");
const PASSPHRASE_AAD = enc.encode("decentcom-web/passphrase/v1");

// Bytes survive JSON through this replacer/reviver pair (seeds, keys).
function replacer(_k: string, value: unknown): unknown {
  return value instanceof Uint8Array ? { $bytes: Array.from(value) } : value;
}
function reviver(_k: string, value: unknown): unknown {
  if (value && typeof value === "object" && "$bytes" in value) return Uint8Array.from((value as { $bytes: number[] }).$bytes);
  return value;
}

export interface Write {
  table: Table;
  id: string;
  value: unknown | null; // null deletes
}

/** An encrypted key-value store over one IndexedDB database. */
export class Store {
  private dataKey: CryptoKey | null = null;
  private constructor(
    private readonly db: IDBDatabase,
    private keyring: KeyringRecord | null,
    readonly name: string,
  ) {}

  static async open(name = "decentcom"): Promise<Store> {
    const open = indexedDB.open(name, DB_VERSION);
    open.onupgradeneeded = () => {
      for (const t of [KEYRING, ...TABLES]) if (!open.result.objectStoreNames.contains(t)) open.result.createObjectStore(t);
    };
    const db = await req(open);
    const keyring = (await req(db.transaction(KEYRING).objectStore(KEYRING).get("keyring"))) as KeyringRecord | undefined;
    return new Store(db, keyring ?? null, name);
  }

  get initialized(): boolean {
    return this.keyring !== null;
  }
  get needsPassphrase(): boolean {
    return this.keyring?.passphrase != null;
  }
  get unlocked(): boolean {
    return this.dataKey !== null;
  }

  /** A fresh data key, sealed under a new non-extractable device key (and the passphrase, if any). */
  async initialize(passphrase?: string): Promise<void> {
    const deviceKey = await subtle().generateKey({ name: "AES-GCM", length: 256 }, false, ["encrypt", "decrypt"]);
    const raw = crypto.getRandomValues(new Uint8Array(32));
    const record = await this.sealDataKey(deviceKey, raw, passphrase);
    const tx = this.db.transaction([KEYRING, ...TABLES], "readwrite");
    for (const t of TABLES) tx.objectStore(t).clear();
    tx.objectStore(KEYRING).put(record, "keyring");
    await done(tx);
    this.keyring = record;
    this.dataKey = await importAes(raw);
    raw.fill(0);
  }

  private async sealDataKey(deviceKey: CryptoKey, raw: Uint8Array, passphrase?: string | null): Promise<KeyringRecord> {
    let inner = raw;
    let meta: KeyringRecord["passphrase"] = null;
    if (passphrase) {
      meta = { salt: crypto.getRandomValues(new Uint8Array(16)), iterations: PBKDF2_ITERATIONS };
      const sealed = await aesEncrypt(await passphraseKey(passphrase, meta.salt, meta.iterations), raw, PASSPHRASE_AAD);
      inner = enc.encode(JSON.stringify(sealed, replacer));
    }
    return { deviceKey, sealedDataKey: await aesEncrypt(deviceKey, inner, DATA_KEY_AAD), passphrase: meta };
  }

  private async openDataKey(passphrase?: string | null): Promise<Uint8Array> {
    const k = this.keyring;
    if (!k) throw new StoreError("not_initialized", "nothing is stored in this browser yet");
    const inner = await aesDecrypt(k.deviceKey, k.sealedDataKey, DATA_KEY_AAD);
    if (!k.passphrase) return inner;
    if (!passphrase) throw new StoreError("bad_passphrase", "this store is protected by a passphrase");
    const sealed = JSON.parse(dec.decode(inner), reviver) as Sealed;
    try {
      return await aesDecrypt(await passphraseKey(passphrase, k.passphrase.salt, k.passphrase.iterations), sealed, PASSPHRASE_AAD);
    } catch {
      throw new StoreError("bad_passphrase", "wrong passphrase");
    }
  }

  async unlock(passphrase?: string): Promise<void> {
    const raw = await this.openDataKey(passphrase);
    this.dataKey = await importAes(raw);
    raw.fill(0);
  }

  /** Sets, changes or (null) removes the passphrase; the records stay as they are. */
  async setPassphrase(current: string | null, next: string | null): Promise<void> {
    const raw = await this.openDataKey(current);
    const record = await this.sealDataKey(this.keyring!.deviceKey, raw, next);
    raw.fill(0);
    const tx = this.db.transaction(KEYRING, "readwrite");
    tx.objectStore(KEYRING).put(record, "keyring");
    await done(tx);
    this.keyring = record;
  }

  lock(): void {
    this.dataKey = null;
  }

  private key(): CryptoKey {
    if (!this.dataKey) throw new StoreError("locked", "the store is locked");
    return this.dataKey;
  }

  private async seal(table: Table, id: string, value: unknown): Promise<Sealed> {
    return aesEncrypt(this.key(), enc.encode(JSON.stringify(value, replacer)), enc.encode(`${table}/${id}`));
  }
  private async unseal<T>(table: Table, id: string, s: Sealed): Promise<T> {
    return JSON.parse(dec.decode(await aesDecrypt(this.key(), s, enc.encode(`${table}/${id}`))), reviver) as T;
  }

  async get<T>(table: Table, id: string): Promise<T | undefined> {
    const s = (await req(this.db.transaction(table).objectStore(table).get(id))) as Sealed | undefined;
    return s === undefined ? undefined : this.unseal<T>(table, id, s);
  }

  /** Records whose id starts with `prefix`, in id order. */
  async list<T>(table: Table, prefix = ""): Promise<{ id: string; value: T }[]> {
    const store = this.db.transaction(table).objectStore(table);
    const range = prefix ? IDBKeyRange.bound(prefix, `${prefix}\uffff`) : undefined;
    const [keys, values] = await Promise.all([req(store.getAllKeys(range)), req(store.getAll(range))]);
    return Promise.all(keys.map(async (k, i) => ({ id: String(k), value: await this.unseal<T>(table, String(k), values[i] as Sealed) })));
  }

  async put(table: Table, id: string, value: unknown): Promise<void> {
    await this.write([{ table, id, value }]);
  }
  async delete(table: Table, id: string): Promise<void> {
    await this.write([{ table, id, value: null }]);
  }

  /** Several writes in one IndexedDB transaction (encrypted first: a transaction cannot wait on WebCrypto). */
  async write(writes: Write[]): Promise<void> {
    if (!writes.length) return;
    const sealed = await Promise.all(writes.map((w) => (w.value === null ? null : this.seal(w.table, w.id, w.value))));
    const tx = this.db.transaction([...new Set(writes.map((w) => w.table))], "readwrite");
    writes.forEach((w, i) => {
      const s = sealed[i];
      if (s == null) tx.objectStore(w.table).delete(w.id);
      else tx.objectStore(w.table).put(s, w.id);
    });
    await done(tx);
  }

  /** Deletes every record and the keys (a revoked device, or "forget this browser"). */
  async wipe(): Promise<void> {
    const tx = this.db.transaction([KEYRING, ...TABLES], "readwrite");
    for (const t of [KEYRING, ...TABLES]) tx.objectStore(t).clear();
    await done(tx);
    this.keyring = null;
    this.dataKey = null;
  }

  close(): void {
    this.db.close();
  }

  /** Raw stored values, for tests that check nothing is kept in clear. */
  async rawDump(): Promise<unknown[]> {
    const out: unknown[] = [];
    for (const t of [KEYRING, ...TABLES]) out.push(...(await req(this.db.transaction(t).objectStore(t).getAll())));
    return out;
  }
}

/** Runs `fn` with an exclusive lock across tabs (Web Locks) or, without them, within this page. */
const localLocks = new Map<string, Promise<unknown>>();
export async function withLock<T>(name: string, fn: () => Promise<T>): Promise<T> {
  const locks = (globalThis.navigator as Navigator | undefined)?.locks;
  if (locks) return locks.request(name, fn) as Promise<T>;
  const previous = localLocks.get(name) ?? Promise.resolve();
  const run = previous.catch(() => undefined).then(fn);
  localLocks.set(name, run);
  try {
    return await run;
  } finally {
    if (localLocks.get(name) === run) localLocks.delete(name);
  }
}
