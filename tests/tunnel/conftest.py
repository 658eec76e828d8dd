"""In-memory helpers for the sans-IO core: two sessions joined by a pipe of bytes, a fake clock.

``make_pair(...)`` builds a :class:`Pair`; ``pair`` is one with default limits. Nothing here
touches a socket or reads a clock: time is the float ``Pair.now``, moved by ``advance``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tunnel.protocol.events import DataReceived, Event, StreamEnded
from tunnel.protocol.frames import MAX_LENGTH, Frame, FrameDecoder
from tunnel.protocol.limits import Limits
from tunnel.protocol.session import Role, Session


def decode_all(data: bytes) -> list[Frame]:
    """Every frame in ``data``, which must end on a frame boundary."""
    decoder = FrameDecoder(max_data_length=MAX_LENGTH)
    decoder.feed(data)
    frames = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame)
    assert decoder.buffered == 0, "the bytes end in the middle of a frame"
    return frames


class Side:
    """One session, the events it produced, and every byte it sent."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.events: list[Event] = []
        self.sent = bytearray()
        self.consumed: dict[int, int] = {}  # stream id -> bytes reported consumed

    def received(self, stream_id: int) -> bytes:
        """Everything that arrived on ``stream_id``, in order."""
        return b"".join(
            e.data for e in self.events if isinstance(e, DataReceived) and e.stream_id == stream_id
        )

    def of_type(self, kind: type[Event]) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]

    def frames_sent(self) -> list[Frame]:
        return decode_all(bytes(self.sent))

    def assert_finished(self, stream_id: int, expected: bytes) -> None:
        """All of ``expected`` and then the FIN arrived on ``stream_id``, else say which not."""
        got = self.received(stream_id)
        name = self.session.role.name.lower()
        assert got == expected, (
            f"stream {stream_id}: the {name} received {len(got)} of {len(expected)} bytes"
            + (
                f"; missing: a window update for the other {len(expected) - len(got)}"
                if expected.startswith(got)
                else " (different bytes)"
            )
        )
        assert StreamEnded(stream_id) in self.events, (
            f"stream {stream_id}: missing: the FIN to the {name} after all its bytes"
            f" (its events: {[type(e).__name__ for e in self.events[-5:]]})"
        )


class Pair:
    """A client and a server session joined in memory.

    ``flush`` moves bytes both ways until neither side has anything to send. With
    ``auto_consume`` every received byte is reported consumed at once, as a driver whose local
    socket always takes everything would do; without it, credit comes back only through an
    explicit ``consume``.
    """

    def __init__(
        self,
        limits: Limits | None = None,
        *,
        client_limits: Limits | None = None,
        server_limits: Limits | None = None,
        auto_consume: bool = True,
        now: float = 0.0,
    ) -> None:
        self.now = now
        self.auto_consume = auto_consume
        self.client = Side(Session(Role.CLIENT, client_limits or limits, now=now))
        self.server = Side(Session(Role.SERVER, server_limits or limits, now=now))

    def peer_of(self, side: Side) -> Side:
        return self.server if side is self.client else self.client

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def step(self, source: Side, limit: int = 256 * 1024) -> bool:
        """One ``data_to_send`` from ``source`` delivered to its peer; False if it had nothing."""
        source.events += source.session.take_events()
        data = source.session.data_to_send(limit, now=self.now)
        if not data:
            return False
        source.sent += data
        self.deliver(self.peer_of(source), data)
        return True

    def deliver(self, target: Side, data: bytes) -> list[Event]:
        """Feed ``data`` to ``target`` as if it came off the wire; return the new events."""
        events = target.session.receive_data(data, self.now)
        target.events += events
        if self.auto_consume:
            for event in events:
                if isinstance(event, DataReceived):
                    target.consumed[event.stream_id] = target.consumed.get(
                        event.stream_id, 0
                    ) + len(event.data)
                    target.session.consumed(event.stream_id, len(event.data), self.now)
        return events

    def flush(self, limit: int = 256 * 1024, max_rounds: int = 100_000) -> None:
        for _ in range(max_rounds):
            moved_client = self.step(self.client, limit)
            moved_server = self.step(self.server, limit)
            if not (moved_client or moved_server):
                self.client.events += self.client.session.take_events()
                self.server.events += self.server.session.take_events()
                return
        raise AssertionError("the two sessions never went quiet")

    def consume(self, side: Side, stream_id: int) -> int:
        """Report everything received so far on a stream consumed; return how much was new."""
        total = len(side.received(stream_id))
        new = total - side.consumed.get(stream_id, 0)
        side.consumed[stream_id] = total
        if new:
            side.session.consumed(stream_id, new, self.now)
        return new


@pytest.fixture
def make_pair() -> Callable[..., Pair]:
    """``make_pair(limits=None, *, client_limits, server_limits, auto_consume=True, now=0.0)``."""
    return Pair


@pytest.fixture
def pair() -> Pair:
    """A client and a server with default limits, consuming everything they receive."""
    return Pair()
