import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { App } from "./ui/App";
import "./ui/styles.css";

// The server this bundle talks to: the page's own origin, or `?server=` for a
// copy served elsewhere or opened locally (that server must list this origin
// in CORS_ALLOWED_ORIGINS). Only before an identity exists: the stored one keeps its server.
const server = new URLSearchParams(location.search).get("server") ?? undefined;

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <App serverUrl={server} />
  </StrictMode>,
);
