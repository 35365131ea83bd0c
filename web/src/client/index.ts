// The SDK the UI uses: everything below speaks plaintext messages and ids;
// keys, seeds and tokens stay inside (store/ and client/).
export * from "./types";
export { Startup, type StartupOptions } from "./startup";
export { DmClient } from "./client";
