"""Tests for tunnel.protocol.session: two sessions joined in memory, time from a fake clock.

The ``pair`` and ``make_pair`` fixtures (conftest.py) join a client and a server session and
move bytes between them; tests that need to see or forge the wire use the frame codec directly.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tunnel.errors import LocalProtocolError, Reason
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
    HEADER_SIZE,
    MAX_LENGTH,
    MAX_STREAM_ID,
    Flags,
    Frame,
    FrameDecoder,
    FrameType,
    GoAwayCode,
    encode,
    encode_header,
)
from tunnel.protocol.limits import INITIAL_WINDOW, KIB, MIB, Budget, Limits
from tunnel.protocol.messages import StreamAnswer
from tunnel.protocol.session import GATHER_MIN, SEND_FLOOR, Role, Session
from tunnel.protocol.streams import StreamState

if TYPE_CHECKING:
    from conftest import Pair

DEFAULT = Limits()
WINDOW = DEFAULT.stream_window  # what each side grants per stream after SYN/ACK

DATA = FrameType.DATA
UPDATE = FrameType.WINDOW_UPDATE


def frames_in(data: bytes) -> list[Frame]:
    decoder = FrameDecoder(max_data_length=MAX_LENGTH)
    decoder.feed(data)
    out = []
    while (frame := decoder.next_frame()) is not None:
        out.append(frame)
    assert decoder.buffered == 0
    return out


def on_stream(frames: list[Frame], stream_id: int) -> list[Frame]:
    return [f for f in frames if f.stream_id == stream_id]


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def raw(type_: FrameType, flags: Flags, stream_id: int, length: int, body: bytes = b"") -> bytes:
    return encode_header(type_, flags, stream_id, length) + body


def open_established(pair: Pair) -> int:
    """A client stream the server has accepted and the client knows is accepted."""
    stream_id = pair.client.session.open_stream()
    pair.flush()
    assert StreamOpened(stream_id) in pair.server.events
    assert StreamAccepted(stream_id) in pair.client.events
    return stream_id


# ------------------------------------------------------------------ opening streams


def test_first_flight_carries_the_syn_and_the_data(pair: Pair) -> None:
    client = pair.client.session
    stream_id = client.open_stream()
    assert client.send_data(stream_id, b"PING\r\n") is False
    first = client.data_to_send()
    # No round trip: the SYN (announcing our larger window) and the data leave together.
    assert frames_in(first) == [
        Frame(UPDATE, Flags.SYN, stream_id, WINDOW - INITIAL_WINDOW),
        Frame(DATA, Flags.NONE, stream_id, 6, b"PING\r\n"),
    ]
    events = pair.server.session.receive_data(first, 0.0)
    assert events == [StreamOpened(stream_id), DataReceived(stream_id, b"PING\r\n")]
    answer = pair.server.session.data_to_send()
    assert frames_in(answer) == [Frame(UPDATE, Flags.ACK, stream_id, WINDOW - INITIAL_WINDOW)]
    assert client.receive_data(answer, 0.0) == [StreamAccepted(stream_id)]


def test_client_streams_are_odd_and_server_streams_even(pair: Pair) -> None:
    client_ids = [pair.client.session.open_stream() for _ in range(3)]
    server_ids = [pair.server.session.open_stream() for _ in range(3)]
    assert client_ids == [1, 3, 5]
    assert server_ids == [2, 4, 6]
    pair.flush()
    assert pair.server.of_type(StreamOpened) == [StreamOpened(i) for i in client_ids]
    assert pair.client.of_type(StreamOpened) == [StreamOpened(i) for i in server_ids]
    assert pair.client.of_type(StreamAccepted) == [StreamAccepted(i) for i in client_ids]
    assert pair.server.of_type(StreamAccepted) == [StreamAccepted(i) for i in server_ids]
    assert pair.client.session.open_streams == pair.server.session.open_streams == 6


def test_data_flows_both_ways_byte_exact(pair: Pair) -> None:
    stream_id = open_established(pair)
    up, down = payload(3 * MIB, seed=1), payload(2 * MIB + 12345, seed=2)
    rng = random.Random(3)
    for data, side in ((up, pair.client), (down, pair.server)):
        offset = 0
        while offset < len(data):
            size = rng.randrange(1, 200 * KIB)
            side.session.send_data(stream_id, data[offset : offset + size])
            offset += size
            pair.step(side)
    pair.flush()
    assert pair.server.received(stream_id) == up
    assert pair.client.received(stream_id) == down
    for side in (pair.client, pair.server):
        sizes = [f.length for f in side.frames_sent() if f.type is DATA]
        assert max(sizes) <= DEFAULT.max_frame_size


def test_many_streams_keep_their_data_apart(pair: Pair) -> None:
    ids = [pair.client.session.open_stream() for _ in range(20)]
    for n, stream_id in enumerate(ids):
        pair.client.session.send_data(stream_id, payload(70_000 + n, seed=stream_id))
    pair.flush(limit=32 * KIB)
    for n, stream_id in enumerate(ids):
        assert pair.server.received(stream_id) == payload(70_000 + n, seed=stream_id)


# ------------------------------------------------------------------ flow control


def test_sender_stops_at_the_initial_window_before_the_ack() -> None:
    client = Session(Role.CLIENT)
    stream_id = client.open_stream()
    client.send_data(stream_id, bytes(2 * MIB))
    sent = 0
    while data := client.data_to_send(limit=1 * MIB):
        sent += sum(f.length for f in frames_in(data) if f.type is DATA)
    assert sent == INITIAL_WINDOW
    assert client.send_buffer_size(stream_id) == 2 * MIB - INITIAL_WINDOW


def test_sender_stops_after_exactly_the_granted_window_and_resumes_on_credit(
    make_pair: Callable[..., Pair],
) -> None:
    pair = make_pair(auto_consume=False)
    stream_id = pair.client.session.open_stream()
    total = 3 * MIB
    pair.client.session.send_data(stream_id, payload(total))
    pair.flush()
    # 256 KiB from the spec plus the SYN/ACK update up to stream_window, and not a byte more.
    assert len(pair.server.received(stream_id)) == WINDOW
    assert pair.client.session.send_buffer_size(stream_id) == total - WINDOW
    assert pair.consume(pair.server, stream_id) == WINDOW
    pair.flush()
    assert len(pair.server.received(stream_id)) == 2 * WINDOW
    while pair.consume(pair.server, stream_id):
        pair.flush()
    assert pair.server.received(stream_id) == payload(total)
    assert pair.client.session.send_buffer_size(stream_id) == 0


def test_slow_consumer_holds_back_its_own_stream_only(make_pair: Callable[..., Pair]) -> None:
    pair = make_pair(auto_consume=False)
    slow = pair.client.session.open_stream()
    fast = pair.client.session.open_stream()
    pair.client.session.send_data(slow, bytes(3 * MIB))
    pair.flush()
    for _ in range(4):
        pair.client.session.send_data(fast, payload(WINDOW, seed=9))
        pair.flush()
        pair.consume(pair.server, fast)
    pair.flush()
    assert pair.server.received(fast) == payload(WINDOW, seed=9) * 4
    assert len(pair.server.received(slow)) == WINDOW


def test_send_data_pauses_over_the_send_buffer_and_drained_follows(
    make_pair: Callable[..., Pair],
) -> None:
    pair = make_pair(auto_consume=False)
    client = pair.client.session
    stream_id = open_established(pair)
    high = DEFAULT.stream_send_buffer
    assert client.send_data(stream_id, bytes(high)) is False  # at the mark: keep going
    assert client.send_data(stream_id, b"x") is True  # over it: stop producing
    pair.flush()  # the open window takes it all
    assert pair.client.of_type(StreamDrained) == [StreamDrained(stream_id)]
    assert client.send_data(stream_id, bytes(WINDOW - high - 1)) is True
    pair.flush()  # now the peer's window is used up, and stays so until it consumes
    assert len(pair.client.of_type(StreamDrained)) == 2
    assert client.send_data(stream_id, bytes(high)) is False
    assert client.send_data(stream_id, b"x") is True
    pair.flush()
    assert client.send_buffer_size(stream_id) == high + 1  # stuck behind the window
    assert len(pair.client.of_type(StreamDrained)) == 2
    assert client.send_data(stream_id, b"y") is True  # still paused
    pair.consume(pair.server, stream_id)
    pair.step(pair.server)  # the window update reaches the client
    drained_at = None
    while data := client.data_to_send(limit=16 * KIB):
        pair.server.session.receive_data(data, pair.now)
        if StreamDrained(stream_id) in client.take_events():
            assert drained_at is None, "drained twice"
            drained_at = client.send_buffer_size(stream_id)
    assert drained_at is not None
    assert drained_at <= high // 2
    assert client.send_data(stream_id, b"more") is False


def test_window_auto_tunes_up_when_rtt_is_known(make_pair: Callable[..., Pair]) -> None:
    def bytes_in_flight_after_warm_up(measure_rtt: bool) -> int:
        limits = Limits(stream_window=INITIAL_WINDOW, max_stream_window=4 * INITIAL_WINDOW)
        pair = make_pair(limits)
        server = pair.server.session
        if measure_rtt:
            server.ping(pair.now)
            pair.step(pair.server)
            pair.advance(0.05)
            pair.step(pair.client)
            assert server.rtt == pytest.approx(0.05)
        stream_id = open_established(pair)
        # Warm up: a consumer that keeps up, at a megabyte per round trip, for a while: a
        # pace that the initial window (a quarter of that) holds back.
        for _ in range(10):
            pair.client.session.send_data(stream_id, bytes(MIB))
            pair.flush()
            pair.advance(0.05)
        # Then the consumer stops: the sender gets exactly as far as the grown window.
        pair.auto_consume = False
        before = len(pair.server.received(stream_id))
        pair.client.session.send_data(stream_id, bytes(8 * MIB))
        pair.flush()
        return len(pair.server.received(stream_id)) - before

    assert bytes_in_flight_after_warm_up(measure_rtt=False) <= INITIAL_WINDOW
    tuned = bytes_in_flight_after_warm_up(measure_rtt=True)
    assert 2 * INITIAL_WINDOW < tuned <= 4 * INITIAL_WINDOW


def test_session_memory_budget_bounds_the_windows_granted() -> None:
    limits = Limits(stream_window=1 * MIB, session_memory=1 * MIB)
    client = Session(Role.CLIENT, limits)
    ids = [client.open_stream() for _ in range(3)]
    grants = [f.length for f in frames_in(client.data_to_send()) if f.flags & Flags.SYN]
    # Growth beyond the spec's 256 KiB comes out of one session-wide budget.
    assert grants == [768 * KIB, 256 * KIB, 0]
    client.reset_stream(ids[0])
    client.data_to_send()
    fourth = client.open_stream()
    (syn,) = [f for f in frames_in(client.data_to_send()) if f.stream_id == fourth]
    assert syn.length == 768 * KIB


# ------------------------------------------------------------------ fairness


def test_small_stream_is_not_stuck_behind_a_bulk_one(pair: Pair) -> None:
    client = pair.client.session
    bulk = open_established(pair)
    small = open_established(pair)
    client.send_data(bulk, bytes(10 * MIB))
    client.send_data(small, b"0123456789")
    limit = 256 * KIB
    out = client.data_to_send(limit=limit)
    frames = [f for f in frames_in(out) if f.type is DATA]
    assert len(out) <= limit + HEADER_SIZE
    assert all(f.length <= DEFAULT.max_frame_size for f in frames)
    # Round robin: at most one bulk frame goes before the small stream's turn.
    assert Frame(DATA, Flags.NONE, small, 10, b"0123456789") in frames[:2]


def test_round_robin_shares_the_link_between_bulk_streams(pair: Pair) -> None:
    client = pair.client.session
    ids = [open_established(pair) for _ in range(3)]
    for stream_id in ids:
        client.send_data(stream_id, bytes(2 * MIB))
    frames = [f for f in frames_in(client.data_to_send(limit=6 * DEFAULT.max_frame_size))]
    assert [f.stream_id for f in frames] == ids + ids


def test_large_payloads_reach_the_socket_without_a_copy(pair: Pair) -> None:
    """buffers_to_send hands a big payload over as the very object it was given (or a view of
    it); headers and small payloads share one buffer; together they are data_to_send's bytes."""
    client = pair.client.session
    bulk, small = open_established(pair), open_established(pair)
    block = bytes(range(256)) * 512  # 128 KiB: exactly one frame
    client.send_data(bulk, block)
    client.send_data(small, b"ping")
    buffers = client.buffers_to_send()
    assert any(buffer is block for buffer in buffers)
    assert all(isinstance(buffer, bytearray) for buffer in buffers if buffer is not block)
    assert len(buffers) <= 3  # control frames and the bulk header, the block, the small frame
    assert [(f.stream_id, f.payload) for f in frames_in(b"".join(buffers))] == [
        (bulk, block),
        (small, b"ping"),
    ]


