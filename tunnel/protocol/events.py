"""What a :class:`tunnel.protocol.session.Session` reports to the code driving it.

Events are past-tense facts, as in h2: the session has already updated its state when it hands
one out. The driver reacts (writes data to a socket, dials a backend) and never has to ask the
session what happened.

Events are slotted dataclasses, not frozen ones: a frozen dataclass costs more than twice as
much to build, and one is built for every Data frame. Nothing changes an event once handed out.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunnel.protocol.frames import GoAwayCode


@dataclass(slots=True)
class Event:
    """Base of every session event."""


@dataclass(slots=True)
class StreamOpened(Event):
    """The peer opened a stream (SYN); the session has already acknowledged it."""

    stream_id: int


@dataclass(slots=True)
class StreamAccepted(Event):
    """The peer acknowledged (ACK) a stream that we opened."""

    stream_id: int


@dataclass(slots=True)
class DataReceived(Event):
    """Bytes arrived on a stream. Hand them on, then credit them with ``Session.consumed``.

    ``data`` may be a bytearray (a fresh copy out of the receive buffer, held by nothing else).
    """

    stream_id: int
    data: bytes | bytearray


@dataclass(slots=True)
class StreamEnded(Event):
    """The peer half-closed the stream (FIN): it sends no more data, but still reads."""

    stream_id: int


@dataclass(slots=True)
class StreamReset(Event):
    """The stream is gone at once (RST), sent by the peer or caused by a limit on our side."""

    stream_id: int
    remote: bool  # True: the peer sent RST; False: the session reset it itself


@dataclass(slots=True)
class StreamDrained(Event):
    """A stream whose send buffer was over the high-water mark is back under the low one.

    The driver paused reading from the stream's local socket; it may resume now.
    """

    stream_id: int


@dataclass(slots=True)
class SessionDrained(Event):
    """The session's send budget, full a moment ago, has room again.

    While it was full the driver paused every stream's producer; it may resume those whose
    own queue is not over its mark (they get :class:`StreamDrained` when it is).
    """


@dataclass(slots=True)
class PingAcknowledged(Event):
    """The peer answered one of our pings."""

    rtt: float  # seconds between sending the ping and receiving its answer


@dataclass(slots=True)
class GoAwayReceived(Event):
    """The peer will accept no new streams; streams already open carry on."""

    code: GoAwayCode


@dataclass(slots=True)
class ConnectionTerminated(Event):
    """The session is over. Flush what ``data_to_send`` still holds, then close the socket."""

    code: GoAwayCode
    reason: str  # one human-readable line: why the session ended
    remote: bool  # True: caused by the peer (its Go Away or its protocol error)
