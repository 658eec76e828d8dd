"""Fixtures of the worker-process tests: the end-to-end tests' fixtures, imported unchanged
(real subprocesses on loopback, each stopped by its own pid at teardown), plus the helpers of a
running program found in /proc and stopped by pid too, should a test leave one behind."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import (
    processes,
    pytest_runtest_makereport,
    redis_server,
    start_backend,
    start_client,
    start_server,
)

__all__ = [
    "children_of",
    "processes",
    "pytest_runtest_makereport",
    "redis_server",
    "start_backend",
    "start_client",
    "start_server",
    "stray_helpers",
]


def children_of(pid: int) -> list[int]:
    """The live child processes of ``pid`` (Linux /proc; skips elsewhere)."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        pytest.skip("needs Linux /proc to find a process's children")
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its ')'
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def stray_helpers() -> Iterator[list[int]]:
    """Pids a test lists here are killed at teardown if still running (by pid, never by name)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
