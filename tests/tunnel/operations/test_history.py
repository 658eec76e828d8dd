"""The status page's history: bounded, rates from the last two samples, time passed in."""

from __future__ import annotations

from typing import Any

from tunnel.operations.history import History


def status(
    bytes_in: int, bytes_out: int, streams: int = 0, rtt: float | None = 2.0
) -> dict[str, Any]:
    return {
        "remotes": [{"peer": "a:1", "bytes_in": bytes_in, "bytes_out": bytes_out, "rtt_ms": rtt}],
        "services": [{"service": "redis", "bytes_in": bytes_in, "bytes_out": bytes_out,
                      "open_streams": streams}],
    }  # fmt: skip


def test_rates_come_from_the_last_two_samples() -> None:
    history = History()
    history.record(status(0, 0), now=10.0)
    assert history.annotate(status(0, 0))["services"][0]["rate_in"] is None  # one sample only
    history.record(status(2000, 500, streams=3), now=12.0)
    annotated = history.annotate(status(2000, 500))
    assert annotated["services"][0]["rate_in"] == 1000.0
    assert annotated["services"][0]["rate_out"] == 250.0
    assert annotated["remotes"][0]["rate_in"] == 1000.0
    series = history.series(now=13.0)
    assert series["age"] == [3.0, 1.0]
    assert series["rate_in"] == [0.0, 1000.0]
    assert series["streams"] == [0, 3]
    assert series["rtt_ms"] == [2.0, 2.0]


def test_a_count_that_went_down_has_no_rate() -> None:
    history = History()
    history.record(status(5000, 5000), now=0.0)
    history.record(status(10, 10), now=1.0)  # a new session under the same name
    assert history.annotate(status(10, 10))["remotes"][0]["rate_in"] is None
    assert history.series(now=1.0)["rate_in"][-1] == 0.0


def test_memory_is_bounded_by_the_capacity() -> None:
    history = History(capacity=5)
    for second in range(100):
        history.record(status(second * 100, 0, rtt=None), now=float(second))
    series = history.series(now=99.0)
    assert len(series["age"]) == 5
    assert series["age"] == [4.0, 3.0, 2.0, 1.0, 0.0]
    assert series["rate_in"] == [100.0] * 5
    assert series["rtt_ms"] == [None] * 5
