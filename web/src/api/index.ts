export * from "./http";
export * from "./endpoints";
export * from "./gateway";