def test_payloads_queued_in_several_writes_reach_the_socket_without_a_copy(pair: Pair) -> None:
    client = pair.client.session
    stream_id = open_established(pair)
    first, second = os.urandom(GATHER_MIN), os.urandom(GATHER_MIN)  # the smallest not copied
    client.send_data(stream_id, first)
    client.send_data(stream_id, second)  # both go out in one frame, each as it is
    buffers = client.buffers_to_send()
    assert any(buffer is first for buffer in buffers)
    assert any(buffer is second for buffer in buffers)
    assert b"".join(f.payload for f in frames_in(b"".join(buffers))) == first + second


def test_a_payload_split_over_frames_is_sent_as_views_of_it(pair: Pair) -> None:
    client = pair.client.session
    stream_id = open_established(pair)
    block = os.urandom(3 * DEFAULT.max_frame_size + 100)
    client.send_data(stream_id, block)
    buffers = client.buffers_to_send(limit=10 * MIB)
    views = [b for b in buffers if isinstance(b, memoryview)]
    assert views and all(v.obj is block for v in views)
    assert b"".join(f.payload for f in frames_in(b"".join(buffers))) == block


# ------------------------------------------------------------------ half-close


def test_half_close_from_the_opener(pair: Pair) -> None:
    client, server = pair.client.session, pair.server.session
    stream_id = client.open_stream()
    client.send_data(stream_id, b"request")
    client.end_stream(stream_id)
    pair.flush()
    # The FIN follows the last data frame in a Window Update of its own, as hashicorp/yamux
    # sends it (its reader can lose a Data frame's payload when FIN rides on it).
    assert on_stream(pair.client.frames_sent(), stream_id)[-2:] == [
        Frame(DATA, Flags.NONE, stream_id, 7, b"request"),
        Frame(UPDATE, Flags.FIN, stream_id, 0),
    ]
    assert pair.server.events == [
        StreamOpened(stream_id),
        DataReceived(stream_id, b"request"),
        StreamEnded(stream_id),
    ]
    assert client.stream_state(stream_id) is StreamState.HALF_CLOSED_LOCAL
    assert server.stream_state(stream_id) is StreamState.HALF_CLOSED_REMOTE
    with pytest.raises(LocalProtocolError):
        client.send_data(stream_id, b"more")
    # The other side still talks until it is done too.
    assert server.send_data(stream_id, b"response") is False
    pair.flush()
    assert pair.client.received(stream_id) == b"response"
    assert client.open_streams == server.open_streams == 1
    server.end_stream(stream_id)
    pair.flush()
    assert pair.client.events[-1] == StreamEnded(stream_id)
    assert client.open_streams == server.open_streams == 0


def test_half_close_from_the_acceptor(pair: Pair) -> None:
    client, server = pair.client.session, pair.server.session
    stream_id = open_established(pair)
    server.send_data(stream_id, b"banner")
    server.end_stream(stream_id)
    pair.flush()
    assert pair.client.received(stream_id) == b"banner"
    assert pair.client.events[-1] == StreamEnded(stream_id)
    client.send_data(stream_id, payload(600 * KIB))
    pair.flush()
    assert pair.server.received(stream_id) == payload(600 * KIB)
    client.end_stream(stream_id)
    pair.flush()
    assert pair.server.events[-1] == StreamEnded(stream_id)
    assert client.open_streams == server.open_streams == 0
    assert client.stream_state(stream_id) is StreamState.CLOSED


def test_fin_without_data_waits_for_no_window(make_pair: Callable[..., Pair]) -> None:
    pair = make_pair(auto_consume=False)
    stream_id = open_established(pair)
    pair.client.session.send_data(stream_id, bytes(WINDOW))
    pair.flush()
    pair.client.session.end_stream(stream_id)  # the window is used up, the FIN needs none
    pair.flush()
    assert pair.server.events[-1] == StreamEnded(stream_id)


def test_fin_queued_behind_data_is_not_sent_early(make_pair: Callable[..., Pair]) -> None:
    pair = make_pair(auto_consume=False)
    stream_id = open_established(pair)
    pair.client.session.send_data(stream_id, bytes(WINDOW + 10))
    pair.client.session.end_stream(stream_id)
    pair.flush()
    assert StreamEnded(stream_id) not in pair.server.events
    pair.consume(pair.server, stream_id)
    pair.flush()
    assert len(pair.server.received(stream_id)) == WINDOW + 10
    assert pair.server.events[-1] == StreamEnded(stream_id)


def test_response_longer_than_the_window_after_the_request_half_closed(
    make_pair: Callable[..., Pair],
) -> None:
    # The requester sends its request and half-closes; the reply is longer than one window
    # and the replier closes right behind it: the whole reply and the FIN must still arrive.
    pair = make_pair(auto_consume=False)
    client, server = pair.client.session, pair.server.session
    stream_id = open_established(pair)
    client.end_stream(stream_id)
    pair.flush()
    reply = payload(WINDOW + 10)
    server.send_data(stream_id, reply)
    server.end_stream(stream_id)
    pair.flush()
    while pair.consume(pair.client, stream_id):
        pair.flush()
    pair.client.assert_finished(stream_id, reply)
    assert pair.client.events[-1] == StreamEnded(stream_id)
    assert client.open_streams == server.open_streams == 0


def test_peer_fin_while_our_data_and_fin_wait_for_window(make_pair: Callable[..., Pair]) -> None:
    pair = make_pair(auto_consume=False)
    client, server = pair.client.session, pair.server.session
    stream_id = open_established(pair)
    reply = payload(WINDOW + 10)
    server.send_data(stream_id, reply)
    server.end_stream(stream_id)
    pair.flush()  # one window's worth goes; 10 bytes and the FIN wait for credit
    client.end_stream(stream_id)  # the client's FIN now closes the stream on the server
    pair.flush()
    while pair.consume(pair.client, stream_id):
        pair.flush()
    pair.client.assert_finished(stream_id, reply)
    assert pair.client.events[-1] == StreamEnded(stream_id)
    assert client.open_streams == server.open_streams == 0


# ------------------------------------------------------------------ reset


def test_local_reset_drops_queued_data_and_reaches_the_peer(pair: Pair) -> None:
    client, server = pair.client.session, pair.server.session
    stream_id = open_established(pair)
    client.send_data(stream_id, bytes(100))
    client.reset_stream(stream_id)
    out = client.data_to_send()
    assert frames_in(out) == [Frame(UPDATE, Flags.RST, stream_id, 0)]
    assert client.open_streams == 0
    # The server's data crosses the RST on the wire and is dropped without fuss.
    server.send_data(stream_id, b"late")
    late = server.data_to_send()
    assert server.receive_data(out, 0.0) == [StreamReset(stream_id, remote=True)]
    assert client.receive_data(late, 0.0) == []
    assert server.open_streams == 0
    assert not (client.terminated or server.terminated)
    assert server.send_data(stream_id, b"dropped") is False


def test_remote_reset_is_reported_and_later_sends_are_dropped(pair: Pair) -> None:
    client = pair.client.session
    stream_id = open_established(pair)
    pair.server.session.reset_stream(stream_id)
    pair.flush()
    assert pair.client.events[-1] == StreamReset(stream_id, remote=True)
    assert client.send_data(stream_id, b"after") is False
    client.end_stream(stream_id)
    client.reset_stream(stream_id)
    assert client.data_to_send() == b""
    assert client.open_streams == 0


def test_reset_of_a_stream_not_yet_accepted(pair: Pair) -> None:
    stream_id = pair.client.session.open_stream()
    pair.client.session.send_data(stream_id, b"lost")
    pair.client.session.reset_stream(stream_id)
    pair.flush()
    assert pair.server.events == [StreamOpened(stream_id), StreamReset(stream_id, remote=True)]
    assert pair.client.session.open_streams == pair.server.session.open_streams == 0


def test_reset_after_data_delivers_the_reason_first(pair: Pair) -> None:
    stream_id = pair.client.session.open_stream()
    pair.client.session.send_data(stream_id, b"\x01\x05nope!")
    pair.flush()
    answer = StreamAnswer(Reason.UNKNOWN_SERVICE, "no service named nope!").encode()
    pair.server.session.send_data(stream_id, answer)
    pair.server.session.reset_stream(stream_id, after_data=True)
    pair.flush()
    assert pair.client.events == [
        StreamAccepted(stream_id),
        DataReceived(stream_id, answer),
        StreamReset(stream_id, remote=True),
    ]
    assert [f.flags for f in on_stream(pair.server.frames_sent(), stream_id)] == [
        Flags.ACK,
        Flags.NONE,
        Flags.RST,
    ]
    assert pair.client.session.open_streams == pair.server.session.open_streams == 0


def test_reset_after_data_waits_for_the_window(make_pair: Callable[..., Pair]) -> None:
    pair = make_pair(auto_consume=False)
    stream_id = open_established(pair)
    data = payload(2 * WINDOW + 5)
    pair.server.session.send_data(stream_id, data)
    pair.server.session.reset_stream(stream_id, after_data=True)
    pair.flush()
    assert len(pair.client.received(stream_id)) == WINDOW
    assert not pair.client.of_type(StreamReset)
    while pair.consume(pair.client, stream_id):
        pair.flush()
    assert pair.client.received(stream_id) == data
    assert pair.client.events[-1] == StreamReset(stream_id, remote=True)


# ------------------------------------------------------------------ ping and keepalive


def test_ping_measures_rtt_on_the_callers_clock() -> None:
    client, server = Session(Role.CLIENT), Session(Role.SERVER)
    client.ping(now=10.0)
    request = client.data_to_send()
    (frame,) = frames_in(request)
    assert (frame.type, frame.flags, frame.stream_id) == (FrameType.PING, Flags.SYN, 0)
    assert server.receive_data(request, 10.1) == []
    reply = server.data_to_send()
    # The opaque value comes back unchanged.
    assert frames_in(reply) == [Frame(FrameType.PING, Flags.ACK, 0, frame.length)]
    assert client.receive_data(reply, 10.25) == [PingAcknowledged(rtt=0.25)]
    assert client.rtt == 0.25
    assert client.stats().rtt == 0.25


