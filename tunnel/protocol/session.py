"""A yamux session, sans-IO: bytes and the current time in, events and bytes out.

Theory of operation
-------------------
The driver feeds whatever the socket delivered to :meth:`Session.receive_data` (or reads
straight into :meth:`Session.get_buffer` and reports it with :meth:`Session.buffer_updated`) and
gets back events (:mod:`tunnel.protocol.events`). It asks :meth:`Session.data_to_send` for bytes (or
:meth:`Session.buffers_to_send` for a gathered write) whenever the socket can take more, and
re-arms a timer at :meth:`Session.get_timer`, calling :meth:`Session.handle_timer` when it fires.
Nothing here reads a clock or touches a socket.

Sending is *pulled*: :meth:`send_data` only queues bytes on the stream, and ``data_to_send``
builds frames when the driver asks, control frames first, then Data frames taken round-robin
from the streams that have both bytes and window, at most ``max_frame_size`` each. A bulk stream
therefore never holds the connection for long, and the socket's own buffer (which the driver
keeps small) is the only queue in which frames wait behind each other.

Receiving is *credited*: a Data frame may not exceed the window granted on its stream, and the
window is only given back when the driver reports the bytes consumed (:meth:`consumed`). A frame
over its stream's window is refused as soon as its header is read, before its payload is kept.

A server's session starts *guarded* (``guarded=True``) until the driver calls :meth:`unguard`
(once the peer has authenticated): no Data frame may exceed ``GUARD_FRAME`` bytes and the receive
buffer stays within ``GUARD_BUFFER``, so an unauthenticated peer costs a few KiB whatever it
announces.

Anything the peer does against the spec or the limits ends the session: a Go Away with a
protocol-error code is queued, and a
:class:`~tunnel.protocol.events.ConnectionTerminated` event tells the driver to flush and close.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import NoReturn, TypeVar

from tunnel.errors import LimitExceeded, LocalProtocolError, RemoteProtocolError
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
from tunnel.protocol.frames import (
    FIRST_SIZE,
    HEADER,
    HEADER_SIZE,
    MAX_LENGTH,
    MAX_STREAM_ID,
    READ_SIZE,
    Flags,
    FrameDecoder,
    FrameType,
    GoAwayCode,
    RawFrame,
    encode_header,
)
from tunnel.protocol.limits import INITIAL_WINDOW, Budget, Limits
from tunnel.protocol.liveness import Liveness, Verdict
from tunnel.protocol.proxyheader import V2_SIGNATURE, starts_like_proxy
from tunnel.protocol.streams import StreamInput, StreamState, next_state
from tunnel.protocol.windows import ReceiveWindow

_pack_header = HEADER.pack  # version, type, flags, stream id, length
_DATA, _WINDOW_UPDATE, _PING = FrameType.DATA, FrameType.WINDOW_UPDATE, FrameType.PING
_T = TypeVar("_T")

# Before the peer has authenticated: the largest Data frame it may send (a hello is a few hundred
# bytes) and the most the receive buffer grows to (room for one such frame and the next header).
GUARD_FRAME = 16 * 1024
GUARD_BUFFER = 2 * GUARD_FRAME

# Flag bits as plain ints: IntFlag arithmetic is slow enough to show in profiles.
_SYN, _ACK, _FIN, _RST = int(Flags.SYN), int(Flags.ACK), int(Flags.FIN), int(Flags.RST)


class Role(Enum):
    """Which end of the connection: the client opens odd streams, the server even ones."""

    CLIENT = 1
    SERVER = 2


@dataclass(frozen=True, slots=True)
class SessionStats:
    """Counters since the session began, for logs and metrics."""

    streams_opened_local: int
    streams_opened_remote: int
    streams_refused: int
    bytes_sent: int
    bytes_received: int
    open_streams: int
    rtt: float | None


# Bytes queued for the peer may fill what the grown receive windows leave of session_memory,
# and at least this much: with many streams open, their windows alone can take all of it, and
# the streams must still move. It is what a session may hold beyond session_memory (with one
# read of a producer), whatever the number of streams.
SEND_FLOOR = 4 * 1024 * 1024

# Reading resumes once the bytes held for local consumers fall to this share of session_memory:
# well under the mark, so that a session near it does not pause and resume on every read.
RESUME_SHARE = 2

# A payload chunk at least this large goes to the socket as it is, one entry of a gathered
# write; smaller ones are copied next to their frame headers.
GATHER_MIN = 16 * 1024


class _Gather:
    """The frames of one :meth:`Session.buffers_to_send` call, as a list of buffers.

    Headers and small payloads are copied into a shared bytearray; large payloads are not
    copied at all (they are immutable bytes, or views of them), so a bulk transfer reaches the
    socket's write call without a copy.
    """

    __slots__ = ("buffers", "size", "small")

    def __init__(self, first: bytearray) -> None:
        self.buffers: list[bytes | bytearray | memoryview] = []
        self.small = first
        self.size = len(first)

    def add(self, data: bytes | memoryview) -> None:
        self.size += len(data)
        if len(data) < GATHER_MIN:
            self.small += data
        else:
            if self.small:
                self.buffers.append(self.small)
                self.small = bytearray()
            self.buffers.append(data)

    def add_header(self, header: bytes) -> None:
        self.size += HEADER_SIZE
        self.small += header

    def finish(self) -> list[bytes | bytearray | memoryview]:
        if self.small:
            self.buffers.append(self.small)
        return self.buffers


class _Outbox:
    """Bytes queued on a stream, kept as the chunks they came in: queueing copies nothing,
    and each byte is copied once, into the frame that carries it."""

    __slots__ = ("chunks", "size")

    def __init__(self) -> None:
        self.chunks: deque[bytes | memoryview] = deque()
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def __bool__(self) -> bool:
        return self.size > 0

    def append(self, data: bytes | bytearray | memoryview) -> None:
        if data:
            # Only immutable bytes are kept as they are: a caller may reuse a bytearray.
            self.chunks.append(data if isinstance(data, bytes) else bytes(data))
            self.size += len(data)

    def move_to(self, out: _Gather, length: int) -> None:
        """Move the first ``length`` queued bytes to the end of ``out``."""
        self.size -= length
        chunks = self.chunks
        if len(chunks) == 1 and not self.size:  # the usual case: one message, all of it
            out.add(chunks.pop())
            return
        while length:
            head = chunks[0]
            if len(head) <= length:
                out.add(head)
                chunks.popleft()
                length -= len(head)
            else:
                view = memoryview(head)  # of immutable bytes: slicing it is safe
                out.add(view[:length])
                chunks[0] = view[length:]
                length = 0

    def clear(self) -> None:
        self.chunks.clear()
        self.size = 0


# Takes the payload of a Data frame in place of a DataReceived event (Session.set_sink).
Sink = Callable[[bytearray], None]


def _as_frames(whole: tuple[int, bytearray]) -> list[RawFrame]:
    """A frame taken out by FrameDecoder.whole_data, for the general path."""
    stream_id, payload = whole
    return [(_DATA, 0, stream_id, len(payload), payload)]


# For each stream state: may data be received, may data be sent (from the transition table).
_DATA_ALLOWED = {
    state: (
        next_state(state, StreamInput.RECV_DATA) is not None,
        next_state(state, StreamInput.SEND_DATA) is not None,
    )
    for state in StreamState
}


class _Stream:
    """Book-keeping for one stream; only the session touches it."""

    __slots__ = (
        "acked",
        "can_receive",
        "can_send",
        "fin_queued",
        "id",
        "outbox",
        "paused",
        "ready",
        "recv",
        "rst_queued",
        "send_window",
        "sink",
        "state",
    )

    def __init__(self, stream_id: int, recv: ReceiveWindow) -> None:
        self.id = stream_id
        self.state = StreamState.OPEN
        self.can_receive = self.can_send = True  # kept in step with ``state`` by set_state
        self.recv = recv
        self.send_window = INITIAL_WINDOW
        self.outbox = _Outbox()
        self.acked = False
        self.fin_queued = False  # FIN to go out after the outbox drains
        self.rst_queued = False  # RST to go out after the outbox drains
        self.ready = False  # in the session's round-robin queue
        self.paused = False  # the producer was told to stop; tell it when to resume
        self.sink: Sink | None = None  # takes whole Data frames read alone (set_sink)

    def set_state(self, state: StreamState) -> None:
        self.state = state
        # Cached answers to the transition table's two hot questions, so the data path does
        # not look up (state, input) pairs for every frame.
        self.can_receive, self.can_send = _DATA_ALLOWED[state]

    def has_work(self) -> bool:
        """Something can be sent now."""
        if self.outbox:
            return self.send_window > 0
        return self.fin_queued or self.rst_queued

    def has_pending(self) -> bool:
        """Something is still to be sent, now or once the window opens."""
        return bool(self.outbox) or self.fin_queued or self.rst_queued


class Session:
    """One end of a yamux connection."""

    def __init__(
        self, role: Role, limits: Limits | None = None, now: float = 0.0, guarded: bool = False
    ) -> None:
        self.role = role
        self.limits = limits or Limits()
        self._decoder = FrameDecoder(self.limits.max_stream_window, self._admit)
        self.guarded = guarded
        if guarded:
            self._decoder.max_data_length = GUARD_FRAME
            self._decoder.max_buffer = max(FIRST_SIZE, GUARD_BUFFER)
        self._peak_window = INITIAL_WINDOW  # the largest receive window granted on any stream
        self._streams: dict[int, _Stream] = {}
        self._ready: deque[_Stream] = deque()
        self._control: list[bytes] = []
        self._events: list[Event] = []
        self._next_id = 1 if role is Role.CLIENT else 2
        self._peer_parity = 0 if role is Role.CLIENT else 1
        self._last_peer_id = 0
        self._granted_growth = 0  # window bytes granted beyond INITIAL_WINDOW, all streams
        self._queued = 0  # bytes in every stream's outbox: they count in session_memory too
        # Bytes received on every stream and not yet consumed (their window not given back):
        # what the local consumers have yet to take. yamux lets the peer fill each stream's
        # first 256 KiB without asking, so windows alone bound this only by max_streams times
        # that; past session_memory the driver stops reading the connection instead
        # (wants_read), which holds the peer back by TCP's own flow control and caps no streams.
        self._held = 0
        self.wants_read = True
        self.read_pauses = 0  # how often reading was paused for held bytes
        self._paused_ping = 0.0  # when the last ping went out while reading was paused
        # The queued bytes went over the send budget: every producer is paused until they are
        # back a stream's buffer under it (SessionDrained).
        self.full = False
        self._send_budget = self._budget_for_sending()
        self._pings: dict[int, float] = {}
        self._next_ping = 1
        # After our Go Away, a ping marks where the peer read it: a SYN that arrives before its
        # answer was sent before the peer knew, and is served (yamux's Go Away names no last
        # stream, so refusing it would reset a consumer whose bytes went out in good faith;
        # the peer cannot tell a refusal from a reset). One that arrives after is refused.
        self._goaway_mark: int | None = None
        self._goaway_heard = False
        self._last_received = now
        self.rtt: float | None = None  # smoothed round trip, for metrics and logs
        self.min_rtt: float | None = None  # the shortest seen: the path's own, for windows
        self.goaway_sent = False
        self.goaway_received = False
        self.terminated = False
        self._stats = [0, 0, 0, 0, 0]  # opened local, opened remote, refused, sent, received
        self._now = now
        self._resets = Budget(self.limits.resets_per_second)
        self._ping_budget = Budget(self.limits.pings_per_second)
        self._empty_frames = Budget(self.limits.empty_frames_per_second)
        self.limit_hit: str | None = None  # the limit that ended the session, if one did
        # The session ended on its first read, which began with a PROXY protocol header: a load
        # balancer in front sends one, and the listener was not told to read it. Noticed here,
        # only once decoding has failed, so that a listener without --accept-proxy-protocol
        # needs no gate in front of every connection to say so.
        self.proxy_header = False
        self.liveness = Liveness(self.limits.probe_floor)
        self._syn_unsent = False  # a stream was opened since the last buffers_to_send
        # get_timer() moved earlier than the driver's armed timer (a liveness clock started):
        # the driver re-arms and clears it.
        self.timer_moved = False
        self.unresponsive = False  # the session ended because the peer stopped answering

    # ----------------------------------------------------------------- receiving

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> list[Event]:
        """Take bytes from the peer; return what happened because of them."""
        return self._receive(self._decoder.decode, data, len(data), now)

    def get_buffer(self) -> memoryview:
        """Where the driver may read the peer's next bytes to (no copy on the way in);
        report how many it read with :meth:`buffer_updated`."""
        return self._decoder.get_buffer()

    def buffer_updated(self, nbytes: int, now: float) -> list[Event]:
        """``nbytes`` from the peer were read into :meth:`get_buffer`; what happened.

        A read that is one whole Data frame of a stream with a sink (:meth:`set_sink`), open
        and with window for it, with no event waiting ahead of it, goes to the sink: no event
        is made for it. Anything else takes the general path."""
        if self.terminated:
            # Nothing more is parsed: the bytes are left where they are, and the next read
            # lands on them (the buffer must not fill while the driver closes).
            return self.take_events()
        whole = self._decoder.whole_data(nbytes)
        if whole is None:
            return self._receive(self._decoder.buffer_updated, 0, nbytes, now)
        stream = self._streams.get(whole[0])
        if stream is None or stream.sink is None or not stream.can_receive or self._events:
            return self._receive(_as_frames, whole, nbytes, now)
        payload = whole[1]
        length = len(payload)
        recv = stream.recv
        if length > recv.available:
            return self._receive(_as_frames, whole, nbytes, now)  # which says what is wrong
        recv.available -= length
        recv.buffered += length
        self._held += length
        if self._held > self.limits.session_memory:
            self._pause_reading(now)
        self._last_received = self._now = now
        self._stats[4] += nbytes
        if self.liveness.waiting_since is not None:
            self.liveness.heard()
        # Last, with the session's accounting done: the sink may call back into the session
        # (credit the bytes, send an answer, reset the stream).
        stream.sink(payload)
        return self.take_events()

    def set_sink(self, stream_id: int, sink: Sink | None) -> None:
        """Hand a stream's data to ``sink`` rather than as :class:`DataReceived` events,
        whenever a read brings one whole Data frame of it and nothing else (the usual request
        or answer): ``sink(payload)`` is then called from :meth:`buffer_updated`, once the
        session has accounted for the frame, and is to do what the event's handler would do.
        Other reads of the stream still bring events, in order. None: events only."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.sink = sink

    def _receive(
        self, decode: Callable[[_T], list[RawFrame]], arg: _T, size: int, now: float
    ) -> list[Event]:
        if self.terminated:
            return self.take_events()
        self._last_received = self._now = now
        self._stats[4] += size
        if self.liveness.waiting_since is not None:
            self.liveness.heard()
        streams, events = self._streams, self._events
        try:
            for type_, flags, stream_id, length, payload in decode(arg):
                if not flags and length and type_ is _DATA:
                    # The common frame: data on an open stream, within its window. Anything
                    # else about it (unknown stream, past FIN, over the window) takes the
                    # general path below, which says what is wrong.
                    stream = streams.get(stream_id)
                    if stream is not None and stream.can_receive:
                        recv = stream.recv
                        if length <= recv.available:  # ReceiveWindow.receive, inlined
                            recv.available -= length
                            recv.buffered += length
                            self._held += length
                            events.append(DataReceived(stream_id, payload))
                            continue
                if type_ is _DATA or type_ is _WINDOW_UPDATE:
                    if not stream_id:
                        raise RemoteProtocolError(f"{type_.name} frame on stream 0")
                    self._on_stream_frame(type_, flags, stream_id, length, payload)
                elif type_ is _PING:
                    self._on_ping(flags, length, now)
                else:
                    self._on_go_away(length)
                if self.terminated:
                    break
        except LimitExceeded as exc:
            self.limit_hit = exc.limit
            self._fail(GoAwayCode.PROTOCOL_ERROR, str(exc))
        except RemoteProtocolError as exc:
            if self._stats[4] == size and starts_like_proxy(self._decoder.head(len(V2_SIGNATURE))):
                self.proxy_header = True
            self._fail(GoAwayCode.PROTOCOL_ERROR, str(exc))
        if self._held > self.limits.session_memory and self.wants_read and not self.terminated:
            self._pause_reading(now)
        return self.take_events()

    def _pause_reading(self, now: float) -> None:
        self.wants_read = False
        self.read_pauses += 1
        self._paused_ping = now

    def _check_resume(self) -> None:
        if self._held <= self.limits.session_memory // RESUME_SHARE:
            self.wants_read = True
            # Answers to pings sent while paused are read only now: they measure nothing.
            self._pings.clear()
            self.liveness.heard()

    @property
    def held(self) -> int:
        """Bytes received on every stream and not yet consumed."""
        return self._held

    def unguard(self) -> None:
        """The peer has authenticated: frames up to the stream windows, buffers to match."""
        if self.guarded:
            self.guarded = False
            self._decoder.max_data_length = self.limits.max_stream_window
            self._decoder.max_buffer = READ_SIZE

    def release(self) -> None:
        """The connection is over: give the receive buffer back now, not when collected, and
        drop the sinks (they point back at the driver's handlers)."""
        self._decoder.release()
        for stream in self._streams.values():
            stream.sink = None

    def _admit(self, stream_id: int, flags: int, length: int) -> None:
        # The decoder asks before it keeps a payload that spans reads. Frames decoded before
        # this one in the same read are not applied yet, so a stream it does not know may have
        # been opened by one of them: such a frame may be as large as any window granted.
        stream = self._streams.get(stream_id)
        if stream is not None:
            window = stream.recv.available if stream.can_receive else 0
        elif flags & _SYN:
            window = INITIAL_WINDOW
        else:
            window = self._peak_window
        if length > window:
            raise RemoteProtocolError(
                f"data frame of {length} bytes on stream {stream_id} exceeds its "
                f"{window} byte window"
            )

    def take_events(self) -> list[Event]:
        """Events produced outside ``receive_data`` (by sending or by the timer)."""
        events, self._events = self._events, []
        return events

    def _on_stream_frame(
        self, type_: FrameType, flags: int, stream_id: int, length: int, payload: bytes | bytearray
    ) -> None:
        # Only resets of streams the peer opened count: that is the rapid-reset attack (open,
        # cancel, repeat). The peer refusing our own streams is its right, however many.
        if flags:
            if (
                flags & _RST
                and stream_id % 2 == self._peer_parity
                and not self._resets.spend(self._now)
            ):
                raise LimitExceeded(
                    f"more than {self.limits.resets_per_second} stream resets a second "
                    "(a rapid-reset flood)", "resets_per_second",
                )  # fmt: skip
        elif not length and not self._empty_frames.spend(self._now):
            raise LimitExceeded(
                f"more than {self.limits.empty_frames_per_second} empty frames a second",
                "empty_frames_per_second",
            )
        if flags & _SYN:
            stream = self._accept_stream(stream_id)
            if stream is None:
                return
        else:
            found = self._streams.get(stream_id)
            if found is None:
                self._check_was_used(stream_id)
                return  # a frame still in flight for a stream we already closed
            stream = found
        if flags & _ACK and not stream.acked and stream_id % 2 != self._peer_parity:
            stream.acked = True
            self._events.append(StreamAccepted(stream_id))
        if type_ is _WINDOW_UPDATE:
            self._on_window_update(stream, length)
        elif length:
            if not stream.can_receive or not stream.recv.receive(length):
                self._refuse_data(stream, length)
            self._held += length
            self._events.append(DataReceived(stream_id, payload))
        if not flags:
            return
        if flags & _RST:
            self._close(stream)
            self._events.append(StreamReset(stream_id, remote=True))
        elif flags & _FIN:
            self._transition(stream, StreamInput.RECV_FIN)
            self._events.append(StreamEnded(stream_id))
            self._maybe_forget(stream)

    def _accept_stream(self, stream_id: int) -> _Stream | None:
        if stream_id % 2 != self._peer_parity:
            raise RemoteProtocolError(f"peer opened stream {stream_id} with our parity")
        if stream_id <= self._last_peer_id:
            raise RemoteProtocolError(f"peer reused stream id {stream_id}")
        self._last_peer_id = stream_id
        refusing = self.goaway_sent and (self._goaway_mark is None or self._goaway_heard)
        if refusing or len(self._streams) >= self.limits.max_streams:
            # Refuse without ending the session: the peer learns from the RST alone.
            self._stats[2] += 1
            self._control.append(encode_header(FrameType.WINDOW_UPDATE, Flags.RST, stream_id, 0))
            return None
        stream = self._new_stream(stream_id)
        self._stats[1] += 1
        grow = stream.recv.target - INITIAL_WINDOW
        self._control.append(encode_header(FrameType.WINDOW_UPDATE, Flags.ACK, stream_id, grow))
        self._events.append(StreamOpened(stream_id))
        return stream

    def _check_was_used(self, stream_id: int) -> None:
        if stream_id % 2 == self._peer_parity:
            used = stream_id <= self._last_peer_id
        else:
            used = stream_id < self._next_id
        if not used:
            raise RemoteProtocolError(f"frame for stream {stream_id}, which was never opened")

    def _on_window_update(self, stream: _Stream, delta: int) -> None:
        stream.send_window += delta
        if stream.send_window > MAX_LENGTH:
            raise RemoteProtocolError(f"window of stream {stream.id} grew past 2**32-1")
        if delta and stream.has_work():
            self._mark_ready(stream)

    def _refuse_data(self, stream: _Stream, length: int) -> NoReturn:
        if not stream.can_receive:
            raise RemoteProtocolError(f"data on stream {stream.id} after the peer's FIN")
        raise RemoteProtocolError(
            f"stream {stream.id} received {length} bytes with only "
            f"{stream.recv.available} bytes of window left"
        )

    def _on_ping(self, flags: int, value: int, now: float) -> None:
        if flags & _SYN:
            if not self._ping_budget.spend(now):
                raise LimitExceeded(
                    f"more than {self.limits.pings_per_second} pings a second (a ping flood)",
                    "pings_per_second",
                )
            self._control.append(encode_header(FrameType.PING, Flags.ACK, 0, value))
        elif flags & _ACK:
            if value == self._goaway_mark:
                self._goaway_heard = True  # the peer has read our Go Away: it opens no more
                return
            sent = self._pings.pop(value, None)
            if sent is not None:
                rtt = max(now - sent, 0.0)
                self.rtt = rtt if self.rtt is None else 0.875 * self.rtt + 0.125 * rtt
                self.min_rtt = rtt if self.min_rtt is None else min(self.min_rtt, rtt)
                self._events.append(PingAcknowledged(rtt))

    def _on_go_away(self, value: int) -> None:
        self.goaway_received = True
        try:
            code = GoAwayCode(value)
        except ValueError:
            code = GoAwayCode.INTERNAL_ERROR
        if code is GoAwayCode.NORMAL:
            self._events.append(GoAwayReceived(code))
        else:
            self._terminate(code, f"peer went away: {code.name.lower()}", remote=True)

    # ------------------------------------------------------------------- sending

    def open_stream(self) -> int:
        """Open a stream and return its id; data may be sent on it at once."""
        if self.terminated or self.goaway_sent or self.goaway_received:
            raise LocalProtocolError("the session takes no new streams")
        if self._next_id > MAX_STREAM_ID:
            raise LocalProtocolError("stream ids are exhausted; open a new session")
        stream_id = self._next_id
        self._next_id += 2
        stream = self._new_stream(stream_id)
        self._stats[0] += 1
        self._syn_unsent = True
        grow = stream.recv.target - INITIAL_WINDOW
        self._control.append(encode_header(FrameType.WINDOW_UPDATE, Flags.SYN, stream_id, grow))
        return stream_id

    @property
    def streams_left(self) -> int:
        """How many more streams this end may open before the ids run out."""
        return max(0, (MAX_STREAM_ID - self._next_id) // 2 + 1)

    def send_data(self, stream_id: int, data: bytes | bytearray | memoryview) -> bool:
        """Queue ``data`` on a stream. True means: the stream is full, stop producing.

        Data for a stream that has already been reset is dropped silently: the reset event
        may still be on its way to the producer.
        """
        stream = self._streams.get(stream_id)
        if stream is None or stream.rst_queued:
            return False
        if not stream.can_send:
            raise LocalProtocolError(f"send on stream {stream_id} in state {stream.state.name}")
        outbox = stream.outbox
        outbox.append(data)
        self._queued += len(data)
        if stream.send_window > 0 and not stream.ready:
            stream.ready = True
            self._ready.append(stream)
        room = self._send_budget - self._queued
        if outbox.size > self.limits.stream_send_buffer or outbox.size >= room:
            # Paused by its own queue over its mark, or over what the session's send budget has
            # left: a stream whose peer grants no window keeps what it queued, and must leave
            # the rest of the budget to the streams that move.
            stream.paused = True
            if room < 0:
                # Over the budget: a peer that opens streams and never reads their answers
                # fills it. Then every producer of the session stops (the driver pauses them
                # all), not only this one: each stream that was not paused would add a read of
                # its own, and a few hundred of them, hundreds of MiB.
                self.full = True
        return stream.paused or self.full

    def send_at_once(
        self, stream_id: int, data: bytes | bytearray, now: float | None = None
    ) -> bytes | None:
        """The Data frame carrying ``data``, when it may leave ahead of everything queued.

        For a driver whose socket is idle: with nothing queued anywhere (no control frame, no
        stream waiting to send) and a stream that has nothing queued, window for all of it and
        a message under ``GATHER_MIN`` bytes, the frame is accounted as sent and returned for the
        driver to write now. A round trip then costs no queue, no gathering and no turn of the
        driver's loop. None: queue it with :meth:`send_data` as usual. ``now`` (the last time
        the session was given, if None) starts the liveness clock, as for queued data.
        """
        if self._control or self._ready:
            return None  # frames are waiting: this one goes after them
        stream = self._streams.get(stream_id)
        size = len(data)
        if (
            stream is None
            or not stream.can_send
            or stream.outbox.size
            or stream.fin_queued
            or stream.rst_queued
            or not 0 < size < GATHER_MIN
            or size > stream.send_window
            or size > self.limits.max_frame_size
        ):
            return None
        stream.send_window -= size
        self._stats[3] += HEADER_SIZE + size
        if self.liveness.sent(self._now if now is None else now):
            self.timer_moved = True
        return _pack_header(0, _DATA, 0, stream_id, size) + data

    @property
    def has_output(self) -> bool:
        """Something waits for the driver: frames for :meth:`buffers_to_send` (control frames,
        or a stream that can send now), or events for :meth:`take_events`."""
        return bool(self._control or self._ready or self._events)

    def end_stream(self, stream_id: int) -> None:
        """Half-close: a FIN follows the data already queued."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.rst_queued or stream.fin_queued:
            return
        self._transition(stream, StreamInput.SEND_FIN)
        stream.fin_queued = True
        if stream.has_work():
            self._mark_ready(stream)

    def reset_stream(self, stream_id: int, after_data: bool = False) -> None:
        """Reset a stream. With ``after_data`` the RST follows the data already queued (used to
        deliver a refusal's reason before the reset); otherwise queued data is dropped."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.rst_queued:
            return
        if after_data and stream.outbox:
            stream.rst_queued = True
            stream.fin_queued = False
            self._mark_ready(stream)
            return
        self._control.append(encode_header(FrameType.WINDOW_UPDATE, Flags.RST, stream_id, 0))
        self._close(stream)

    def consumed(self, stream_id: int, length: int, now: float) -> None:
        """The driver handed ``length`` bytes of a stream on; the peer may send that much more."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        taken = min(length, stream.recv.buffered)
        if taken:
            self._held -= taken
            if not self.wants_read:
                self._check_resume()
        if stream.state in (StreamState.HALF_CLOSED_REMOTE, StreamState.CLOSED):
            stream.recv.buffered -= taken  # no window to give back: the peer sends no more
            return
        # _window_room() inlined (this runs for every message); a room under 0 grows nothing.
        room = self.limits.session_memory - self._granted_growth - max(0, self._queued - SEND_FLOOR)
        before = stream.recv.target
        delta = stream.recv.consume(length, now, self.min_rtt, room)
        if stream.recv.target != before:
            self._granted_growth += stream.recv.target - before
            self._send_budget = self._budget_for_sending()
            self._peak_window = max(self._peak_window, stream.recv.target)
        if delta:
            self._control.append(
                encode_header(FrameType.WINDOW_UPDATE, Flags.NONE, stream_id, delta)
            )

    @property
    def send_budget(self) -> int:
        """How many bytes may wait to be sent: what the grown receive windows leave of
        ``session_memory``, and never less than ``SEND_FLOOR``."""
        return self._send_budget

    def _budget_for_sending(self) -> int:
        # Kept in _send_budget, computed again whenever the windows change: send_data reads it
        # for every message.
        return max(SEND_FLOOR, self.limits.session_memory - self._granted_growth)

    def _window_room(self) -> int:
        # Queued bytes beyond the floor leave that much less for windows to grow into, so that
        # the two together stay within session_memory and the floor, whichever came first.
        over_floor = max(0, self._queued - SEND_FLOOR)
        return max(0, self.limits.session_memory - self._granted_growth - over_floor)

    def stream_paused(self, stream_id: int) -> bool:
        """The stream's own queue is over its mark: its producer waits for StreamDrained."""
        stream = self._streams.get(stream_id)
        return stream is not None and stream.paused

    def _check_room(self) -> None:
        # Resume once a stream's buffer is free: streams whose peer reads nothing hold at most
        # their own buffer and one read each, so they alone keep the others waiting only when
        # there are enough of them to fill the whole budget.
        if self.full and self._queued <= self._send_budget - self.limits.stream_send_buffer:
            self.full = False
            self._events.append(SessionDrained())

    @property
    def queued(self) -> int:
        """Bytes queued on every stream, not yet sent."""
        return self._queued

    def memory_used(self) -> int:
        """What counts in ``session_memory`` for windows: windows grown beyond the initial,
        bytes queued. Bytes held (:attr:`held`) have a bound of their own."""
        return self._queued + self._granted_growth

    def send_buffer_size(self, stream_id: int) -> int:
        stream = self._streams.get(stream_id)
        return len(stream.outbox) if stream is not None else 0

    def ping(self, now: float) -> None:
        """Send a ping; its answer comes back as :class:`PingAcknowledged`."""
        if self.terminated:
            return
        value = self._next_ping
        self._next_ping = (self._next_ping + 1) & MAX_LENGTH or 1
        self._pings[value] = now
        self._control.append(encode_header(FrameType.PING, Flags.SYN, 0, value))

    def go_away(self, code: GoAwayCode = GoAwayCode.NORMAL, reason: str = "") -> None:
        """Tell the peer we take no new streams. A non-normal code ends the session."""
        if self.terminated:
            return
        if not self.goaway_sent:
            self.goaway_sent = True
            self._control.append(encode_header(FrameType.GO_AWAY, Flags.NONE, 0, code))
        if code is GoAwayCode.NORMAL and self._goaway_mark is None:
            self._goaway_mark = self._next_ping
            self._next_ping = (self._next_ping + 1) & MAX_LENGTH or 1
            self._control.append(encode_header(FrameType.PING, Flags.SYN, 0, self._goaway_mark))
        if code is not GoAwayCode.NORMAL:
            self._terminate(code, reason or code.name.lower(), remote=False)

    def data_to_send(self, limit: int = 256 * 1024, now: float | None = None) -> bytes:
        """Frames ready to go, about ``limit`` bytes at most (control frames always go)."""
        return b"".join(self.buffers_to_send(limit, now))

    def buffers_to_send(
        self, limit: int = 256 * 1024, now: float | None = None
    ) -> list[bytes | bytearray | memoryview]:
        """The same frames as :meth:`data_to_send`, as buffers for one gathered write
        (``writelines``): large payloads are handed over without being copied. ``now`` (the
        last time the session was given, if None) starts the liveness clock when a SYN or
        Data leaves."""
        queued = self._queued
        control = self._control
        out = _Gather(bytearray().join(control) if control else bytearray())
        control.clear()
        max_frame = self.limits.max_frame_size
        ready = self._ready
        closed = StreamState.CLOSED
        while ready and out.size < limit:
            stream = ready.popleft()
            stream.ready = False
            outbox = stream.outbox
            size = outbox.size
            if (
                len(outbox.chunks) == 1
                and size < GATHER_MIN
                and size <= stream.send_window
                and size <= max_frame
                and out.size + size <= limit
                and not (stream.fin_queued or stream.rst_queued or stream.paused)
                and stream.state is not closed
            ):
                # The common case of small messages: one queued chunk goes out whole, and
                # leaves nothing behind (no FIN or RST to follow, no producer to wake).
                out.small += _pack_header(0, _DATA, 0, stream.id, size)
                out.small += outbox.chunks.pop()
                out.size += HEADER_SIZE + size
                outbox.size = 0
                self._queued -= size
                stream.send_window -= size
                continue
            if stream.state is closed and not stream.has_pending():
                self._maybe_forget(stream)
                continue
            self._emit_frame(stream, out, min(max_frame, limit - out.size))
            if stream.outbox.size:
                if stream.send_window > 0:
                    stream.ready = True
                    ready.append(stream)
            elif stream.fin_queued or stream.rst_queued:
                stream.ready = True
                ready.append(stream)
        self._stats[3] += out.size
        if self.full:
            self._check_room()
        if self._queued < queued or self._syn_unsent:
            self._syn_unsent = False
            if self.liveness.sent(self._now if now is None else now):
                self.timer_moved = True
        return out.finish()

    def _emit_frame(self, stream: _Stream, out: _Gather, max_frame: int) -> None:
        outbox = stream.outbox
        size = min(outbox.size, stream.send_window, max(max_frame, 1))
        if size > 0:
            out.add_header(_pack_header(0, _DATA, 0, stream.id, size))
            outbox.move_to(out, size)
            self._queued -= size
            stream.send_window -= size
            if outbox.size:
                if stream.paused and outbox.size <= self.limits.stream_send_buffer // 2:
                    stream.paused = False
                    self._events.append(StreamDrained(stream.id))
                return  # more to send: FIN, RST and forgetting wait for the queue to empty
        if stream.fin_queued and not outbox.size:
            # FIN travels in a Window Update of its own, never on a Data frame: hashicorp/yamux
            # applies a Data frame's FIN before taking its payload, and a reader woken in
            # between can lose that payload.
            out.add_header(_pack_header(0, _WINDOW_UPDATE, _FIN, stream.id, 0))
            stream.fin_queued = False
        if stream.rst_queued and not outbox:
            out.add_header(_pack_header(0, _WINDOW_UPDATE, _RST, stream.id, 0))
            self._close(stream)
            return
        if stream.paused and outbox.size <= self.limits.stream_send_buffer // 2:
            stream.paused = False
            self._events.append(StreamDrained(stream.id))
        if stream.state is StreamState.CLOSED:
            self._maybe_forget(stream)

    # --------------------------------------------------------------------- timers

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called (None: no timer needed)."""
        if self.terminated:
            return None
        if self._pings:
            when = min(self._pings.values()) + self.limits.keepalive_timeout
        else:
            when = self._last_received + self.limits.keepalive_interval
        if not self.wants_read:
            return self._paused_ping + self._paused_ping_interval()
        due = self.liveness.due(self.rtt)
        return when if due is None else min(when, due)

    def _paused_ping_interval(self) -> float:
        # Often enough that the peer's fast liveness check hears from us in time.
        if self.limits.probe_floor:
            return max(0.1, self.liveness.deadline(self.rtt) / 2)
        return self.limits.keepalive_interval

    def handle_timer(self, now: float) -> None:
        """Keepalive: ping an idle peer, and give up on one that stopped answering."""
        if self.terminated:
            return
        self._now = now
        if not self.wants_read:
            # The peer's bytes, answers included, wait unread in the socket: nothing proves it
            # dead. A ping now and then tells it that this end is alive, only slow to read.
            if now >= self._paused_ping + self._paused_ping_interval():
                self._paused_ping = now
                self.ping(now)
            return
        verdict = self.liveness.check(now, self.rtt)
        if verdict is Verdict.DEAD:
            self.unresponsive = True
            self._terminate(GoAwayCode.INTERNAL_ERROR, self.liveness.reason(self.rtt), False)
            return
        if verdict is Verdict.PROBE:
            self.ping(now)
        if self._pings and now - min(self._pings.values()) >= self.limits.keepalive_timeout:
            timeout = self.limits.keepalive_timeout
            self._terminate(
                GoAwayCode.INTERNAL_ERROR, f"peer did not answer a ping for {timeout:g}s", False
            )
        elif not self._pings and now - self._last_received >= self.limits.keepalive_interval:
            self.ping(now)

    # --------------------------------------------------------------------- state

    def stats(self) -> SessionStats:
        opened_local, opened_remote, refused, sent, received = self._stats
        return SessionStats(
            opened_local, opened_remote, refused, sent, received, len(self._streams), self.rtt
        )

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def stream_state(self, stream_id: int) -> StreamState:
        stream = self._streams.get(stream_id)
        return stream.state if stream is not None else StreamState.CLOSED

    def _new_stream(self, stream_id: int) -> _Stream:
        room = self._window_room()
        target = min(self.limits.stream_window, INITIAL_WINDOW + room)
        self._granted_growth += target - INITIAL_WINDOW
        self._send_budget = self._budget_for_sending()
        recv = ReceiveWindow(target, self.limits.max_stream_window, available=target)
        if target > self._peak_window:
            self._peak_window = target
        stream = _Stream(stream_id, recv)
        self._streams[stream_id] = stream
        return stream

    def _mark_ready(self, stream: _Stream) -> None:
        if not stream.ready:
            stream.ready = True
            self._ready.append(stream)

    def _transition(self, stream: _Stream, event: StreamInput) -> None:
        state = next_state(stream.state, event)
        if state is None:
            message = f"{event.name} on stream {stream.id} in state {stream.state.name}"
            if event.name.startswith("RECV"):
                raise RemoteProtocolError(message)
            raise LocalProtocolError(message)
        stream.set_state(state)

    def _close(self, stream: _Stream) -> None:
        stream.set_state(StreamState.CLOSED)
        self._queued -= stream.outbox.size
        stream.outbox.clear()
        stream.fin_queued = stream.rst_queued = False
        self._forget(stream)

    def _maybe_forget(self, stream: _Stream) -> None:
        if stream.state is StreamState.CLOSED and not stream.has_pending():
            self._forget(stream)

    def _forget(self, stream: _Stream) -> None:
        if self._streams.pop(stream.id, None) is not None:
            self._granted_growth -= stream.recv.target - INITIAL_WINDOW
            if stream.recv.buffered:
                # A reset stream's bytes are dropped with its local socket; a closed one's
                # are no longer the session's to count.
                self._held -= stream.recv.buffered
                stream.recv.buffered = 0
                if not self.wants_read:
                    self._check_resume()
            self._send_budget = self._budget_for_sending()
            if self.full:
                self._check_room()

    def _fail(self, code: GoAwayCode, reason: str) -> None:
        # Always say why, even after a normal Go Away: the peer should learn of its error.
        self.goaway_sent = True
        self._control.append(encode_header(FrameType.GO_AWAY, Flags.NONE, 0, code))
        self._terminate(code, reason, remote=True)

    def _terminate(self, code: GoAwayCode, reason: str, remote: bool) -> None:
        self.terminated = True
        self._streams.clear()
        self._queued = 0
        self._held = 0
        self.wants_read = True
        self.full = False
        self._ready.clear()
        self._pings.clear()
        self._events.append(ConnectionTerminated(code, reason, remote))
