// Hash routes: they work the same at the server's `/`, on another origin and
// from a local copy, with no server-side routing.
import { useEffect, useState } from "react";

export type Route =
  | { page: "conversations"; conversationId: string | null }
  | { page: "devices" }
  | { page: "contacts" };

export function parseRoute(hash: string): Route {
  const [, page, id] = hash.replace(/^#/, "").split("/");
  if (page === "devices") return { page: "devices" };
  if (page === "contacts") return { page: "contacts" };
  return { page: "conversations", conversationId: id ? decodeURIComponent(id) : null };
}

export const href = {
  conversations: "#/conversations",
  conversation: (id: string) => `#/conversations/${encodeURIComponent(id)}`,
  devices: "#/devices",
  contacts: "#/contacts",
};

export function navigate(to: string): void {
  if (location.hash !== to) location.hash = to;
}

export function useRoute(): Route {
  const [hash, setHash] = useState(location.hash);
  useEffect(() => {
    const onChange = () => setHash(location.hash);
    window.addEventListener("hashchange", onChange);
    return () => window.removeEventListener("hashchange", onChange);
  }, []);
  return parseRoute(hash);
}
