"""The asyncio driver of a :class:`~tunnel.protocol.session.Session`: the tunnel connection itself.

:class:`TunnelConnection` is an ``asyncio.BufferedProtocol`` for the one TCP (or TLS)
connection between the two ambassadors. It moves bytes and nothing else: incoming bytes go to
the session, the session's events go to the handler of each stream (:class:`StreamHandler`),
and whatever the session has to send is written once per loop iteration, so the frames
produced while handling one read leave in one write. While the socket's buffer is over its
high-water mark nothing more is pulled from the session: frames wait inside the session, where
the round-robin over streams keeps a bulk transfer from delaying everyone else. The connection
is never paused for one slow stream; that stream's window simply stops being credited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import ssl
import sys
import time
from collections.abc import Callable
from typing import Protocol, cast

from tunnel.operations import metrics
from tunnel.protocol.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    GoAwayReceived,
    PingAcknowledged,
    SessionDrained,
    StreamAccepted,
    StreamDrained,
    StreamEnded,
    StreamOpened,
    StreamReset,
)
from tunnel.protocol.frames import GoAwayCode
from tunnel.protocol.origin import UNSPECIFIED, Origin, origin_of
from tunnel.protocol.session import Session
from tunnel.protocol.streams import StreamState
from tunnel.security.tlserrors import describe_tls_error
from tunnel.settings.wording import hostport

log = logging.getLogger("ambassador.tunnel")

# The sessions' clock. Not the loop's: uvloop's loop.time() moves in whole milliseconds, and
# a round trip on a short path is a fraction of one (window auto-tuning needs it exact).
clock = time.monotonic

# Round-trip probes: pings soon after the start, then ever more rarely, so that the smallest
# round trip (what stream windows are sized by) is known within a second and kept current.
RTT_PROBES = (0.1, 0.3, 1.0, 3.0, 10.0)  # seconds between probes; the last one repeats

READ_BUDGET = 256 * 1024
READ_SIZE = 256 * 1024  # the most one read takes from a local socket (asyncio's and uvloop's)
WRITE_HIGH_WATER = 128 * 1024
WRITE_LOW_WATER = 32 * 1024


def enable_tcp_keepalive(sock: socket.socket) -> None:
    """TCP keepalive under the session's own pings: the kernel notices a dead peer even while
    the event loop is busy, after 30 s of silence and 3 probes 10 s apart."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


UNSENT_LOW_WATER = 128 * 1024


def limit_unsent(sock: socket.socket) -> None:
    """Keep at most 256 KiB of not-yet-sent bytes in the kernel (TCP_NOTSENT_LOWAT).

    Bytes in flight are not limited, so a long fat link still fills; but frames wait in the
    session, where streams take turns, rather than in a deep kernel queue where a small
    request would sit behind megabytes of a bulk transfer.
    """
    option = getattr(socket, "TCP_NOTSENT_LOWAT", 25 if sys.platform == "linux" else None)
    if option is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, option, UNSENT_LOW_WATER)


def format_peer(peername: object) -> str:
    """``host:port`` of a socket address, IPv6 in brackets."""
    if isinstance(peername, tuple) and len(peername) >= 2:
        return hostport(str(peername[0]), peername[1])
    return str(peername or "?")


_FAMILIES = {socket.AF_INET: "inet", socket.AF_INET6: "inet6", socket.AF_UNIX: "unix"}


def socket_origin(transport: asyncio.BaseTransport) -> Origin:
    """Where an accepted connection came from and went to, as its socket says (what a
    backend's PROXY protocol header names)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return UNSPECIFIED
    return origin_of(
        _FAMILIES.get(sock.family, ""),
        transport.get_extra_info("peername"),
        transport.get_extra_info("sockname"),
    )


class StreamHandler(Protocol):
    """What the tunnel calls when something happens on one of its streams."""

    def on_data(self, data: bytes | bytearray) -> None: ...
    def on_end(self) -> None: ...
    def on_reset(self, reason: str) -> None: ...
    def on_drained(self) -> None: ...


class Producer(Protocol):
    """A handler that reads from a socket of its own and can be told to stop."""

    def on_full(self) -> None: ...
    def meter(self, on: bool) -> None: ...


class Consumer(Protocol):
    """A handler that writes a stream's bytes to a socket of its own, crediting what it took."""

    def credit_when_taken(self) -> None: ...


