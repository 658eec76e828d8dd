"""Fast detection of a silent peer, in memory with a fake clock.

A session that sent a SYN or Data and heard nothing back probes with a ping after
max(1 s, 4 round trips), and gives up when that ping is not answered as long; a live peer, a
slow answer and a long transfer never end the session.
"""

from __future__ import annotations

from collections.abc import Callable

from tests.tunnel.conftest import Pair, decode_all
from tunnel.protocol.events import ConnectionTerminated
from tunnel.protocol.frames import Flags, FrameType, GoAwayCode
from tunnel.protocol.limits import KIB, MIB, Limits
from tunnel.protocol.liveness import Liveness, Verdict
from tunnel.protocol.session import Role, Session


def pings_in(data: bytes) -> int:
    return sum(1 for f in decode_all(data) if f.type is FrameType.PING and f.flags & Flags.SYN)


def test_a_stream_open_to_a_silent_peer_is_probed_after_a_second_and_dead_after_two() -> None:
    client = Session(Role.CLIENT, now=100.0)
    client.open_stream()
    client.send_data(1, b"GET")
    assert pings_in(client.data_to_send(now=100.0)) == 0
    assert client.get_timer() == 101.0  # not the keepalive's 115
    client.handle_timer(100.9)
    assert client.data_to_send() == b""
    client.handle_timer(101.0)
    assert pings_in(client.data_to_send()) == 1  # the probe goes out at once
    assert client.get_timer() == 102.0
    client.handle_timer(101.99)
    assert not client.terminated
    client.handle_timer(102.0)
    (event,) = client.take_events()
    assert isinstance(event, ConnectionTerminated)
    assert event.code is GoAwayCode.INTERNAL_ERROR and not event.remote
    assert event.reason.startswith("peer did not answer a ping for 1.0s")
    assert client.unresponsive


def test_a_message_written_at_once_starts_the_clock_too(pair: Pair) -> None:
    client = pair.client.session
    stream_id = client.open_stream()
    pair.flush()  # the stream is open and acknowledged: the clock is stopped
    assert client.liveness.waiting_since is None
    client.timer_moved = False
    frame = client.send_at_once(stream_id, b"PING", now=pair.now)
    assert frame is not None
    assert client.timer_moved  # the driver must arm the sooner timer
    assert client.get_timer() == pair.now + 1.0
    client.handle_timer(pair.now + 1.0)
    assert pings_in(client.data_to_send(now=pair.now + 1.0)) == 1


def test_any_reply_before_the_deadline_means_no_probe(pair: Pair) -> None:
    client = pair.client.session
    stream_id = client.open_stream()
    client.send_data(stream_id, b"PING")
    pair.flush()  # the server's ACK comes back at once
    pair.advance(5.0)
    client.handle_timer(pair.now)
    assert pings_in(client.data_to_send(now=pair.now)) == 0
    assert client.get_timer() == client._last_received + Limits().keepalive_interval


def test_a_slow_answer_costs_one_answered_probe_and_nothing_else(pair: Pair) -> None:
    client = pair.client.session
    stream_id = client.open_stream()
    pair.flush()
    pair.advance(0.5)
    client.send_data(stream_id, b"BLPOP queue 10")  # small: no window update comes back
    pair.step(pair.client)
    assert client.get_timer() == pair.now + 1.0
    pair.advance(1.0)
    client.handle_timer(pair.now)
    pair.flush()  # the probe, and its answer
    assert pings_in(bytes(pair.client.sent)) == 1
    assert client.liveness.waiting_since is None and client.liveness.probe_at is None
    pair.advance(30.0)
    client.handle_timer(pair.now)
    assert not client.terminated


def test_the_deadline_is_four_round_trips_when_that_is_more_than_the_floor() -> None:
    live = Liveness()
    assert live.deadline(None) == 1.0
    assert live.deadline(0.0001) == 1.0
    assert live.deadline(0.5) == 2.0
    live.sent(10.0)
    assert live.due(0.5) == 12.0
    assert live.check(11.9, 0.5) is Verdict.NOTHING
    assert live.check(12.0, 0.5) is Verdict.PROBE
    assert live.due(0.5) == 14.0


def test_a_late_timer_waits_for_the_reads_before_declaring_the_peer_dead() -> None:
    live = Liveness()
    live.sent(0.0)
    assert live.check(1.0, None) is Verdict.PROBE
    # The loop was stuck for seconds: the answer may be in the socket, unread.
    assert live.check(4.0, None) is Verdict.NOTHING
    assert live.due(None) == 4.05
    live.heard()  # and it was
    assert live.due(None) is None
    live.sent(5.0)
    assert live.check(6.0, None) is Verdict.PROBE
    assert live.check(4.5 + 3.0, None) is Verdict.NOTHING  # late again: one more look
    assert live.check(7.55, None) is Verdict.DEAD


def test_a_floor_of_zero_leaves_only_the_keepalive() -> None:
    client = Session(Role.CLIENT, Limits(probe_floor=0), now=0.0)
    client.open_stream()
    client.data_to_send(now=0.0)
    assert client.get_timer() == Limits().keepalive_interval
    client.handle_timer(5.0)
    assert not client.terminated and pings_in(client.data_to_send()) == 0


def test_a_long_transfer_over_a_slow_link_is_never_probed(make_pair: Callable[..., Pair]) -> None:
    """8 MiB at 1 MiB/s with a 200 ms round trip: the window updates keep both sides sure."""
    pair = make_pair(Limits(stream_window=256 * KIB))
    client, server = pair.client.session, pair.server.session
    stream_id = client.open_stream()
    sent = 0
    total = 8 * MIB
    in_flight: list[tuple[float, str, bytes]] = []  # arrival time, to whom, bytes
    pings = 0
    while sent < total or in_flight:
        if sent < total and not client.stream_paused(stream_id):
            chunk = min(64 * KIB, total - sent)
            client.send_data(stream_id, b"x" * chunk)
            sent += chunk
        for side, name in ((client, "server"), (server, "client")):
            data = side.data_to_send(limit=100 * KIB, now=pair.now)  # 1 MiB/s, 0.1 s ticks
            pings += pings_in(data)
            if data:
                in_flight.append((pair.now + 0.1, name, data))
        pair.advance(0.1)
        arrived = [item for item in in_flight if item[0] <= pair.now]
        in_flight = [item for item in in_flight if item[0] > pair.now]
        for _, name, data in arrived:
            pair.deliver(pair.server if name == "server" else pair.client, data)
        for side in (client, server):
            side.handle_timer(pair.now)
        assert pings == 0, pair.now
        assert pair.now < 60
    assert not client.terminated and not server.terminated
    assert client.liveness.probe_at is None and server.liveness.probe_at is None
