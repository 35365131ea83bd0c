// Every page after onboarding: the header (navigation, connection state), alerts, the page.
import { useEffect, useRef } from "react";
import { ContactsPage } from "./ContactsPage";
import { ConversationsPage } from "./ConversationsPage";
import { DevicesPage } from "./DevicesPage";
import { href, useRoute, type Route } from "./router";
import { useSnapshot, useStore } from "./state";

export function Shell() {
  const route = useRoute();
  const { revoked, warnings, error } = useSnapshot();
  const store = useStore();
  return (
    <div className={`shell page-${route.page}`}>
      <header className="topbar">
        <span className="brand">decentcom</span>
        <Navigation route={route} />
        <ConnectionStatus />
      </header>
      {revoked && (
        <div role="alert" className="banner banner-danger">
          <strong>{revoked}</strong> Its history stays readable in this browser.
        </div>
      )}
      {error && !revoked && <div role="alert" className="banner banner-warn">{error}</div>}
      {warnings.filter((w) => !w.conversationId).map((w, i) => (
        <div key={i} role="alert" className="banner banner-warn">
          {w.text}{" "}
          <button type="button" className="link-button" onClick={() => store.dismissWarning(w)}>Dismiss</button>
        </div>
      ))}
      <Page route={route} />
    </div>
  );
}

function Navigation(props: { route: Route }) {
  const items = [
    { page: "conversations", label: "Conversations", to: href.conversations },
    { page: "devices", label: "Devices", to: href.devices },
    { page: "contacts", label: "Contacts", to: href.contacts },
  ] as const;
  return (
    <nav aria-label="Main">
      <ul className="nav">
        {items.map((item) => (
          <li key={item.page}>
            <a href={item.to} aria-current={props.route.page === item.page ? "page" : undefined}>{item.label}</a>
          </li>
        ))}
      </ul>
    </nav>
  );
}

export function ConnectionStatus() {
  const { connection, revoked } = useSnapshot();
  const state = revoked ? "Offline" : connection;
  return (
    <p role="status" className={`connection connection-${state.toLowerCase()}`}>
      <span className="dot" aria-hidden="true" />
      {state}
    </p>
  );
}

function Page(props: { route: Route }) {
  const { route } = props;
  const main = useRef<HTMLElement>(null);
  // Keyboard and screen-reader users land on the new page's heading.
  const key = route.page === "conversations" ? `c/${route.conversationId ?? ""}` : route.page;
  const first = useRef(true);
  useEffect(() => {
    if (first.current) {
      first.current = false;
      return;
    }
    main.current?.querySelector<HTMLElement>("h1")?.focus();
  }, [key]);
  return (
    <main ref={main} className="page">
      {route.page === "conversations" && <ConversationsPage conversationId={route.conversationId} />}
      {route.page === "devices" && <DevicesPage />}
      {route.page === "contacts" && <ContactsPage />}
    </main>
  );
}
