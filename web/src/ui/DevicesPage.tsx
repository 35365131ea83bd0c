// Multi-device status: every device of this user, revoke, certify a new one, this browser's own keys.
import { useEffect, useState, type FormEvent } from "react";
import type { DeviceInfo } from "../client";
import { Dialog } from "./Dialog";
import { dateText, errorText, timeText } from "./format";
import { ErrorText, LabelledValue } from "./LabelledValue";
import { useSnapshot, useStore } from "./state";

export function DevicesPage() {
  const store = useStore();
  const { identity } = store.client;
  const { devices } = useSnapshot();
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    store.loadDevices().catch((e: unknown) => setError(errorText(e)));
  }, [store]);
  return (
    <div className="page-narrow">
      <h1 tabIndex={-1}>Devices</h1>
      <section className="card">
        <LabelledValue label="Your user id" value={identity.userId} className="value-mono" />
        <p className="hint">Give this id to people who want to write to you.</p>
      </section>
      <section className="card" aria-labelledby="devices-heading">
        <h2 id="devices-heading">Your devices</h2>
        <ErrorText text={error} />
        {devices === null && !error && <p aria-busy="true">Loading devices…</p>}
        {devices && <DeviceList devices={devices} />}
      </section>
      {identity.holdsMaster && <CertifyDevice />}
      <section className="card" aria-labelledby="this-heading">
        <h2 id="this-heading">This browser</h2>
        <LabelledValue label="This device's key" value={identity.deviceId} className="value-mono" />
        <p className="hint">
          {identity.holdsMaster
            ? "This browser holds your identity's master key: it can certify new devices and show your recovery phrase."
            : "This browser is a linked device: certify new devices from the device that holds your master key."}
        </p>
        <ForwardSecrecy />
        {identity.holdsMaster && <RecoveryPhrase />}
        <PassphraseSettings />
      </section>
    </div>
  );
}

/** §6b as a person reads it: whether this browser's prekeys are on the server, and how many one-time ones. */
function ForwardSecrecy() {
  const store = useStore();
  const [text, setText] = useState<string | null>(null);
  useEffect(() => {
    let live = true;
    store.client.prekeyInfo().then(
      (i) => live && setText(i.signedPrekeyId === null
        ? "Not on yet: this browser's prekeys are not on the server (it may be older than protocol 1.2), so messages to it are encrypted without forward secrecy."
        : `${i.firstPublishedAt === null ? "On" : `On since ${dateText(i.firstPublishedAt)}`}: messages to this browser are encrypted with keys it erases once used (signed prekey ${i.signedPrekeyId}, ${i.oneTimeCount} one-time prekeys on the server).`),
      (e: unknown) => live && setText(`Unknown: ${errorText(e)}`),
    );
    return () => {
      live = false;
    };
  }, [store]);
  return <p className="hint" aria-live="polite"><strong>Forward secrecy:</strong> {text ?? "checking…"}</p>;
}

function stateWords(d: DeviceInfo): string {
  return d.current ? `${d.state}, this device` : d.state;
}

