// Boot: open the local store, then onboarding, unlock or the app itself.
import { useEffect, useMemo, useState } from "react";
import { Startup, type DmClient } from "../client";
import { errorText } from "./format";
import { Onboarding, UnlockScreen } from "./Onboarding";
import { navigate, href } from "./router";
import { Shell } from "./Shell";
import { AppStore, StoreContext } from "./state";

type Phase =
  | { kind: "loading" }
  | { kind: "failed"; text: string }
  | { kind: "start"; boot: Startup }
  | { kind: "locked"; boot: Startup }
  | { kind: "ready"; client: DmClient };

export function App(props: { serverUrl?: string }) {
  const [phase, setPhase] = useState<Phase>({ kind: "loading" });
  useEffect(() => {
    let cancelled = false;
    (async (): Promise<Phase> => {
      const boot = await Startup.open(props.serverUrl ? { serverUrl: props.serverUrl } : {});
      if (!boot.hasIdentity) return { kind: "start", boot };
      if (boot.needsPassphrase) return { kind: "locked", boot };
      return { kind: "ready", client: await boot.unlock() };
    })().then(
      (next) => !cancelled && setPhase(next),
      (e: unknown) => !cancelled && setPhase({ kind: "failed", text: errorText(e) }),
    );
    return () => {
      cancelled = true;
    };
  }, [props.serverUrl]);

  const ready = (client: DmClient) => {
    navigate(href.conversations); // onboarding ends on the Conversations page
    setPhase({ kind: "ready", client });
  };

  switch (phase.kind) {
    case "loading":
      return <main className="center" aria-busy="true"><p role="status">Opening…</p></main>;
    case "failed":
      return (
        <main className="center">
          <div className="card">
            <h1>This browser cannot open decentcom</h1>
            <p role="alert" className="error">{phase.text}</p>
            <p>Private windows of some browsers do not allow the storage it needs.</p>
          </div>
        </main>
      );
    case "start":
      return <Onboarding boot={phase.boot} onReady={ready} />;
    case "locked":
      return <UnlockScreen boot={phase.boot} onReady={(client) => setPhase({ kind: "ready", client })} />;
    case "ready":
      return <Running client={phase.client} />;
  }
}

function Running(props: { client: DmClient }) {
  const store = useMemo(() => new AppStore(props.client), [props.client]);
  useEffect(() => {
    void store.start();
    void props.client.start();
    return () => store.stop();
  }, [store, props.client]);
  return (
    <StoreContext.Provider value={store}>
      <Shell />
    </StoreContext.Provider>
  );
}
