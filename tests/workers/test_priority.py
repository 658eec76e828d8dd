"""A process relaying bulk data lowers its CPU priority, and restores it once the data stops.

The priority changed is a real process's (a ``sleep`` child, by pid), through the real system
calls; the bytes relayed are a counter the test advances.
"""

from __future__ import annotations

import os
import resource
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.environment import missing
from tunnel.operations import metrics
from tunnel.operations.load import (
    BULK_RATE,
    PRIORITY_STEP,
    BulkPriority,
    RateMeter,
    can_raise_priority,
)

TICK = 0.025  # how often a process samples its rate


@pytest.fixture
def sleeper() -> Iterator[int]:
    child = subprocess.Popen(["sleep", "30"])
    try:
        yield child.pid
    finally:
        child.kill()
        child.wait()


def lowered_gauge(role: str) -> float | None:
    return metrics.REGISTRY.get_sample_value("ambassador_priority_lowered", {"role": role})


def test_bulk_lowers_the_priority_and_a_pause_restores_it(sleeper: int) -> None:
    if not can_raise_priority(os.getpriority(os.PRIO_PROCESS, sleeper)):
        missing("needs CAP_SYS_NICE or RLIMIT_NICE to restore a priority")
    relayed = [0]
    priority = BulkPriority("test-bulk", RateMeter(lambda: relayed[0]), pid=sleeper)
    base = priority.base

    def tick(moved: float) -> None:
        relayed[0] += int(moved * TICK)
        time.sleep(TICK)
        now = time.monotonic()
        priority.bulk.update(now)
        priority.update(now)

    for _ in range(8):  # small requests: far under the bulk rate
        tick(BULK_RATE / 50)
    assert os.getpriority(os.PRIO_PROCESS, sleeper) == base
    for _ in range(8):
        tick(BULK_RATE * 4)
    assert os.getpriority(os.PRIO_PROCESS, sleeper) == base + PRIORITY_STEP
    assert lowered_gauge("test-bulk") == 1

    # A pause shorter than the hold (the rate decays, then must stay low for 0.5 s) keeps it.
    for _ in range(4):
        tick(0)
    assert os.getpriority(os.PRIO_PROCESS, sleeper) == base + PRIORITY_STEP
    for _ in range(4):
        tick(BULK_RATE * 4)
    deadline = time.monotonic() + 3.0
    while priority.lowered and time.monotonic() < deadline:
        tick(0)
    assert os.getpriority(os.PRIO_PROCESS, sleeper) == base
    assert lowered_gauge("test-bulk") == 0


def test_without_the_right_to_restore_it_the_priority_is_never_lowered(tmp_path: Path) -> None:
    no_cap = tmp_path / "status-without"
    no_cap.write_text("Name:\tx\nCapEff:\t0000000000000000\n")
    with_cap = tmp_path / "status-with"
    with_cap.write_text(f"Name:\tx\nCapEff:\t{1 << 23:016x}\n")
    child = os.fork()
    if child == 0:  # pragma: no cover - the child answers by its exit code
        code = 1
        try:
            _, hard = resource.getrlimit(resource.RLIMIT_NICE)
            resource.setrlimit(resource.RLIMIT_NICE, (0, hard))
            relayed = [0]
            priority = BulkPriority("test-denied", RateMeter(lambda: relayed[0]))
            priority.enabled = can_raise_priority(0, str(no_cap))
            relayed[0] = int(BULK_RATE)
            time.sleep(0.05)
            priority.bulk.update(time.monotonic())
            priority.update(time.monotonic())
            if (
                not priority.enabled
                and can_raise_priority(0, str(with_cap))
                and not priority.lowered
                and os.getpriority(os.PRIO_PROCESS, 0) == priority.base
            ):
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
