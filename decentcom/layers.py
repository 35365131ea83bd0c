"""The embedded channel layer: in-memory groups, with group sends that cross
processes on one machine through Unix sockets, so no server is needed.

Each process that holds consumers (a daphne worker) listens, from its first
`group_add`, on `<folder>/<pid>.sock` (folder owner-only, 0700). `group_send`
delivers to the local members and writes the message to every other socket
in the folder; the receiving process delivers it to its own members. Processes
that only send (Celery worker and beat, manage.py) never listen.

Stream sockets, not datagrams: a datagram is capped by the sender's buffer
(about 200 KB on a default Linux) and a purge's DM_STATUS batch can be larger;
a stream takes any size, with the kernel's flow control. Frames are a 4-byte
length and JSON (every payload is a gateway frame, JSON by definition).
Connections are kept per sending thread; a socket whose process is gone
(ECONNREFUSED) is removed by the first sender that finds it.

Only groups cross processes: a channel name is local to its process, and
nothing here sends to another process's channel directly."""
import asyncio
import atexit
import errno
import json
import logging
import os
import socket
import struct
import threading
import time
from pathlib import Path

from channels.layers import InMemoryChannelLayer
from django.core.exceptions import ImproperlyConfigured

logger = logging.getLogger("decentcom.layers")

HEADER = struct.Struct("!I")
MAX_FRAME_BYTES = 64 * 1024 * 1024  # a reader refuses more (a broken or hostile writer)
CLEAN_EVERY_S = 1.0  # the parent's expiry sweep walks every channel and group
SEND_TIMEOUT_S = 1.0  # a hung sibling costs a send this long once, then its connection is dropped
STALE_ERRORS = (errno.ECONNREFUSED, errno.ENOENT)


class ProcessChannelLayer(InMemoryChannelLayer):
    def __init__(self, folder: str, **kwargs):
        super().__init__(**kwargs)
        self.folder = Path(folder)
        if len(os.fsencode(self.folder / "4194304.sock")) > 107:  # sun_path holds 108 bytes
            raise ImproperlyConfigured(f"channel layer folder {folder} is too long a path for a Unix socket: "
                                       "set VAR_DIR to a shorter one")
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        self._listening: tuple[asyncio.AbstractEventLoop, asyncio.AbstractServer, Path] | None = None
        self._local = threading.local()  # this thread's connections: socket path -> socket
        self._cleaned_at = 0.0
        self._socket_list: tuple[int, float, list[Path]] | None = None

    def _clean_expired(self):
        # The in-memory layer sweeps on every send and receive: O(connections)
        # each time, so 10,000 idle sockets made every DM_NOTIFY cost milliseconds.
        now = time.monotonic()
        if now - self._cleaned_at >= CLEAN_EVERY_S:
            self._cleaned_at = now
            super()._clean_expired()

    # --- receiving ------------------------------------------------------------------

    async def group_add(self, group, channel):
        await super().group_add(group, channel)
        await self._listen()

    async def _listen(self) -> None:
        """Listen on this process's socket, in the loop its consumers run in
        (again after a loop change, as in tests that run one loop each)."""
        loop = asyncio.get_running_loop()
        if self._listening is not None:
            old_loop, server, path = self._listening
            if old_loop is loop and not loop.is_closed():
                return
            if not old_loop.is_closed():
                old_loop.call_soon_threadsafe(server.close)
        path = self.folder / f"{os.getpid()}.sock"
        path.unlink(missing_ok=True)  # a dead process's with our pid
        server = await asyncio.start_unix_server(self._read_connection, path=str(path))
        os.chmod(path, 0o600)
        if self._listening is None:
            atexit.register(path.unlink, missing_ok=True)
        self._listening = (loop, server, path)

    async def _read_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
                if size > MAX_FRAME_BYTES:
                    logger.warning("channel layer: a %d-byte frame refused; connection dropped", size)
                    return
                group, message = json.loads(await reader.readexactly(size))
                await super().group_send(group, message)
        except asyncio.IncompleteReadError:
            pass  # the sender closed (or gave up mid-frame after a timeout)
        except (ValueError, TypeError) as exc:
            logger.warning("channel layer: malformed frame (%s); connection dropped", type(exc).__name__)
        finally:
            writer.close()

    # --- sending --------------------------------------------------------------------

    async def group_send(self, group, message):
        await super().group_send(group, message)
        own = self._listening[2] if self._listening else None
        others = [path for path in self._sockets() if path != own]
        if others:
            body = json.dumps([group, message], separators=(",", ":")).encode()
            frame = HEADER.pack(len(body)) + body
            for path in others:
                self._send_to(path, frame)

    def _sockets(self) -> list[Path]:
        """The folder's sockets, listed again when the folder changed (a socket
        made or removed changes its mtime) and at least once a second (an mtime
        tick is coarse: two changes in one tick look like one): a stat, not a
        listing, per send."""
        mtime, now = self.folder.stat().st_mtime_ns, time.monotonic()
        if self._socket_list is None or self._socket_list[0] != mtime or now - self._socket_list[1] >= 1.0:
            self._socket_list = (mtime, now, list(self.folder.glob("*.sock")))
        return self._socket_list[2]

    def _send_to(self, path: Path, frame: bytes) -> None:
        connections = self._local.__dict__.setdefault("connections", {})
        for attempt in (1, 2):  # a kept connection may have died with its process: connect once more
            sock = connections.get(path)
            try:
                if sock is None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    sock.settimeout(SEND_TIMEOUT_S)
                    try:
                        sock.connect(str(path))
                    except BaseException:
                        sock.close()
                        raise
                    connections[path] = sock
                sock.sendall(frame, socket.MSG_NOSIGNAL)
                return
            except OSError as exc:
                if sock is not None:
                    sock.close()
                connections.pop(path, None)
                if exc.errno in STALE_ERRORS:
                    path.unlink(missing_ok=True)  # nobody listens there any more
                    return
                if attempt == 2 or isinstance(exc, TimeoutError):
                    logger.warning("channel layer: %s not reached (%s)", path.name, type(exc).__name__)
                    return
