import { useId, useState } from "react";

/** A value to read and copy (a user id, a key, a phrase, a certificate): labelled, as text. */
export function LabelledValue(props: { label: string; value: string; className?: string; copy?: boolean }) {
  const id = useId();
  const [copied, setCopied] = useState(false);
  return (
    <div className={`value ${props.className ?? ""}`}>
      <div className="value-head">
        <span id={id} className="value-label">{props.label}</span>
        {props.copy !== false && (
          <button
            type="button"
            className="link-button"
            onClick={() => {
              void navigator.clipboard?.writeText(props.value).then(() => setCopied(true), () => setCopied(false));
            }}
          >
            {copied ? "Copied" : `Copy ${props.label.toLowerCase()}`}
          </button>
        )}
      </div>
      <p role="note" aria-labelledby={id} className="value-text">{props.value}</p>
    </div>
  );
}

/** A form's failure, read out when it appears. */
export function ErrorText(props: { text: string | null }) {
  return props.text ? <p role="alert" className="error">{props.text}</p> : null;
}