AcceptStream = Callable[["TunnelConnection", int], StreamHandler | None]


def _refuse_stream(tunnel: TunnelConnection, stream_id: int) -> StreamHandler | None:
    return None  # the connection is closed


class TunnelConnection(asyncio.BufferedProtocol):
    """One yamux session over one stream socket.

    The socket reads straight into the session's receive buffer (``get_buffer`` and
    ``buffer_updated``); under TLS, the TLS layer decrypts into that buffer the same way.
    """

    def __init__(
        self,
        session: Session,
        accept_stream: AcceptStream,
        peer: str = "",
        on_connect: Callable[[asyncio.BaseTransport], bool] | None = None,
    ) -> None:
        self.session = session
        self.peer = peer
        self._accept_stream = accept_stream
        # Asked first when the socket is connected; False: the connection is refused (the
        # callee has closed it and said why), and nothing more happens here.
        self._on_connect = on_connect
        # Set by an on_connect that refused with a last word (linger_and_close): it closes
        # the transport itself, once the peer has had the time to read that word.
        self.lingering = False
        self._handlers: dict[int, StreamHandler] = {}
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._flush_scheduled = False
        self._write_paused = False
        # Reads from local sockets are sized by the send budget's room (Relay.get_buffer):
        # set while the room is under one whole read for each stream.
        self.metered = False
        self._turn_bytes = 0  # bytes read since reading last yielded the loop
        # Reading the connection is paused because the streams hold more received bytes than
        # session_memory (Session.wants_read): until the local consumers take enough of them.
        self._held_paused = False
        self._held_logged = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf  # the session time the timer is armed for
        self._probe: asyncio.TimerHandle | None = None
        self._probes_sent = 0
        self.closed: asyncio.Future[str] = self._loop.create_future()
        self.on_go_away: Callable[[], None] | None = None
        self.on_rtt: Callable[[float], None] | None = None
        self._ping_waiters: list[asyncio.Future[float]] = []
        self.close_reason = ""

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._on_connect is not None:
            on_connect, self._on_connect = self._on_connect, None
            if not on_connect(transport):
                if not self.lingering:
                    transport.close()
                return
        self._transport = transport = cast(asyncio.Transport, transport)
        if not self.peer:
            self.peer = format_peer(transport.get_extra_info("peername"))
        transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            enable_tcp_keepalive(sock)
            limit_unsent(sock)
        # A first ping measures the round trip at once: window auto-tuning needs it.
        self.session.ping(clock())
        self._arm_timer()
        self._schedule_probe()
        self._schedule_flush()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.session.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        session = self.session
        events = session.buffer_updated(nbytes, clock())
        if events:
            self._dispatch(events)
        if session.has_output:  # an answer to send (an ACK, a ping's); data was written at once
            self._schedule_flush()
        # Read budget: an event loop may read a busy socket many times in one turn (libuv
        # reads up to 32 times). Past READ_BUDGET bytes, yield the turn, so that a consumer's
        # small request is read (and its answer sent) between the chunks of a bulk transfer.
        self._turn_bytes += nbytes
        if not session.wants_read:
            self._pause_for_held()
        elif self._turn_bytes >= READ_BUDGET and self._transport is not None:
            self._transport.pause_reading()
            self._loop.call_soon(self._resume_reading)

    def _resume_reading(self) -> None:
        self._turn_bytes = 0
        if self._held_paused:
            return  # the held bytes resume it, once consumed
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def _pause_for_held(self) -> None:
        # TCP's flow control then holds the peer back: its bytes wait in the socket buffers
        # (and its own send queue), not here. Under TLS or a WebSocket the layer passes the
        # pause to the socket; what it had already read (one read) still arrives.
        if self._held_paused or self._transport is None:
            return
        self._held_paused = True
        self._transport.pause_reading()
        # What is held sits in the local connections' write buffers; each credits it once its
        # socket has taken it, else nothing would tell the session that it may read again.
        for handler in list(self._handlers.values()):
            if hasattr(handler, "credit_when_taken"):
                cast(Consumer, handler).credit_when_taken()
        metrics.LIMIT_HITS.labels("session_memory").inc()
        if not self._held_logged:
            self._held_logged = True
            log.warning(
                "pausing reads from %s: its streams hold %d received bytes that the local "
                "connections have not taken, over --session-memory (%d MiB); reading resumes "
                "as they take them",
                self.peer, self.session.held, self.session.limits.session_memory >> 20,
            )  # fmt: skip
        self._rearm_timer()  # while paused, the session pings the peer now and then

    def _resume_for_held(self) -> None:
        self._held_paused = False
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()
        self._rearm_timer()

    def eof_received(self) -> bool | None:
        self._finish("the peer closed the connection")
        return None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._schedule_flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if isinstance(exc, ssl.SSLError):
            reason = describe_tls_error(exc)
        elif exc is not None:
            reason = f"connection lost: {exc}"
        else:
            reason = "the peer closed the connection"
        self._finish(self.close_reason or reason)

    # ---------------------------------------------------------- used by handlers

    def open_stream(self, handler: StreamHandler) -> int:
        stream_id = self.session.open_stream()
        self._handlers[stream_id] = handler
        self.session.set_sink(stream_id, handler.on_data)
        self._schedule_flush()
        return stream_id

    def hand_over(self, stream_id: int, handler: StreamHandler) -> None:
        """From now on ``handler`` gets the stream's events (a stream whose header says it is
        a datagram flow moves to a flow handler)."""
        if stream_id in self._handlers:
            self._handlers[stream_id] = handler
            self.session.set_sink(stream_id, handler.on_data)

    def send(self, stream_id: int, data: bytes) -> bool:
        """Queue data on a stream; True means pause the producer until ``on_drained``."""
        session = self.session
        transport = self._transport
        if (
            not self._flush_scheduled
            and transport is not None
            and not self._write_paused
            and not transport.get_write_buffer_size()
        ):
            # Nothing written or queued yet this turn and the socket idle: a small message
            # that nothing waits ahead of is written now, without waiting for the end of the
            # turn. The flush scheduled after it makes later sends of the same turn queue and
            # leave together, so a busy turn still costs one write.
            frame = session.send_at_once(stream_id, data, clock())
            if frame is not None:
                transport.write(frame)
                self._flush_scheduled = True
                self._loop.call_soon(self._flush)
                return False
        was_full = session.full
        full = session.send_data(stream_id, data)
        if session.full and not was_full:
            self._hold_producers()
        if not self.metered and (
            session.send_budget - session.queued < len(self._handlers) * READ_SIZE
        ):
            # Each producer could add a whole read before it is paused: from here on, reads
            # are sized, so that together they stay within the room.
            self._meter(True)
        self._schedule_flush()
        return full

    def _meter(self, on: bool) -> None:
        self.metered = on
        for handler in list(self._handlers.values()):
            if hasattr(handler, "meter"):  # producers have it; other handlers need not
                cast(Producer, handler).meter(on)

    def _hold_producers(self) -> None:
        # The session's send budget is full: every producer stops reading, not only the ones
        # that queued, so that nothing more is read until it has room (SessionDrained).
        metrics.LIMIT_HITS.labels("session_memory").inc()
        for handler in list(self._handlers.values()):
            if hasattr(handler, "on_full"):  # producers have it; other handlers need not
                cast(Producer, handler).on_full()

    def _release_producers(self) -> None:
        paused = self.session.stream_paused
        for stream_id, handler in list(self._handlers.items()):
            if not paused(stream_id):  # the others wait for their own StreamDrained
                handler.on_drained()

    @property
    def send_room(self) -> int:
        """Bytes that may still be queued before the session's send budget is full."""
        session = self.session
        return session.send_budget - session.queued

    @property
    def full(self) -> bool:
        """The session's send budget is full: a new producer starts paused."""
        return self.session.full

    def end(self, stream_id: int) -> None:
        self.session.end_stream(stream_id)
        self._schedule_flush()
        self._forget_if_closed(stream_id)

    def reset(self, stream_id: int, after_data: bool = False) -> None:
        self._handlers.pop(stream_id, None)
        self.session.reset_stream(stream_id, after_data=after_data)
        self._schedule_flush()

    def consumed(self, stream_id: int, length: int) -> None:
        self.session.consumed(stream_id, length, clock())
        self._schedule_flush()

    @property
    def is_open(self) -> bool:
        return not self.closed.done() and not self.session.terminated

    @property
    def suspect(self) -> bool:
        """The peer has been silent past the liveness deadline and is being probed: a new
        stream had better wait for the answer (or for the next session)."""
        return self.session.liveness.probe_at is not None

    @property
    def accepts_streams(self) -> bool:
        s = self.session
        return self.is_open and not (s.goaway_sent or s.goaway_received) and s.streams_left > 0

    async def ping(self) -> float:
        """Round-trip time to the peer, in seconds."""
        waiter: asyncio.Future[float] = self._loop.create_future()
        self._ping_waiters.append(waiter)
        self.session.ping(clock())
        self._schedule_flush()
        return await waiter

    def go_away(self, code: GoAwayCode = GoAwayCode.NORMAL, reason: str = "") -> None:
        self.session.go_away(code, reason)
        self._dispatch(self.session.take_events())
        self._schedule_flush()

    def close(self, reason: str = "closed") -> None:
        """Close at once: every open stream is reset."""
        self.close_reason = self.close_reason or reason
        if self._transport is not None:
            self._flush()
            self._transport.close()
        self._finish(reason)

    # ----------------------------------------------------------------- internals

    def _dispatch(self, events: list[Event]) -> None:
        handlers = self._handlers
        for event in events:
            if type(event) is DataReceived:
                handler = handlers.get(event.stream_id)
                if handler is not None:
                    handler.on_data(event.data)
            elif type(event) is StreamOpened:
                accepted = self._accept_stream(self, event.stream_id)
                if accepted is None:
                    self.session.reset_stream(event.stream_id)
                else:
                    handlers[event.stream_id] = accepted
                    # A read that is one whole Data frame of the stream now goes straight
                    # to its handler (Session.set_sink), with no event to dispatch.
                    self.session.set_sink(event.stream_id, accepted.on_data)
            elif type(event) is StreamEnded:
                handler = handlers.get(event.stream_id)
                if handler is not None:
                    handler.on_end()
                self._forget_if_closed(event.stream_id)
            elif type(event) is StreamReset:
                handler = handlers.pop(event.stream_id, None)
                if handler is not None:
                    handler.on_reset("reset by the peer" if event.remote else "reset")
            elif type(event) is StreamDrained:
                handler = handlers.get(event.stream_id)
                if handler is not None and not self.session.full:
                    handler.on_drained()  # while full, SessionDrained resumes it
            elif type(event) is SessionDrained:
                self._release_producers()
            elif type(event) is PingAcknowledged:
                if self.on_rtt is not None:
                    self.on_rtt(event.rtt)
                # The answered ping's deadline no longer applies: the next keepalive is due
                # an interval after the last traffic, which is sooner.
                self._rearm_timer()
                waiters, self._ping_waiters = self._ping_waiters, []
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(event.rtt)
            elif type(event) is GoAwayReceived:
                if self.on_go_away is not None:
                    self.on_go_away()
            elif type(event) is ConnectionTerminated:
                self._terminated(event)
            elif type(event) is StreamAccepted:
                pass  # data was allowed to flow before the ACK; nothing waits for it

    def _terminated(self, event: ConnectionTerminated) -> None:
        who = "peer" if event.remote else "local"
        self.close_reason = self.close_reason or event.reason
        if self.session.limit_hit:
            metrics.LIMIT_HITS.labels(self.session.limit_hit).inc()
            log.warning("closing the session with %s: %s", self.peer, event.reason)
        if self.session.unresponsive:
            metrics.UNRESPONSIVE_PEERS.inc()
        log.debug("session with %s ended (%s): %s", self.peer, who, event.reason)
        self._flush()
        if self._transport is not None:
            self._transport.close()
        self._finish(event.reason)

    def _forget_if_closed(self, stream_id: int) -> None:
        if self.session.stream_state(stream_id) is StreamState.CLOSED:
            self._handlers.pop(stream_id, None)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._turn_bytes = 0
        session = self.session
        if self._held_paused and session.wants_read:
            self._resume_for_held()  # the local connections took enough (consumed, reset)
        if session.timer_moved:  # a message written at once started a liveness clock
            session.timer_moved = False
            self._timer_sooner()
        if not session.has_output:
            return  # the turn's messages went out at once (or there were none)
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        now = clock()
        while not self._write_paused:
            buffers = session.buffers_to_send(now=now)
            if not buffers:
                break
            transport.writelines(buffers)
        if session.timer_moved:  # the session now waits for the peer: its deadline is sooner
            session.timer_moved = False
            self._timer_sooner()
        if self.metered and self.send_room >= 2 * len(self._handlers) * READ_SIZE:
            self._meter(False)  # room for a whole read of every producer, twice over
        events = session.take_events()
        if events:
            self._dispatch(events)

    def _timer_sooner(self) -> None:
        # The session's deadline moved earlier (a liveness clock started). The armed timer is
        # kept when it fires no later than that: firing early, it finds nothing due and is armed
        # again for the session's next deadline. Requests sent one after another, each
        # answered, then cost a timer a second rather than one cancelled and made per request.
        when = self.session.get_timer()
        if when is not None and (self._timer is None or when < self._timer_at):
            self._rearm_timer()

    def _rearm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf
        self._arm_timer()

    def _arm_timer(self) -> None:
        when = self.session.get_timer()
        if when is not None and not self.closed.done():
            # A millisecond late rather than early: the loop's timers are that coarse.
            delay = max(0.0, when - clock()) + 0.001
            self._timer = self._loop.call_later(delay, self._on_timer)
            self._timer_at = when

    def _schedule_probe(self) -> None:
        delay = RTT_PROBES[min(self._probes_sent, len(RTT_PROBES) - 1)]
        self._probe = self._loop.call_later(delay, self._send_probe)

    def _send_probe(self) -> None:
        if self.closed.done() or self.session.terminated:
            return
        self._probes_sent += 1
        self.session.ping(clock())
        self._schedule_flush()
        self._schedule_probe()

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, math.inf
        self.session.handle_timer(clock())
        self._dispatch(self.session.take_events())
        self._schedule_flush()
        self._arm_timer()

    def _finish(self, reason: str) -> None:
        if self.closed.done():
            return
        self.close_reason = self.close_reason or reason
        self.closed.set_result(self.close_reason)
        if self._timer is not None:
            self._timer.cancel()
        if self._probe is not None:
            self._probe.cancel()
        handlers, self._handlers = self._handlers, {}
        for handler in handlers.values():
            handler.on_reset(f"tunnel closed: {self.close_reason}")
        for waiter in self._ping_waiters:
            if not waiter.done():
                waiter.set_exception(ConnectionError(self.close_reason))
        self._ping_waiters.clear()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
        # Free the receive buffer now, and drop what points back at the owner and the
        # transport: a closed connection's memory is given back at once, not at the next
        # cyclic garbage collection (which a busy server may run rarely).
        self.session.release()
        self._accept_stream = _refuse_stream
        self.on_go_away = self.on_rtt = None
        self._transport = None


class _Discard(asyncio.Protocol):
    """Reads and drops what a refused peer still sends, so that its bytes arriving after our
    last word do not make the kernel reset the connection (and discard that word)."""

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        self.transport.close()  # the peer has read what it wanted and gone
        return False


LINGER = 1.0  # seconds a refused peer is given to read the refusal before the close


def linger_and_close(transport: asyncio.BaseTransport, last_word: bytes) -> None:
    """Write ``last_word``, end our side, and close once the peer has gone or after LINGER
    seconds; what it sends meanwhile is dropped unread."""
    transport.set_protocol(_Discard(transport))
    writer = cast(asyncio.WriteTransport, transport)
    writer.write(last_word)
    if writer.can_write_eof():
        writer.write_eof()
    asyncio.get_running_loop().call_later(LINGER, transport.close)
