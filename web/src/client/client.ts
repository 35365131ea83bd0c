import type {
  ClientEvent, ConnectionState, Contact, Conversation, DeliveryStatus, DeviceInfo, Identity, Message,
  Retention, SendOptions, ServerInfo, TimelineItem,
} from "./types";

/** One device's client: session, conversations, send, sync -> check -> store -> ACK, gateway. */
export class DmClient {
  get identity(): Identity {
    throw new Error("not implemented");
  }
  get connection(): ConnectionState {
    return "Offline";
  }
  /** The device was revoked: the client is locked (everything else throws). */
  get revoked(): string | null {
    return null;
  }
  /** Connect the gateway and sync; reconnects with backoff until stop(). */
  async start(): Promise<void> {}
  async stop(): Promise<void> {}
  /** Events for the UI; returns the unsubscribe function. */
  subscribe(_listener: (event: ClientEvent) => void): () => void {
    return () => {};
  }
  async serverInfo(): Promise<ServerInfo> {
    throw new Error("not implemented");
  }
  /** NAME of the accessible-names table: contact name, or the first 8 characters of the user id. */
  displayName(userId: string): string {
    return userId.slice(0, 8);
  }

  // conversations
  /** Local list, latest activity first. */
  async conversations(): Promise<Conversation[]> {
    return [];
  }
  /** Fetches every page from the server, applies §6 membership rules, then returns the list. */
  async refreshConversations(): Promise<Conversation[]> {
    return [];
  }
  async conversation(_conversationId: string): Promise<Conversation | null> {
    return null;
  }
  /** Participants: user ids or contact names. */
  async createConversation(_participants: string[], _retention?: Retention): Promise<Conversation> {
    throw new Error("not implemented");
  }
  async setRetention(_conversationId: string, _retention: Retention): Promise<Conversation> {
    throw new Error("not implemented");
  }
  async addMembers(_conversationId: string, _participants: string[]): Promise<Conversation> {
    throw new Error("not implemented");
  }
  async removeMember(_conversationId: string, _userId: string): Promise<void> {}
  async leave(_conversationId: string): Promise<void> {}
  /** Messages, failures and events of a conversation, oldest first. */
  async timeline(_conversationId: string): Promise<TimelineItem[]> {
    return [];
  }
  async markRead(_conversationId: string): Promise<void> {}
  /** Encrypts and sends, with the retries of the Python client. */
  async send(_conversationId: string, _text: string, _options: SendOptions = {}): Promise<Message> {
    throw new Error("not implemented");
  }
  /** Per-device delivery detail of an own message (§7a). */
  async deliveryStatus(_messageId: string): Promise<DeliveryStatus> {
    throw new Error("not implemented");
  }
  async sync(): Promise<{ accepted: number; failed: number }> {
    return { accepted: 0, failed: 0 };
  }

  // devices
  async devices(): Promise<DeviceInfo[]> {
    return [];
  }
  async revokeDevice(_deviceId: string): Promise<void> {}
  /** A certificate (JSON text) for another device of this user; needs holdsMaster. */
  async certifyDevice(_deviceKey: string, _o: { name?: string; expiresDays?: number | null } = {}): Promise<string> {
    throw new Error("not implemented");
  }
  /** The 24 words of the master seed (only when holdsMaster). */
  async recoveryPhrase(): Promise<string> {
    throw new Error("not implemented");
  }

  // contacts
  async contacts(): Promise<Contact[]> {
    return [];
  }
  async setContact(_userId: string, _name: string): Promise<Contact> {
    throw new Error("not implemented");
  }
  async removeContact(_userId: string): Promise<void> {}
  /** The §6 safety number with this user (12 groups of 5 digits, single spaces). */
  safetyNumber(_userId: string): string {
    throw new Error("not implemented");
  }
  async markVerified(_userId: string, _verified = true): Promise<void> {}

  // store
  /** Sets (or with null removes) the passphrase that also protects the store. */
  async setPassphrase(_passphrase: string | null): Promise<void> {}
  /** Ends the session on the server and closes (the store stays). */
  async logout(): Promise<void> {}
}

export type { Message };
