"""JSON-RPC 2.0 for bots and other programs, in the habit of signal-cli's
`jsonRpc` and `daemon --socket`: one JSON object per line, over standard
input/output (`dmc jsonrpc`) or a UNIX socket (`dmc daemon --socket PATH`).

The store is opened once; every call runs on the listener's one store thread,
so calls and background syncs never interleave inside the store. While the
gateway listener runs (the default), what arrives is pushed as notifications:
`receive` (a message, a rejected message or an event, as `dm listen --json`
prints them) and `listener` (connected, disconnected, synced, revoked, ...).
Every item reaches the program once: as a notification or in a `read` result.

Methods (params by name):
  send {conversation, text, confirm_retention?=false}  -> the send result
  read {}                                             -> {accepted, failed, items}
  status {}                                           -> user, device, server, gateway state
  conversations {}                                    -> {conversations}
  create_conversation {users, retention?}             -> {conversation, created}
  history {conversation, limit?=50}                   -> {conversation_id, messages}
  devices {}                                          -> {devices}
  contacts {}                                         -> {contacts}: the users of your conversations
  prekeys {refresh?=false}                            -> this device's prekeys and the server's supply (§6b)
Errors: the JSON-RPC codes for malformed input; -32000 for the client's and
the server's refusals, with `data` = `{"error": code, "detail": ..., ...}`.
"""
from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import socket
import stat
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from dmclient.api import ApiError, NetworkError
from dmclient.client import Client, ClientError
from dmclient.listener import Listener, Revoked
from dmclient.store import StoreError

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32700, -32600, -32601, -32602
APP_ERROR = -32000
MAX_LINE = 1 << 20


class Rpc:
    """The methods, and the notifications to every connected peer."""

    def __init__(self, client: Client, *, listen: bool = True):
        self.client = client
        self.listen = listen
        self.peers: set[Callable[[dict], None]] = set()
        self.listener = Listener(client, self._emit)
        self.gateway = "connecting" if listen else "off"
        self.methods = {"send": self.send, "read": self.read, "status": self.status,
                        "conversations": self.conversations, "create_conversation": self.create_conversation,
                        "history": self.history, "devices": self.devices, "contacts": self.contacts,
                        "prekeys": self.prekeys}

    # --- notifications -------------------------------------------------------------------

    def _emit(self, item: dict) -> None:
        if "event" in item:
            if item["event"] in ("connected", "disconnected", "revoked"):
                self.gateway = item["event"]
            note = {"jsonrpc": "2.0", "method": "listener", "params": item}
        else:
            note = {"jsonrpc": "2.0", "method": "receive", "params": item}
        for peer in list(self.peers):
            peer(note)

    async def run_listener(self) -> None:
        if not self.listen:
            return
        await self.listener.run()

    def close(self) -> None:
        self.listener.executor.shutdown(wait=True)

    # --- one request -----------------------------------------------------------------------

    async def handle(self, line: str) -> dict | None:
        """The answer to one line (None for a notification, which gets none)."""
        try:
            request = json.loads(line)
        except ValueError:
            return error_answer(None, PARSE_ERROR, "not JSON")
        if not isinstance(request, dict) or request.get("jsonrpc") != "2.0" or not isinstance(request.get("method"), str):
            return error_answer(request.get("id") if isinstance(request, dict) else None, INVALID_REQUEST,
                                "a JSON-RPC 2.0 request object is expected")
        rid, method, params = request.get("id"), self.methods.get(request["method"]), request.get("params", {})
        if method is None:
            answer = error_answer(rid, METHOD_NOT_FOUND, f"no method {request['method']!r}")
        elif not isinstance(params, dict):
            answer = error_answer(rid, INVALID_PARAMS, "params must be an object (by name)")
        else:
            try:
                inspect.signature(method).bind(**params)
            except TypeError as exc:  # missing or unknown params
                return None if "id" not in request else error_answer(rid, INVALID_PARAMS, str(exc))
            try:
                answer = {"jsonrpc": "2.0", "id": rid, "result": await self.listener._worker(method, **params)}
            except (ClientError, StoreError) as exc:
                answer = error_answer(rid, APP_ERROR, exc.detail,
                                      {"error": exc.code, "detail": exc.detail, **getattr(exc, "extra", {})})
            except ApiError as exc:
                answer = error_answer(rid, APP_ERROR, exc.detail, {**exc.body, "error": exc.code, "detail": exc.detail,
                                                                   "status": exc.status})
            except NetworkError as exc:
                answer = error_answer(rid, APP_ERROR, str(exc), {"error": "network_error", "detail": str(exc)})
        return None if "id" not in request else answer

    # --- the methods (each runs on the store thread) -----------------------------------------

    def send(self, *, conversation: str, text: str, confirm_retention: bool = False) -> dict:
        if not isinstance(text, str) or not isinstance(conversation, str):
            raise ClientError("invalid_params", "conversation and text must be strings")
        client = self.client
        return asdict(client.send(client.resolve(conversation), text,
                                  confirm_retention=lambda old, new: bool(confirm_retention)))

    def read(self) -> dict:
        self.client.conversations()  # membership and retention changes, even when no message came
        report = self.client.sync()
        return {"accepted": report.accepted, "failed": report.failed, "items": self.client.take_unshown()}

    def status(self) -> dict:
        me = self.client.whoami()
        return {k: me[k] for k in ("user_id", "device_id", "device_name", "server", "has_master_key")} | {
            "gateway": self.gateway}

    def conversations(self) -> dict:
        return {"conversations": self.client.conversations()}

    def create_conversation(self, *, users: list[str], retention: dict | None = None) -> dict:
        conversation, created = self.client.create_conversation(users, retention=retention)
        return {"conversation": conversation, "created": created}

    def history(self, *, conversation: str, limit: int = 50) -> dict:
        cid = self.client.resolve(conversation)
        return {"conversation_id": cid, "messages": self.client.history(cid, limit=limit)}

    def devices(self) -> dict:
        return {"devices": self.client.devices()}

    def prekeys(self, *, refresh: bool = False) -> dict:
        if refresh:
            self.client.maintain_prekeys()
        return self.client.prekeys()

    def contacts(self) -> dict:
        """The users this device shares a conversation with (from its own record)."""
        me, seen = self.client.user_id, {}
        for cid, participants in self.client.store.db.execute(
                "SELECT conversation_id, participants FROM conversations WHERE member = 1"):
            for user_id in json.loads(participants):
                if user_id != me:
                    seen.setdefault(user_id, []).append(cid)
        return {"contacts": [{"user_id": u, "conversations": sorted(c)} for u, c in sorted(seen.items())]}


