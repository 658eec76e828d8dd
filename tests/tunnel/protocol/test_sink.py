"""Tests for a stream's sink (Session.set_sink): a read that is one whole Data frame of a stream
goes to the sink with no event; everything else takes the general path, in order.

The peer's bytes are read into the session's own buffer (get_buffer, buffer_updated), as the
transport does; the peer itself is forged with the frame codec.
"""

from __future__ import annotations

import weakref

from tunnel.protocol.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    StreamDrained,
    StreamEnded,
    StreamOpened,
)
from tunnel.protocol.frames import Flags, FrameType, GoAwayCode, encode_header
from tunnel.protocol.limits import INITIAL_WINDOW, Limits
from tunnel.protocol.session import GUARD_FRAME, Role, Session

DATA, UPDATE = FrameType.DATA, FrameType.WINDOW_UPDATE


def frame(stream_id: int, body: bytes, flags: Flags = Flags.NONE) -> bytes:
    return encode_header(DATA, flags, stream_id, len(body)) + body


def read(session: Session, data: bytes, now: float = 1.0) -> list[Event]:
    """Read ``data`` into the session's buffer as the transport does: as one read when it fits
    the buffer offered, else in as many reads as it takes."""
    events: list[Event] = []
    while data:
        buffer = session.get_buffer()
        size = min(len(buffer), len(data))
        buffer[:size] = data[:size]
        data = data[size:]
        events += session.buffer_updated(size, now)
    return events


def accepted(limits: Limits | None = None, guarded: bool = False) -> tuple[Session, list[bytes]]:
    """A server session with stream 1 opened by the peer, its data going to a list."""
    session = Session(Role.SERVER, limits, guarded=guarded)
    assert read(session, encode_header(UPDATE, Flags.SYN, 1, 0)) == [StreamOpened(1)]
    session.buffers_to_send()  # the ACK
    got: list[bytes] = []
    session.set_sink(1, got.append)
    return session, got


def test_a_whole_data_frame_goes_to_the_sink_without_an_event() -> None:
    session, got = accepted()
    assert read(session, frame(1, b"PING\r\n")) == []
    assert read(session, frame(1, b"PING again\r\n")) == []
    assert got == [b"PING\r\n", b"PING again\r\n"]
    assert session.stats().bytes_received == 12 + 2 * 12 + 6 + 12


