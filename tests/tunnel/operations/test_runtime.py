"""Tests for tunnel.operations.runtime: the process settings a role runs with."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from tunnel.operations.runtime import keep_heap

# Reads of a bulk transfer, as the client sees them: buffers of up to 256 KiB, a few of them
# queued at a time, each freed once sent. Prints how many pages the process faulted in.
CHURN = """
import collections, random, resource, sys
from tunnel.operations.runtime import keep_heap
if sys.argv[1] == "keep":
    assert keep_heap()
rng = random.Random(7)
queued = collections.deque()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(2000):
    queued.append(b"x" * rng.randrange(16 * 1024, 256 * 1024))
    if len(queued) > 3:
        queued.popleft()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", CHURN, mode], capture_output=True, text=True, timeout=60, check=True
    )
    return int(done.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_read_buffers_are_reused_instead_of_faulted_in_again() -> None:
    assert keep_heap()
    default, kept = page_faults("default"), page_faults("keep")
    # 2,000 buffers of 4 to 64 pages: by default most of their pages fault in afresh.
    assert default > 5_000
    assert kept < default // 10
