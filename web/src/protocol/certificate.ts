// §2 delegation certificates: issue, parse, the client's check (24 h tolerance).
import { ProtocolError, b58Key, b64d, b64e, cjson, concat, utf8, SIGNATURE_LEN } from "./encoding";
import { KeyPair, verify } from "./keys";

export const CERT_LABEL = utf8("decentcom/device-cert/v1\n");
export const KNOWN_PERMISSIONS: ReadonlySet<string> = new Set(["manage_devices"]);
const CERT_FIELDS = ["v", "master", "device", "name", "issued_at", "expires_at", "permissions"] as const;
export const CLIENT_CERT_TOLERANCE_S = 24 * 3600;
// Signed times (unix seconds) a certificate may carry: what both Python's
// datetime and a JavaScript Date can hold (dmclient/protocol.py MAX_UNIX_SECONDS).
export const MAX_UNIX_SECONDS = 253402300799; // 9999-12-31T23:59:59Z

export interface CertBody {
  v: number;
  master: string;
  device: string;
  name: string;
  issued_at: number;
  expires_at: number | null;
  permissions: string[];
}
export interface WireCert extends CertBody {
  signature: string;
}

// Controls (C0, C1), format characters (zero-width, bidi overrides and isolates),
// line/paragraph separators and lone surrogates: Python's categories Cc Cf Zl Zp Cs.
const HIDDEN_RE = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cs}]/u;

/** Why `name` is not acceptable as a device name, or null (dmclient/protocol.py name_problem). */
export function nameProblem(name: unknown): string | null {
  if (typeof name !== "string") return "name must be 1-64 characters";
  const length = [...name].length;
  if (length < 1 || length > 64) return "name must be 1-64 characters";
  if (HIDDEN_RE.test(name)) return "name must not hold control, invisible or bidirectional-override characters";
  if (!name.trim()) return "name must not be blank";
  return null;
}

export function certSignedBytes(body: CertBody): Uint8Array {
  return concat(CERT_LABEL, cjson(body));
}

export const isInt = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v);
export const isTime = (v: unknown): v is number => isInt(v) && v >= 0 && v <= MAX_UNIX_SECONDS;

/** "missing [...], unexpected [...]" (each sorted) when `o`'s own keys are not exactly `expected`, else null. */
export function fieldsProblem(o: object, expected: readonly string[]): string | null {
  const keys = Object.keys(o);
  const extra = keys.filter((k) => !expected.includes(k)).sort();
  const missing = expected.filter((k) => !keys.includes(k)).sort();
  return extra.length || missing.length ? `missing ${JSON.stringify(missing)}, unexpected ${JSON.stringify(extra)}` : null;
}

export function certIssue(o: {
  master: KeyPair;
  device: string;
  name: string;
  issuedAt: number;
  expiresAt: number | null;
  permissions: string[];
}): WireCert {
  const problem = nameProblem(o.name);
  if (problem) throw new ProtocolError(problem, "invalid_name");
  b58Key(o.device, "device");
  const body: CertBody = {
    v: 1,
    master: o.master.id,
    device: o.device,
    name: o.name,
    issued_at: o.issuedAt,
    expires_at: o.expiresAt,
    permissions: [...new Set(o.permissions)].sort(),
  };
  return { ...body, signature: b64e(o.master.sign(certSignedBytes(body))) };
}

/** Structure and master signature; times and permissions are for the caller's rules. */
export function certParse(wire: unknown): WireCert {
  if (typeof wire !== "object" || wire === null || Array.isArray(wire))
    throw new ProtocolError("certificate must be an object", "invalid_certificate");
  const w = wire as Record<string, unknown>;
  const fields = fieldsProblem(w, [...CERT_FIELDS, "signature"]);
  if (fields) throw new ProtocolError(`certificate fields: ${fields}`, "invalid_certificate");
  let signature: Uint8Array;
  let body: CertBody;
  try {
    if (!isInt(w.v)) throw new ProtocolError("v must be an integer");
    b58Key(w.master, "master");
    b58Key(w.device, "device");
    const problem = nameProblem(w.name);
    if (problem) throw new ProtocolError(problem);
    if (!isTime(w.issued_at)) throw new ProtocolError(`issued_at must be an integer 0..${MAX_UNIX_SECONDS}`);
    if (w.expires_at !== null && !isTime(w.expires_at))
      throw new ProtocolError(`expires_at must be an integer 0..${MAX_UNIX_SECONDS} or null`);
    const perms = w.permissions;
    if (!Array.isArray(perms) || !perms.every((p) => typeof p === "string"))
      throw new ProtocolError("permissions must be a list of strings");
    const sorted = [...new Set(perms as string[])].sort();
    if (sorted.length !== perms.length || sorted.some((p, i) => p !== perms[i]))
      throw new ProtocolError("permissions must be sorted and without duplicates");
    signature = b64d(w.signature, { length: SIGNATURE_LEN, what: "signature" });
    body = {
      v: w.v,
      master: w.master as string,
      device: w.device as string,
      name: w.name as string,
      issued_at: w.issued_at,
      expires_at: w.expires_at as number | null,
      permissions: perms as string[],
    };
  } catch (exc) {
    if (exc instanceof ProtocolError) throw new ProtocolError(`certificate: ${exc.detail}`, "invalid_certificate");
    throw exc;
  }
  if (!verify(b58Key(body.master), certSignedBytes(body), signature))
    throw new ProtocolError("certificate signature does not verify against master", "invalid_certificate");
  return { ...body, signature: w.signature as string };
}

/** The client's rules (§2): strict structure, 24 h of tolerance on times; unknown permissions ignored. */
export function certCheckClient(
  wire: unknown,
  o: { userId: string; deviceId?: string | null; now: number },
): WireCert {
  const cert = certParse(wire);
  if (cert.v !== 1 || cert.master !== o.userId || (o.deviceId != null && cert.device !== o.deviceId))
    throw new ProtocolError("certificate is not for this user or device", "invalid_certificate");
  if (cert.issued_at > o.now + CLIENT_CERT_TOLERANCE_S)
    throw new ProtocolError("certificate issued in the future", "invalid_certificate");
  if (cert.expires_at !== null && cert.expires_at <= o.now - CLIENT_CERT_TOLERANCE_S)
    throw new ProtocolError("certificate has expired", "certificate_expired");
  return cert;
}