def test_the_sink_is_held_to_the_window_and_credited_as_events_are() -> None:
    session, got = accepted(Limits(stream_window=INITIAL_WINDOW))
    chunk = bytes(4 * 1024)
    for _ in range(INITIAL_WINDOW // len(chunk)):
        assert read(session, frame(1, chunk)) == []
    assert len(got) == INITIAL_WINDOW // len(chunk)
    # The window is used up: one byte more is the peer's error, not the sink's data.
    events = read(session, frame(1, b"x"))
    assert [type(e) for e in events] == [ConnectionTerminated]
    assert "window" in events[0].reason  # type: ignore[attr-defined]
    assert len(got) == INITIAL_WINDOW // len(chunk)


def test_credit_given_for_sink_bytes_lets_the_peer_send_more() -> None:
    session, got = accepted(Limits(stream_window=INITIAL_WINDOW))
    chunk = bytes(4 * 1024)
    for _ in range(INITIAL_WINDOW // len(chunk)):
        read(session, frame(1, chunk))
        session.consumed(1, len(chunk), 1.0)
    assert b"".join(session.buffers_to_send())  # the window updates
    assert read(session, frame(1, chunk)) == []
    assert len(got) == INITIAL_WINDOW // len(chunk) + 1


def test_the_sink_may_call_back_into_the_session() -> None:
    session = Session(Role.SERVER)
    read(session, encode_header(UPDATE, Flags.SYN, 1, 0))
    session.buffers_to_send()

    def answer(data: bytes) -> None:  # as a relay does: write, credit, answer
        session.consumed(1, len(data), 1.0)
        session.send_data(1, b"+PONG\r\n")

    session.set_sink(1, answer)
    assert read(session, frame(1, b"PING\r\n")) == []
    assert b"+PONG\r\n" in b"".join(session.buffers_to_send())


def test_a_frame_split_across_reads_takes_the_general_path() -> None:
    session, got = accepted()
    wire = frame(1, b"PING\r\n")
    assert read(session, wire[:5]) == []
    assert read(session, wire[5:15]) == []
    assert read(session, wire[15:]) == [DataReceived(1, bytearray(b"PING\r\n"))]
    assert got == []


def test_two_frames_in_one_read_bring_events_in_order() -> None:
    session, got = accepted()
    events = read(session, frame(1, b"one") + frame(1, b"two"))
    assert events == [DataReceived(1, bytearray(b"one")), DataReceived(1, bytearray(b"two"))]
    assert got == []


def test_a_frame_with_flags_takes_the_general_path() -> None:
    session, got = accepted()
    events = read(session, frame(1, b"last", Flags.FIN))
    assert events == [DataReceived(1, bytearray(b"last")), StreamEnded(1)]
    assert got == []
    # After the peer's FIN, data is its error even on a stream with a sink.
    events = read(session, frame(1, b"more"))
    assert [type(e) for e in events] == [ConnectionTerminated]
    assert got == []


def test_an_event_waiting_keeps_the_next_frame_behind_it() -> None:
    session = Session(Role.CLIENT, Limits(stream_send_buffer=16))
    stream_id = session.open_stream()
    got: list[bytes] = []
    session.set_sink(stream_id, got.append)
    read(session, encode_header(UPDATE, Flags.ACK, stream_id, 0))
    session.send_data(stream_id, bytes(64))  # over its buffer: paused
    session.buffers_to_send()  # sent: StreamDrained waits to be taken
    events = read(session, frame(stream_id, b"answer"))
    assert events == [StreamDrained(stream_id), DataReceived(stream_id, bytearray(b"answer"))]
    assert got == []


def test_a_stream_without_a_sink_still_brings_events() -> None:
    session, got = accepted()
    session.set_sink(1, None)
    assert read(session, frame(1, b"PING\r\n")) == [DataReceived(1, bytearray(b"PING\r\n"))]
    assert got == []


def test_unknown_stream_and_guard_limits_still_hold() -> None:
    session, got = accepted(guarded=True)
    events = read(session, frame(1, bytes(GUARD_FRAME + 1)))
    assert [type(e) for e in events] == [ConnectionTerminated]
    assert events[0].code is GoAwayCode.PROTOCOL_ERROR  # type: ignore[attr-defined]
    assert got == []
    session, got = accepted()
    events = read(session, frame(7, b"to nowhere"))
    assert [type(e) for e in events] == [ConnectionTerminated]
    assert got == []


def test_release_drops_the_sinks() -> None:
    # A sink points back at the driver's handler: a closed connection lets it go at once.
    class Handler:
        def on_data(self, data: bytes) -> None:
            pass

    session, _ = accepted()
    handler = Handler()
    session.set_sink(1, handler.on_data)
    gone = weakref.ref(handler)
    del handler
    assert gone() is not None
    session.release()
    assert gone() is None


def test_reads_after_the_session_ended_never_fill_the_buffer() -> None:
    # A guarded session that refused a frame: the driver may still read while it closes, and
    # each read must find room (an empty buffer would have the event loop read nothing, for
    # ever).
    session, got = accepted(guarded=True)
    read(session, frame(1, bytes(GUARD_FRAME + 1))[:12])
    assert session.terminated
    for _ in range(20):
        buffer = session.get_buffer()
        assert len(buffer) > 0
        buffer[:] = bytes(len(buffer))
        assert session.buffer_updated(len(buffer), 2.0) == []
    assert got == []
