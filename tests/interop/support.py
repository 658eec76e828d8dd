"""The Python end of the interop tests, and the Go reference peer as an asyncio subprocess.

The Python end is the project's own yamux core, :class:`tunnel.protocol.session.Session`, driven by
:class:`tunnel.aio.transport.TunnelConnection` over a real loopback socket, without the ambassador
application layer (the Go peer speaks plain yamux: no hello, no catalog). Its streams are
handled by :class:`EchoStream` (the server end: everything read is written back) or
:class:`SendingStream` (the client end: send a payload, FIN, collect the echo).

:class:`TappedSession` is a Session that also decodes, on the side, the frame headers it
receives and sends, so a test can assert what crossed the wire (window deltas, pings, Go Away).

The payload of a stream labelled L is sha256("L:0") + sha256("L:1") + ... cut to length, the
same construction as in ``yamuxpeer/main.go``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunnel.aio.transport import StreamHandler, TunnelConnection
from tunnel.errors import RemoteProtocolError
from tunnel.protocol.events import DataReceived, Event
from tunnel.protocol.frames import MAX_LENGTH, FrameDecoder, FrameType
from tunnel.protocol.limits import Limits
from tunnel.protocol.session import Role, Session

KIB = 1024
MIB = 1024 * KIB
CHUNK = 64 * KIB  # how much a SendingStream hands the session at a time
STOP_GRACE = 5.0


def pattern(label: int, size: int) -> bytes:
    """The deterministic payload of stream ``label`` (see the module docstring)."""
    blocks = -(-size // 32)
    return b"".join(hashlib.sha256(f"{label}:{j}".encode()).digest() for j in range(blocks))[:size]


def digest(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------- wire taps


@dataclass(frozen=True, slots=True)
class Header:
    """One frame that crossed the wire, without its payload."""

    type: FrameType
    flags: int
    stream_id: int
    length: int
    at: float  # time.monotonic() when the session received or produced it


class Wire:
    """The frame headers of one direction of a connection, decoded as they pass."""

    def __init__(self) -> None:
        self._decoder = FrameDecoder(max_data_length=MAX_LENGTH)
        self.headers: list[Header] = []
        self.broken = ""  # set if the bytes stopped being valid frames

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self.broken or not data:
            return
        self._decoder.feed(data)
        now = time.monotonic()
        try:
            while (frame := self._decoder.next_frame()) is not None:
                self.headers.append(
                    Header(frame.type, frame.flags, frame.stream_id, frame.length, now)
                )
        except RemoteProtocolError as exc:
            self.broken = str(exc)

    def of(self, type_: FrameType, flags: int | None = None) -> list[Header]:
        """Frames of a type; with ``flags``, only those carrying every one of those bits."""
        return [
            h
            for h in self.headers
            if h.type is type_ and (flags is None or h.flags & flags == flags)
        ]

    def last_not_ping(self) -> float:
        """When the last frame other than a ping passed: the start of idleness."""
        return max(h.at for h in self.headers if h.type is not FrameType.PING)

    def window_deltas(self) -> list[int]:
        return [h.length for h in self.of(FrameType.WINDOW_UPDATE)]

    def data_bytes(self, stream_id: int) -> int:
        return sum(h.length for h in self.of(FrameType.DATA) if h.stream_id == stream_id)


class TappedSession(Session):
    """A Session that records the frames it receives and sends, and the events it reports.

    Data events are not kept (the handlers see the data); ``first_data[stream_id]`` is how many
    other events had been reported when the stream's first data arrived, so a test can tell
    what came before it.
    """

    def __init__(self, role: Role, limits: Limits | None = None, now: float = 0.0) -> None:
        super().__init__(role, limits, now)
        self.inbound = Wire()
        self.outbound = Wire()
        self.events: list[Event] = []
        self.first_data: dict[int, int] = {}
        self._room = memoryview(b"")

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> list[Event]:
        self.inbound.feed(data)
        return super().receive_data(data, now)  # its events pass through take_events

    def get_buffer(self) -> memoryview:
        self._room = super().get_buffer()
        return self._room

    def buffer_updated(self, nbytes: int, now: float) -> list[Event]:
        self.inbound.feed(bytes(self._room[:nbytes]))  # before the session reuses the room
        return super().buffer_updated(nbytes, now)

    def take_events(self) -> list[Event]:
        events = super().take_events()
        self._record(events)
        return events

    def buffers_to_send(
        self, limit: int = 256 * 1024, now: float | None = None
    ) -> list[bytes | bytearray | memoryview]:
        buffers = super().buffers_to_send(limit, now)
        self.outbound.feed(b"".join(buffers))
        return buffers

    def _record(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, DataReceived):
                self.first_data.setdefault(event.stream_id, len(self.events))
            else:
                self.events.append(event)


def tapped(connection: TunnelConnection) -> TappedSession:
    session = connection.session
    assert isinstance(session, TappedSession)
    return session


# ------------------------------------------------------------------------ handlers


class EchoStream:
    """A stream handler that writes back everything it receives, then FIN after the peer's.

    Credit goes back to the peer once the echo is queued, unless the session said the stream's
    send queue is full (then after ``on_drained``), or while ``holding`` (until ``release``).
    So a peer that does not read its echo ends up unable to send, as in the project's relay.
    """

    def __init__(self, connection: TunnelConnection, stream_id: int, holding: bool) -> None:
        self.connection = connection
        self.stream_id = stream_id
        self.holding = holding
        self.hash = hashlib.sha256()
        self.received = 0
        self.uncredited = 0
        self.paused = False
        self.pauses = 0  # times the session said "stop producing"
        self.ended = False
        self.reset_reason = ""

    def on_data(self, data: bytes) -> None:
        self.hash.update(data)
        self.received += len(data)
        self.uncredited += len(data)
        if self.connection.send(self.stream_id, data) and not self.paused:
            self.paused = True
            self.pauses += 1
        self._credit()

    def on_end(self) -> None:
        self.ended = True
        self.connection.end(self.stream_id)

    def on_reset(self, reason: str) -> None:
        self.reset_reason = reason

    def on_drained(self) -> None:
        self.paused = False
        self._credit()

    def release(self) -> None:
        self.holding = False
        self._credit()

    def _credit(self) -> None:
        if self.uncredited and not (self.paused or self.holding):
            self.connection.consumed(self.stream_id, self.uncredited)
            self.uncredited = 0


class SendingStream:
    """Opens a stream, sends ``payload`` (pausing when told to), then FIN; collects the echo.

    ``done`` resolves with everything received once the peer's FIN arrives; ``first_data``
    once the first byte does. With ``separate_fin`` the FIN is only asked for once every byte
    has left the session, so it travels in a Window Update of its own, as hashicorp/yamux
    sends it, rather than on the last Data frame (see
    ``test_fin_travels_apart_from_data_as_hashicorp_yamux_sends_it``).
    """

    def __init__(
        self, connection: TunnelConnection, payload: bytes, *, separate_fin: bool = False
    ) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.separate_fin = separate_fin
        self.connection = connection
        self.payload = payload
        self.offset = 0  # bytes handed to the session so far
        self.paused = False
        self.pauses = 0
        self.ended = False  # everything handed over; FIN asked for (or about to be)
        self.received = bytearray()
        self.done: asyncio.Future[bytes] = loop.create_future()
        self.first_data: asyncio.Future[None] = loop.create_future()
        self.stream_id = connection.open_stream(self)
        self._pump()

    @property
    def sent_on_wire(self) -> int:
        """Bytes the session has actually framed and sent (handed over minus still queued)."""
        return self.offset - self.connection.session.send_buffer_size(self.stream_id)

    def _pump(self) -> None:
        while self.offset < len(self.payload) and not self.paused:
            piece = self.payload[self.offset : self.offset + CHUNK]
            self.offset += len(piece)
            if self.connection.send(self.stream_id, piece):
                self.paused = True
                self.pauses += 1
        if self.offset == len(self.payload) and not (self.paused or self.ended):
            self.ended = True
            self._end_when_sent()

    def _end_when_sent(self) -> None:
        if self.separate_fin and self.connection.session.send_buffer_size(self.stream_id):
            if self.connection.is_open:
                self._loop.call_later(0.002, self._end_when_sent)
            return
        self.connection.end(self.stream_id)

    def on_data(self, data: bytes) -> None:
        if not self.first_data.done():
            self.first_data.set_result(None)
        self.received += data
        self.connection.consumed(self.stream_id, len(data))

    def on_end(self) -> None:
        if not self.done.done():
            self.done.set_result(bytes(self.received))

    def on_reset(self, reason: str) -> None:
        error = ConnectionResetError(f"stream {self.stream_id}: {reason}")
        for future in (self.done, self.first_data):
            if not future.done():
                future.set_exception(error)

    def on_drained(self) -> None:
        self.paused = False
        self._pump()


def refuse_streams(connection: TunnelConnection, stream_id: int) -> StreamHandler | None:
    return None  # the Go server never opens streams; if it did, the session resets them


# --------------------------------------------------------------------- Python ends


class PythonServer:
    """A loopback listener whose connections run a server Session echoing every stream."""

    def __init__(
        self,
        limits: Limits | None = None,
        *,
        hold_credit: bool = False,
        go_away_after: int = 0,
    ) -> None:
        self.limits = limits or Limits()
        self.hold_credit = hold_credit
        self.go_away_after = go_away_after  # go away on accepting this many streams (0: never)
        self.connections: list[TunnelConnection] = []
        self.streams: dict[int, EchoStream] = {}
        self._listener: asyncio.Server | None = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(self._connection, "127.0.0.1", 0)
        return int(self._listener.sockets[0].getsockname()[1])

    @property
    def connection(self) -> TunnelConnection:
        assert len(self.connections) == 1, f"{len(self.connections)} connections, expected one"
        return self.connections[0]

    def _connection(self) -> TunnelConnection:
        connection = TunnelConnection(TappedSession(Role.SERVER, self.limits), self._accept)
        self.connections.append(connection)
        return connection

    def _accept(self, connection: TunnelConnection, stream_id: int) -> StreamHandler:
        stream = EchoStream(connection, stream_id, self.hold_credit)
        self.streams[stream_id] = stream
        if len(self.streams) == self.go_away_after:
            # Queued ahead of anything this stream will echo.
            connection.go_away()
        return stream

    def release_credit(self) -> None:
        self.hold_credit = False
        for stream in self.streams.values():
            stream.release()

    async def close(self) -> None:
        for connection in self.connections:
            connection.close("test over")
        if self._listener is not None:
            self._listener.close()
            await asyncio.wait_for(self._listener.wait_closed(), STOP_GRACE)


async def connect(port: int, limits: Limits | None = None) -> TunnelConnection:
    """A client Session over a new connection to 127.0.0.1:``port``."""
    loop = asyncio.get_running_loop()
    _, connection = await asyncio.wait_for(
        loop.create_connection(
            lambda: TunnelConnection(TappedSession(Role.CLIENT, limits), refuse_streams),
            "127.0.0.1",
            port,
        ),
        STOP_GRACE,
    )
    return connection


# ------------------------------------------------------------------------ the Go peer


@dataclass
class GoPeer:
    """A running ``yamuxpeer``: its JSON lines on stdout, its log in a file."""

    process: asyncio.subprocess.Process
    argv: Sequence[str]
    stderr_path: Path
    lines: list[str] = field(default_factory=list)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def describe(self) -> str:
        """For assertion messages: what ran, what it printed, what it logged."""
        return (
            f"\n$ {' '.join(self.argv)}\nexit: {self.process.returncode}\n"
            f"stdout: {self.lines}\nstderr:\n{self.stderr()[-4000:]}"
        )

    async def line(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next JSON line on stdout."""
        assert self.process.stdout is not None
        raw = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not raw:
            raise AssertionError(f"yamuxpeer printed nothing more{self.describe()}")
        self.lines.append(raw.decode())
        parsed: dict[str, Any] = json.loads(raw)
        return parsed

    async def result(self, timeout: float = 20.0) -> dict[str, Any]:
        """The last JSON line, once the program has exited (bounded by ``timeout``)."""
        assert self.process.stdout is not None
        rest = await asyncio.wait_for(self.process.stdout.read(), timeout)
        await asyncio.wait_for(self.process.wait(), STOP_GRACE)
        self.lines += [line for line in rest.decode().splitlines() if line.strip()]
        if not self.lines:
            raise AssertionError(f"yamuxpeer printed no result{self.describe()}")
        parsed: dict[str, Any] = json.loads(self.lines[-1])
        return parsed

    async def stop(self) -> None:
        """Stop this process by its pid: SIGTERM, then SIGKILL after a grace period."""
        if self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), STOP_GRACE)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await asyncio.wait_for(self.process.wait(), STOP_GRACE)


@contextlib.asynccontextmanager
async def go_peer(binary: Path, logs: Path, *args: str) -> AsyncIterator[GoPeer]:
    """Run ``yamuxpeer ARGS``; it is stopped (by pid) on the way out, whatever happened."""
    argv = [str(binary), *args]
    stderr_path = logs / f"yamuxpeer-{len(list(logs.glob('yamuxpeer-*')))}.log"
    with stderr_path.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=stderr
        )
    peer = GoPeer(process, argv, stderr_path)
    try:
        yield peer
    finally:
        await peer.stop()


def run(coroutine: Any, timeout: float = 30.0) -> Any:
    """Run a test's coroutine on a fresh event loop, bounded by ``timeout`` seconds."""
    return asyncio.run(asyncio.wait_for(coroutine, timeout))
