// Policy and days, within the limits of GET /api/v1/server, with what they mean.
import { useId } from "react";
import type { Retention, RetentionPolicy, ServerInfo } from "../client";
import { POLICY_WORDS, retentionSentence } from "./format";

export function RetentionFields(props: { value: Retention; onChange: (r: Retention) => void; server: ServerInfo | null }) {
  const { value, server } = props;
  const sentenceId = useId();
  const maxDays = server?.retention.max_ttl_days ?? 365;
  const policies: RetentionPolicy[] = ["burn_on_read", "ttl"];
  if (server?.retention.permanent_allowed || value.policy === "permanent") policies.push("permanent");
  const setPolicy = (policy: RetentionPolicy) =>
    props.onChange({
      policy,
      ttl_days: policy === "ttl" ? value.ttl_days ?? Math.min(server?.retention.default.ttl_days ?? 7, maxDays) : null,
    });
  return (
    <fieldset className="retention">
      <legend>Retention on the server</legend>
      <div className="row">
        <label className="field">
          Retention policy
          <select value={value.policy} onChange={(e) => setPolicy(e.target.value as RetentionPolicy)}
            aria-describedby={sentenceId}>
            {policies.map((p) => <option key={p} value={p}>{POLICY_WORDS[p]}</option>)}
          </select>
        </label>
        {value.policy === "ttl" && (
          <label className="field days">
            Days
            <input type="number" min={1} max={maxDays} step={1} required value={value.ttl_days ?? ""}
              aria-describedby={sentenceId}
              onChange={(e) => props.onChange({ policy: "ttl", ttl_days: e.target.value === "" ? null : Number(e.target.value) })} />
          </label>
        )}
      </div>
      <p id={sentenceId} className="hint">
        {retentionSentence(value, server?.retention.max_undelivered_days ?? null)}
        {value.policy === "ttl" && ` At most ${maxDays} days on this server.`}
      </p>
    </fieldset>
  );
}

export function defaultRetention(server: ServerInfo | null): Retention {
  return server?.retention.default ?? { policy: "ttl", ttl_days: 7 };
}
