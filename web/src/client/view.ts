// A conversation as the server sends it (§5), checked, and the rules of
// "Membership a client accepts" (§6): a direct conversation has its two
// participants, and every conversation its kind, for ever.
import { ProtocolError, b58Key, compareCodePoints, isUuid, participantsSha256 } from "../protocol";
import type { ConversationWire } from "../api";
import { ClientError, type Retention, type RetentionPolicy } from "./types";
import { LONGEST_RETENTION_DAYS } from "./receive";

export interface ConversationView {
  conversationId: string;
  kind: "direct" | "group";
  participants: string[];
  participantsSha256: string;
  createdBy: string | null;
  epoch: number;
  retention: Retention;
}

const POLICIES: RetentionPolicy[] = ["burn_on_read", "ttl", "permanent"];

/** `bad_conversation`: the hash is recomputed here and must equal the server's. */
export function viewFromWire(wire: unknown): ConversationView {
  try {
    const w = wire as ConversationWire;
    if (typeof w !== "object" || w === null) throw new ProtocolError("conversation is not an object");
    if (!isUuid(w.conversation_id)) throw new ProtocolError("conversation_id must be a lower-case UUID string");
    const p = w.participants;
    if (!Array.isArray(p) || p.some((u, i) => typeof u !== "string" || (i > 0 && compareCodePoints(p[i - 1]!, u) >= 0)))
      throw new ProtocolError("participants must be a sorted list without duplicates");
    p.forEach((u) => b58Key(u, "participant"));
    if (!Number.isSafeInteger(w.epoch)) throw new ProtocolError("epoch must be an integer");
    const r = w.retention;
    if (typeof r !== "object" || r === null || typeof r.policy !== "string") throw new ProtocolError("retention must be {policy, ttl_days}");
    const digest = participantsSha256(p);
    if (digest !== w.participants_sha256) throw new ProtocolError("participants_sha256 does not match the participants");
    return {
      conversationId: w.conversation_id, kind: w.kind as "direct" | "group", participants: [...p], participantsSha256: digest,
      createdBy: typeof w.created_by === "string" ? w.created_by : null, epoch: w.epoch,
      retention: { policy: r.policy as RetentionPolicy, ttl_days: r.ttl_days ?? null },
    };
  } catch (exc) {
    if (exc instanceof ProtocolError)
      throw new ClientError("bad_conversation", `the server sent an invalid conversation: ${exc.detail}`);
    throw exc;
  }
}

/** Why this view of a conversation cannot be true, or null (dmclient Client._refusal). */
export function refusal(
  old: { kind: string; participants: string[] } | undefined, view: ConversationView, userId: string, expected?: Set<string>,
): string | null {
  if (view.kind !== "direct" && view.kind !== "group") return `unknown kind ${JSON.stringify(view.kind)}`;
  if (expected && (expected.size !== view.participants.length || view.participants.some((u) => !expected.has(u))))
    return "it does not have the participants asked for";
  if (view.kind === "direct" && (view.participants.length !== 2 || !view.participants.includes(userId)))
    return `a direct conversation of ${view.participants.length} participants`;
  if (!old) return null;
  if (old.kind !== view.kind) return `its kind changed from ${old.kind} to ${view.kind}`;
  if (view.kind === "direct" && old.participants.join() !== view.participants.join())
    return "a direct conversation's participants never change";
  return null;
}

/** A retention this client accepts: ttl_days at most LONGEST_RETENTION_DAYS, so its replay window covers every message (§6). */
export function checkRetention(retention: unknown): asserts retention is Retention {
  const r = retention as Retention;
  if (typeof r !== "object" || r === null || !POLICIES.includes(r.policy))
    throw new ClientError("invalid_retention", "retention policy must be burn_on_read, ttl or permanent");
  if (r.policy === "ttl" && !(Number.isSafeInteger(r.ttl_days) && r.ttl_days! >= 1 && r.ttl_days! <= LONGEST_RETENTION_DAYS))
    throw new ClientError("invalid_retention", `ttl_days must be 1..${LONGEST_RETENTION_DAYS} (this client's replay window)`);
}

export function retentionWords(r: Retention): string {
  if (r.policy === "burn_on_read") return "Burn on read";
  if (r.policy === "permanent") return "Permanent";
  return "Time to live";
}

/** The sentence the settings show ("Messages are deleted from the server 7 days after they are sent, read or not"). */
export function retentionSentence(r: Retention, maxUndeliveredDays?: number): string {
  if (r.policy === "ttl")
    return `Messages are deleted from the server ${r.ttl_days} day${r.ttl_days === 1 ? "" : "s"} after they are sent, read or not.`;
  if (r.policy === "burn_on_read")
    return `Messages are deleted from the server as soon as every device has received them${
      maxUndeliveredDays ? `, or after ${maxUndeliveredDays} days if one never does` : ""}.`;
  return `Messages stay on the server until someone changes this${
    maxUndeliveredDays ? ` (a device that does not fetch a message within ${maxUndeliveredDays} days misses it)` : ""}.`;
}
