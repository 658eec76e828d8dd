"""Joins one local TCP connection to one tunnel stream, with backpressure both ways.

Tunnel -> socket: bytes from the stream are written to the local socket, and the stream's window
is credited only for the bytes the socket has actually taken (written minus still buffered). A
consumer that stops reading therefore stops the credit of its own stream, and the peer stops
sending on it, while every other stream and the tunnel connection itself carry on.

Socket -> tunnel: bytes read from the socket are queued on the stream; when the session says the
stream's queue is full (its send window is used up), reading from the socket pauses until the
session reports the queue drained.

Close semantics follow TCP's: EOF on the socket becomes a FIN on the stream and a FIN becomes a
write-side shutdown of the socket, so half-closed connections work; a reset on either side
becomes a reset (RST, SO_LINGER 0) on the other, never a clean EOF after an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from typing import cast

from tunnel.aio.transport import READ_SIZE, TunnelConnection
from tunnel.operations.metrics import UNCOUNTED, ServiceMeters

LOCAL_HIGH_WATER = 256 * 1024
LOCAL_LOW_WATER = 64 * 1024
CREDIT_BATCH = 16 * 1024
_LINGER_ZERO = struct.pack("ii", 1, 0)
_buffers = threading.local()


def read_buffer() -> memoryview:
    """This thread's buffer for reads from local sockets: each read is copied out of it at
    once (as the event loops do with their own), so one buffer serves every relay."""
    buffer: memoryview | None = getattr(_buffers, "view", None)
    if buffer is None:
        buffer = _buffers.view = memoryview(bytearray(READ_SIZE))
    return buffer


def abort_with_reset(transport: asyncio.Transport) -> None:
    """Close a TCP connection with an RST, so the other end sees an error, not an EOF."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    transport.abort()


class _Metered(asyncio.BufferedProtocol):
    """A relay's protocol while its session's send budget is tight: each read is sized by the
    relay (:meth:`Relay.get_buffer`). Only then: a buffered read costs uvloop more per read than
    a plain one, 6% of the CPU of a bulk transfer."""

    __slots__ = ("relay",)

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.relay.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        relay = self.relay
        relay.data_received(bytes(relay._buffer[:nbytes]))

    def eof_received(self) -> bool:
        return self.relay.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.connection_lost(exc)

    def pause_writing(self) -> None:
        self.relay.pause_writing()

    def resume_writing(self) -> None:
        self.relay.resume_writing()


