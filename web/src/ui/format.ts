// Words the interface shows for SDK values: one place, so every screen says the same.
import type { DeliveryStatus, Retention, RetentionPolicy } from "../client";

export const POLICY_WORDS: Record<RetentionPolicy, string> = {
  burn_on_read: "Burn on read",
  ttl: "Time to live",
  permanent: "Permanent",
};

/** Short form for lists: "Burn on read", "7 days", "Permanent". */
export function retentionWords(r: Retention): string {
  if (r.policy === "ttl") return r.ttl_days === 1 ? "1 day" : `${r.ttl_days ?? "?"} days`;
  return POLICY_WORDS[r.policy];
}

/** What a policy means, as a sentence (§8). */
export function retentionSentence(r: Retention, maxUndeliveredDays: number | null): string {
  const undelivered = maxUndeliveredDays
    ? ` A copy no device has fetched within ${maxUndeliveredDays} days is deleted too.`
    : "";
  switch (r.policy) {
    case "burn_on_read":
      return `Messages are deleted from the server as soon as every recipient device has fetched them.${undelivered}`;
    case "ttl":
      return `Messages are deleted from the server ${plural(r.ttl_days ?? 0, "day")} after they are sent, read or not.`;
    case "permanent":
      return `Messages stay on the server until the conversation is deleted.${undelivered}`;
  }
}

/** The SDK's event texts may start with "you": shown as a sentence, "You changed ...". Only that
 * word: a leading short id is case-sensitive base58 and a contact's name is the user's own spelling. */
export function sentence(text: string): string {
  return text.replace(/^you\b/, "You");
}

export function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

/** The "Delivery status" text of the accessible-names table. */
export function statusText(s: DeliveryStatus | undefined): string {
  switch (s?.summary ?? "sending") {
    case "sending":
      return "Sending";
    case "sent":
      return "Sent";
    case "delivered":
      return "Delivered";
    case "not_delivered":
      return `Not delivered to ${plural(s?.notDelivered ?? 0, "device")}`;
  }
}

export function timeText(ms: number | null | undefined): string {
  if (!ms) return "never";
  const d = new Date(ms);
  const today = new Date();
  const sameDay = d.toDateString() === today.toDateString();
  return sameDay
    ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : d.toLocaleString([], { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

export function dateText(ms: number | null | undefined): string {
  return ms ? new Date(ms).toLocaleDateString([], { year: "numeric", month: "short", day: "numeric" }) : "never";
}

/** User ids or contact names, separated by commas, spaces or new lines. */
export function splitParticipants(text: string): string[] {
  return text.split(/[\s,]+/).filter(Boolean);
}

/** A sentence for any error the SDK throws (ClientError, ApiError, anything else). */
/** An error as a sentence: the SDK's and the server's details are written lower case, as the CLI prints them. */
export function errorText(e: unknown): string {
  if (e && typeof e === "object") {
    const { detail, message } = e as { detail?: unknown; message?: unknown };
    const text = typeof detail === "string" && detail ? detail : typeof message === "string" ? message : "";
    if (text) return `${text.charAt(0).toUpperCase()}${text.slice(1)}${/[.!?]$/.test(text) ? "" : "."}`;
  }
  return "Something went wrong.";
}

export function errorCode(e: unknown): string | null {
  const code = e && typeof e === "object" ? (e as { code?: unknown }).code : null;
  return typeof code === "string" ? code : null;
}
