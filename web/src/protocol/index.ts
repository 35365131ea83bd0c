// One protocol, two implementations: this mirrors dmclient/protocol.py (v1, v1.1, v1.2).
export * from "./encoding";
export * from "./keys";
export * from "./certificate";
export * from "./message";
export * from "./safety";
export * from "./prekeys";
