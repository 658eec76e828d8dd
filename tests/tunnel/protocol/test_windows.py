"""Tests for protocol.windows: credit batching and auto-tuning of one stream's receive window."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel.protocol.windows import ReceiveWindow

KIB = 1024
TARGET = 256 * KIB
RTT = 0.05
PLENTY = 1 << 40  # session memory room that never binds


def window(target: int = TARGET, maximum: int = 16 * TARGET) -> ReceiveWindow:
    return ReceiveWindow(target, maximum, available=target)


def use_all(win: ReceiveWindow) -> int:
    """The peer sends the whole window; return how much it sent."""
    sent = win.available
    assert win.receive(sent)
    return sent


def test_peer_may_send_exactly_the_window() -> None:
    win = window()
    assert win.receive(TARGET)
    assert win.available == 0
    assert not win.receive(1)


def test_overrun_is_refused_and_leaves_the_window_alone() -> None:
    win = window()
    assert win.receive(1000)
    assert not win.receive(TARGET)
    assert (win.available, win.buffered) == (TARGET - 1000, 1000)


def test_credit_is_batched_until_a_quarter_of_the_window() -> None:
    win = window()
    assert win.receive(100 * KIB)
    quarter = TARGET // 4
    # Bytes handed on a little at a time: nothing to announce until a quarter is free.
    assert win.consume(quarter - 1, now=0.0, rtt=None, room=PLENTY) == 0
    assert win.consume(1, now=0.0, rtt=None, room=PLENTY) == quarter
    assert win.available == TARGET - 100 * KIB + quarter
    # The rest goes back in one announcement once it adds up.
    assert win.consume(100 * KIB - quarter, now=0.0, rtt=None, room=PLENTY) == 0
    assert win.receive(win.available)
    assert win.consume(win.buffered, now=0.0, rtt=None, room=PLENTY) == TARGET
    assert win.available == TARGET


def test_consuming_more_than_buffered_never_grants_more_than_the_target() -> None:
    win = window()
    assert win.receive(TARGET // 2)
    assert win.consume(TARGET, now=0.0, rtt=None, room=PLENTY) == TARGET // 2
    assert win.available == TARGET


def test_first_update_never_grows_the_window() -> None:
    win = window()
    use_all(win)
    assert win.consume(TARGET, now=0.0, rtt=RTT, room=PLENTY) == TARGET
    assert win.target == TARGET


def test_a_stream_held_back_by_its_window_doubles_it_each_period() -> None:
    # The peer sends a whole window every round trip: the window is the limit.
    win = window()
    now = 1.0
    use_all(win)
    win.consume(win.buffered, now=now, rtt=RTT, room=PLENTY)
    targets = []
    for _ in range(8):  # a period is one round trip
        now += RTT * 1.001  # a whole window each round trip (and a little processing)
        use_all(win)
        win.consume(win.buffered, now=now, rtt=RTT, room=PLENTY)
        targets.append(round(win.target / TARGET))
    assert targets == [2, 4, 8, 16, 16, 16, 16, 16]
    assert win.available == win.target


def test_a_stream_using_under_half_its_window_per_round_trip_keeps_it() -> None:
    win = window()
    now = 0.0
    for _ in range(40):
        win.receive(TARGET // 2)
        now += RTT  # half a window per round trip: the link or the consumer is the limit
        win.consume(TARGET // 2, now=now, rtt=RTT, room=PLENTY)
    assert win.target == TARGET


def test_a_burst_is_not_taken_for_a_pace() -> None:
    # On a short path a whole window can be handed on within microseconds, in one burst, while
    # the stream's pace is far below what the window allows: no growth (no extra queueing).
    win, rtt = window(), 0.0002
    now = 0.0
    for _ in range(20):
        use_all(win)
        win.consume(win.buffered, now=now, rtt=rtt, room=PLENTY)
        now += 0.005  # 256 KiB every 5 ms: 52 MB/s, a tenth of what 256 KiB / 0.2 ms allows
    assert win.target == TARGET


def test_a_window_sized_by_the_pace_on_a_short_path() -> None:
    # 2.6 GB/s (a window every 0.1 ms) over a 0.2 ms round trip: twice the BDP is 1 MiB.
    win, rtt = window(), 0.0002
    now = 0.0
    for _ in range(400):
        use_all(win)
        win.consume(win.buffered, now=now, rtt=rtt, room=PLENTY)
        now += 0.0001 * win.target / TARGET
    assert win.target == 4 * TARGET


def test_target_stays_when_updates_are_slower_than_two_rtts() -> None:
    win = window()
    for step in range(10):
        use_all(win)
        assert win.consume(TARGET, now=step * 2.5 * RTT, rtt=RTT, room=PLENTY) == TARGET
    assert win.target == TARGET


def test_growth_is_capped_by_the_maximum() -> None:
    win = window(maximum=TARGET + TARGET // 2)
    now = 0.0
    for _ in range(10):
        use_all(win)
        win.consume(win.buffered, now=now, rtt=RTT, room=PLENTY)
        now += RTT
    assert win.target == TARGET + TARGET // 2
    assert win.available == win.target


def test_growth_is_capped_by_the_session_memory_room() -> None:
    win = window()
    use_all(win)
    win.consume(TARGET, now=0.0, rtt=RTT, room=PLENTY)  # the first period starts
    use_all(win)
    assert win.consume(TARGET, now=RTT, rtt=RTT, room=10 * KIB) == TARGET + 10 * KIB
    assert win.target == TARGET + 10 * KIB
    use_all(win)
    now = 2 * RTT
    assert win.consume(win.buffered, now=now, rtt=RTT, room=0) == TARGET + 10 * KIB
    assert win.target == TARGET + 10 * KIB


def test_window_never_grows_without_an_rtt() -> None:
    win = window()
    for _ in range(20):
        use_all(win)
        win.consume(win.buffered, now=0.0, rtt=None, room=PLENTY)
    assert win.target == TARGET


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.floats(0, 1),  # share of the available window the peer sends
            st.floats(0, 1),  # share of the buffered bytes handed on
            st.floats(0, 0.2),  # time since the previous step
            st.integers(0, 4 * TARGET),  # session memory room
        ),
        max_size=40,
    ),
    rtt=st.none() | st.floats(0.001, 0.2),
)
def test_window_bookkeeping_stays_consistent(
    steps: list[tuple[float, float, float, int]], rtt: float | None
) -> None:
    # The credit the peer holds plus what we hold for it never exceeds the target, and the
    # target moves only up, only as far as maximum and room allow.
    win = window(maximum=4 * TARGET)
    peer_window = win.available  # what the peer believes it may send
    now = 0.0
    for send_share, consume_share, dt, room in steps:
        now += dt
        sent = int(peer_window * send_share)
        assert win.receive(sent)
        peer_window -= sent
        before = win.target
        delta = win.consume(int(win.buffered * consume_share), now=now, rtt=rtt, room=room)
        peer_window += delta
        assert before <= win.target <= win.maximum
        assert win.target - before <= room
        if rtt is None:
            assert win.target == TARGET
        assert peer_window == win.available
        assert win.available + win.buffered <= win.target


def test_credit_comes_back_only_for_bytes_handed_on() -> None:
    # Two frames in a row are held, and only the first is handed on: the second still counts
    # against the window, so the credit given back is the first one's alone.
    win = ReceiveWindow(1000, 1000, available=1000)
    assert win.receive(300) and win.receive(300)
    assert win.buffered == 600
    assert win.consume(300, 0.0, None, PLENTY) == 300
    assert (win.available, win.buffered) == (700, 300)
