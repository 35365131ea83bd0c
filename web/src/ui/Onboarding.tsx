// The start: three ways in. Each ends with a DmClient, and App shows the Conversations page.
import { useEffect, useState, type FormEvent } from "react";
import type { DmClient, Startup } from "../client";
import { errorText } from "./format";
import { ErrorText, LabelledValue } from "./LabelledValue";

type Way = "choose" | "create" | "restore" | "link";

export function Onboarding(props: { boot: Startup; onReady: (client: DmClient) => void }) {
  const [way, setWay] = useState<Way>(props.boot.pendingLink ? "link" : "choose");
  const back = () => setWay("choose");
  return (
    <main className="onboarding">
      <div className="card onboarding-card">
        <p className="brand">decentcom</p>
        {way === "choose" && <StartScreen onChoose={setWay} serverUrl={props.boot.serverUrl} />}
        {way === "create" && <CreateIdentity boot={props.boot} onReady={props.onReady} onBack={back} />}
        {way === "restore" && <RestoreIdentity boot={props.boot} onReady={props.onReady} onBack={back} />}
        {way === "link" && <LinkDevice boot={props.boot} onReady={props.onReady} onBack={back} />}
      </div>
      <footer className="onboarding-footer">
        Keys and messages stay in this browser; the server at {props.boot.serverUrl} only carries encrypted mail.{" "}
        <a href={`${props.boot.serverUrl}/about/`}>About this server</a>
      </footer>
    </main>
  );
}

function StartScreen(props: { onChoose: (way: Way) => void; serverUrl: string }) {
  return (
    <>
      <h1 tabIndex={-1} autoFocus>Private messages, end to end</h1>
      <p className="lead">
        Your messages are encrypted in this browser. Nobody else, not even the server, can read them.
      </p>
      <div className="choices">
        <button type="button" className="primary" onClick={() => props.onChoose("create")}>Create a new identity</button>
        <button type="button" onClick={() => props.onChoose("restore")}>Restore from a recovery phrase</button>
        <button type="button" onClick={() => props.onChoose("link")}>Link to an existing identity</button>
      </div>
    </>
  );
}

function BackButton(props: { onBack: () => void }) {
  return (
    <button type="button" className="link-button back" onClick={props.onBack}>
      ← Other ways in
    </button>
  );
}

function useSubmit<T>(work: () => Promise<T>, done: (value: T) => void) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const submit = (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    work().then(done, (err: unknown) => {
      setError(errorText(err));
      setBusy(false);
    });
  };
  return { busy, error, submit };
}

function CreateIdentity(props: { boot: Startup; onReady: (client: DmClient) => void; onBack: () => void }) {
  const [deviceName, setDeviceName] = useState(defaultDeviceName());
  const [made, setMade] = useState<{ client: DmClient; recoveryPhrase: string } | null>(null);
  const [saved, setSaved] = useState(false);
  const { busy, error, submit } = useSubmit(() => props.boot.createIdentity({ deviceName: deviceName.trim() }), setMade);
  if (made) {
    return (
      <form onSubmit={(e) => { e.preventDefault(); if (saved) props.onReady(made.client); }}>
        <h1 tabIndex={-1} autoFocus>Your recovery phrase</h1>
        <p>
          These 24 words are your identity. Write them down and keep them somewhere safe: with them you can restore
          your identity on a new device. They are shown only now, and anyone who has them can read your messages.
        </p>
        <LabelledValue label="Recovery phrase" value={made.recoveryPhrase} className="phrase" />
        <label className="check">
          <input type="checkbox" checked={saved} onChange={(e) => setSaved(e.target.checked)} />
          I have saved my recovery phrase
        </label>
        <div className="actions">
          <button type="submit" className="primary" disabled={!saved}>Continue</button>
        </div>
      </form>
    );
  }
  return (
    <form onSubmit={submit}>
      <BackButton onBack={props.onBack} />
      <h1 tabIndex={-1} autoFocus>Create a new identity</h1>
      <p>This makes a new identity and this browser its first device. The name helps you tell your devices apart.</p>
      <label className="field">
        Device name
        <input value={deviceName} onChange={(e) => setDeviceName(e.target.value)} required maxLength={64} autoFocus />
      </label>
      <ErrorText text={error} />
      <div className="actions">
        <button type="submit" className="primary" disabled={busy || !deviceName.trim()}>
          {busy ? "Creating…" : "Continue"}
        </button>
      </div>
    </form>
  );
}