def test_unsolicited_ping_answer_is_ignored() -> None:
    client = Session(Role.CLIENT)
    assert client.receive_data(raw(FrameType.PING, Flags.ACK, 0, 77), 1.0) == []
    assert client.rtt is None
    assert not client.terminated


def test_keepalive_pings_after_silence_and_gives_up_without_an_answer() -> None:
    limits = Limits(keepalive_interval=15.0, keepalive_timeout=30.0)
    session = Session(Role.CLIENT, limits, now=100.0)
    assert session.get_timer() == 115.0
    session.handle_timer(114.0)
    assert session.data_to_send() == b""
    session.handle_timer(115.0)
    (ping,) = frames_in(session.data_to_send())
    assert (ping.type, ping.flags) == (FrameType.PING, Flags.SYN)
    assert session.get_timer() == 145.0
    session.handle_timer(144.0)
    assert session.take_events() == []
    assert not session.terminated
    session.handle_timer(145.0)
    (event,) = session.take_events()
    assert event == ConnectionTerminated(
        GoAwayCode.INTERNAL_ERROR, "peer did not answer a ping for 30s", remote=False
    )
    assert session.terminated
    assert session.get_timer() is None


def test_keepalive_answered_keeps_the_session(pair: Pair) -> None:
    client = pair.client.session
    for _ in range(5):
        timer = client.get_timer()
        assert timer is not None
        pair.advance(timer - pair.now)
        client.handle_timer(pair.now)
        pair.flush()
        assert pair.client.events[-1] == PingAcknowledged(0.0)
    assert not client.terminated
    assert client.get_timer() == pair.now + DEFAULT.keepalive_interval


def test_traffic_from_the_peer_postpones_the_keepalive(pair: Pair) -> None:
    client = pair.client.session
    stream_id = open_established(pair)
    pair.advance(10.0)
    pair.server.session.send_data(stream_id, b"tick")
    pair.flush()
    assert client.get_timer() == 10.0 + DEFAULT.keepalive_interval
    client.handle_timer(DEFAULT.keepalive_interval)
    assert client.data_to_send() == b""


# ------------------------------------------------------------------ go away


def test_go_away_lets_existing_streams_finish_and_refuses_new_ones(pair: Pair) -> None:
    client, server = pair.client.session, pair.server.session
    stream_id = open_established(pair)
    server.go_away()
    # A SYN the client sent before it read the Go Away crosses it on the wire: it is served,
    # since the client could not know (its consumer's bytes went out in good faith).
    crossing = client.open_stream()
    client.send_data(crossing, b"sent in good faith")
    pair.flush()
    assert GoAwayReceived(GoAwayCode.NORMAL) in pair.client.events
    assert StreamOpened(crossing) in pair.server.events
    assert pair.server.received(crossing) == b"sent in good faith"
    assert StreamReset(crossing, remote=True) not in pair.client.events
    # The client answered the ping that followed the Go Away: it has read it, and a SYN it
    # sends after that (only a peer that ignores the Go Away would) is refused.
    late = crossing + 2
    server.receive_data(raw(UPDATE, Flags.SYN, late, 0), pair.now)
    assert Frame(UPDATE, Flags.RST, late, 0) in frames_in(server.data_to_send())
    assert StreamOpened(late) not in pair.server.events
    assert server.stats().streams_refused == 1
    with pytest.raises(LocalProtocolError):
        client.open_stream()
    with pytest.raises(LocalProtocolError):
        server.open_stream()
    # The streams open before carry on both ways, to a clean close.
    client.send_data(stream_id, b"up")
    server.send_data(stream_id, b"down")
    for open_id in (stream_id, crossing):
        client.end_stream(open_id)
        server.end_stream(open_id)
    pair.flush()
    assert pair.server.received(stream_id) == b"up"
    assert pair.client.received(stream_id) == b"down"
    assert client.open_streams == server.open_streams == 0
    assert not (client.terminated or server.terminated)
    frames = pair.server.frames_sent()
    assert Frame(FrameType.GO_AWAY, Flags.NONE, 0, GoAwayCode.NORMAL) in frames


def test_go_away_with_an_error_code_ends_both_sessions(pair: Pair) -> None:
    open_established(pair)
    pair.server.session.go_away(GoAwayCode.INTERNAL_ERROR, "backend catalog broke")
    pair.flush()
    assert pair.server.events[-1] == ConnectionTerminated(
        GoAwayCode.INTERNAL_ERROR, "backend catalog broke", remote=False
    )
    (event,) = pair.client.of_type(ConnectionTerminated)
    assert isinstance(event, ConnectionTerminated)
    assert (event.code, event.remote) == (GoAwayCode.INTERNAL_ERROR, True)
    assert pair.client.session.terminated
    assert pair.client.session.open_streams == 0


# ------------------------------------------------------------------ protocol violations


def _window_overflow(stream_id: int) -> bytes:
    return raw(UPDATE, Flags.NONE, stream_id, MAX_LENGTH)


def _window_overflow_in_steps(stream_id: int) -> bytes:
    return raw(UPDATE, Flags.NONE, stream_id, 2**31) * 2


VIOLATIONS: dict[str, Callable[[int], bytes]] = {
    "data past the window": lambda s: raw(DATA, Flags.NONE, s, WINDOW + 1, bytes(WINDOW + 1)),
    "data past the window in pieces": lambda s: (
        raw(DATA, Flags.NONE, s, WINDOW // 2, bytes(WINDOW // 2)) * 2
        + raw(DATA, Flags.NONE, s, 1, b"x")
    ),
    "wrong-parity SYN": lambda s: raw(UPDATE, Flags.SYN, 2, 0),
    "reused stream id": lambda s: raw(UPDATE, Flags.SYN, s, 0),
    "stream id going backwards": lambda s: (
        raw(UPDATE, Flags.SYN, s + 4, 0) + raw(UPDATE, Flags.SYN, s + 2, 0)
    ),
    "unknown frame type": lambda s: bytes([0, 9, 0, 0]) + s.to_bytes(4, "big") + bytes(4),
    "bad version": lambda s: bytes([1, 0, 0, 0]) + s.to_bytes(4, "big") + bytes(4),
    "data for a stream never opened": lambda s: raw(DATA, Flags.NONE, s + 8, 1, b"x"),
    "window update for our stream never opened": lambda s: raw(UPDATE, Flags.NONE, 4, 1),
    "data after FIN": lambda s: raw(UPDATE, Flags.FIN, s, 0) + raw(DATA, Flags.NONE, s, 1, b"x"),
    "FIN twice": lambda s: raw(UPDATE, Flags.FIN, s, 0) * 2,
    "window overflow": _window_overflow,
    "window overflow in steps": _window_overflow_in_steps,
    "data on stream 0": lambda s: raw(DATA, Flags.NONE, 0, 1, b"x"),
    "window update on stream 0": lambda s: raw(UPDATE, Flags.NONE, 0, 1),
    "ping on a stream": lambda s: raw(FrameType.PING, Flags.SYN, s, 1),
    "data frame larger than any window": lambda s: raw(
        DATA, Flags.NONE, s, Limits().max_stream_window + 1
    ),
}


@pytest.mark.parametrize("bad", VIOLATIONS.values(), ids=VIOLATIONS.keys())
def test_protocol_violation_ends_in_go_away_protocol_error(
    pair: Pair, bad: Callable[[int], bytes]
) -> None:
    server = pair.server.session
    stream_id = open_established(pair)
    events = server.receive_data(bad(stream_id), pair.now)
    assert events, "the violation went unnoticed"
    terminated = events[-1]
    assert isinstance(terminated, ConnectionTerminated)
    assert (terminated.code, terminated.remote) == (GoAwayCode.PROTOCOL_ERROR, True)
    assert "\n" not in terminated.reason
    assert not any(isinstance(e, ConnectionTerminated) for e in events[:-1])
    out = server.data_to_send()
    assert frames_in(out)[-1] == Frame(FrameType.GO_AWAY, Flags.NONE, 0, GoAwayCode.PROTOCOL_ERROR)
    assert server.terminated
    assert server.open_streams == 0
    assert server.get_timer() is None
    # A dead session ignores whatever else arrives and opens nothing.
    assert server.receive_data(raw(DATA, Flags.NONE, stream_id, 1, b"x"), pair.now) == []
    with pytest.raises(LocalProtocolError):
        server.open_stream()
    # The peer learns why.
    (seen,) = [e for e in pair.client.session.receive_data(out, pair.now)]
    assert seen == ConnectionTerminated(GoAwayCode.PROTOCOL_ERROR, seen.reason, remote=True)


def test_window_may_grow_to_exactly_the_largest_length(pair: Pair) -> None:
    # 2**32-1 is the largest window the 32-bit length field can describe, and so a legal one;
    # only growing past it is an error.
    server = pair.server.session
    stream_id = pair.client.session.open_stream()
    server.receive_data(raw(UPDATE, Flags.SYN, stream_id, 0), pair.now)
    # The server's send window on the stream is the initial one: grow it to the limit.
    events = server.receive_data(raw(UPDATE, Flags.NONE, stream_id, MAX_LENGTH - INITIAL_WINDOW), 0)
    assert not [e for e in events if isinstance(e, ConnectionTerminated)], (
        f"stream {stream_id}: a window of exactly 2**32-1 ended the session: {events}"
    )
    assert server.send_data(stream_id, b"still open") is False
    events = server.receive_data(raw(UPDATE, Flags.NONE, stream_id, 1), pair.now)
    assert isinstance(events[-1], ConnectionTerminated), "one byte past 2**32-1 went unnoticed"


def test_ack_on_a_stream_the_peer_opened_is_not_taken_as_an_answer(pair: Pair) -> None:
    # An ACK answers a SYN: the peer sending one on a stream it opened itself answers nothing,
    # and must not make us report our own stream accepted.
    server = pair.server.session
    stream_id = pair.client.session.open_stream()
    events = server.receive_data(raw(UPDATE, Flags.SYN, stream_id, 0), pair.now)
    assert events == [StreamOpened(stream_id)]
    events = server.receive_data(raw(UPDATE, Flags.ACK, stream_id, 0), pair.now)
    assert StreamAccepted(stream_id) not in events, (
        f"stream {stream_id}, opened by the peer, was reported accepted by the peer's own ACK"
    )


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (VIOLATIONS["data past the window"], "bytes of window left"),
        (VIOLATIONS["data after FIN"], "after the peer's FIN"),
    ],
    ids=["past the window", "after FIN"],
)
def test_a_data_violation_says_which_it_was_and_takes_no_new_stream(
    pair: Pair, bad: Callable[[int], bytes], reason: str
) -> None:
    server = pair.server.session
    stream_id = open_established(pair)
    terminated = server.receive_data(bad(stream_id), pair.now)[-1]
    assert isinstance(terminated, ConnectionTerminated)
    assert reason in terminated.reason and f"stream {stream_id}" in terminated.reason
    assert server.goaway_sent, "the Go Away that says why was not recorded as sent"


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"stream_window": INITIAL_WINDOW - 1}, "stream_window must be at least 262144 bytes"),
        (
            {"stream_window": MIB, "max_stream_window": MIB - 1},
            "max_stream_window must be at least stream_window",
        ),
        ({"max_frame_size": 1023}, "max_frame_size must be at least 1024 bytes"),
        ({"max_streams": 0}, "max_streams must be at least 1"),
    ],
)
def test_limits_refuse_what_cannot_work_and_say_which(
    fields: dict[str, int], complaint: str
) -> None:
    with pytest.raises(ValueError) as refused:
        Limits(**fields)  # type: ignore[arg-type]
    assert str(refused.value) == complaint


