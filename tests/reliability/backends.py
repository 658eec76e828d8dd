"""Echo backends the test controls while they run: stopped and restarted on the same port (a
flapping service), resetting each connection after some bytes (a crashing one), and recording
how every connection ended (EOF, reset, close) and when.

Each connection is served on a plain non-blocking socket, from the moment it is accepted, so
that :meth:`EchoBackend.crash` can reset every one of them, however new: a killed process's
connections see an RST, never an EOF that would pass for a clean end. (asyncio's own servers
leave a gap between accepting a socket and building its transport, in which a close becomes a
graceful FIN or nothing at all.)

They run in-process on their own loop in a background thread, like the fault proxy, so the
test can block while they serve. For bulk traffic, where this process's CPU would get in the
way, the tests use the separate-process backends of ``tests/integration/backends.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from dataclasses import dataclass

from tests.reliability.loopthread import LoopThread

_LINGER_ZERO = struct.pack("ii", 1, 0)
READ_SIZE = 64 * 1024


@dataclass(frozen=True)
class Ending:
    """How one backend connection ended."""

    how: str  # "eof" (the peer half-closed), "reset" (ECONNRESET), "closed", "aborted" (by us)
    at: float  # time.monotonic()
    received: int  # bytes it had read by then


def set_linger_zero(sock: socket.socket) -> None:
    """Make the next close send an RST instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)


class EchoBackend:
    """An echo service on 127.0.0.1; ``reset_after``: abort each connection with an RST once
    it has echoed that many bytes."""

    def __init__(self, reset_after: int | None = None) -> None:
        self.reset_after = reset_after
        self.port = 0
        self.accepted = 0
        self.endings: list[Ending] = []
        self._listener: socket.socket | None = None
        self._serving: dict[socket.socket, asyncio.Task[None]] = {}
        self._thread = LoopThread("echo-backend")

    @property
    def open(self) -> int:
        """Connections being served now."""
        return len(self._serving)

    def start(self, port: int = 0) -> int:
        """Listen (again) on ``port``, or on a free one the first time; the port."""
        self.port = self._thread.call(self._listen, port or self.port)
        return self.port

    def crash(self) -> None:
        """Stop listening and reset every connection, as a killed process would."""
        self._thread.call(self._crash)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.crash()
        self._thread.stop()

    async def _listen(self, port: int) -> int:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(1024)
        listener.setblocking(False)
        self._listener = listener
        # Accepting in a plain callback, not a task: a task cancelled just after its accept
        # completed would drop the new socket, which would then close with a FIN.
        asyncio.get_running_loop().add_reader(listener, self._accept, listener)
        return int(listener.getsockname()[1])

    def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # BlockingIOError: none left for now
                return
            conn.setblocking(False)
            self.accepted += 1
            self._serving[conn] = loop.create_task(self._serve(conn))

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        received, how = 0, "closed"
        limit = self.reset_after
        try:
            while data := await loop.sock_recv(conn, READ_SIZE):
                if limit is not None and received + len(data) >= limit:
                    await loop.sock_sendall(conn, data[: limit - received])
                    received, how = limit, "aborted"
                    set_linger_zero(conn)
                    return
                received += len(data)
                await loop.sock_sendall(conn, data)
            how = "eof"
            conn.shutdown(socket.SHUT_WR)  # everything was echoed; then close
        except ConnectionResetError:
            how = "reset"
        except asyncio.CancelledError:
            how = "aborted"  # crash(): the socket has SO_LINGER 0 already
        except OSError:
            how = "closed"
        finally:
            self.endings.append(Ending(how, time.monotonic(), received))
            self._serving.pop(conn, None)
            conn.close()

    async def _crash(self) -> None:
        if self._listener is not None:
            asyncio.get_running_loop().remove_reader(self._listener)
            self._listener.close()  # the kernel resets connections not yet accepted
            self._listener = None
        serving = list(self._serving.items())
        for conn, task in serving:
            set_linger_zero(conn)
            task.cancel()
        await asyncio.gather(*(task for _, task in serving), return_exceptions=True)
        for conn in list(self._serving):  # tasks cancelled before they ever ran
            self.endings.append(Ending("aborted", time.monotonic(), 0))
            self._serving.pop(conn)
            conn.close()