function RestoreIdentity(props: { boot: Startup; onReady: (client: DmClient) => void; onBack: () => void }) {
  const [phrase, setPhrase] = useState("");
  const [deviceName, setDeviceName] = useState(defaultDeviceName());
  const { busy, error, submit } = useSubmit(
    () => props.boot.restoreIdentity({ phrase: phrase.trim().split(/\s+/).join(" "), deviceName: deviceName.trim() }),
    props.onReady,
  );
  return (
    <form onSubmit={submit}>
      <BackButton onBack={props.onBack} />
      <h1 tabIndex={-1} autoFocus>Restore from a recovery phrase</h1>
      <p>Type the 24 words you saved. This browser becomes a new device of that identity.</p>
      <label className="field">
        Recovery phrase
        <textarea value={phrase} onChange={(e) => setPhrase(e.target.value)} rows={4} required
          autoComplete="off" autoCapitalize="none" spellCheck={false} />
      </label>
      <label className="field">
        Device name
        <input value={deviceName} onChange={(e) => setDeviceName(e.target.value)} required maxLength={64} />
      </label>
      <ErrorText text={error} />
      <div className="actions">
        <button type="submit" className="primary" disabled={busy}>{busy ? "Restoring…" : "Restore"}</button>
      </div>
    </form>
  );
}

function LinkDevice(props: { boot: Startup; onReady: (client: DmClient) => void; onBack: () => void }) {
  const [deviceKey, setDeviceKey] = useState<string | null>(null);
  const [keyError, setKeyError] = useState<string | null>(null);
  const [certificate, setCertificate] = useState("");
  useEffect(() => {
    props.boot.linkDeviceKey().then(setDeviceKey, (e: unknown) => setKeyError(errorText(e)));
  }, [props.boot]);
  const { busy, error, submit } = useSubmit(() => props.boot.link({ certificate: certificate.trim() }), props.onReady);
  return (
    <form onSubmit={submit}>
      <BackButton onBack={props.onBack} />
      <h1 tabIndex={-1} autoFocus>Link to an existing identity</h1>
      <p>
        On a device that holds your identity, certify this key: in another browser open <em>Devices</em> and use
        "Certify", or run <code>dmc device certify</code>. Then paste the certificate here.
      </p>
      {deviceKey ? <LabelledValue label="Device key" value={deviceKey} className="value-mono" /> : <p>Making this browser's key…</p>}
      <ErrorText text={keyError} />
      <label className="field">
        Certificate
        <textarea value={certificate} onChange={(e) => setCertificate(e.target.value)} rows={5} required
          className="value-mono" spellCheck={false} placeholder='{"device": "…", "signature": "…", …}' />
      </label>
      <ErrorText text={error} />
      <div className="actions">
        <button type="submit" className="primary" disabled={busy || !deviceKey}>{busy ? "Linking…" : "Link"}</button>
      </div>
    </form>
  );
}

/** "Chromium on Linux"-like: a sensible first name for this browser. */
function defaultDeviceName(): string {
  const ua = navigator.userAgent;
  const browser = /Firefox\//.test(ua) ? "Firefox" : /Edg\//.test(ua) ? "Edge" : /Chrom/.test(ua) ? "Chrome" : /Safari\//.test(ua) ? "Safari" : "Browser";
  const os = /Android/.test(ua) ? "Android" : /iPhone|iPad/.test(ua) ? "iOS" : /Mac OS/.test(ua) ? "Mac" : /Windows/.test(ua) ? "Windows" : /Linux/.test(ua) ? "Linux" : "";
  return os ? `${browser} on ${os}` : browser;
}

/** The store is under a passphrase: ask for it. */
export function UnlockScreen(props: { boot: Startup; onReady: (client: DmClient) => void }) {
  const [passphrase, setPassphrase] = useState("");
  const { busy, error, submit } = useSubmit(() => props.boot.unlock(passphrase), props.onReady);
  return (
    <main className="onboarding">
      <form className="card onboarding-card" onSubmit={submit}>
        <p className="brand">decentcom</p>
        <h1 tabIndex={-1} autoFocus>Unlock</h1>
        <p>Your keys and messages in this browser are protected by a passphrase.</p>
        <label className="field">
          Passphrase
          <input type="password" value={passphrase} onChange={(e) => setPassphrase(e.target.value)} required autoFocus />
        </label>
        <ErrorText text={error} />
        <div className="actions">
          <button type="submit" className="primary" disabled={busy}>{busy ? "Unlocking…" : "Unlock"}</button>
        </div>
      </form>
    </main>
  );
}
