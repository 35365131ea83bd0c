"""`python -m dmclient`: the command line over the SDK. Every command takes
`--json` for output that scripts can read; errors are then
`{"error": code, "detail": ...}` on stdout with exit status 1."""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import json
import os
import shutil
import sys
import unicodedata
from dataclasses import asdict
from pathlib import Path

from dmclient import protocol
from dmclient.api import ApiError, NetworkError
from dmclient.client import LONGEST_RETENTION_DAYS, Client, ClientError, delivery_mark, is_b58_key
from dmclient.listener import Listener, Revoked
from dmclient.store import StoreError

DEFAULT_HOME = "~/.dmclient"
POLICIES = ("burn_on_read", "ttl", "permanent")


class CliError(Exception):
    def __init__(self, code: str, detail: str, **extra):
        super().__init__(detail)
        self.code, self.detail, self.extra = code, detail, extra


# --- output ---------------------------------------------------------------------------------
#
# Everything from the server or a peer (bodies, names, ids, codes, details) is
# untrusted: shown so that it can neither pass for a line of our own nor drive
# the terminal. `--json` prints it exactly (JSON-escaped) instead.

CONTINUATION = "  | "  # starts every further line of a multi-line body; no line of our own starts so
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Cn", "Zl", "Zp"})  # controls, invisible/bidi format, line breaks


def visible(value: object) -> str:
    """Untrusted text on one line: C0/C1 controls (ESC, CSI, OSC and BEL with
    them, CR, LF), bidi overrides and isolates, zero-width and other invisible
    characters are shown escaped (`\x1b`, `\u202e`) instead of acting."""
    return "".join(ch if unicodedata.category(ch) not in _ESCAPED_CATEGORIES
                   else ascii(ch)[1:-1] for ch in str(value))


def body_text(body: object) -> str:
    """An untrusted message body: each line made visible, and every line after
    the first indented behind CONTINUATION, so a body cannot forge a line."""
    return ("\n" + CONTINUATION).join(visible(line) for line in str(body).split("\n"))


def _cells(ch: str) -> int:
    """Terminal columns a (visible) character takes."""
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def fit(text: str, width: int) -> str:
    """Lines wider than the terminal broken here, every further piece behind
    CONTINUATION: the terminal's own wrap would start it at column 0, where
    the tail of a long body could pass for a line of ours."""
    out = []
    for line in text.split("\n"):
        piece, used = "", 0
        for ch in line:
            if used + _cells(ch) > width and piece.strip():
                out.append(piece)
                piece, used = CONTINUATION, len(CONTINUATION)
            piece += ch
            used += _cells(ch)
        out.append(piece)
    return "\n".join(out)


def to_terminal(text: str) -> str:
    return fit(text, shutil.get_terminal_size().columns) if sys.stdout.isatty() else text


def short(value: str | None) -> str:
    return "-" if value is None else visible(value[:8])