def error_answer(rid, code: int, message: str, data: dict | None = None) -> dict:
    error = {"code": code, "message": message, **({"data": data} if data is not None else {})}
    return {"jsonrpc": "2.0", "id": rid, "error": error}


def _line(obj: dict) -> bytes:
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode()


async def _serve_stream(rpc: Rpc, reader: asyncio.StreamReader, write: Callable[[dict], None]) -> None:
    """Requests from one peer, each answered as it finishes; returns at end of input."""
    tasks = set()

    async def answer(line: str) -> None:
        reply = await rpc.handle(line)
        if reply is not None:
            write(reply)

    while True:
        try:
            raw = await reader.readline()
        except ValueError:  # a line over MAX_LINE
            write(error_answer(None, INVALID_REQUEST, f"a request is at most {MAX_LINE} bytes"))
            break
        if not raw:
            break
        if raw.strip():
            task = asyncio.create_task(answer(raw.decode("utf-8", "replace")))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


async def _until_first(*aws) -> None:
    """Run until the first of these ends (the input, or a revoked listener); cancel the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def serve_stdio(rpc: Rpc) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer

    def write(obj: dict) -> None:
        out.write(_line(obj))
        out.flush()

    rpc.peers.add(write)
    await _until_first(_serve_stream(rpc, reader, write), _listener_or_wait(rpc))


async def _listener_or_wait(rpc: Rpc) -> None:
    await rpc.run_listener()
    if not rpc.listen:
        await asyncio.Event().wait()  # no listener: only the input ends the session


async def serve_socket(rpc: Rpc, path: Path, ready: Callable[[], None] = lambda: None) -> None:
    """A UNIX socket that only this user can use (mode 0600: it holds the store's
    powers). A stale socket left by a dead daemon is replaced, a live one is not."""
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise ClientError("socket_path_taken", f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()
        else:
            raise ClientError("daemon_running", f"a daemon already answers at {path}")
        finally:
            probe.close()

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def write(obj: dict) -> None:
            if not writer.is_closing():
                writer.write(_line(obj))

        rpc.peers.add(write)
        try:
            await _serve_stream(rpc, reader, write)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            rpc.peers.discard(write)
            writer.close()

    old_umask = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(peer, path=str(path), limit=MAX_LINE)
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    ready()
    try:
        async with server:
            await _listener_or_wait(rpc)
    finally:
        path.unlink(missing_ok=True)


def run(rpc: Rpc, *, socket_path: Path | None, ready: Callable[[], None] = lambda: None) -> None:
    async def main() -> None:
        # SIGTERM ends the daemon as Ctrl-C does: the socket file is removed on the way out.
        task = asyncio.current_task()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        await (serve_socket(rpc, socket_path, ready) if socket_path else serve_stdio(rpc))

    try:
        asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    except Revoked as exc:
        raise ClientError("device_revoked", str(exc)) from None
    finally:
        rpc.close()
