// The UI's one state: what the SDK has told us, kept as a snapshot that React
// reads with useSyncExternalStore. Components never copy it; they derive.
import { createContext, useContext, useSyncExternalStore } from "react";
import type {
  ClientEvent, ConnectionState, Contact, Conversation, DeliveryStatus, DeviceInfo, DmClient, ServerInfo,
  TimelineItem, Warning,
} from "../client";
import { errorText } from "./format";

export interface Snapshot {
  connection: ConnectionState;
  revoked: string | null;
  /** null while the first read runs. */
  conversations: Conversation[] | null;
  contacts: Contact[];
  devices: DeviceInfo[] | null;
  timelines: Readonly<Record<string, TimelineItem[]>>;
  /** Latest delivery status per own message id (DM_STATUS), over what the timeline holds. */
  statuses: Readonly<Record<string, DeliveryStatus>>;
  warnings: Warning[];
  /** Sends under way per conversation, shown as "Sending" until the SDK's timeline has them. */
  outgoing: Readonly<Record<string, Outgoing[]>>;
  server: ServerInfo | null;
  /** The last background failure (a refresh that did not work), shown until the next success. */
  error: string | null;
}

export interface Outgoing {
  body: string;
  /** Hidden once the timeline holds this message: the two updates land apart. */
  messageId: string;
}

export class AppStore {
  private snapshot: Snapshot;
  private readonly listeners = new Set<() => void>();
  private unsubscribe: (() => void) | null = null;

  constructor(readonly client: DmClient) {
    this.snapshot = {
      connection: client.connection, revoked: client.revoked, conversations: null, contacts: [], devices: null,
      timelines: {}, statuses: {}, warnings: [], outgoing: {}, server: null, error: null,
    };
  }

  readonly subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  };

  readonly getSnapshot = (): Snapshot => this.snapshot;

  private set(patch: Partial<Snapshot>) {
    this.snapshot = { ...this.snapshot, ...patch };
    for (const listener of this.listeners) listener();
  }

  /** Listens to the SDK, then reads what the first screens need. */
  async start(): Promise<void> {
    this.unsubscribe ??= this.client.subscribe((event) => this.onEvent(event));
    await Promise.all([
      this.track(this.loadConversations()),
      this.track(this.loadContacts()),
      // Limits are hints for the forms: without them the forms use safe defaults and the server decides.
      this.client.serverInfo().then((server) => this.set({ server }), () => undefined),
    ]);
  }

  stop(): void {
    this.unsubscribe?.();
    this.unsubscribe = null;
  }

  private onEvent(event: ClientEvent): void {
    switch (event.type) {
      case "connection":
        this.set({ connection: event.state });
        break;
      case "revoked":
        this.set({ revoked: event.text });
        break;
      case "timeline":
        void this.track(this.loadTimeline(event.conversationId));
        void this.track(this.loadConversations());
        break;
      case "conversations":
        void this.track(this.loadConversations());
        break;
      case "status":
        this.set({ statuses: { ...this.snapshot.statuses, [event.messageId]: event.status } });
        break;
      case "devices":
        if (this.snapshot.devices) void this.track(this.loadDevices());
        break;
      case "contacts":
        void this.track(this.loadContacts());
        break;
      case "warning":
        this.set({ warnings: [...this.snapshot.warnings, event.warning] });
        break;
    }
  }

  /** Runs a background read; its failure becomes the visible error instead of vanishing. */
  private async track(work: Promise<unknown>): Promise<void> {
    try {
      await work;
      if (this.snapshot.error) this.set({ error: null });
    } catch (e) {
      if (!this.client.revoked) this.set({ error: errorText(e) });
    }
  }

  async loadConversations(): Promise<void> {
    this.set({ conversations: await this.client.conversations() });
  }

  async refreshConversations(): Promise<void> {
    this.set({ conversations: await this.client.refreshConversations() });
  }

  async loadContacts(): Promise<void> {
    this.set({ contacts: await this.client.contacts() });
  }

  async loadDevices(): Promise<void> {
    this.set({ devices: await this.client.devices() });
  }

  async loadTimeline(conversationId: string): Promise<void> {
    const items = await this.client.timeline(conversationId);
    this.set({ timelines: { ...this.snapshot.timelines, [conversationId]: items } });
  }

  addOutgoing(conversationId: string, body: string): Outgoing {
    const outgoing = { body, messageId: crypto.randomUUID() };
    const list = this.snapshot.outgoing[conversationId] ?? [];
    this.set({ outgoing: { ...this.snapshot.outgoing, [conversationId]: [...list, outgoing] } });
    return outgoing;
  }

  removeOutgoing(conversationId: string, messageId: string): void {
    const list = (this.snapshot.outgoing[conversationId] ?? []).filter((o) => o.messageId !== messageId);
    this.set({ outgoing: { ...this.snapshot.outgoing, [conversationId]: list } });
  }

  dismissWarning(warning: Warning): void {
    this.set({ warnings: this.snapshot.warnings.filter((w) => w !== warning) });
  }
}

export const StoreContext = createContext<AppStore | null>(null);

export function useStore(): AppStore {
  const store = useContext(StoreContext);
  if (!store) throw new Error("useStore outside <StoreContext>");
  return store;
}

export function useSnapshot(): Snapshot {
  const store = useStore();
  return useSyncExternalStore(store.subscribe, store.getSnapshot);
}

export function useClient(): DmClient {
  return useStore().client;
}
