"""A TCP proxy that stands in for the network between ambassador-client and ambassador-server.

The client's ``--remote`` points at the proxy; every connection it accepts becomes a *link* to
the one upstream address (the server). The test shapes and breaks links while they carry
traffic:

===================  ================================================================
``set_latency``      delay per direction; bytes are timestamped on arrival and released
                     when due, so the delay adds latency without capping throughput
``set_bandwidth``    bytes a second per direction (a token bucket, 20 ms bursts)
``cut``              close both sockets of every link (the peers see EOF or a reset)
``blackhole``        stop forwarding both ways but keep the sockets open: a dead path,
                     which only keepalives can detect
``reset``            abort both sockets with ``SO_LINGER`` 0: the peers see a reset
``corrupt``          flip one byte (XOR 0xFF) at an absolute offset of a direction
===================  ================================================================

Directions are named from the client: ``up`` is client -> upstream, ``down`` the reverse.

It runs in-process, on its own event loop in a background thread (:class:`LoopThread`), so the
test may block (waiting for a log line, a process) while the proxy keeps moving bytes; every
control method is thread-safe and returns once the change is in effect. Each direction reads
at most ``max_queue`` bytes ahead of what it has delivered: beyond that the proxy stops reading
and TCP's own flow control pushes back on the sender, as a full link would. With
``socket_buffer`` the proxy's own sockets get small kernel buffers, so that the link's queue is
``max_queue`` and not the megabytes loopback's auto-tuned buffers would add to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from tests.reliability.loopthread import LoopThread

UP, DOWN = "up", "down"
DIRECTIONS = (UP, DOWN)
CHUNK = 64 * 1024
DEFAULT_MAX_QUEUE = 32 * 1024 * 1024
_LINGER_ZERO = struct.pack("ii", 1, 0)


@dataclass
class Shape:
    """The conditions of one direction, read for every chunk (changes apply at once)."""

    latency: float = 0.0  # seconds added to every byte
    rate: int | None = None  # bytes a second; None: as fast as the sockets go


@dataclass(frozen=True)
class LinkInfo:
    """A snapshot of one open link, for the test to wait on and assert about."""

    id: int
    bytes_up: int  # read from the client so far
    bytes_down: int  # read from the upstream so far
    frozen: bool


def _abort(writer: asyncio.StreamWriter, reset: bool) -> None:
    if reset:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    writer.transport.abort()


class _Pipe:
    """One direction of one link: read, maybe corrupt, hold until due, pace, write."""

    def __init__(
        self,
        link: _Link,
        shape: Shape,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        max_queue: int,
    ) -> None:
        self.link = link
        self.shape = shape
        self.reader = reader
        self.writer = writer
        self.max_queue = max_queue
        self.read_bytes = 0
        self.corrupt_at: set[int] = set()
        self._queue: deque[tuple[float, bytes]] = deque()
        self._queued = 0
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._eof = False
        self._tokens = 0.0
        self._stamp = 0.0

    async def pump_in(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self.link.running.wait()
                await self._room.wait()
                data = await self.reader.read(CHUNK)
                if not data:
                    break
                data = self._corrupt(data)
                self.read_bytes += len(data)
                self._queue.append((loop.time() + self.shape.latency, data))
                self._queued += len(data)
                if self._queued >= self.max_queue:
                    self._room.clear()
                self._ready.set()
        except OSError:
            # The sender reset its connection: so does the proxy, towards the other end.
            self.link.close(reset=True)
            return
        self._eof = True
        self._ready.set()

    async def pump_out(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                while not self._queue:
                    if self._eof:
                        await self._forward_eof()
                        return
                    self._ready.clear()
                    await self._ready.wait()
                due, data = self._queue[0]
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                await self._write(data)
                self._queue.popleft()
                self._queued -= len(data)
                if self._queued < self.max_queue:
                    self._room.set()
        except OSError:
            self.link.close(reset=True)

    def _corrupt(self, data: bytes) -> bytes:
        start, end = self.read_bytes, self.read_bytes + len(data)
        hits = [offset for offset in self.corrupt_at if start <= offset < end]
        if not hits:
            return data
        changed = bytearray(data)
        for offset in hits:
            changed[offset - start] ^= 0xFF
            self.corrupt_at.discard(offset)
        return bytes(changed)

    async def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            await self.link.running.wait()
            rate = self.shape.rate
            if rate is None:
                piece, view = view, view[len(view) :]
            else:
                size = max(1024, rate // 50)
                piece, view = view[:size], view[size:]
                await self._take_tokens(len(piece), rate, size)
            self.writer.write(piece)
            await self.writer.drain()

    async def _take_tokens(self, amount: int, rate: int, burst: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            self._tokens = min(float(burst), self._tokens + (now - self._stamp) * rate)
            self._stamp = now
            if self._tokens >= amount:
                self._tokens -= amount
                return
            await asyncio.sleep((amount - self._tokens) / rate)

    async def _forward_eof(self) -> None:
        if self.writer.can_write_eof() and not self.writer.is_closing():
            self.writer.write_eof()
        self.link.half_closed()


class _Link:
    def __init__(self, proxy: FaultProxy, link_id: int, frozen: bool) -> None:
        self.proxy = proxy
        self.id = link_id
        self.running = asyncio.Event()
        if not frozen:
            self.running.set()
        self.pipes: dict[str, _Pipe] = {}
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: list[asyncio.Task[None]] = []
        self._half_closed = 0
        self.closed = False

    def start(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        proxy = self.proxy
        self.writers = [client[1], upstream[1]]
        self.pipes[UP] = _Pipe(self, proxy.shapes[UP], client[0], upstream[1], proxy.max_queue)
        self.pipes[DOWN] = _Pipe(self, proxy.shapes[DOWN], upstream[0], client[1], proxy.max_queue)
        loop = asyncio.get_running_loop()
        for pipe in self.pipes.values():
            self.tasks += [loop.create_task(pipe.pump_in()), loop.create_task(pipe.pump_out())]

    def half_closed(self) -> None:
        self._half_closed += 1
        if self._half_closed == 2:
            self.close(reset=False)

    def close(self, reset: bool) -> None:
        if self.closed:
            return
        self.closed = True
        self.running.set()  # let nothing wait on a frozen link that is gone
        for writer in self.writers:
            _abort(writer, reset)
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        self.proxy.forget(self)

    def info(self) -> LinkInfo:
        up, down = self.pipes.get(UP), self.pipes.get(DOWN)
        return LinkInfo(
            self.id,
            up.read_bytes if up else 0,
            down.read_bytes if down else 0,
            not self.running.is_set(),
        )


class FaultProxy:
    """``FaultProxy(upstream_port).start()``; ``.port`` is where clients connect."""

    def __init__(
        self,
        upstream_port: int,
        upstream_host: str = "127.0.0.1",
        listen_host: str = "127.0.0.1",
        max_queue: int = DEFAULT_MAX_QUEUE,
        socket_buffer: int | None = None,
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.listen_host = listen_host
        self.max_queue = max_queue
        self.socket_buffer = socket_buffer
        self.shapes = {UP: Shape(), DOWN: Shape()}
        self.accepted = 0  # links ever accepted
        self.port = 0
        self._links: dict[int, _Link] = {}
        self._freeze_new = False
        self._server: asyncio.Server | None = None
        self._thread: LoopThread | None = None

    # ------------------------------------------------------------------ life cycle

    def start(self) -> FaultProxy:
        self._thread = LoopThread(f"faultproxy-{self.upstream[1]}")
        self._server = self._thread.call(self._listen)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self._thread.call(self._stop)
        self._thread.stop()
        self._thread = None

    async def _listen(self) -> asyncio.Server:
        family = socket.AF_INET6 if ":" in self.listen_host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._size_buffers(sock)  # accepted sockets inherit them
        sock.bind((self.listen_host, 0))
        return await asyncio.start_server(self._accept, sock=sock, limit=2 * CHUNK)

    def _size_buffers(self, sock: socket.socket) -> None:
        """Small kernel buffers on the proxy's own sockets: the link's queue is then the
        proxy's (``max_queue``), not megabytes the kernel would add on loopback."""
        if self.socket_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.socket_buffer)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.socket_buffer)

    async def _connect_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, port = self.upstream
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        self._size_buffers(sock)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock, limit=2 * CHUNK)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links.values()):
            link.close(reset=False)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        link = _Link(self, self.accepted, frozen=self._freeze_new)
        self._links[link.id] = link
        link.writers = [writer]
        try:
            upstream = await asyncio.wait_for(self._connect_upstream(), 5)
        except (OSError, TimeoutError):
            link.close(reset=True)  # as if the far end had refused: the client sees a reset
            return
        if link.closed:  # cut while we were connecting
            _abort(upstream[1], reset=False)
            return
        link.start((reader, writer), upstream)

    def forget(self, link: _Link) -> None:
        self._links.pop(link.id, None)

    # -------------------------------------------------------------------- controls

    def set_latency(self, up: float | None = None, down: float | None = None) -> None:
        """Seconds added to each direction, from now on (bytes already queued keep theirs)."""
        for direction, value in ((UP, up), (DOWN, down)):
            if value is not None:
                self.shapes[direction].latency = value

    def set_bandwidth(self, up: int | None = None, down: int | None = None) -> None:
        """Bytes a second per direction; None leaves that direction unlimited."""
        self.shapes[UP].rate = up
        self.shapes[DOWN].rate = down

    def cut(self) -> int:
        """Close both sides of every open link; how many there were."""
        return self._on_links(lambda link: link.close(reset=False))

    def reset(self) -> int:
        """Abort both sides of every open link with an RST; how many there were."""
        return self._on_links(lambda link: link.close(reset=True))

    def blackhole(self, new_links: bool = False) -> int:
        """Stop forwarding on every open link (and on later ones too, with ``new_links``)."""
        self._freeze_new = new_links
        return self._on_links(lambda link: link.running.clear())

    def corrupt(self, direction: str, offset: int) -> int:
        """Flip the byte at ``offset`` (counted from the link's first byte in ``direction``)
        on every open link that has not read that far yet."""

        def mark(link: _Link) -> None:
            pipe = link.pipes.get(direction)
            if pipe is not None and pipe.read_bytes <= offset:
                pipe.corrupt_at.add(offset)

        return self._on_links(mark)

    def links(self) -> list[LinkInfo]:
        """The open links, oldest first."""
        assert self._thread is not None
        return self._thread.call(self._snapshot)

    def wait_for(
        self, predicate: Callable[[list[LinkInfo]], bool], timeout: float, what: str
    ) -> list[LinkInfo]:
        """Poll :meth:`links` until ``predicate`` holds; AssertionError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            links = self.links()
            if predicate(links):
                return links
            if time.monotonic() > deadline:
                raise AssertionError(f"fault proxy: {what} not seen within {timeout:g}s: {links}")
            time.sleep(0.005)

    def wait_quiet(self, quiet: float = 0.2, timeout: float = 5.0) -> list[LinkInfo]:
        """The open links once no byte has crossed any of them for ``quiet`` seconds."""
        deadline = time.monotonic() + timeout
        last, since = self.links(), time.monotonic()
        while time.monotonic() - since < quiet:
            if time.monotonic() > deadline:
                raise AssertionError(f"fault proxy: links still busy after {timeout:g}s")
            time.sleep(0.01)
            links = self.links()
            if links != last:
                last, since = links, time.monotonic()
        return last

    async def _snapshot(self) -> list[LinkInfo]:
        return [link.info() for link in self._links.values()]

    def _on_links(self, action: Callable[[_Link], None]) -> int:
        assert self._thread is not None

        async def apply() -> int:
            links = list(self._links.values())
            for link in links:
                action(link)
            return len(links)

        return self._thread.call(apply)
