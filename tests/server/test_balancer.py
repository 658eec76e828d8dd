"""The pool's decisions, in memory with a made-up clock: which target a stream gets, ejection
and its backoff, health-check thresholds, resolved addresses replacing a name."""

from __future__ import annotations

from collections import Counter

from server.balancer import MAX_BACKOFF, Balancer
from tunnel.settings.pooling import HealthCheck

A, B, C = "a:1", "b:1", "c:1"


def test_failover_takes_the_first_target_that_is_not_ejected() -> None:
    pool = Balancer("redis", [A, B, C])
    assert pool.choose(0.0) == A
    pool.dial_failed(A, "a:1 refused the connection", 0.0)
    assert pool.choose(0.5) == B
    assert pool.choose(1.5) == A  # its backoff is over: tried again


def test_round_robin_spreads_evenly_and_skips_ejected_targets() -> None:
    pool = Balancer("redis", [A, B, C], "round-robin")
    assert Counter(pool.choose(0.0) for _ in range(300)) == {A: 100, B: 100, C: 100}
    pool.dial_failed(B, "refused", 0.0)
    assert Counter(pool.choose(0.1) for _ in range(100)) == {A: 50, C: 50}


def test_least_streams_picks_the_target_with_fewest_open() -> None:
    pool = Balancer("redis", [A, B], "least-streams")
    pool.opened(A)
    assert pool.choose(0.0) == B
    pool.opened(B)
    pool.opened(B)
    pool.closed(A)
    assert pool.choose(0.0) == A


def test_backoff_doubles_with_each_failure_and_is_bounded() -> None:
    pool = Balancer("redis", [A, B])
    ends = []
    for _ in range(10):
        pool.dial_failed(A, "refused", 100.0)
        ends.append(pool.targets[0].ejected_until - 100.0)
    assert ends[:4] == [1.0, 2.0, 4.0, 8.0]
    assert max(ends) == MAX_BACKOFF
    pool.opened(A)  # a dial that worked ends it
    assert pool.choose(100.0) == A


def test_no_target_left_says_why_in_one_line() -> None:
    pool = Balancer("redis", [A, B])
    pool.dial_failed(A, "a:1 refused the connection", 0.0)
    why = pool.choose(0.0, tried=[B])
    assert isinstance(why, str)
    assert why == (
        "no target of redis is available (a:1 refused the connection, ejected for 1s more; "
        "b:1 failed)"
    )


def test_health_checks_take_a_target_down_after_fall_and_back_after_rise() -> None:
    pool = Balancer("redis", [A, B], checks=HealthCheck(rise=2, fall=3))
    for _ in range(2):
        assert not pool.checked(A, "timed out")
    assert pool.choose(0.0) == A
    assert pool.checked(A, "timed out")  # the third: down
    assert pool.choose(0.0) == B
    assert not pool.checked(A, None)
    assert pool.choose(0.0) == B
    assert pool.checked(A, None)  # the second pass in a row: back
    assert pool.choose(0.0) == A


def test_a_passing_check_ends_a_passive_ejection() -> None:
    pool = Balancer("redis", [A, B], checks=HealthCheck())
    pool.dial_failed(A, "refused", 0.0)
    assert pool.choose(0.0) == B
    pool.checked(A, None)
    assert pool.choose(0.0) == A


def test_new_addresses_keep_the_state_of_those_that_remain() -> None:
    pool = Balancer("redis", ["name:1", C])
    pool.replace(["name:1"], [A, B])
    assert [t.key for t in pool.targets] == [A, B, C]
    pool.dial_failed(A, "refused", 0.0)
    pool.replace([A, B], [B, A, C])  # C is already a target of its own: not twice
    assert [t.key for t in pool.targets] == [B, A, C]
    assert pool.targets[1].state(0.5) == "ejected"