function DeviceList(props: { devices: DeviceInfo[] }) {
  const [revoking, setRevoking] = useState<DeviceInfo | null>(null);
  return (
    <>
      <div className="table-wrap">
        <table className="devices" role="table">
          <thead role="rowgroup">
            <tr role="row">
              <th role="columnheader" scope="col">Name</th>
              <th role="columnheader" scope="col">State</th>
              <th role="columnheader" scope="col">Last seen</th>
              <th role="columnheader" scope="col">Waiting</th>
              <th role="columnheader" scope="col">Expires</th>
              <th role="columnheader" scope="col"><span className="sr-only">Actions</span></th>
            </tr>
          </thead>
          <tbody role="rowgroup">
            {props.devices.map((d) => (
              <tr role="row" key={d.deviceId} className={d.state === "active" ? "" : "inactive"}>
                <th role="rowheader" scope="row">
                  {d.name}
                  <span className="device-id mono">{d.deviceId.slice(0, 8)}</span>
                  {!d.certificateOk && <span className="badge badge-danger">certificate does not verify</span>}
                </th>
                <td role="cell"><span className={`badge state-${d.state}`}>{stateWords(d)}</span></td>
                <td role="cell" data-label="Last seen">{timeText(d.lastSeenAt)}</td>
                <td role="cell" data-label="Messages waiting">{d.pendingCount}</td>
                <td role="cell" data-label="Certificate expires">{d.expiresAt ? dateText(d.expiresAt) : "never"}</td>
                <td role="cell">
                  {d.state === "active" && !d.current && (
                    <button type="button" className="danger small" onClick={() => setRevoking(d)}>Revoke {d.name}</button>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {revoking && <RevokeDialog device={revoking} onClose={() => setRevoking(null)} />}
    </>
  );
}

function RevokeDialog(props: { device: DeviceInfo; onClose: () => void }) {
  const store = useStore();
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const revoke = () => {
    setBusy(true);
    store.client.revokeDevice(props.device.deviceId).then(
      async () => {
        await store.loadDevices();
        props.onClose();
      },
      (e: unknown) => {
        setError(errorText(e));
        setBusy(false);
      },
    );
  };
  return (
    <Dialog title={`Revoke ${props.device.name}?`} onClose={props.onClose}>
      <p>
        {props.device.name} will stop receiving messages at once and cannot sign in again. Messages waiting for it are
        dropped. This cannot be undone.
      </p>
      <ErrorText text={error} />
      <div className="actions">
        <button type="button" data-autofocus onClick={props.onClose}>Cancel</button>
        <button type="button" className="danger" disabled={busy} onClick={revoke}>Revoke</button>
      </div>
    </Dialog>
  );
}

function CertifyDevice() {
  const store = useStore();
  const [deviceKey, setDeviceKey] = useState("");
  const [name, setName] = useState("");
  const [certificate, setCertificate] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const submit = (e: FormEvent) => {
    e.preventDefault();
    setError(null);
    setCertificate(null);
    store.client
      .certifyDevice(deviceKey.trim(), name.trim() ? { name: name.trim() } : {})
      .then(setCertificate, (err: unknown) => setError(errorText(err)));
  };
  return (
    <section className="card" aria-labelledby="certify-heading">
      <h2 id="certify-heading">Add a device</h2>
      <p className="hint">
        On the new device choose "Link to an existing identity" and paste its device key here. Then paste the
        certificate into the new device.
      </p>
      <form onSubmit={submit}>
        <label className="field">
          Device key to certify
          <input value={deviceKey} onChange={(e) => setDeviceKey(e.target.value)} required className="value-mono" spellCheck={false} />
        </label>
        <label className="field">
          Name for the new device
          <input value={name} onChange={(e) => setName(e.target.value)} maxLength={64} placeholder="e.g. Work laptop" />
        </label>
        <ErrorText text={error} />
        <div className="actions start">
          <button type="submit" className="primary" disabled={!deviceKey.trim()}>Certify</button>
        </div>
      </form>
      {certificate && <LabelledValue label="Certificate" value={certificate} className="value-mono certificate" />}
    </section>
  );
}

function RecoveryPhrase() {
  const store = useStore();
  const [phrase, setPhrase] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  if (phrase) return <LabelledValue label="Recovery phrase" value={phrase} className="phrase" />;
  return (
    <>
      <button type="button" onClick={() => store.client.recoveryPhrase().then(setPhrase, (e: unknown) => setError(errorText(e)))}>
        Show recovery phrase
      </button>
      <ErrorText text={error} />
    </>
  );
}

function PassphraseSettings() {
  const store = useStore();
  const [passphrase, setPassphrase] = useState("");
  const [note, setNote] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const apply = (value: string | null) => {
    setError(null);
    store.client.setPassphrase(value).then(
      () => {
        setPassphrase("");
        setNote(value ? "This browser now asks for the passphrase on start." : "The passphrase is removed.");
      },
      (e: unknown) => setError(errorText(e)),
    );
  };
  return (
    <form className="inline-form passphrase" onSubmit={(e) => { e.preventDefault(); if (passphrase) apply(passphrase); }}>
      <label className="field grow">
        Passphrase for this browser
        <input type="password" value={passphrase} onChange={(e) => setPassphrase(e.target.value)} autoComplete="new-password"
          aria-describedby="passphrase-hint" />
      </label>
      <button type="submit" disabled={!passphrase}>Set passphrase</button>
      <button type="button" className="link-button" onClick={() => apply(null)}>Remove passphrase</button>
      <p id="passphrase-hint" className="hint full">
        Optional: keys and history here are always encrypted; with a passphrase they also need it to open.
      </p>
      <span aria-live="polite" className="hint full">{note}</span>
      <ErrorText text={error} />
    </form>
  );
}