def test_limits_accept_each_bound_itself() -> None:
    Limits(stream_window=INITIAL_WINDOW, max_stream_window=INITIAL_WINDOW)
    Limits(max_frame_size=1024, max_streams=1)


def test_violation_split_across_reads_is_still_caught(pair: Pair) -> None:
    server = pair.server.session
    stream_id = open_established(pair)
    data = VIOLATIONS["data past the window"](stream_id)
    events: list[Event] = []
    for start in range(0, len(data), 4096):
        events += server.receive_data(data[start : start + 4096], pair.now)
    assert isinstance(events[-1], ConnectionTerminated)
    assert events[-1].code is GoAwayCode.PROTOCOL_ERROR


def test_violation_after_a_normal_go_away_still_tells_the_peer(pair: Pair) -> None:
    server = pair.server.session
    stream_id = open_established(pair)
    server.go_away()
    pair.flush()
    server.receive_data(VIOLATIONS["window overflow"](stream_id), pair.now)
    frames = frames_in(server.data_to_send())
    assert Frame(FrameType.GO_AWAY, Flags.NONE, 0, GoAwayCode.PROTOCOL_ERROR) in frames


def test_frames_for_a_stream_closed_long_ago_are_ignored(pair: Pair) -> None:
    stream_id = open_established(pair)
    pair.client.session.reset_stream(stream_id)
    pair.flush()
    # Data and updates the peer sent before it saw the reset are not violations.
    late = raw(DATA, Flags.NONE, stream_id, 3, b"abc") + raw(UPDATE, Flags.FIN, stream_id, 9)
    assert pair.client.session.receive_data(late, pair.now) == []
    assert pair.server.session.receive_data(late, pair.now) == []
    assert not (pair.client.session.terminated or pair.server.session.terminated)


# ------------------------------------------------------------------ limits on streams


def test_fresh_sessions_have_the_whole_id_space() -> None:
    assert Session(Role.CLIENT).streams_left == 2**31  # 1, 3, ..., 2**32 - 1
    assert Session(Role.SERVER).streams_left == 2**31 - 1  # 2, 4, ..., 2**32 - 2


@pytest.mark.parametrize(
    ("role", "last"), [(Role.CLIENT, MAX_STREAM_ID), (Role.SERVER, MAX_STREAM_ID - 1)]
)
def test_stream_ids_run_out_cleanly(role: Role, last: int) -> None:
    session = Session(role)
    # No public way to spend two billion ids: jump to the end of the space.
    session._next_id = last - 2
    assert session.streams_left == 2
    assert [session.open_stream(), session.open_stream()] == [last - 2, last]
    assert session.streams_left == 0
    with pytest.raises(LocalProtocolError) as refused:
        session.open_stream()
    assert str(refused.value) == "stream ids are exhausted; open a new session"
    assert not session.terminated
    frames = frames_in(session.data_to_send())
    assert [f.stream_id for f in frames] == [last - 2, last]


def test_last_stream_id_works_end_to_end(pair: Pair) -> None:
    pair.client.session._next_id = MAX_STREAM_ID  # see test_stream_ids_run_out_cleanly
    stream_id = pair.client.session.open_stream()
    pair.client.session.send_data(stream_id, b"last")
    pair.flush()
    assert stream_id == MAX_STREAM_ID
    assert pair.server.received(stream_id) == b"last"
    assert StreamAccepted(stream_id) in pair.client.events


def test_peer_may_jump_to_the_highest_stream_id() -> None:
    server = Session(Role.SERVER)
    assert server.receive_data(raw(UPDATE, Flags.SYN, MAX_STREAM_ID, 0), 0.0) == [
        StreamOpened(MAX_STREAM_ID)
    ]
    (event,) = server.receive_data(raw(UPDATE, Flags.SYN, 1, 0), 0.0)
    assert isinstance(event, ConnectionTerminated)
    assert event.code is GoAwayCode.PROTOCOL_ERROR


def test_streams_beyond_max_streams_are_refused_and_the_session_stays(
    make_pair: Callable[..., Pair],
) -> None:
    pair = make_pair(server_limits=Limits(max_streams=2))
    client, server = pair.client.session, pair.server.session
    ids = [client.open_stream() for _ in range(3)]
    for stream_id in ids:
        client.send_data(stream_id, b"hi")
    pair.flush()
    assert pair.server.of_type(StreamOpened) == [StreamOpened(ids[0]), StreamOpened(ids[1])]
    assert pair.client.of_type(StreamReset) == [StreamReset(ids[2], remote=True)]
    assert server.stats().streams_refused == 1
    assert not (client.terminated or server.terminated)
    assert client.open_streams == server.open_streams == 2
    # Once a stream closes there is room again.
    client.reset_stream(ids[0])
    again = client.open_stream()
    client.send_data(again, b"again")
    pair.flush()
    assert pair.server.received(again) == b"again"


def test_stats_count_streams_and_bytes(pair: Pair) -> None:
    stream_id = open_established(pair)
    open_established(pair)
    pair.client.session.send_data(stream_id, bytes(1000))
    pair.flush()
    client, server = pair.client.session.stats(), pair.server.session.stats()
    assert (client.streams_opened_local, server.streams_opened_remote) == (2, 2)
    assert client.bytes_sent == server.bytes_received == len(pair.client.sent)
    assert server.bytes_sent == client.bytes_received == len(pair.server.sent)
    assert client.open_streams == server.open_streams == 2


# ------------------------------------------------------------------ random sequences

HOSTILE_LIMITS = Limits(
    stream_window=INITIAL_WINDOW,
    max_stream_window=2 * INITIAL_WINDOW,
    max_frame_size=1024,
    stream_send_buffer=4096,
    max_streams=4,
    keepalive_interval=5.0,
    keepalive_timeout=20.0,
)
DECODER_BOUND = HEADER_SIZE + HOSTILE_LIMITS.max_stream_window
sizes = st.sampled_from([0, 1, 1000, 5000]) | st.integers(0, 3000)
deltas = st.sampled_from([0, 1, 1024, INITIAL_WINDOW, 2**31, MAX_LENGTH]) | st.integers(
    0, MAX_LENGTH
)


