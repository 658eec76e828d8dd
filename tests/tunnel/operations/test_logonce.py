"""logonce: a repeating fault is one line, and the throttle's table stays bounded."""

from __future__ import annotations

import logging

import pytest

from tunnel.operations.logonce import Throttled


def test_repeats_of_one_key_are_one_line(caplog: pytest.LogCaptureFixture) -> None:
    throttled = Throttled(logging.getLogger("test.logonce"), interval=60.0)
    with caplog.at_level(logging.WARNING, "test.logonce"):
        for _ in range(100):
            throttled.warning("refused:unknown", "refused")
    assert len(caplog.records) == 1


def test_the_table_forgets_the_least_recently_seen_keys() -> None:
    throttled = Throttled(logging.getLogger("test.logonce.quiet"), max_keys=50)
    logging.getLogger("test.logonce.quiet").disabled = True
    for i in range(10_000):
        throttled.warning(f"key-{i}", "fault %d", i)
    assert len(throttled) == 50