def local_time(unix_ms: int) -> str:
    return dt.datetime.fromtimestamp(unix_ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def expiry_text(policy: str | None, expires_at: str | None) -> str:
    """A message's policy and `expires_at`: under burn_on_read that date is only
    the cap for a copy nobody reads (max_undelivered_days); it goes once read."""
    if policy == "burn_on_read":
        return (f"burn_on_read: deleted once read by every recipient device; unread copies are dropped "
                f"{visible(expires_at or 'never')}")
    return f"{visible(policy)}, expires {visible(expires_at or 'never')}"


def retention_text(retention: dict | None) -> str:
    if not retention:
        return "-"
    if retention.get("policy") == "ttl":
        return visible(f"ttl {retention.get('ttl_days')}d")
    return visible(retention.get("policy"))


class Names:
    """How people are shown: `me`, a contact's local name, or else the short id."""

    def __init__(self, me: str | None = None, contacts: list[dict] = ()):
        self.me = me
        self.contacts = {c["user_id"]: c for c in contacts}

    def user(self, user_id: str | None) -> str:
        if user_id is not None and user_id == self.me:
            return "me"
        contact = self.contacts.get(user_id)
        return visible(contact["name"]) if contact else short(user_id)

    def users(self, user_ids) -> str:
        return ", ".join(map(self.user, user_ids))

    def others(self, participants) -> str:
        """A conversation by its other participants (not listing yourself)."""
        return self.users(p for p in participants if p != self.me) or "only you"

    def verified(self, user_id: str | None) -> dict | None:
        contact = self.contacts.get(user_id)
        return contact if contact and (contact["verified"] or contact["changed_since_verified"]) else None

    def warnings(self, user_ids) -> list[str]:
        """§6: loud, for a verified contact whose user id is no longer the verified one."""
        return [f"!!! WARNING: contact {visible(c['name'])} is not the user you verified: its user id changed from "
                f"{visible(c['verified_user_id'])} to {visible(c['user_id'])}; compare safety numbers again "
                f"(contact verify {visible(c['name'])})"
                for c in map(self.contacts.get, user_ids) if c and c["changed_since_verified"]]

    def untrusted_device(self, device_id: str | None, user_id: str | None, reason: object) -> str:
        contact = self.verified(user_id)
        if contact is not None:
            return (f"!!! WARNING: VERIFIED CONTACT {visible(contact['name'])} shows device {short(device_id)} whose "
                    f"certificate does not verify ({visible(reason)}): it is not used; someone may be trying to "
                    "listen in")
        return (f"! WARNING device {short(device_id)} of {self.user(user_id)} is not used: its "
                f"certificate fails ({visible(reason)})")


def counts_text(counts: dict | None) -> str:
    return ", ".join(f"{n} {visible(state)}" for state, n in (counts or {}).items() if n) or "no devices"


def item_text(item: dict, names: Names) -> str:
    conv = f"[{short(item.get('conversation_id'))}]"
    if item.get("type") == "message":
        mark = f" {item['mark']}" if item.get("mark") else ""
        text = (f"{conv} {local_time(item['sent_at'])} {names.user(item['sender'])}/{short(item['sender_device'])} "
                f"#{item['seq']}{mark}: {body_text(item['body'])}")
        return text + (f"\n    warning: {visible(item['warning'])}" if item.get("warning") else "")
    if item.get("type") == "failed":
        return (f"{conv} REJECTED message {visible(item['message_id'])} claiming to be from "
                f"{names.user(item.get('claimed_sender'))}: {visible(item['reason'])} ({visible(item['detail'])})")
    if item.get("type") == "status":
        return (f"{conv} * delivery of message {short(item['message_id'])}: {item['mark']} "
                f"({counts_text(item['counts'])})")
    kind = item.get("kind")
    if kind == "membership":
        parts = [f"added {names.users(item['added'])}" if item["added"] else "",
                 f"removed {names.users(item['removed'])}" if item["removed"] else ""]
        by = f" by {names.user(item['actor'])}" if item.get("actor") else ""
        # No epoch number: it counts device changes too, so it differs between the devices that show it (JSON has it).
        return f"{conv} * members {'; '.join(p for p in parts if p)}{by}"
    if kind == "conversation":
        return (f"{conv} * conversation ({visible(item['conversation_kind'])}) with "
                f"{names.others(item['participants'])}, retention {retention_text(item['retention'])}")
    if kind == "membership_refused":
        return (f"{conv} ! WARNING the server showed this {visible(item['conversation_kind'])} conversation with "
                f"{names.users(item['participants'])}: "
                f"{visible(item['detail'])}")
    if kind == "retention":
        by = f" by {names.user(item['actor'])}" if item.get("actor") else ""
        return f"{conv} * retention changed from {retention_text(item['old'])} to {retention_text(item['new'])}{by}"
    if kind == "membership_fork":
        return f"{conv} ! WARNING epoch {visible(item['epoch'])}: {visible(item['detail'])}"
    if kind == "untrusted_device":
        return names.untrusted_device(item["device_id"], item["user_id"], item["reason"])
    if kind == "invalid_prekey":
        return (f"{conv} ! WARNING device {visible(item['device_id'])}: {visible(item['detail'])} "
                f"({visible(item['reason'])})")
    if kind == "prekeys_failed":
        return f"! WARNING {visible(item['detail'])}"
    if kind in ("device_added", "device_revoked"):
        return f"* your device {short(item['device_id'])} ({visible(item['name'])}) was {kind.split('_')[1]}"
    return f"{conv} * {visible(kind)}: {json.dumps(item)}"


class Output:
    def __init__(self, as_json: bool):
        self.as_json = as_json
        self.names = Names()

    def result(self, data: dict, text: str | None = None) -> None:
        if self.as_json:
            print(json.dumps(data, ensure_ascii=False), flush=True)
        elif text is not None:
            print(to_terminal(text), flush=True)

    def item(self, item: dict) -> None:
        """A message, failure or event for the user, or (with "event") a listener status."""
        if self.as_json:
            print(json.dumps(item, ensure_ascii=False), flush=True)
        elif "event" not in item:
            print(to_terminal(item_text(item, self.names)), flush=True)
        elif item["event"] != "synced":
            print(f"-- {visible(item['event'])}: " + ", ".join(f"{k}={visible(v)}" for k, v in item.items()
                                                              if k != "event"),
                  file=sys.stderr, flush=True)


def notice(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Progress:
    """One updating line on stderr for long syncs."""

    def __init__(self):
        self.last = None

    def __call__(self, done: int, total: int | None) -> None:
        complete = bool(total) and done >= total
        sys.stderr.write(f"\rsyncing: {done}/{total} messages" if total else f"\rsyncing: {done} messages")
        sys.stderr.write("\n" if complete else "")
        sys.stderr.flush()
        self.last = None if complete else done

    def finish(self) -> None:
        if self.last is not None:
            sys.stderr.write("\n")
            sys.stderr.flush()


# --- passphrases and opening ------------------------------------------------------------------

def passphrase(*, confirm: bool = False, prompt: str = "Passphrase: ") -> str:
    value = os.environ.get("DMCLIENT_PASSPHRASE")
    if value is not None:
        return value
    if not sys.stdin.isatty():
        raise CliError("no_passphrase", "set DMCLIENT_PASSPHRASE or run in a terminal")
    value = getpass.getpass(prompt)
    if confirm and getpass.getpass("Again: ") != value:
        raise CliError("passphrase_mismatch", "the passphrases differ")
    return value


def home_of(args) -> Path:
    return Path(args.home or os.environ.get("DMCLIENT_HOME") or DEFAULT_HOME).expanduser()


def open_client(args, out: Output) -> Client:
    client = Client.open(home_of(args), passphrase(), transport=args.transport,
                         on_wait=lambda code, s: notice(f"server says {visible(code)}: waiting {s} s as it asks (Retry-After)"))
    out.names = Names(client.user_id, client.contacts())
    return client


def retention_arg(args, client: Client) -> dict | None:
    """--policy/--ttl-days, checked against this client's bounds, which the
    server's description (GET /server) may narrow for the message but never widen."""
    if args.policy != "ttl":
        if args.ttl_days is not None:
            raise CliError("invalid_retention", "--ttl-days goes with --policy ttl")
        return None if args.policy is None else {"policy": args.policy, "ttl_days": None}
    high, whose = LONGEST_RETENTION_DAYS, "this client's longest"
    server_max = ((client.server_info() or {}).get("retention") or {}).get("max_ttl_days")
    if isinstance(server_max, int) and not isinstance(server_max, bool) and 1 <= server_max < high:
        high, whose = server_max, "this server's max_ttl_days"
    if args.ttl_days is None or not 1 <= args.ttl_days <= high:
        missing = "--ttl-days is missing: " if args.ttl_days is None else ""
        raise CliError("invalid_retention", f"{missing}--policy ttl needs --ttl-days 1..{high} ({whose})",
                       min_ttl_days=1, max_ttl_days=high)
    return {"policy": "ttl", "ttl_days": args.ttl_days}


def device_name(name: str) -> str:
    """A --name that every server and client accepts (protocol.name_problem), checked before anything else."""
    problem = protocol.name_problem(name)
    if problem is not None:
        raise CliError("invalid_name", f"--name {visible(name)!r}: {problem}")
    return name


def warn_about(out: Output, participants) -> None:
    for warning in out.names.warnings(participants):
        notice(warning)


# --- commands ------------------------------------------------------------------------------------

def phrase_input() -> str:
    """The recovery phrase for `init --restore`: $DMCLIENT_RECOVERY_PHRASE, a prompt, or a line of stdin."""
    value = os.environ.get("DMCLIENT_RECOVERY_PHRASE")
    if value is not None:
        return value
    if sys.stdin.isatty():
        return getpass.getpass("Recovery phrase (24 words): ")
    return sys.stdin.readline()


def cmd_init(args, out: Output) -> None:
    device_name(args.name)
    if args.restore and args.join:
        raise CliError("usage", "--restore makes a device of the restored master key; --join waits for a certificate")
    phrase = phrase_input() if args.restore else None
    client = Client.init(home_of(args), passphrase(confirm=True), server=args.server, name=args.name,
                         join=args.join, expires_days=args.expires_days, transport=args.transport, phrase=phrase)
    me = client.whoami()
    if args.join:
        text = (f"device key created: {me['device_id']}\n"
                f"on a device holding your master key run:\n"
                f"  python -m dmclient device certify {me['device_id']} --name {json.dumps(args.name)} > cert.json\n"
                f"then here: python -m dmclient device import-cert cert.json")
    else:
        text = (f"user   {me['user_id']}{' (restored)' if args.restore else ''}\ndevice {me['device_id']} "
                f"({visible(me['device_name'])}) registered at {me['server']}")
    out.result(me, text)


def cmd_server_set(args, out: Output) -> None:
    me = open_client(args, out).server_set(args.url)
    out.result(me, f"this store now uses {me['server']}")


def cmd_whoami(args, out: Output) -> None:
    me = open_client(args, out).whoami()
    out.result(me, f"user   {me['user_id']}\ndevice {me['device_id']} ({visible(me['device_name'])})\n"
                   f"server {me['server']}\nmaster key in this store: {'yes' if me['has_master_key'] else 'no'}")


def cmd_identity_phrase(args, out: Output) -> None:
    phrase = open_client(args, out).recovery_phrase()
    notice("These 24 words are your identity: anyone who has them can read and send as you. Write them down, "
           "keep them offline, show them to no one. `init --restore` makes a new device from them.")
    out.result({"phrase": phrase}, phrase)


def cmd_device_add(args, out: Output) -> None:
    device_name(args.name)
    client = open_client(args, out)
    # The new store's passphrase: $DMCLIENT_NEW_PASSPHRASE, else this store's, else asked.
    new_pass = os.environ.get("DMCLIENT_NEW_PASSPHRASE") or passphrase(
        confirm=True, prompt="Passphrase for the new device's store: ")
    new = client.add_device(args.to, new_pass, name=args.name, expires_days=args.expires_days,
                            permissions=["manage_devices"] if args.manage_devices else [])
    me = new.whoami()
    out.result(me, f"device {me['device_id']} ({visible(me['device_name'])}) registered; its store is {args.to}\n"
                   f"use it with: python -m dmclient --home {args.to} ...")


def cmd_device_certify(args, out: Output) -> None:
    device_name(args.name)
    cert = open_client(args, out).certify(args.device_id, name=args.name, expires_days=args.expires_days,
                                     permissions=["manage_devices"] if args.manage_devices else [])
    print(json.dumps(cert, ensure_ascii=False), flush=True)


def cmd_device_import(args, out: Output) -> None:
    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    try:
        cert = json.loads(text)
    except ValueError:
        raise CliError("invalid_certificate", "the file is not JSON") from None
    me = open_client(args, out).import_certificate(cert)
    out.result(me, f"device {me['device_id']} ({visible(me['device_name'])}) of user {me['user_id']} registered")


def cmd_device_list(args, out: Output) -> None:
    devices = open_client(args, out).devices()
    lines = []
    for d in devices:
        state = "revoked " + d["revoked_at"] if d["revoked_at"] else ("active" + (
            f", expires {d['expires_at']}" if d["expires_at"] else ""))
        lines.append(f"{'*' if d['current'] else ' '} {visible(d['device_id'])}  {visible(d['name']):<16} "
                     f"{visible(state)}; last seen {visible(d['last_seen_at'] or 'never')}; "
                     f"{visible(d['pending_count'])} pending"
                     + ("" if d["certificate_ok"] else "; CERTIFICATE DOES NOT VERIFY"))
    out.result({"devices": devices}, "\n".join(lines))


def cmd_device_revoke(args, out: Output) -> None:
    client = open_client(args, out)
    device_id = args.device_id
    if not is_b58_key(device_id):  # a prefix of one of ours
        device_id = client.resolve_device(device_id, [d["device_id"] for d in client.devices()])
    client.revoke(device_id)
    out.result({"revoked": device_id}, f"revoked {device_id}")


def conversation_text(c: dict, names: Names) -> str:
    return (f"{visible(c['conversation_id'])}  {visible(c['kind']):<6} {retention_text(c['retention']):<13} "
            f"{names.others(c['participants'])}")


def cmd_dm_new(args, out: Output) -> None:
    client = open_client(args, out)
    users = [client.resolve_user(u) for u in args.users]
    retention = retention_arg(args, client)
    conversation, created = client.create_conversation(users, retention=retention)
    if not created and retention is not None and retention != conversation["retention"]:
        notice(f"this direct conversation exists and keeps its retention {retention_text(conversation['retention'])};"
               " change it with `dm retention`")
    warn_about(out, conversation["participants"])
    out.result({"conversation": conversation, "created": created},
               ("created " if created else "existing ") + conversation_text(conversation, out.names))


def cmd_dm_list(args, out: Output) -> None:
    conversations = open_client(args, out).conversations()
    warn_about(out, sorted({p for c in conversations for p in c["participants"]}))
    out.result({"conversations": conversations},
               "\n".join(conversation_text(c, out.names) for c in conversations) or "none")


def cmd_dm_send(args, out: Output) -> None:
    client = open_client(args, out)
    if (args.to is None) == (args.conversation is None):
        raise CliError("usage", "name the conversation, or the person with --to NAME (not both)")
    if args.to is not None:  # a contact name or user id: their direct conversation, made if need be
        conversation_id = client.direct_conversation_with(client.resolve_user(args.to))
    else:
        conversation_id = client.resolve(args.conversation)
    warn_about(out, client.conversation(conversation_id).participants)

    def confirm(old: dict, new: dict) -> bool:
        notice(f"The conversation's retention changed from {retention_text(old)} to {retention_text(new)}.")
        if args.yes:
            notice("Sending under the new policy (--yes).")
            return True
        if out.as_json or not sys.stdin.isatty():
            return False
        return input("Send under the new policy? [y/N] ").strip().lower() in ("y", "yes")

    # "-": the message is standard input, as Unix tools read it (one final newline is the shell's, not the text's).
    text = sys.stdin.read().removesuffix("\n") if args.text == "-" else args.text
    try:
        result = client.send(conversation_id, text, confirm_retention=confirm)
    except ClientError:
        for problem in client.untrusted:  # why the send failed, if a certificate did (loud for verified contacts)
            notice(out.names.untrusted_device(problem["device_id"], problem["user_id"], problem["reason"]))
        raise
    for problem in result.untrusted_devices:
        notice(out.names.untrusted_device(problem["device_id"], problem["user_id"], problem["reason"]))
    if result.unreachable:
        notice(f"not delivered to {out.names.users(result.unreachable)}: no active device")
    for skipped in result.skipped:
        reason = "mailbox full" if skipped["reason"] == "mailbox_full" else visible(skipped["reason"])
        notice(f"not delivered to device {visible(skipped['device_id'])}"
               + (f" of {out.names.user(skipped['user_id'])}" if skipped["user_id"] else "") + f", {reason}")
    out.result(asdict(result), f"sent {result.message_id} ({expiry_text(result.policy, result.expires_at)}): "
                               f"stored for {visible(result.recipients)} device(s)"
               + (f", {len(result.skipped)} skipped" if result.skipped else "")
               + (f", {len(result.unreachable)} user(s) unreachable" if result.unreachable else "")
               + (f"; retried after: {visible(', '.join(result.retries))}" if result.retries else ""))


def cmd_dm_read(args, out: Output) -> None:
    client = open_client(args, out)
    client.conversations()  # membership and retention changes show even when no message comes
    progress = Progress() if (args.progress or (sys.stderr.isatty() and not out.as_json)) else None
    try:
        report = client.sync(progress=progress)
    finally:
        if progress:
            progress.finish()
    items = client.take_unshown()
    client.with_status(items, refresh=True)
    if out.as_json:
        out.result({"accepted": report.accepted, "failed": report.failed, "items": items})
    else:
        for item in items:
            out.item(item)
        if not items:
            print("nothing new")


def cmd_dm_prekeys(args, out: Output) -> None:
    client = open_client(args, out)
    if args.refresh:
        client.maintain_prekeys()
    info = client.prekeys()
    current = next((k for k in reversed(info["signed_prekeys"]) if k["replaced_at"] is None), None)
    server = info["server"]
    lines = [
        "protocol 1.1 mode: no prekeys, v1 key wraps only" if info["legacy"] else
        ("signed prekey: none yet" if current is None else
         f"signed prekey {current['id']}: {current['age_days']} days old"
         + ("" if current["published"] else " (not published yet)")),
        f"one-time prekeys: {info['one_time_private_keys']} private keys held, "
        + ("the server has none of ours (it predates v1.2)" if server is None else
           f"{visible(server['one_time_count'])} left on the server"),
        f"older signed prekeys still held: {sum(1 for k in info['signed_prekeys'] if k['replaced_at'] and k['private_key_held'])}",
    ]
    out.result(info, "\n".join(lines))


def cmd_dm_listen(args, out: Output) -> None:
    client = open_client(args, out)
    listener = Listener(client, out.item, progress=Progress() if args.progress else None)
    try:
        asyncio.run(listener.run())
    except KeyboardInterrupt:
        pass
    except Revoked as exc:
        raise CliError("device_revoked", str(exc)) from None


def cmd_jsonrpc(args, out: Output) -> None:
    from dmclient import rpc

    rpc.run(rpc.Rpc(open_client(args, out), listen=not args.no_listen), socket_path=None)


def cmd_daemon(args, out: Output) -> None:
    from dmclient import rpc

    path = Path(args.socket).expanduser()
    rpc.run(rpc.Rpc(open_client(args, out), listen=not args.no_listen), socket_path=path,
            ready=lambda: notice(f"JSON-RPC on {path}"))


def cmd_dm_history(args, out: Output) -> None:
    client = open_client(args, out)
    cid = client.resolve(args.conversation)
    if args.server:
        messages = client.server_history(cid, limit=args.limit)
        text = "\n".join(f"{visible(m['message_id'])}  " + (
            f"{short(m['sender'])} #{m['seq']}: {body_text(m['body'])} ({expiry_text(m['policy'], m['expires_at'])})"
            if "body" in m else f"cannot open: {visible(m['error'])}")
            for m in messages)
    else:
        messages = client.history(cid, limit=args.limit)
        if not client.with_status(messages, refresh=True):
            notice("delivery status not available now: the marks are the last this device knows")
        text = "\n".join(item_text(m, out.names) for m in messages)
    warn_about(out, client.conversation(cid).participants)
    out.result({"conversation_id": cid, "messages": messages}, text or "no messages")


def cmd_dm_status(args, out: Output) -> None:
    client = open_client(args, out)
    message_id = client.resolve_message(args.message)
    try:
        status = client.message_status(message_id)
    except NetworkError:
        status = client.stored_status(message_id)
        if status is None:
            raise
        notice(f"offline: the last status this device knows (from {status['updated_at']})")
    out.result(status, status_text(status, client, out.names))


def _time_text(value: object) -> str:
    try:
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return visible(value)


def status_text(status: dict, client: Client, names: Names) -> str:
    """One line per device: state, whose (contact name or short id) and which (its name), when, why."""
    cid = status.get("conversation_id")
    row = client._local_view(cid) if isinstance(cid, str) else None
    with_whom = f" with {names.others(json.loads(row['participants']))}" if row is not None else ""
    head = f"message {visible(status['message_id'])} in [{short(cid)}]{with_whom}"
    if "policy" in status:
        head += (f" ({visible(status['policy'])}, sent {_time_text(status['created_at'])}, expires "
                 f"{_time_text(status['expires_at']) if status['expires_at'] else 'never'})")
    lines = [head]
    for d in status.get("devices") or []:
        device = client.device_name(d.get("device_id"))
        label = f"{names.user(d.get('user_id'))}/{visible(device) if device else short(d.get('device_id'))}"
        lines.append(f"  {visible(d.get('state')):<9} {label:<28} {_time_text(d['at']) if d.get('at') else ''}"
                     + (f" ({visible(d['reason'])})" if d.get("reason") else ""))
    if status.get("devices") is None:
        lines.append("  (per-device detail when online)")
    lines.append(f"{delivery_mark(status['counts']) or '-'} {counts_text(status['counts'])}")
    return "\n".join(lines)


def cmd_dm_retention(args, out: Output) -> None:
    client = open_client(args, out)
    retention = retention_arg(args, client)
    if retention is None:
        raise CliError("invalid_retention", "--policy is required")
    conversation = client.set_retention(client.resolve(args.conversation), retention)
    out.result({"conversation": conversation}, conversation_text(conversation, out.names))


def cmd_dm_add(args, out: Output) -> None:
    client = open_client(args, out)
    users = [client.resolve_user(u) for u in args.users]
    conversation = client.add_participants(client.resolve(args.conversation), users)
    out.result({"conversation": conversation}, conversation_text(conversation, out.names))


def cmd_dm_remove(args, out: Output) -> None:
    client = open_client(args, out)
    conversation = client.remove_participant(client.resolve(args.conversation), client.resolve_user(args.user))
    out.result({"conversation": conversation}, conversation_text(conversation, out.names) if conversation else "left")


def contact_line(c: dict) -> str:
    mark = ("! CHANGED SINCE VERIFIED" if c["changed_since_verified"] else
            "✓ verified" if c["verified"] else "  not verified")
    return f"{mark:<24} {visible(c['name']):<16} {visible(c['user_id'])}"


def cmd_contact_add(args, out: Output) -> None:
    contact = open_client(args, out).contact_add(args.name, args.user_id, replace=args.replace)
    out.result({"contact": contact}, contact_line(contact))


def cmd_contact_list(args, out: Output) -> None:
    contacts = open_client(args, out).contacts()
    out.result({"contacts": contacts}, "\n".join(map(contact_line, contacts)) or "no contacts")
    for warning in out.names.warnings(c["user_id"] for c in contacts):
        notice(warning)


def cmd_contact_remove(args, out: Output) -> None:
    open_client(args, out).contact_remove(args.name)
    out.result({"removed": args.name}, f"removed {visible(args.name)}")


def cmd_contact_verify(args, out: Output) -> None:
    """§6: both people read the number out (or compare screens); only a match makes the contact verified."""
    client = open_client(args, out)
    info = client.safety_number(args.name)
    groups = info["safety_number"].split()
    if not out.as_json:
        print(f"Safety number of you and {visible(info['name'])} ({visible(info['user_id'])}):\n"
              + "\n".join("  " + " ".join(groups[i:i + 4]) for i in range(0, 12, 4))
              + f"\nCompare it with {visible(info['name'])}'s, in person or on a call you trust.", flush=True)
    confirmed = args.yes or (not out.as_json and sys.stdin.isatty() and input(
        f"Does {visible(info['name'])} see the same number? [y/N] ").strip().lower() in ("y", "yes"))
    if confirmed:
        info = client.contact_mark_verified(args.name)
    out.result(info, f"{visible(info['name'])} is marked verified" if confirmed else "not marked verified")


# --- the parser ------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: options given before or after the subcommand both count.
    common.add_argument("--home", default=argparse.SUPPRESS,
                        help=f"the device's store directory (default: $DMCLIENT_HOME or {DEFAULT_HOME})")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print JSON that scripts can read")

    parser = argparse.ArgumentParser(
        prog="dmc" if Path(sys.argv[0]).name == "dmc" else "python -m dmclient", parents=[common],
        description="decentcom reference client: end-to-end-encrypted DMs. The store's passphrase comes from "
                    "$DMCLIENT_PASSPHRASE or a prompt.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(sub, name, func, help_text):
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    def cert_options(p):
        p.add_argument("--name", required=True, help="the device's name (1-64 characters)")
        p.add_argument("--expires-days", type=int, help="the certificate expires after this many days (default never)")

    p = add(commands, "init", cmd_init, "create this device's store: a new user, or (--join) a device of an existing one")
    p.add_argument("--server", required=True, help="the server, e.g. https://dm.example.org")
    cert_options(p)
    p.add_argument("--join", action="store_true",
                   help="only make a device key; a certificate from the master key comes later (device import-cert)")
    p.add_argument("--restore", action="store_true",
                   help="restore the master key from its 24-word recovery phrase ($DMCLIENT_RECOVERY_PHRASE, a "
                        "prompt, or a line of stdin) and make a new device for it")
    add(commands, "whoami", cmd_whoami, "show this store's user, device and server")
    server = commands.add_parser("server", help="this store's server", description="this store's server")
    ssub = server.add_subparsers(dest="server_command", required=True, metavar="COMMAND")
    p = add(ssub, "set", cmd_server_set, "use another address of the server (e.g. its https:// one); logs in there first")
    p.add_argument("url", help="the server's address, e.g. https://dm.example.org")

    identity = commands.add_parser("identity", help="your identity (the master key)",
                                   description="your identity (the master key)")
    isub = identity.add_subparsers(dest="identity_command", required=True, metavar="COMMAND")
    add(isub, "phrase", cmd_identity_phrase,
        "show the 24-word recovery phrase of the master key (on a store that holds it)")

    contact = commands.add_parser("contact", help="local names for user ids, and verification",
                                  description="local names for user ids (never sent to a server), and verification "
                                              "by safety number")
    csub = contact.add_subparsers(dest="contact_command", required=True, metavar="COMMAND")
    p = add(csub, "add", cmd_contact_add, "name a user; the name is accepted wherever a user id is")
    p.add_argument("name")
    p.add_argument("user_id", metavar="USER_ID", help="a user id, or the start of a known one")
    p.add_argument("--replace", action="store_true", help="point an existing name at another user id")
    add(csub, "list", cmd_contact_list, "your contacts, with their verified mark")
    p = add(csub, "remove", cmd_contact_remove, "forget a contact's name")
    p.add_argument("name")
    p = add(csub, "verify", cmd_contact_verify,
            "show the safety number to compare with the contact, and mark the contact verified if they match")
    p.add_argument("name")
    p.add_argument("--yes", action="store_true", help="the numbers match: mark verified without asking")

    device = commands.add_parser("device", help="your devices", description="your devices")
    dsub = device.add_subparsers(dest="device_command", required=True, metavar="COMMAND")
    p = add(dsub, "add", cmd_device_add, "certify a new device with the master key, in a new store at --to")
    cert_options(p)
    p.add_argument("--to", required=True, help="directory of the new device's store (move it to the device)")
    p.add_argument("--manage-devices", action="store_true", help="let the device add and revoke devices")
    p = add(dsub, "certify", cmd_device_certify, "print a certificate for a device key made with `init --join`")
    p.add_argument("device_id")
    cert_options(p)
    p.add_argument("--manage-devices", action="store_true", help="let the device add and revoke devices")
    p = add(dsub, "import-cert", cmd_device_import, "adopt a certificate (file, or - for stdin) and register")
    p.add_argument("file")
    add(dsub, "list", cmd_device_list, "your devices: last seen, pending messages, revoked or active")
    p = add(dsub, "revoke", cmd_device_revoke, "revoke a device (with this device's rights or the master key)")
    p.add_argument("device_id", help="a device id, or the start of one of yours")

    p = add(commands, "jsonrpc", cmd_jsonrpc, "JSON-RPC 2.0 on standard input/output, one object per line "
                                              "(methods and notifications: dmclient/rpc.py)")
    p.add_argument("--no-listen", action="store_true", help="no gateway listener: no notifications, poll with read")
    p = add(commands, "daemon", cmd_daemon, "JSON-RPC 2.0 on a UNIX socket (mode 0600), one object per line")
    p.add_argument("--socket", required=True, help="the socket's path")
    p.add_argument("--no-listen", action="store_true", help="no gateway listener: no notifications, poll with read")

    dm = commands.add_parser("dm", help="conversations and messages", description="conversations and messages")
    msub = dm.add_subparsers(dest="dm_command", required=True, metavar="COMMAND")

    def retention_options(p, required=False):
        p.add_argument("--policy", choices=POLICIES, required=required, help="retention policy")
        p.add_argument("--ttl-days", type=int, help=f"days a message is kept (with --policy ttl): 1..{LONGEST_RETENTION_DAYS}"
                                                    ", or up to the server's max_ttl_days when lower")

    p = add(msub, "new", cmd_dm_new, "start a conversation: one user makes a direct one, more make a group")
    p.add_argument("users", nargs="+", metavar="USER", help="contact names, user ids or starts of known ones")
    retention_options(p)
    add(msub, "list", cmd_dm_list, "your conversations, latest activity first")
    p = add(msub, "send", cmd_dm_send, "encrypt and send a text message")
    p.add_argument("conversation", nargs="?",
                   help="conversation id (or a unique prefix, or a contact's name for your direct conversation)")
    p.add_argument("text", help="the message; - reads it from standard input")
    p.add_argument("--to", metavar="USER", help="instead of a conversation: a contact name or user id, whose "
                                                "direct conversation is found or started")
    p.add_argument("--yes", action="store_true", help="if the retention changed, send under the new one")
    p = add(msub, "read", cmd_dm_read, "fetch, check, decrypt and show new messages")
    p.add_argument("--progress", action="store_true", help="show progress on stderr (default: on a terminal)")
    p = add(msub, "prekeys", cmd_dm_prekeys, "this device's prekeys (forward secrecy): signed prekey age, "
                                             "one-time supply")
    p.add_argument("--refresh", action="store_true", help="publish, rotate and refill now if due")
    p = add(msub, "listen", cmd_dm_listen, "stay connected and show messages as they come (Ctrl-C stops)")
    p.add_argument("--progress", action="store_true", help="show sync progress on stderr")
    p = add(msub, "history", cmd_dm_history, "a conversation's messages kept on this device (or --server)")
    p.add_argument("conversation")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--server", action="store_true", help="what the server still stores for this device, checked")
    p = add(msub, "status", cmd_dm_status, "the delivery status of one of your messages, device by device")
    p.add_argument("message", metavar="MESSAGE_ID", help="a message id, or the start of one")
    p = add(msub, "retention", cmd_dm_retention, "change a conversation's retention")
    p.add_argument("conversation")
    retention_options(p, required=True)
    p = add(msub, "add", cmd_dm_add, "add users to a group")
    p.add_argument("conversation")
    p.add_argument("users", nargs="+", metavar="USER")
    p = add(msub, "remove", cmd_dm_remove, "remove a user from a group (your own id: leave it)")
    p.add_argument("conversation")
    p.add_argument("user", metavar="USER", help="a contact name, user id, or me")
    return parser


def main(argv: list[str] | None = None, *, transport=None) -> int:
    """`transport`: an httpx transport for every request (tests put the server in-process)."""
    args = build_parser().parse_args(argv)
    args.home, args.json = getattr(args, "home", None), getattr(args, "json", False)
    args.transport = transport
    out = Output(args.json)
    try:
        args.func(args, out)
    except (CliError, ClientError, StoreError) as exc:
        return fail(out, exc.code, exc.detail, getattr(exc, "extra", {}))
    except ApiError as exc:
        extra = {k: v for k, v in exc.body.items() if k not in ("error", "detail")}
        return fail(out, exc.code, exc.detail, {"status": exc.status, **extra})
    except NetworkError as exc:
        return fail(out, "network_error", str(exc), {})
    return 0


def fail(out: Output, code: str, detail: str, extra: dict) -> int:
    if out.as_json:
        print(json.dumps({"error": code, "detail": detail, **extra}, ensure_ascii=False), flush=True)
    else:
        print(f"error: {visible(code)}: {visible(detail)}" + (f" {json.dumps(extra)}" if extra else ""),
              file=sys.stderr)
    return 1


def entry() -> None:
    """The `dmc` console script."""
    sys.exit(main())
