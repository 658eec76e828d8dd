"""How busy a process is, and the CPU priority of one busy moving bulk data.

:class:`LoadMeter` and :class:`RateMeter` average a process's CPU demand and its relayed bytes
over the last ``CPU_WINDOW``; worker processes choose by them (:mod:`tunnel.operations.workers`).

:class:`BulkPriority` lowers the priority of a process while it relays bulk data (nice +5,
a third of the weight) and restores it once the transfer has stopped. With worker processes,
bulk transfers and small requests run in different processes; on a machine whose cores are all
taken, how soon a woken process runs then depends on what it competes with, and at equal
priority a PING's process waits behind the bulk process's time slice. Lowered, the bulk
process yields at once: PING p99 beside a transfer measured 0.17-0.31 ms against 0.34-0.54 ms,
at the same transfer rate. Raising a priority again needs ``CAP_SYS_NICE`` or an ``RLIMIT_NICE``
that allows it (systemd's ``LimitNICE=20``); a process that could not restore it never lowers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import time
from collections.abc import Callable

from prometheus_client import Gauge

from tunnel.operations import metrics

CPU_WINDOW = 0.1  # seconds a process's load is averaged over
BULK_RATE = 100e6  # bytes a second relayed: bulk data
PRIORITY_STEP = 5  # how much nicer a process relaying bulk data becomes
PRIORITY_HOLD = 0.5  # seconds under a quarter of BULK_RATE before the priority comes back
CAP_SYS_NICE = 23

PRIORITY_LOWERED = Gauge(
    "ambassador_priority_lowered",
    "1 while this process relays bulk data at a lower CPU priority (nice +5)",
    ["role"], registry=metrics.REGISTRY,
)  # fmt: skip


class RateMeter:
    """How fast a count grows, averaged over about ``CPU_WINDOW`` seconds."""

    def __init__(self, count: Callable[[], float]) -> None:
        self._count = count
        self._at = time.monotonic()
        self._last = count()
        self.rate = 0.0

    def update(self, now: float) -> float:
        elapsed = now - self._at
        if elapsed >= 0.005:
            last = self._count()
            recent = (last - self._last) / elapsed
            self.rate += (recent - self.rate) * min(1.0, elapsed / CPU_WINDOW)
            self._at, self._last = now, last
        return self.rate


class LoadMeter(RateMeter):
    """How much of a core a process's event loop wanted lately, averaged over ``CPU_WINDOW``.

    Wanted is the time its main thread ran plus the time it waited, runnable, for a CPU
    (``/proc/PID/schedstat``, in nanoseconds). On a machine where every core is taken, a process
    saturated by a bulk transfer may run only 0.7 of a core, yet it wants all of it; a process
    serving many small requests wants half of one. Where schedstat is missing, the process's
    CPU clock (time run only) stands in; Linux names another process's CPU clock
    ``((~pid) << 3) | 2``.
    """

    def __init__(self, pid: int | None = None) -> None:
        self._fd: int | None = None
        with contextlib.suppress(OSError):
            self._fd = os.open(f"/proc/{'self' if pid is None else pid}/schedstat", os.O_RDONLY)
        self._clock = time.CLOCK_PROCESS_CPUTIME_ID if pid is None else ((~pid) << 3) | 2
        self._last = 0.0
        super().__init__(self._seconds)

    def _seconds(self) -> float:
        try:
            if self._fd is not None:
                ran, waited = os.pread(self._fd, 128, 0).split()[:2]
                return (int(ran) + int(waited)) / 1e9
            return time.clock_gettime(self._clock)
        except (OSError, ValueError):  # the process is gone: no more time counted
            return self._last

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def can_raise_priority(nice: int, status: str = "/proc/self/status") -> bool:
    """Whether this process may set its nice value back to ``nice`` after raising it."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NICE)
    if soft == resource.RLIM_INFINITY or soft >= 20 - nice:
        return True
    with contextlib.suppress(OSError, ValueError), open(status) as lines:
        for line in lines:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_NICE & 1)
    return False


class BulkPriority:
    """Lowers a process's CPU priority while ``bulk`` says it relays bulk data.

    ``update`` is called every few tens of milliseconds; the priority drops as soon as the rate
    reaches ``BULK_RATE`` and comes back after ``PRIORITY_HOLD`` seconds under a quarter of
    it, so that a transfer's pauses do not flip it back and forth. ``pid`` 0 is this process
    (its calling thread: the event loop's).
    """

    def __init__(self, role: str, bulk: RateMeter, pid: int = 0) -> None:
        self.bulk = bulk
        self.pid = pid
        self.base = os.getpriority(os.PRIO_PROCESS, pid)
        self.enabled = can_raise_priority(self.base)
        self.lowered = False
        self._quiet_since: float | None = None
        self._gauge = PRIORITY_LOWERED.labels(role)

    def update(self, now: float) -> None:
        rate = self.bulk.rate
        if not self.lowered:
            if rate >= BULK_RATE and self.enabled:
                self._set(self.base + PRIORITY_STEP)
            return
        if rate >= BULK_RATE / 4:
            self._quiet_since = None
        elif self._quiet_since is None:
            self._quiet_since = now
        elif now - self._quiet_since >= PRIORITY_HOLD:
            self._set(self.base)

    async def follow(self) -> None:
        """Sample ``bulk`` and update, for as long as the task runs (in a helper process)."""
        while True:
            await asyncio.sleep(CPU_WINDOW / 4)
            now = time.monotonic()
            self.bulk.update(now)
            self.update(now)

    def _set(self, nice: int) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, self.pid, nice)
        except OSError:  # not allowed after all: leave the priority alone from now on
            self.enabled = False
            return
        self.lowered = nice != self.base
        self._quiet_since = None
        self._gauge.set(1 if self.lowered else 0)
