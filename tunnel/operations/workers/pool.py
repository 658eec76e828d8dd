"""The main process's helpers: started, chosen between, scraped, stopped, restarted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge

from tunnel.errors import ConfigError
from tunnel.operations import metrics
from tunnel.operations.load import BULK_RATE, CPU_WINDOW, BulkPriority, LoadMeter, RateMeter
from tunnel.operations.reload import Reloader
from tunnel.operations.workers.channel import MAX_MESSAGE
from tunnel.settings.cli import WORKER_FD_ENV, WORKER_INDEX_ENV
from tunnel.settings.wording import counted

log = logging.getLogger("ambassador.workers")

RESTART_DELAY = 1.0  # seconds before a helper that exited is started again
MAX_RESTART_DELAY = 30.0  # ... doubling up to this while it keeps exiting sooner than this
BUSY = 0.5  # of a core wanted (and BULK_RATE relayed): a client passes new connections on

WORKERS_UP = Gauge(
    "ambassador_workers", "Worker processes running, the main one included", ["role"],
    registry=metrics.REGISTRY,
)  # fmt: skip
WORKER_EXITS = Counter(
    "ambassador_worker_exits", "Helper processes that exited unasked, by how",
    ["role", "reason"], registry=metrics.REGISTRY,
)  # fmt: skip


@dataclass(eq=False)
class Helper:
    """The main process's side of one helper: its process, channel, load and count."""

    index: int
    channel: socket.socket
    process: asyncio.subprocess.Process
    meter: LoadMeter
    held: int = 0  # connections handed over and not yet reported ended
    delay: float = RESTART_DELAY  # before the last restart
    born: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def hand_over(self, fd: int, tag: bytes) -> bool:
        """Send a connection's descriptor; False (keep it) if the channel is full or gone."""
        try:
            socket.send_fds(self.channel, [b"C" + tag], [fd])
        except OSError:
            return False
        self.held += 1
        return True

    async def report(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The helper's metrics and status, or None when it does not answer in time."""
        loop = asyncio.get_running_loop()
        async with self.lock:
            try:
                async with asyncio.timeout(timeout):
                    await loop.sock_sendall(self.channel, b"?")
                    parts: list[bytes] = []
                    while True:
                        chunk = await loop.sock_recv(self.channel, MAX_MESSAGE + 1)
                        if not chunk:
                            return None
                        if chunk == b"-":
                            self.held = max(0, self.held - 1)
                            continue
                        parts.append(chunk[1:])
                        if chunk[:1] == b".":
                            break
            except (OSError, TimeoutError):
                return None
        try:
            result: dict[str, Any] = json.loads(b"".join(parts))
        except ValueError:  # the tail of an earlier report that timed out
            return None
        return result

    def drain_notices(self) -> None:
        """Count the ``-`` notices waiting on the channel (between reports)."""
        if self.lock.locked():
            return
        while True:
            try:
                chunk = self.channel.recv(MAX_MESSAGE + 1)
            except OSError:
                return
            if chunk == b"-":
                self.held = max(0, self.held - 1)
            elif not chunk:
                return


class WorkerPool:
    """The main process's helpers: started, chosen between, scraped, stopped, restarted."""

    def __init__(self, role: str, command: list[str], count: int) -> None:
        self.role = role
        self.command = command  # how to start the program again, with the same arguments
        self.count = count  # helpers wanted
        self.helpers: list[Helper] = []
        self.me = LoadMeter()
        self.bulk = RateMeter(metrics.relayed_bytes)
        self.priority = BulkPriority(role, self.bulk)
        self._stopping = False
        self._watchers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        for index in range(1, self.count + 1):
            try:
                self.helpers.append(await self._spawn(index))
            except OSError as exc:
                await self.stop(5.0)
                raise ConfigError(f"cannot start helper process {index}: {exc}") from None
        WORKERS_UP.labels(self.role).set(len(self.helpers) + 1)
        started = counted(len(self.helpers), "helper process", "helper processes")
        log.info("%s started: pids %s", started,
                 ", ".join(str(h.process.pid) for h in self.helpers))  # fmt: skip
        if not self.priority.enabled:
            log.info("bulk transfers keep their CPU priority: lowering it could not be undone "
                     "without CAP_SYS_NICE or RLIMIT_NICE 20 (systemd: LimitNICE=20)")  # fmt: skip
        self.watch_load()

    async def _spawn(self, index: int, delay: float = RESTART_DELAY / 2) -> Helper:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ, **{WORKER_FD_ENV: str(theirs.fileno()),
                                  WORKER_INDEX_ENV: str(index)})  # fmt: skip
        try:
            process = await asyncio.create_subprocess_exec(
                *self.command,
                pass_fds=(theirs.fileno(),),
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        mine.setblocking(False)
        helper = Helper(index, mine, process, LoadMeter(process.pid), delay=delay)
        watcher = asyncio.get_running_loop().create_task(self._watch(helper))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return helper

    async def _watch(self, helper: Helper) -> None:
        code = await helper.process.wait()
        if self._stopping:
            return
        # One that keeps failing at once (a broken environment) is restarted ever more slowly.
        lived = time.monotonic() - helper.born
        delay = RESTART_DELAY if lived > MAX_RESTART_DELAY else min(
            helper.delay * 2, MAX_RESTART_DELAY)  # fmt: skip
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        log.warning("helper %d (pid %d) stopped with %s; starting it again in %gs",
                    helper.index, helper.process.pid, how, delay)  # fmt: skip
        WORKER_EXITS.labels(self.role, "signal" if code < 0 else "exit").inc()
        helper.channel.close()
        helper.meter.close()
        await asyncio.sleep(delay)
        if self._stopping:
            return
        try:
            fresh = await self._spawn(helper.index, delay)
        except OSError as exc:
            log.error("cannot start helper %d again: %s; going on without it", helper.index, exc)
            return
        self.helpers[self.helpers.index(helper)] = fresh
        log.info("helper %d started again: pid %d", fresh.index, fresh.process.pid)

    def alive(self) -> list[Helper]:
        return [h for h in self.helpers if h.process.returncode is None]

    def least_held(self, mine: int) -> Helper | None:
        """For long-lived connections: the helper holding the fewest, None if we hold fewer."""
        best: Helper | None = None
        fewest = mine
        for helper in self.alive():
            helper.drain_notices()
            if helper.held < fewest:
                best, fewest = helper, helper.held
        return best

    def watch_load(self) -> None:
        """Sample every process's load while the pool runs, so that :meth:`least_busy` sees
        the last 0.1 s even after a quiet minute (a sample is one small read per process), and
        this process's relayed bytes, for its CPU priority
        (:class:`tunnel.operations.load.BulkPriority`)."""
        task = asyncio.get_running_loop().create_task(self._sample_load())
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _sample_load(self) -> None:
        while True:
            await asyncio.sleep(CPU_WINDOW / 4)
            now = time.monotonic()
            self.me.update(now)
            self.bulk.update(now)
            self.priority.update(now)
            for helper in self.alive():
                helper.meter.update(now)

    def least_busy(self, busy: float = BUSY, margin: float = 0.25) -> Helper | None:
        """For new consumer connections: None (keep it here) unless this process is busy with
        bulk data (it wants at least ``busy`` of a core and relays ``BULK_RATE`` or more), and
        then the helper wanting least, if that is at least ``margin`` of a core less.

        Many small connections keep a process as busy, on a machine whose cores are all taken,
        but each is answered within a loop turn, and passing one on costs more than serving
        it; beside a bulk transfer, a small request waits for reads and writes of 256 KiB.
        """
        mine = self.me.rate  # kept current by watch_load(): no I/O on the accept path
        if mine < busy or self.bulk.rate < BULK_RATE:
            return None
        busy = mine - margin
        best: Helper | None = None
        for helper in self.alive():
            if helper.meter.rate < busy:
                best, busy = helper, helper.meter.rate
        return best

    def signal_all(self, sig: int) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL):
            self._stopping = True  # they are meant to exit now: no restart
        for helper in self.alive():
            with contextlib.suppress(ProcessLookupError):
                helper.process.send_signal(sig)

    async def reports(self) -> list[tuple[int, dict[str, Any]]]:
        found = await asyncio.gather(*(h.report() for h in self.alive()))
        return [(h.index, r) for h, r in zip(self.alive(), found, strict=False) if r is not None]

    async def stop(self, timeout: float) -> None:
        """SIGTERM every helper (each drains as it would alone); SIGKILL what is left."""
        if not self._stopping:
            self.signal_all(signal.SIGTERM)
        for watcher in list(self._watchers):
            watcher.cancel()
        waits = [h.process.wait() for h in self.helpers if h.process.returncode is None]
        if waits:
            _, pending = await asyncio.wait(
                [asyncio.ensure_future(w) for w in waits], timeout=timeout + 5
            )
            if pending:
                self.signal_all(signal.SIGKILL)
                await asyncio.wait(pending, timeout=5)
        for helper in self.helpers:
            helper.channel.close()
            helper.meter.close()
        WORKERS_UP.labels(self.role).set(1)


def reload_all(reloading: Reloader[Any], pool: WorkerPool) -> None:
    """SIGHUP in a main process: reload it, then pass the signal on to its helpers."""
    reloading.reload("SIGHUP")
    pool.signal_all(signal.SIGHUP)


def helper_command(module: str, argv: list[str]) -> list[str]:
    """How the main process starts a helper: the same program, the same arguments."""
    return [sys.executable, "-m", module, *argv]