class Relay(asyncio.Protocol):
    """The protocol of a local socket and the handler of its stream, at once.

    Subclasses decide what comes first on the stream (a header to send, an answer to read)
    through :meth:`on_stream_data`, called while ``preamble`` is set; after that, stream bytes
    go straight to the socket. The base class moves bytes and keeps the close semantics.
    """

    preamble = False  # stream bytes go to on_stream_data (not straight to the socket)
    meters: ServiceMeters = UNCOUNTED  # the service's byte counts, once it is known

    def __init__(self, tunnel: TunnelConnection | None, stream_id: int | None = None) -> None:
        self.tunnel = tunnel
        self.stream_id = stream_id
        self.transport: asyncio.Transport | None = None
        self._uncredited = 0  # written to the socket's transport, not yet credited
        self._pending: list[bytes | bytearray] = []  # stream bytes that arrived before the socket
        self._unsent: list[bytes] = []  # socket bytes that arrived before the stream
        self.local_eof = False  # the local side sent EOF
        self.remote_eof = False  # the stream's peer sent FIN
        self.closed = False
        self.forwarded = False  # a byte of the local socket's went to a stream
        self._buffer = read_buffer()
        self._metered: _Metered | None = None  # the protocol while reads are sized
        self._draining = False  # credit_when_taken waits for the write buffer to empty

    # ----------------------------------------------------------- local socket side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = transport = cast(asyncio.Transport, transport)
        # No TCP_NODELAY here: asyncio and uvloop both set it on every TCP transport.
        transport.set_write_buffer_limits(LOCAL_HIGH_WATER, LOCAL_LOW_WATER)
        if self.tunnel is not None:
            if self.tunnel.metered:
                self.meter(True)  # before reading starts: uvloop reads once whatever we do
            if self.tunnel.full:
                transport.pause_reading()  # resumed by on_drained, once the session has room
        pending, self._pending = self._pending, []
        for data in pending:
            self.deliver(data)
        if self.remote_eof:
            self._shutdown_write()

    def get_buffer(self, sizehint: int) -> memoryview:
        # A read takes at most half of what the session's send budget has left: the budget then
        # holds whatever the number of streams (each stream that is not paused could otherwise
        # add a whole read beyond it), and streams whose peer reads nothing, paused once their
        # queue reaches what is left, leave the others half of it each time. One byte when it
        # is full: uvloop starts reading a new connection after connection_made whatever that
        # did, and this is all that read may cost.
        buffer = self._buffer
        tunnel = self.tunnel
        if tunnel is not None:
            share = tunnel.send_room // 2
            if share < READ_SIZE:
                return buffer[: max(1, share)]
        return buffer

    def meter(self, on: bool) -> None:
        """Size each read by the session's send room (on), or read whatever comes (off)."""
        transport = self.transport
        if transport is None or self.closed or transport.is_closing():
            return
        if on == (self._metered is not None):
            return
        self._metered = _Metered(self) if on else None
        # uvloop picks its read callbacks when reading starts: restart it around the change.
        reading = transport.is_reading()
        if reading:
            transport.pause_reading()
        transport.set_protocol(self._metered or self)
        if reading:
            transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.meters.read += len(data)
        tunnel, stream_id = self.tunnel, self.stream_id
        if stream_id is None or tunnel is None:
            # No stream yet (the tunnel is down): hold the bytes and stop reading. Some loops
            # deliver a first read even when reading was paused in connection_made.
            self._unsent.append(data)
            if self.transport is not None:
                self.transport.pause_reading()
            return
        self.forwarded = True
        if tunnel.send(stream_id, data) and self.transport is not None:
            self.transport.pause_reading()

    def send_held(self) -> None:
        """Send what the socket gave before the stream existed; call right after opening it."""
        held, self._unsent = self._unsent, []
        for data in held:
            self._forward(data)
        if self.local_eof and self.tunnel is not None and self.stream_id is not None:
            self.tunnel.end(self.stream_id)

    def _forward(self, data: bytes) -> None:
        assert self.tunnel is not None and self.stream_id is not None
        self.forwarded = True
        if self.tunnel.send(self.stream_id, data) and self.transport is not None:
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.local_eof = True
        if self.stream_id is not None and self.tunnel is not None and not self.closed:
            self.tunnel.end(self.stream_id)
        if self.remote_eof:
            self._close_local()
        return True  # keep the socket open for the other direction

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        if (
            self.stream_id is not None
            and self.tunnel is not None
            and not (self.local_eof and self.remote_eof)
        ):
            # The consumer went away before both directions finished: tell the peer at once.
            self.tunnel.reset(self.stream_id)
        self.on_closed(exc)

    def resume_writing(self) -> None:
        if self._draining:
            self._draining = False
            if self.transport is not None:
                self.transport.set_write_buffer_limits(LOCAL_HIGH_WATER, LOCAL_LOW_WATER)
        self._credit(batch=1)

    def credit_when_taken(self) -> None:
        """The session stopped reading its connection for the bytes its streams hold: credit
        what the socket has taken, and the rest once it has taken it all. A buffer under the
        high-water mark calls no resume_writing by itself, and no more data comes to credit it."""
        self._credit(batch=1)
        transport = self.transport
        if transport is None or self.closed or not transport.get_write_buffer_size():
            return
        self._draining = True
        transport.set_write_buffer_limits(0, 0)  # resume_writing once the buffer is empty

    # -------------------------------------------------------------- stream side

    def on_data(self, data: bytes | bytearray) -> None:
        if self.preamble:
            self.on_stream_data(data)
        else:
            self.deliver(data)

    def on_stream_data(self, data: bytes | bytearray) -> None:
        """Bytes from the stream; subclasses strip their preamble, then call ``deliver``."""
        self.deliver(data)

    def deliver(self, data: bytes | bytearray) -> None:
        """Write stream bytes to the local socket (or keep them until it is connected)."""
        transport = self.transport
        if transport is None:
            self._pending.append(data)
            return
        if self.closed or transport.is_closing():
            return
        transport.write(data)
        self.meters.written += len(data)
        self._uncredited += len(data)
        if self._uncredited >= CREDIT_BATCH:
            self._credit()

    def credit_now(self, length: int) -> None:
        """Credit bytes that were consumed without reaching the socket (a preamble)."""
        if self.stream_id is not None and self.tunnel is not None and length:
            self.tunnel.consumed(self.stream_id, length)

    def on_end(self) -> None:
        self.remote_eof = True
        if self.transport is None:
            return
        self._shutdown_write()

    def on_reset(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self.transport is not None:
            abort_with_reset(self.transport)
        self.on_closed(ConnectionResetError(reason))

    def on_drained(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def on_full(self) -> None:
        """The session's send budget is full: read nothing more until ``on_drained``."""
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    # ---------------------------------------------------------------- hooks

    def on_closed(self, exc: BaseException | None) -> None:
        """Called once when the local connection is gone (subclasses log and count)."""

    # ---------------------------------------------------------------- internals

    def _credit(self, batch: int = CREDIT_BATCH) -> None:
        if self.transport is None or self.stream_id is None or self.tunnel is None:
            return
        delivered = self._uncredited - self.transport.get_write_buffer_size()
        # Small deliveries are credited in batches: a few KiB held back cannot stall a window
        # of 256 KiB or more, and request/response traffic skips a call chain per message.
        if delivered >= batch:
            self._uncredited -= delivered
            self.tunnel.consumed(self.stream_id, delivered)
        elif delivered < self._uncredited and not self._draining:
            # Bytes wait in a buffer under the high-water mark: nothing else would credit them
            # once the socket takes them (no more data comes while they hold the window).
            self._draining = True
            self.transport.set_write_buffer_limits(0, 0)

    def _shutdown_write(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.local_eof:
            # Both directions are done. Closing, rather than half-closing a socket that has
            # already received EOF, also keeps clear of a uvloop 0.23 heap corruption.
            self._close_local()
        elif transport.can_write_eof():
            transport.write_eof()
        else:
            self._close_local()

    def _close_local(self) -> None:
        if self.transport is not None:
            self.transport.close()