class HostilePeer(RuleBasedStateMachine):
    """A server session driven through its whole API while the peer sends anything at all.

    The peer mostly follows the protocol (so that the session gets somewhere) and now and then
    sends any frame or plain garbage. Whatever happens, the session raises nothing but the
    LocalProtocolError we can predict from misuse, ends at most once (ConnectionTerminated),
    keeps its input buffer within one frame, and writes only valid frames that stay within the
    windows the peer granted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.session = Session(Role.SERVER, HOSTILE_LIMITS, now=0.0)
        self.now = 0.0
        self.next_peer_id = 1
        self.ids: list[int] = []  # every stream id opened by either side
        self.unconsumed: dict[int, int] = {}
        self.pings: list[int] = []  # ping values the session sent
        self.ended = False  # a ConnectionTerminated was seen
        self.aligned = True  # the peer's bytes so far were whole frames
        self.granted: dict[int, int] = {}  # window the peer gave each stream
        self.used: dict[int, int] = {}  # data bytes the session sent on each stream
        self.wire = FrameDecoder(max_data_length=MAX_LENGTH)  # the session's output

    # -------------------------------------------------------------- checks

    def absorb(self, events: list[Event], *, from_peer: bool) -> None:
        for event in events:
            assert not self.ended, f"{event} after the session ended"
            if isinstance(event, ConnectionTerminated):
                self.ended = True
                assert "\n" not in event.reason
                if from_peer:
                    assert event.remote
            elif isinstance(event, DataReceived):
                self.unconsumed[event.stream_id] = self.unconsumed.get(event.stream_id, 0) + len(
                    event.data
                )
            elif isinstance(event, StreamOpened):
                assert event.stream_id % 2 == 1

    def peer_sends(self, frames: list[Frame], data: st.DataObject) -> None:
        if self.aligned and not self.session.terminated:
            for frame in frames:
                if frame.type is UPDATE:
                    base = self.granted.get(frame.stream_id, INITIAL_WINDOW)
                    self.granted[frame.stream_id] = base + frame.length
        self.deliver(b"".join(encode(f) for f in frames), data)

    def deliver(self, wire: bytes, data: st.DataObject) -> None:
        cut = data.draw(st.integers(0, len(wire)), label="split at")
        for chunk in (wire[:cut], wire[cut:]):
            self.absorb(self.session.receive_data(chunk, self.now), from_peer=True)
        self.pull(4096)

    def local(self, call: Callable[[], object], *, misuse_possible: bool = False) -> None:
        try:
            call()
        except LocalProtocolError:
            assert misuse_possible, "LocalProtocolError for a call the protocol allows"
        self.absorb(self.session.take_events(), from_peer=False)
        self.pull(4096)

    def pick(self, data: st.DataObject) -> int:
        """A stream id, mostly one the session still has open."""
        live = [i for i in self.ids if self.session.stream_state(i) is not StreamState.CLOSED]
        choices = live if live and data.draw(st.integers(0, 4), label="live") else self.ids
        return data.draw(st.sampled_from(choices or [1]), label="stream")

    @initialize(data=st.data(), ours=st.integers(0, 2), theirs=st.integers(0, 3))
    def some_streams_are_open(self, data: st.DataObject, ours: int, theirs: int) -> None:
        for _ in range(ours):
            self.open_stream()
        for _ in range(theirs):
            self.peer_opens_stream(data, size=100, delta=0, with_data=True)

    @invariant()
    def input_buffer_holds_at_most_one_frame(self) -> None:
        # Private: the only view of how much unparsed input the session holds.
        assert self.session._decoder.buffered < DECODER_BOUND

    @invariant()
    def terminated_exactly_when_reported(self) -> None:
        assert self.session.terminated == self.ended
        if self.ended:
            assert self.session.get_timer() is None
            assert self.session.open_streams == 0

    # -------------------------------------------------------------- the peer, mostly polite

    @precondition(lambda self: not self.ended)
    @rule(data=st.data(), size=sizes, delta=st.integers(0, 1 << 20), with_data=st.booleans())
    def peer_opens_stream(
        self, data: st.DataObject, size: int, delta: int, with_data: bool
    ) -> None:
        stream_id = self.next_peer_id
        self.next_peer_id += 2 * data.draw(st.sampled_from([1, 1, 1, 2]), label="skip")
        self.ids.append(stream_id)
        if with_data:
            frame = Frame(DATA, Flags.SYN, stream_id, size, bytes(size))
        else:
            frame = Frame(UPDATE, Flags.SYN, stream_id, delta)
        self.peer_sends([frame], data)

    @precondition(lambda self: self.ids and not self.ended)
    @rule(data=st.data(), size=sizes, flags=st.sampled_from([Flags.NONE] * 4 + [Flags.FIN]))
    def peer_sends_data(self, data: st.DataObject, size: int, flags: Flags) -> None:
        self.peer_sends([Frame(DATA, flags, self.pick(data), size, bytes(size))], data)

    @precondition(lambda self: self.ids and not self.ended)
    @rule(data=st.data(), delta=st.integers(0, 1 << 20))
    def peer_grants_window(self, data: st.DataObject, delta: int) -> None:
        self.peer_sends([Frame(UPDATE, Flags.NONE, self.pick(data), delta)], data)

    @precondition(lambda self: self.ids and not self.ended)
    @rule(data=st.data(), flags=st.sampled_from([Flags.ACK, Flags.FIN, Flags.RST]))
    def peer_signals(self, data: st.DataObject, flags: Flags) -> None:
        self.peer_sends([Frame(UPDATE, flags, self.pick(data), 0)], data)

    @precondition(lambda self: not self.ended)
    @rule(data=st.data(), value=st.integers(0, MAX_LENGTH))
    def peer_pings(self, data: st.DataObject, value: int) -> None:
        self.peer_sends([Frame(FrameType.PING, Flags.SYN, 0, value)], data)

    @precondition(lambda self: not self.ended)
    @rule(data=st.data())
    def peer_answers_ping(self, data: st.DataObject) -> None:
        value = data.draw(st.sampled_from(self.pings or [12345]), label="ping")
        self.peer_sends([Frame(FrameType.PING, Flags.ACK, 0, value)], data)

    @precondition(lambda self: not self.ended)
    @rule(data=st.data())
    def peer_goes_away(self, data: st.DataObject) -> None:
        self.peer_sends([Frame(FrameType.GO_AWAY, Flags.NONE, 0, GoAwayCode.NORMAL)], data)

    # -------------------------------------------------------------- the peer, hostile

    @precondition(lambda self: len(self.ids) >= 2)
    @rule(
        data=st.data(),
        type_=st.sampled_from(FrameType),
        flag_bits=st.integers(0, 15),
        stream_id=st.integers(0, MAX_STREAM_ID),
        length=deltas,
        size=sizes,
        junk=st.binary(min_size=1, max_size=40),
        garbage=st.sampled_from([False, False, False, True]),
    )
    def peer_misbehaves(
        self,
        data: st.DataObject,
        type_: FrameType,
        flag_bits: int,
        stream_id: int,
        length: int,
        size: int,
        junk: bytes,
        garbage: bool,
    ) -> None:
        if garbage:
            self.aligned = False
            self.deliver(junk, data)
            return
        stream_id = data.draw(st.sampled_from([stream_id, 0, *self.ids]), label="stream")
        if type_ is DATA:
            frame = Frame(type_, Flags(flag_bits), stream_id, size, bytes(size))
        else:
            frame = Frame(type_, Flags(flag_bits), stream_id, length)
        self.peer_sends([frame], data)

    # -------------------------------------------------------------- our side, through the API

    @rule()
    def open_stream(self) -> None:
        s = self.session
        refused = s.terminated or s.goaway_sent or s.goaway_received
        before = set(self.ids)
        self.local(lambda: self.ids.append(s.open_stream()), misuse_possible=refused)
        if not refused:
            (new,) = set(self.ids) - before
            assert new % 2 == 0

    @rule(data=st.data(), size=sizes | st.just(300 * KIB))
    def send_data(self, data: st.DataObject, size: int) -> None:
        stream_id = self.pick(data)
        state = self.session.stream_state(stream_id)
        misuse = state in (StreamState.HALF_CLOSED_LOCAL, StreamState.CLOSED)
        self.local(lambda: self.session.send_data(stream_id, bytes(size)), misuse_possible=misuse)

    @rule(data=st.data())
    def end_stream(self, data: st.DataObject) -> None:
        stream_id = self.pick(data)
        state = self.session.stream_state(stream_id)
        misuse = state in (StreamState.HALF_CLOSED_LOCAL, StreamState.CLOSED)
        self.local(lambda: self.session.end_stream(stream_id), misuse_possible=misuse)

    @rule(data=st.data(), after_data=st.booleans())
    def reset_stream(self, data: st.DataObject, after_data: bool) -> None:
        stream_id = self.pick(data)
        self.local(lambda: self.session.reset_stream(stream_id, after_data=after_data))

    @rule(data=st.data())
    def consume(self, data: st.DataObject) -> None:
        stream_id = self.pick(data)
        length = data.draw(st.integers(0, self.unconsumed.get(stream_id, 0)), label="consume")
        self.unconsumed[stream_id] = self.unconsumed.get(stream_id, 0) - length
        self.local(lambda: self.session.consumed(stream_id, length, self.now))

    @rule()
    def ping(self) -> None:
        self.local(lambda: self.session.ping(self.now))

    @rule(code=st.sampled_from([GoAwayCode.NORMAL] * 6 + [GoAwayCode.PROTOCOL_ERROR]))
    def go_away(self, code: GoAwayCode) -> None:
        self.local(lambda: self.session.go_away(code, "test"))

    @rule(dt=st.sampled_from([0.0, 0.5, 5.0, 5.0, 25.0]))
    def timer(self, dt: float) -> None:
        self.now += dt
        self.local(lambda: self.session.handle_timer(self.now))

    @rule(limit=st.sampled_from([1, 100, 256 * KIB]))
    def pull_output(self, limit: int) -> None:
        self.pull(limit)

    def pull(self, limit: int) -> None:
        """What a driver does whenever the socket can take more: check every frame sent."""
        out = self.session.data_to_send(limit)
        self.absorb(self.session.take_events(), from_peer=False)
        self.wire.feed(out)
        while (frame := self.wire.next_frame()) is not None:
            if frame.type in (FrameType.PING, FrameType.GO_AWAY):
                assert frame.stream_id == 0
            else:
                assert frame.stream_id != 0
            if frame.type is FrameType.PING and frame.flags & Flags.SYN:
                self.pings.append(frame.length)
            elif frame.flags & Flags.SYN:
                assert frame.stream_id % 2 == 0
            if frame.type is DATA:
                assert frame.length <= HOSTILE_LIMITS.max_frame_size
                used = self.used.get(frame.stream_id, 0) + frame.length
                self.used[frame.stream_id] = used
                if self.aligned:
                    assert used <= self.granted.get(frame.stream_id, INITIAL_WINDOW)


TestHostilePeer = HostilePeer.TestCase
TestHostilePeer.settings = settings(
    max_examples=120,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


TWO_PEER_LIMITS = Limits(
    stream_window=INITIAL_WINDOW,
    max_stream_window=1 * MIB,
    max_frame_size=8 * KIB,
    stream_send_buffer=32 * KIB,
    keepalive_interval=5.0,
    keepalive_timeout=1e9,  # pings are answered at the next exchange, however late
)


class StreamModel:
    """What the test knows one stream should carry."""

    def __init__(self, stream_id: int, opener: str) -> None:
        self.id = stream_id
        self.opener = opener
        self.known = {opener}  # sides that have heard of it
        self.sent = {"client": bytearray(), "server": bytearray()}
        self.ended: set[str] = set()
        self.reset = False  # by either side, or refused
        self.paused: set[str] = set()

    def __repr__(self) -> str:
        return f"<stream {self.id} opened by the {self.opener}>"


class TwoPeers(RuleBasedStateMachine):
    """Two well-behaved sessions under random use: never a protocol error, never lost data.

    Each side opens, writes, half-closes, resets and consumes at random, and the bytes move in
    random slices, so SYNs, FINs, RSTs, window updates and Go Aways cross on the wire.
    """

    def __init__(self, make_pair: Callable[..., Pair]) -> None:
        super().__init__()
        self.pair = make_pair(TWO_PEER_LIMITS, auto_consume=False)
        self.sides = {"client": self.pair.client, "server": self.pair.server}
        self.seen = {"client": 0, "server": 0}  # events already folded into the model
        self.streams: dict[int, StreamModel] = {}

    @initialize()
    def one_stream_each_way(self) -> None:
        self.open_stream("client")
        self.open_stream("server")
        self.exchange(rounds=2, limit=256 * KIB)

    def other(self, name: str) -> str:
        return "server" if name == "client" else "client"

    def pick(self, data: st.DataObject, name: str) -> StreamModel | None:
        known = [m for m in self.streams.values() if name in m.known]
        return data.draw(st.sampled_from(known), label="stream") if known else None

    def observe(self) -> None:
        """Fold the events each side produced into the model."""
        for name, side in self.sides.items():
            side.events += side.session.take_events()
            for event in side.events[self.seen[name] :]:
                assert not isinstance(event, ConnectionTerminated), event
                if isinstance(event, StreamOpened):
                    model = self.streams[event.stream_id]
                    assert model.opener != name
                    model.known.add(name)
                elif isinstance(event, StreamReset):
                    assert event.remote
                    self.streams[event.stream_id].reset = True
                elif isinstance(event, StreamDrained):
                    model = self.streams[event.stream_id]
                    assert name in model.paused
                    model.paused.discard(name)
            self.seen[name] = len(side.events)

    def exchange(self, rounds: int, limit: int) -> None:
        for _ in range(rounds):
            self.pair.step(self.pair.client, limit)
            self.pair.step(self.pair.server, limit)
        self.observe()

    @invariant()
    def data_arrives_in_order_and_unchanged(self) -> None:
        self.observe()
        for model in self.streams.values():
            for name, side in self.sides.items():
                got = side.received(model.id)
                assert model.sent[self.other(name)].startswith(got)
        for side in self.sides.values():
            assert not side.session.terminated

    @precondition(lambda self: len(self.streams) < 4)  # few streams, each one busier
    @rule(side=st.sampled_from(["client", "server"]))
    def open_stream(self, side: str) -> None:
        session = self.sides[side].session
        if session.goaway_sent or session.goaway_received:
            with pytest.raises(LocalProtocolError):
                session.open_stream()
            return
        stream_id = session.open_stream()
        assert stream_id not in self.streams
        self.streams[stream_id] = StreamModel(stream_id, side)

    @rule(
        data=st.data(),
        side=st.sampled_from(["client", "server"]),
        size=st.sampled_from([1, 100, 20 * KIB, 300 * KIB, 300 * KIB]) | st.integers(0, 2000),
    )
    def send_data(self, data: st.DataObject, side: str, size: int) -> None:
        model = self.pick(data, side)
        if model is None or side in model.ended:
            return
        sent = model.sent[side]
        chunk = random.Random(model.id * 1_000_003 + len(sent)).randbytes(size)
        pause = self.sides[side].session.send_data(model.id, chunk)
        sent += chunk
        if pause:
            model.paused.add(side)

    @rule(
        data=st.data(),
        side=st.sampled_from(["client", "server"]),
        how=st.sampled_from(["fin"] * 5 + ["rst", "rst after data"]),
    )
    def close_stream(self, data: st.DataObject, side: str, how: str) -> None:
        model = self.pick(data, side)
        if model is None:
            return
        session = self.sides[side].session
        if how == "fin":
            if side not in model.ended:
                model.ended.add(side)
                session.end_stream(model.id)
        else:
            model.reset = True
            session.reset_stream(model.id, after_data=how == "rst after data")

    @rule(data=st.data(), side=st.sampled_from(["client", "server"]))
    def consume(self, data: st.DataObject, side: str) -> None:
        model = self.pick(data, side)
        if model is not None:
            self.pair.consume(self.sides[side], model.id)

    @rule(side=st.sampled_from(["client", "server"]))
    def ping(self, side: str) -> None:
        self.sides[side].session.ping(self.pair.now)

    @precondition(lambda self: len(self.streams) >= 2)
    @rule(side=st.sampled_from(["client", "server"]))
    def go_away(self, side: str) -> None:
        self.sides[side].session.go_away()

    @rule(
        dt=st.sampled_from([0.0, 0.01, 0.2, 6.0]),
        rounds=st.integers(1, 4),
        limit=st.sampled_from([64, 4 * KIB, 256 * KIB]),
    )
    def exchange_some(self, dt: float, rounds: int, limit: int) -> None:
        self.pair.advance(dt)
        for side in self.sides.values():
            side.session.handle_timer(self.pair.now)
        self.exchange(rounds, limit)

    def teardown(self) -> None:
        # Settle: consume everything, move everything, until nothing changes.
        for _ in range(1000):
            self.pair.flush()
            moved = sum(
                self.pair.consume(side, stream_id)
                for side in self.sides.values()
                for stream_id in self.streams
            )
            if not moved:
                break
        self.pair.flush()
        self.observe()
        self.data_arrives_in_order_and_unchanged()
        for model in self.streams.values():
            if model.reset:
                continue
            assert self.sides["client"].received(model.id) == model.sent["server"]
            assert self.sides["server"].received(model.id) == model.sent["client"]
            for name in model.ended:
                peer = self.sides[self.other(name)]
                assert peer.events.count(StreamEnded(model.id)) == 1
            assert not model.paused
        for name, side in self.sides.items():
            alive = [
                m
                for m in self.streams.values()
                if name in m.known and not m.reset and len(m.ended) < 2
            ]
            assert side.session.open_streams == len(alive)


def test_two_well_behaved_peers_never_break_the_protocol(make_pair: Callable[..., Pair]) -> None:
    run_state_machine_as_test(
        lambda: TwoPeers(make_pair),
        settings=settings(
            max_examples=100,
            stateful_step_count=50,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


# ------------------------------------------------- what a frame header may make us hold


def read_in(session: Session, data: bytes) -> list[Event]:
    """Hand ``data`` to ``session`` as the transport does: read into its buffer."""
    events: list[Event] = []
    view = memoryview(data)
    while view:
        room = session.get_buffer()
        count = min(len(room), len(view))
        room[:count] = view[:count]
        view = view[count:]
        events += session.buffer_updated(count, 0.0)
        if session.terminated:
            break
    return events


def test_a_frame_over_the_streams_window_is_refused_before_its_payload_is_read(
    pair: Pair,
) -> None:
    stream_id = open_established(pair)
    server = pair.server.session
    # The header and the first bytes of a frame twice the window: refused at once, not when
    # (if ever) the rest arrives.
    events = server.receive_data(raw(DATA, Flags.NONE, stream_id, 2 * WINDOW) + bytes(1000), 0)
    ended = [e for e in events if isinstance(e, ConnectionTerminated)]
    assert ended and "exceeds its" in ended[0].reason


def test_a_frame_within_the_window_is_buffered_only_as_it_arrives() -> None:
    server = Session(Role.SERVER, Limits(stream_window=64 * MIB, max_stream_window=64 * MIB))
    read_in(server, raw(DATA, Flags.SYN, 1, 5) + b"hello")  # granted a 64 MiB window
    announced = 60 * MIB
    read_in(server, raw(DATA, Flags.NONE, 1, announced) + bytes(300 * KIB))
    assert not server.terminated
    # Room for twice what arrived at most, never for the 60 MiB announced.
    assert len(server._decoder._buffer) <= 2 * (300 * KIB + HEADER_SIZE)


def test_a_guarded_session_takes_only_small_frames_until_unguarded() -> None:
    server = Session(Role.SERVER, guarded=True)
    events = read_in(server, raw(DATA, Flags.SYN, 1, 64 * KIB) + bytes(64 * KIB))
    assert server.terminated
    assert any(isinstance(e, ConnectionTerminated) for e in events)

    server = Session(Role.SERVER, guarded=True)
    read_in(server, raw(DATA, Flags.SYN, 1, 100) + bytes(100))
    assert not server.terminated
    # The peer fills the buffer as fast as it can: it stays small while guarded.
    for _ in range(100):
        read_in(server, raw(UPDATE, Flags.NONE, 1, 1) * 1000)
    assert len(server._decoder._buffer) <= 32 * KIB
    server.unguard()
    assert server.guarded is False
    read_in(server, raw(DATA, Flags.NONE, 1, 200 * KIB) + bytes(200 * KIB))
    assert not server.terminated


def test_a_new_session_holds_a_few_kib() -> None:
    assert len(Session(Role.SERVER)._decoder._buffer) <= 4 * KIB


def test_bytes_queued_for_a_peer_that_never_reads_count_in_the_session_memory() -> None:
    # 400 streams whose answers are never read used to queue 256 KiB each (100 MiB) whatever
    # --session-memory said. Now a stream whose queue reaches what the budget has left is told
    # to pause, and once the budget is full the session is (the transport pauses every
    # producer of it, and reads never take more than half of what is left: tests/security).
    limits = Limits(stream_window=INITIAL_WINDOW, session_memory=4 * MIB)
    server = Session(Role.SERVER, limits)
    client = Session(Role.CLIENT, limits)
    streams = [client.open_stream() for _ in range(100)]
    server.receive_data(client.data_to_send(), 0.0)
    assert server.send_budget == 4 * MIB
    paused = [server.send_data(stream_id, bytes(100 * KIB)) for stream_id in streams]
    # The 40th would leave less than its own 100 KiB: it is the first paused.
    assert not any(paused[:39]) and all(paused[39:])
    assert server.stream_paused(streams[39]) and not server.stream_paused(streams[38])
    assert server.full  # from the 41st on, over the budget: every producer waits
    # The bytes leave as the peer's windows allow, and the paused streams are woken.
    wire = server.data_to_send(limit=1 << 30)
    assert len(wire) >= 100 * INITIAL_WINDOW // 3  # the first 256 KiB window of each
    events = server.take_events()
    drained = [e for e in events if isinstance(e, StreamDrained)]
    assert {e.stream_id for e in drained} == set(streams[39:])
    assert [e for e in events if isinstance(e, SessionDrained)] and not server.full
    assert server.queued == 0


def test_the_send_budget_has_a_floor_that_grown_windows_cannot_take() -> None:
    # 200 streams with 1 MiB windows promise more than --session-memory by themselves; the
    # streams must still be able to queue what they send.
    limits = Limits(session_memory=64 * MIB)
    server = Session(Role.SERVER, limits)
    client = Session(Role.CLIENT, limits)
    streams = [client.open_stream() for _ in range(200)]
    server.receive_data(client.data_to_send(), 0.0)
    for stream_id in streams:
        server.send_data(stream_id, b"x")  # the server's side of each stream exists
    assert server.send_budget == SEND_FLOOR
    assert not server.send_data(streams[0], bytes(100 * KIB))


def test_queued_bytes_beyond_the_floor_leave_less_for_windows_to_grow() -> None:
    limits = Limits(stream_window=INITIAL_WINDOW, session_memory=8 * MIB)
    server = Session(Role.SERVER, limits)
    client = Session(Role.CLIENT, limits)
    first = client.open_stream()
    server.receive_data(client.data_to_send(), 0.0)
    for _ in range(5):
        server.send_data(first, bytes(1 * MIB))  # 5 MiB queued: 1 MiB over the floor
    assert server._window_room() == 7 * MIB
    server.data_to_send(limit=1 << 30)  # the peer's first window's worth leaves
    assert server._window_room() == 7 * MIB + INITIAL_WINDOW
    server.reset_stream(first)  # and the rest is dropped
    assert server._window_room() == 8 * MIB


def test_a_frame_over_what_is_left_of_the_streams_window_is_refused_before_its_payload() -> None:
    server = Session(Role.SERVER)
    server.receive_data(raw(DATA, Flags.SYN, 1, 0), 0.0)
    server.receive_data(raw(DATA, Flags.NONE, 1, WINDOW - 100) + bytes(WINDOW - 100), 0.0)
    # Nothing consumed: 100 bytes of window are left, whatever the stream was granted at first.
    events = server.receive_data(raw(DATA, Flags.NONE, 1, 1000) + bytes(10), 0.0)
    assert events == [
        ConnectionTerminated(
            GoAwayCode.PROTOCOL_ERROR,
            "data frame of 1000 bytes on stream 1 exceeds its 100 byte window",
            remote=True,
        )
    ]


def test_a_frame_after_the_peers_fin_is_refused_from_its_header() -> None:
    server = Session(Role.SERVER)
    server.receive_data(raw(DATA, Flags.SYN | Flags.FIN, 1, 0), 0.0)
    (ended,) = server.receive_data(raw(DATA, Flags.NONE, 1, 1), 0.0)  # its byte still to come
    assert isinstance(ended, ConnectionTerminated)
    assert ended.reason == "data frame of 1 bytes on stream 1 exceeds its 0 byte window"


def test_a_frame_of_exactly_the_window_may_arrive_in_pieces() -> None:
    server = Session(Role.SERVER)
    server.receive_data(raw(DATA, Flags.SYN, 1, 0), 0.0)
    data = raw(DATA, Flags.NONE, 1, WINDOW) + payload(WINDOW)
    events = server.receive_data(data[:1000], 0.0) + server.receive_data(data[1000:], 0.0)
    assert events == [DataReceived(1, data[HEADER_SIZE:])]
    assert not server.terminated


def test_a_large_frame_in_flight_for_a_stream_we_reset_is_dropped_without_fuss() -> None:
    server = Session(Role.SERVER)
    server.receive_data(raw(DATA, Flags.SYN, 1, 0), 0.0)  # granted the 1 MiB window
    server.reset_stream(1)
    # The peer sent half a MiB (more than the initial window, within what it was granted)
    # before it saw the reset; it arrives over several reads.
    data = raw(DATA, Flags.NONE, 1, WINDOW // 2) + bytes(WINDOW // 2)
    assert server.receive_data(data[:1000], 0.0) == []
    assert server.receive_data(data[1000:], 0.0) == []
    assert not server.terminated


def test_a_frame_for_a_stream_we_never_opened_ends_the_session() -> None:
    client = Session(Role.CLIENT)
    client.open_stream()  # stream 1; 3 is the next one, not opened yet
    (ended,) = client.receive_data(raw(UPDATE, Flags.NONE, 3, 5), 0.0)
    assert ended == ConnectionTerminated(
        GoAwayCode.PROTOCOL_ERROR, "frame for stream 3, which was never opened", remote=True
    )


def test_the_peers_go_away_with_an_error_says_which_error() -> None:
    client = Session(Role.CLIENT)
    events = client.receive_data(raw(FrameType.GO_AWAY, Flags.NONE, 0, 1), 0.0)
    assert events == [
        ConnectionTerminated(
            GoAwayCode.PROTOCOL_ERROR, "peer went away: protocol_error", remote=True
        )
    ]


def test_a_reset_stream_gives_back_its_queued_bytes_and_its_grown_window() -> None:
    client = Session(Role.CLIENT)
    kept, dropped = client.open_stream(), client.open_stream()
    client.send_data(kept, bytes(300))
    client.send_data(dropped, bytes(1000))
    grown = 2 * (WINDOW - INITIAL_WINDOW)  # each stream's window past the initial one
    assert (client.queued, client.memory_used()) == (1300, 1300 + grown)
    assert client.send_buffer_size(dropped) == 1000
    client.reset_stream(dropped)
    assert (client.queued, client.memory_used()) == (300, 300 + grown // 2)
    assert client.send_buffer_size(dropped) == 0
    assert client.send_buffer_size(kept) == 300


def test_a_session_that_ended_holds_no_queued_bytes() -> None:
    client = Session(Role.CLIENT)
    client.send_data(client.open_stream(), bytes(1000))
    client.receive_data(raw(FrameType.GO_AWAY, Flags.NONE, 0, 1), 0.0)
    assert client.terminated
    assert client.queued == 0


def test_a_second_fin_from_the_peer_ends_the_session_naming_the_stream_and_its_state() -> None:
    server = Session(Role.SERVER)
    fin = raw(UPDATE, Flags.FIN, 1, 0)
    events = server.receive_data(raw(DATA, Flags.SYN | Flags.FIN, 1, 0) + fin, 0.0)
    assert events[-1] == ConnectionTerminated(
        GoAwayCode.PROTOCOL_ERROR, "RECV_FIN on stream 1 in state HALF_CLOSED_REMOTE", remote=True
    )


def test_ending_a_stream_twice_is_refused_naming_the_stream_and_its_state() -> None:
    client = Session(Role.CLIENT)
    stream_id = client.open_stream()
    client.end_stream(stream_id)
    client.data_to_send()
    with pytest.raises(LocalProtocolError) as refused:
        client.end_stream(stream_id)
    assert str(refused.value) == "SEND_FIN on stream 1 in state HALF_CLOSED_LOCAL"


def test_a_fin_with_nothing_queued_goes_out_alone(pair: Pair) -> None:
    # No empty Data frame before it: the peer counts those against its empty-frame budget.
    stream_id = open_established(pair)
    pair.client.session.end_stream(stream_id)
    assert frames_in(pair.client.session.data_to_send()) == [Frame(UPDATE, Flags.FIN, stream_id, 0)]


def test_a_paused_stream_is_drained_when_its_queue_falls_to_half_the_send_buffer(
    make_pair: Callable[..., Pair],
) -> None:
    pair = make_pair(auto_consume=False)
    client = pair.client.session
    stream_id = open_established(pair)
    half = DEFAULT.stream_send_buffer // 2
    assert client.send_data(stream_id, bytes(2 * half + 1)) is True
    client.data_to_send(limit=HEADER_SIZE + DEFAULT.max_frame_size)  # one frame: half + 1 left
    assert client.send_buffer_size(stream_id) == half + 1
    assert client.take_events() == []
    client.data_to_send(limit=1)  # one byte more
    assert client.send_buffer_size(stream_id) == half
    assert client.take_events() == [StreamDrained(stream_id)]


def test_a_stream_woken_by_several_window_updates_still_takes_turns(
    make_pair: Callable[..., Pair],
) -> None:
    pair = make_pair(auto_consume=False)
    client = pair.client.session
    first, second = open_established(pair), open_established(pair)
    client.send_data(first, bytes(WINDOW))
    pair.flush()  # the first stream's window is used up
    client.send_data(first, bytes(WINDOW))
    client.send_data(second, bytes(WINDOW))
    client.receive_data(raw(UPDATE, Flags.NONE, first, 64 * KIB) * 3, pair.now)
    frame = DEFAULT.max_frame_size
    sent = frames_in(client.data_to_send(limit=3 * frame))
    assert [f.stream_id for f in sent if f.type is DATA] == [second, first, second]


def test_a_reset_after_queued_data_goes_out_as_a_bare_rst(pair: Pair) -> None:
    client = pair.client.session
    stream_id = open_established(pair)
    client.send_data(stream_id, b"why not")
    client.reset_stream(stream_id, after_data=True)
    assert frames_in(client.data_to_send()) == [
        Frame(DATA, Flags.NONE, stream_id, 7, b"why not"),
        Frame(UPDATE, Flags.RST, stream_id, 0),
    ]


def test_a_stream_that_drained_takes_data_again_without_pausing(
    make_pair: Callable[..., Pair],
) -> None:
    # A send buffer smaller than a frame: the frame that takes the queue under half of it
    # takes all of it.
    pair = make_pair(Limits(stream_send_buffer=64 * KIB))
    client = pair.client.session
    stream_id = open_established(pair)
    assert client.send_data(stream_id, bytes(64 * KIB + 1)) is True
    pair.flush()  # the window takes it all: the queue empties and the stream is drained
    assert pair.client.of_type(StreamDrained) == [StreamDrained(stream_id)]
    assert client.send_data(stream_id, b"more") is False


def test_a_ping_without_syn_or_ack_is_not_an_answer() -> None:
    client = Session(Role.CLIENT)
    client.ping(now=1.0)
    (ping,) = frames_in(client.data_to_send())
    assert client.receive_data(raw(FrameType.PING, Flags.NONE, 0, ping.length), 2.0) == []
    assert client.rtt is None


def test_pings_spread_over_time_are_no_flood() -> None:
    server = Session(Role.SERVER)
    for second in range(3 * DEFAULT.pings_per_second):
        server.receive_data(raw(FrameType.PING, Flags.SYN, 0, second), float(second))
    assert not server.terminated


def test_a_ping_flood_ends_the_session_naming_the_limit() -> None:
    server = Session(Role.SERVER)
    events = server.receive_data(raw(FrameType.PING, Flags.SYN, 0, 7) * 101, 0.0)
    assert events[-1] == ConnectionTerminated(
        GoAwayCode.PROTOCOL_ERROR, "more than 100 pings a second (a ping flood)", remote=True
    )
    assert server.limit_hit == "pings_per_second"


def test_round_trips_are_smoothed_and_the_shortest_is_kept() -> None:
    client, server = Session(Role.CLIENT), Session(Role.SERVER)
    client.ping(now=0.0)
    client.ping(now=0.0)  # two pings out at once: each answer is matched to its own
    server.receive_data(client.data_to_send(), 0.0)
    first, second = frames_in(server.data_to_send())
    assert first.length != second.length
    assert client.receive_data(encode(first), 0.4) == [PingAcknowledged(0.4)]
    assert client.receive_data(encode(second), 0.8) == [PingAcknowledged(0.8)]
    assert client.rtt == pytest.approx(0.875 * 0.4 + 0.125 * 0.8)
    assert client.min_rtt == 0.4


def test_going_away_with_an_error_and_no_reason_names_the_error() -> None:
    client = Session(Role.CLIENT)
    client.go_away(GoAwayCode.INTERNAL_ERROR)
    assert client.take_events() == [
        ConnectionTerminated(GoAwayCode.INTERNAL_ERROR, "internal_error", remote=False)
    ]


def test_a_token_budget_allows_a_seconds_burst_then_its_rate() -> None:
    budget = Budget(10)
    assert all(budget.spend(0.0) for _ in range(10))  # a second's worth at once
    assert not budget.spend(0.0)
    assert not budget.spend(0.05)  # half an event has come back
    assert budget.spend(0.1)
    assert not budget.spend(0.1)
    assert all(budget.spend(100.0) for _ in range(10))  # idle time refills a burst, no more
    assert not budget.spend(100.0)


def test_windows_grown_by_auto_tuning_stay_within_the_session_memory(
    make_pair: Callable[..., Pair],
) -> None:
    budget = 3 * INITIAL_WINDOW // 2
    limits = Limits(
        stream_window=INITIAL_WINDOW, max_stream_window=4 * INITIAL_WINDOW, session_memory=budget
    )
    pair = make_pair(limits)
    server = pair.server.session
    server.ping(pair.now)
    pair.step(pair.server)
    pair.advance(0.05)
    pair.step(pair.client)
    stream_id = open_established(pair)
    for _ in range(10):  # a consumer that keeps up with a megabyte per round trip
        pair.client.session.send_data(stream_id, bytes(MIB))
        pair.flush()
        pair.advance(0.05)
    # The window doubled once (256 KiB more), then took what the budget had left (128 KiB).
    assert server.memory_used() == budget
    pair.auto_consume = False
    before = len(pair.server.received(stream_id))
    pair.client.session.send_data(stream_id, bytes(8 * MIB))
    pair.flush()
    assert len(pair.server.received(stream_id)) - before <= INITIAL_WINDOW + budget


def test_streams_written_to_several_times_still_take_turns(pair: Pair) -> None:
    client = pair.client.session
    first, second = open_established(pair), open_established(pair)
    client.send_data(first, bytes(WINDOW // 4))
    client.send_data(first, bytes(WINDOW // 4))
    client.send_data(second, bytes(WINDOW // 4))
    frame = DEFAULT.max_frame_size
    sent = frames_in(client.data_to_send(limit=3 * frame))
    assert [f.stream_id for f in sent if f.type is DATA] == [first, second, first]


def test_the_last_byte_of_a_window_is_used(make_pair: Callable[..., Pair]) -> None:
    pair = make_pair(auto_consume=False)
    client = pair.client.session
    stream_id = open_established(pair)
    client.send_data(stream_id, bytes(WINDOW - 1))
    pair.flush()  # one byte of window left
    client.send_data(stream_id, b"ab")
    assert frames_in(client.data_to_send()) == [Frame(DATA, Flags.NONE, stream_id, 1, b"a")]


def test_a_stream_at_exactly_its_send_buffer_mark_is_not_paused() -> None:
    client = Session(Role.CLIENT)
    mark = client.limits.stream_send_buffer
    stream_id = client.open_stream()
    assert client.send_data(stream_id, bytes(mark)) is False
    assert client.send_data(stream_id, b"x") is True


def test_a_bytearray_reused_by_the_caller_does_not_change_what_is_sent(pair: Pair) -> None:
    client = pair.client.session
    stream_id = open_established(pair)
    buffer = bytearray(b"first")
    client.send_data(stream_id, buffer)
    buffer[:] = b"later"
    assert frames_in(client.data_to_send())[-1].payload == b"first"


def test_sending_after_the_end_is_refused_naming_the_stream_and_its_state() -> None:
    client = Session(Role.CLIENT)
    stream_id = client.open_stream()
    client.end_stream(stream_id)
    with pytest.raises(LocalProtocolError) as refused:
        client.send_data(stream_id, b"late")
    assert str(refused.value) == "send on stream 1 in state HALF_CLOSED_LOCAL"


def test_no_stream_is_opened_after_a_go_away_and_the_refusal_says_so(pair: Pair) -> None:
    pair.client.session.go_away()
    with pytest.raises(LocalProtocolError) as refused:
        pair.client.session.open_stream()
    assert str(refused.value) == "the session takes no new streams"


def test_data_to_send_stops_at_its_limit(pair: Pair) -> None:
    client = pair.client.session
    first, second = open_established(pair), open_established(pair)
    client.send_data(first, bytes(100))
    client.send_data(second, bytes(100))
    assert frames_in(client.data_to_send(limit=HEADER_SIZE + 100)) == [
        Frame(DATA, Flags.NONE, first, 100, bytes(100))
    ]


def test_a_payload_of_exactly_gather_min_reaches_the_socket_as_it_is(pair: Pair) -> None:
    client = pair.client.session
    stream_id = open_established(pair)
    block = os.urandom(GATHER_MIN)
    client.send_data(stream_id, block)
    assert any(buffer is block for buffer in client.buffers_to_send())


def test_a_small_message_past_the_limit_is_cut_to_it(pair: Pair) -> None:
    client = pair.client.session
    first, second = open_established(pair), open_established(pair)
    client.send_data(first, bytes(100))
    client.send_data(second, bytes(100))
    assert frames_in(client.data_to_send(limit=HEADER_SIZE + 150)) == [
        Frame(DATA, Flags.NONE, first, 100, bytes(100)),
        Frame(DATA, Flags.NONE, second, 50, bytes(50)),
    ]


def test_small_messages_on_several_streams_leave_in_one_write_and_nothing_stays_queued(
    pair: Pair,
) -> None:
    client = pair.client.session
    first, second = open_established(pair), open_established(pair)
    client.send_data(first, b"one")
    client.send_data(second, b"two")
    assert client.queued == 6
    sent = frames_in(client.data_to_send())
    assert [(f.stream_id, f.payload) for f in sent] == [(first, b"one"), (second, b"two")]
    assert client.queued == 0


def test_a_stream_reset_while_it_waited_to_send_does_not_hold_up_the_others(pair: Pair) -> None:
    client = pair.client.session
    first, second = open_established(pair), open_established(pair)
    client.send_data(first, bytes(GATHER_MIN))
    client.send_data(second, b"two")
    client.receive_data(raw(UPDATE, Flags.RST, first, 0), pair.now)  # the peer resets the first
    assert [(f.stream_id, f.payload) for f in frames_in(client.data_to_send())] == [
        (second, b"two")
    ]


def test_a_frame_that_leaves_one_byte_of_window_is_followed_by_that_byte(
    make_pair: Callable[..., Pair],
) -> None:
    pair = make_pair(auto_consume=False)
    client = pair.client.session
    stream_id = open_established(pair)
    frame = DEFAULT.max_frame_size
    client.send_data(stream_id, bytes(WINDOW - frame - 1))
    pair.flush()  # a frame and one byte of window left
    client.send_data(stream_id, bytes(2 * frame))
    sent = frames_in(client.data_to_send(limit=4 * frame))
    assert [f.length for f in sent] == [frame, 1]


def test_a_stream_written_to_while_it_waits_for_its_next_turn_takes_one_turn(pair: Pair) -> None:
    client = pair.client.session
    first, second = open_established(pair), open_established(pair)
    frame = DEFAULT.max_frame_size
    client.send_data(first, bytes(2 * frame))
    client.send_data(second, bytes(2 * frame))
    client.data_to_send(limit=frame)  # the first stream's turn; it waits for the next one
    client.send_data(first, b"more")
    sent = frames_in(client.data_to_send(limit=3 * frame))
    assert [f.stream_id for f in sent if f.type is DATA] == [second, first, second]


def test_a_rapid_reset_flood_ends_the_session_naming_the_limit() -> None:
    server = Session(Role.SERVER, Limits(resets_per_second=10))
    flood = b"".join(
        raw(DATA, Flags.SYN, stream_id, 0) + raw(UPDATE, Flags.RST, stream_id, 0)
        for stream_id in range(1, 24, 2)
    )
    events = server.receive_data(flood, 0.0)
    assert events[-1] == ConnectionTerminated(
        GoAwayCode.PROTOCOL_ERROR,
        "more than 10 stream resets a second (a rapid-reset flood)",
        remote=True,
    )
    assert server.limit_hit == "resets_per_second"


def test_an_empty_frame_flood_ends_the_session_naming_the_limit() -> None:
    server = Session(Role.SERVER, Limits(empty_frames_per_second=10))
    server.receive_data(raw(DATA, Flags.SYN, 1, 0), 0.0)
    for second in range(30):  # one a second is no flood
        server.receive_data(raw(UPDATE, Flags.NONE, 1, 0), float(second))
    assert not server.terminated
    events = server.receive_data(raw(UPDATE, Flags.NONE, 1, 0) * 11, 30.0)
    assert events[-1] == ConnectionTerminated(
        GoAwayCode.PROTOCOL_ERROR, "more than 10 empty frames a second", remote=True
    )
    assert server.limit_hit == "empty_frames_per_second"


@pytest.mark.parametrize(
    ("opening", "reason"),
    [
        (raw(DATA, Flags.SYN, 2, 0), "peer opened stream 2 with our parity"),
        (raw(DATA, Flags.SYN, 3, 0) + raw(DATA, Flags.SYN, 1, 0), "peer reused stream id 1"),
        (
            raw(DATA, Flags.SYN, 1, 0) + raw(UPDATE, Flags.NONE, 1, MAX_LENGTH),
            "window of stream 1 grew past 2**32-1",
        ),
    ],
)
def test_a_stream_opened_or_grown_wrongly_ends_the_session_saying_how(
    opening: bytes, reason: str
) -> None:
    server = Session(Role.SERVER)
    events = server.receive_data(opening, 0.0)
    assert events[-1] == ConnectionTerminated(GoAwayCode.PROTOCOL_ERROR, reason, remote=True)


def test_streams_over_the_limit_are_each_refused_with_a_bare_rst_and_counted() -> None:
    server = Session(Role.SERVER, Limits(max_streams=1))
    server.receive_data(b"".join(raw(DATA, Flags.SYN, i, 0) for i in (1, 3, 5)), 0.0)
    refusals = [f for f in frames_in(server.data_to_send()) if f.flags & Flags.RST]
    assert refusals == [Frame(UPDATE, Flags.RST, 3, 0), Frame(UPDATE, Flags.RST, 5, 0)]
    assert server.stats().streams_refused == 2


def test_resets_spread_over_time_and_streams_opened_in_a_burst_are_no_reset_flood() -> None:
    server = Session(Role.SERVER, Limits(resets_per_second=10))
    for second, stream_id in enumerate(range(1, 60, 2)):  # one reset a second
        opened_and_reset = raw(DATA, Flags.SYN, stream_id, 0) + raw(UPDATE, Flags.RST, stream_id, 0)
        server.receive_data(opened_and_reset, float(second))
    server.receive_data(b"".join(raw(DATA, Flags.SYN, i, 0) for i in range(61, 101, 2)), 30.0)
    assert not server.terminated


def test_a_stream_refused_before_it_was_accepted_is_reset_and_never_accepted(pair: Pair) -> None:
    client = pair.client.session
    stream_id = client.open_stream()
    client.data_to_send()
    assert client.receive_data(raw(UPDATE, Flags.RST, stream_id, 0), 0.0) == [
        StreamReset(stream_id, remote=True)
    ]


def test_a_stream_is_accepted_once_however_often_the_peer_says_so() -> None:
    client = Session(Role.CLIENT)
    stream_id = client.open_stream()
    ack = raw(UPDATE, Flags.ACK, stream_id, 0)
    assert client.receive_data(ack + raw(UPDATE, Flags.ACK, stream_id, 5), 0.0) == [
        StreamAccepted(stream_id)
    ]


def test_data_on_the_frame_that_opens_a_stream_is_delivered() -> None:
    server = Session(Role.SERVER)
    assert server.receive_data(raw(DATA, Flags.SYN, 1, 5, b"hello"), 0.0) == [
        StreamOpened(1),
        DataReceived(1, b"hello"),
    ]


def test_an_opening_frame_over_the_window_says_by_how_much() -> None:
    server = Session(Role.SERVER)
    (ended,) = server.receive_data(raw(DATA, Flags.SYN, 1, WINDOW + 1, bytes(WINDOW + 1)), 0.0)[1:]
    assert ended == ConnectionTerminated(
        GoAwayCode.PROTOCOL_ERROR,
        f"stream 1 received {WINDOW + 1} bytes with only {WINDOW} bytes of window left",
        remote=True,
    )


def test_a_fin_on_a_data_frame_ends_the_stream_after_its_data() -> None:
    server = Session(Role.SERVER)
    server.receive_data(raw(DATA, Flags.SYN, 1, 0), 0.0)
    assert server.receive_data(raw(DATA, Flags.FIN, 1, 3, b"end"), 0.0) == [
        DataReceived(1, b"end"),
        StreamEnded(1),
    ]


def test_credit_goes_back_for_what_was_handed_on_not_for_what_is_still_held() -> None:
    server = Session(Role.SERVER)
    server.receive_data(raw(DATA, Flags.SYN, 1, 0), 0.0)
    part = 300 * KIB
    server.receive_data(raw(DATA, Flags.NONE, 1, part, bytes(part)) * 2, 0.0)
    server.data_to_send()
    server.consumed(1, part, 0.0)  # the first frame handed on, the second still held
    assert frames_in(server.data_to_send()) == [Frame(UPDATE, Flags.NONE, 1, part)]


@pytest.mark.parametrize("type_", [DATA, UPDATE])
def test_a_stream_frame_on_stream_zero_ends_the_session_saying_so(type_: FrameType) -> None:
    body = bytes(5) if type_ is DATA else b""
    (ended,) = Session(Role.SERVER).receive_data(raw(type_, Flags.NONE, 0, 5, body), 0.0)
    assert ended == ConnectionTerminated(
        GoAwayCode.PROTOCOL_ERROR, f"{type_.name} frame on stream 0", remote=True
    )


def test_a_session_made_without_a_time_starts_its_clock_at_zero() -> None:
    assert Session(Role.CLIENT).get_timer() == DEFAULT.keepalive_interval


# ------------------------------------------------------------------ sending at once


def test_send_at_once_gives_the_frame_of_a_lone_message(pair: Pair) -> None:
    stream_id = open_established(pair)
    client = pair.client.session
    assert not client.has_output
    frame = client.send_at_once(stream_id, b"PING\r\n")
    assert frame is not None
    assert frames_in(frame) == [Frame(DATA, Flags.NONE, stream_id, 6, b"PING\r\n")]
    # Accounted as sent: nothing queued, the window used, the bytes counted.
    assert not client.has_output and client.queued == 0
    assert client.stats().bytes_sent == len(frame) + len(pair.client.sent)
    assert pair.server.session.receive_data(frame, 0.0) == [DataReceived(stream_id, b"PING\r\n")]


def test_send_at_once_leaves_a_message_to_the_queue_when_something_goes_first(
    pair: Pair,
) -> None:
    client = pair.client.session
    fresh = client.open_stream()  # its SYN is queued: data must not overtake it
    assert client.has_output
    assert client.send_at_once(fresh, b"x") is None
    pair.flush()
    stream_id, other = open_established(pair), open_established(pair)
    client.send_data(stream_id, b"queued")  # the stream's own queue goes first
    assert client.has_output
    assert client.send_at_once(stream_id, b"after") is None
    assert client.send_at_once(other, b"other") is None  # and every stream waits behind it
    pair.flush()
    assert pair.server.received(stream_id) == b"queued"
    assert client.send_at_once(stream_id, b"big" * GATHER_MIN) is None  # bulk is gathered
    client.end_stream(stream_id)
    pair.flush()
    assert client.send_at_once(stream_id, b"after FIN") is None
    assert client.send_at_once(999, b"unknown stream") is None


def test_send_at_once_never_exceeds_the_window(make_pair: Callable[..., Pair]) -> None:
    pair = make_pair(auto_consume=False)
    stream_id = open_established(pair)
    client = pair.client.session
    chunk = b"z" * (GATHER_MIN - 1)
    sent = 0
    while (frame := client.send_at_once(stream_id, chunk)) is not None:
        sent += len(chunk)
        pair.server.session.receive_data(frame, 0.0)
    assert WINDOW - len(chunk) < sent <= WINDOW
    assert not pair.server.session.has_output  # the peer took every frame: none over the window


def test_a_first_read_that_is_a_proxy_header_is_named_as_one() -> None:
    """A listener without --accept-proxy-protocol has no gate in front: the session notices a
    PROXY header when its first read fails to decode, and only then."""
    from tunnel.protocol.proxyheader import V2_SIGNATURE

    for first, named in (
        (b"PROXY TCP4 192.0.2.1 127.0.0.1 5555 7700\r\n", True),
        (V2_SIGNATURE + b"\x21\x11\x00\x0c" + bytes(12), True),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False),
    ):
        session = Session(Role.SERVER, guarded=True)
        session.receive_data(first, 0.0)
        assert session.terminated and session.proxy_header is named, first
    # The same bytes after a valid frame are garbage, not a balancer's header.
    session = Session(Role.SERVER, guarded=True)
    session.receive_data(encode_header(FrameType.PING, Flags.SYN, 0, 1), 0.0)
    session.receive_data(b"PROXY TCP4 192.0.2.1 127.0.0.1 5555 7700\r\n", 0.0)
    assert session.terminated and not session.proxy_header
