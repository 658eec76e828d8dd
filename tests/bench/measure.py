"""The measurements of one chain: external tools (redis-benchmark, iperf3) and the asyncio loads.

Every step is bounded by a timeout and records either its figures or one line saying why it
failed; a failed step never stops the others. After each step the chain's processes are checked:
once one has exited, the remaining steps are reported as failed with that process's last lines.
"""

from __future__ import annotations

import asyncio
import csv
import functools
import io
import json
import statistics
import subprocess
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import load
from .procs import Proc, descendants, memory_kib, reset_peak_rss, tree_cpu, tree_times

GIB = 1024**3
T = TypeVar("T")


# pgbench runs (select-only): one client, eight, and eight with a new connection each transaction.
PGBENCH_RUNS = {
    "pg1_tps": ["-S", "-c", "1"],
    "pg8_tps": ["-S", "-c", "8", "-j", "2"],
    "pgC_tps": ["-S", "-C", "-c", "8", "-j", "2"],
}

PACED_RATE = "1G"  # iperf3 -b of the paced transfer beside a PING series (step 6)


@dataclass(frozen=True)
class Settings:
    ping_requests: int = 100_000
    set_requests: int = 5_000
    iperf_seconds: float = 3.0
    cpu_bytes: int = 2 * GIB  # iperf3 transfer of known size for CPU per GiB
    conns: int = 10_000
    series_seconds: float = 3.0  # PING series (idle, under bulk, with many open)
    paced_hold: bool = False  # each held connection PINGs once as it opens (see load.hold)
    wan_samples: int = 20
    wan_iperf_seconds: float = 3.0
    pgbench_seconds: float = 5.0

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            ping_requests=20_000,
            set_requests=1_000,
            iperf_seconds=1.0,
            cpu_bytes=256 * 1024**2,
            conns=2_000,
            series_seconds=1.0,
            wan_samples=8,
            wan_iperf_seconds=2.0,
            pgbench_seconds=2.0,
        )


class StepFailed(Exception):
    """A measurement produced no figure; the message says why, on one line."""


@dataclass
class Sample:
    """Figures of one chain in one round (and why the missing ones are missing)."""

    values: dict[str, float] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(values: list[float]) -> dict[str, float]:
    return {"p50": statistics.median(values) * 1e3, "p99": _quantile(values, 0.99) * 1e3}


def redis_benchmark(port: int, args: list[str], timeout: float) -> dict[str, float]:
    argv = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "--csv", *args]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise StepFailed(f"redis-benchmark did not finish within {timeout:g}s") from None
    # --csv prints a header line starting with "test", then one row per test.
    lines = [line for line in result.stdout.splitlines() if line.startswith('"')]
    rows = list(csv.DictReader(io.StringIO("\n".join(lines))))
    if not rows or not rows[0].get("rps"):
        why = result.stderr.strip() or result.stdout.strip() or f"status {result.returncode}"
        raise StepFailed(f"redis-benchmark: {why.splitlines()[-1][:200]}")
    row = rows[0]
    return {
        "rps": float(row["rps"]),
        "p50": float(row["p50_latency_ms"]),
        "p99": float(row["p99_latency_ms"]),
    }


def pgbench(port: int, args: list[str], timeout: float) -> float:
    """Transactions per second of one pgbench run against 127.0.0.1:``port``."""
    argv = ["pgbench", "-n", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", *args]
    try:
        result = subprocess.run(
            [*argv, "postgres"], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise StepFailed(f"pgbench did not finish within {timeout:g}s") from None
    for line in result.stdout.splitlines():
        if line.startswith("tps = "):
            return float(line.split()[2])
    why = result.stderr.strip() or result.stdout.strip() or f"status {result.returncode}"
    raise StepFailed(f"pgbench: {why.splitlines()[-1][:200]}")


def iperf3(
    port: int,
    *,
    seconds: float | None = None,
    nbytes: int | None = None,
    streams: int = 1,
    reverse: bool = False,
    timeout: float = 60.0,
) -> dict[str, float]:
    """One iperf3 client run; bits per second and bytes as received at the far end.

    ``reverse``: the iperf3 server sends and the client (the consumer) receives.
    """
    argv = [
        "iperf3",
        "-c",
        "127.0.0.1",
        "-p",
        str(port),
        "-J",
        "-P",
        str(streams),
        "--connect-timeout",
        "5000",
    ]
    argv += ["-n", str(nbytes)] if nbytes else ["-t", f"{seconds:g}"]
    argv += ["-R"] if reverse else []
    for attempt in range(3):
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise StepFailed(f"iperf3 did not finish within {timeout:g}s") from None
        report = _iperf_json(result.stdout)
        error = report.get("error") or (
            "" if report else f"no report ({result.stderr.strip()[:200]})"
        )
        if error and "busy" in error and attempt < 2:
            time.sleep(2)  # the server still finishing the previous test
            continue
        if error:
            raise StepFailed(f"iperf3: {error}")
        received = report["end"]["sum_received"]
        return {
            "bps": float(received["bits_per_second"]),
            "bytes": float(received["bytes"]),
            "seconds": float(received["seconds"]),
        }
    raise AssertionError("unreachable")


def _iperf_json(text: str) -> dict[str, Any]:
    try:
        report = json.loads(text)
    except ValueError:
        return {}
    return report if isinstance(report, dict) else {}


def run_async(coro: Coroutine[Any, Any, T], timeout: float) -> T:
    """Run one load to completion in a fresh event loop, bounded by ``timeout`` seconds."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(bounded())
    except TimeoutError:
        raise StepFailed(f"did not finish within {timeout:g}s") from None
    except Exception as exc:
        raise StepFailed(f"{type(exc).__name__}: {exc}") from None


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed: less of the measuring process's own time in the figures."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


class ChainRun:
    """Runs the steps against one started chain and collects a Sample."""

    def __init__(
        self,
        procs: list[Proc],
        redis_port: int,
        iperf_port: int,
        settings: Settings,
        pg_port: int | None = None,
    ) -> None:
        self.procs = procs
        self.redis = redis_port
        self.iperf = iperf_port
        self.pg = pg_port  # None: no PostgreSQL in this run
        self.s = settings
        self.sample = Sample()
        self.dead: str | None = None

    def step(self, keys: list[str], action: Callable[[], dict[str, float]]) -> None:
        if self.dead is None:
            try:
                self.sample.values.update(action())
            except StepFailed as exc:
                for key in keys:
                    self.sample.failures[key] = str(exc)
            except Exception as exc:  # a bug or surprise in one step must not end the run
                for key in keys:
                    self.sample.failures[key] = f"benchmark error: {type(exc).__name__}: {exc}"
            self._check_alive()
        if self.dead is not None:
            for key in keys:
                if key not in self.sample.values:
                    self.sample.failures.setdefault(key, self.dead)

    def _check_alive(self) -> None:
        for proc in self.procs:
            if not proc.alive():
                self.dead = (
                    f"{proc.name} exited with status {proc.popen.returncode}: {proc.log_tail(3)}"
                )
                self.sample.notes.append(self.dead)
                return

    # -- the steps -------------------------------------------------------------------------

    def throughput(self) -> None:
        s = self.s

        def ping() -> dict[str, float]:
            figures = redis_benchmark(
                self.redis,
                ["-t", "ping_inline", "-n", str(s.ping_requests), "-c", "50"],
                timeout=240,
            )
            return {
                "ping_rps": figures["rps"],
                "ping_p50_ms": figures["p50"],
                "ping_p99_ms": figures["p99"],
            }

        self.step(["ping_rps", "ping_p50_ms", "ping_p99_ms"], ping)

        def new_connections() -> dict[str, float]:
            roots = [proc.pid for proc in self.procs]
            before = tree_cpu(roots)
            rps = redis_benchmark(
                self.redis,
                ["-t", "set", "-n", str(s.set_requests), "-c", "20", "-k", "0"],
                timeout=240,
            )["rps"]
            figures = {"set_rps": rps}
            if roots:  # direct has no process of its own
                used = tree_cpu(roots) - before
                figures["set_cpu_us"] = used / s.set_requests * 1e6
            return figures

        self.step(["set_rps", "set_cpu_us"], new_connections)
        if self.pg is not None:
            seconds = s.pgbench_seconds
            for key, args in PGBENCH_RUNS.items():
                argv = [*args, "-T", f"{seconds:g}"]
                self.step([key], functools.partial(self._pgbench, key, argv, seconds + 60))
        for streams in (1, 8):
            self.step([f"iperf{streams}_gbps"], functools.partial(self._streams, streams))

    def _pgbench(self, key: str, args: list[str], timeout: float) -> dict[str, float]:
        assert self.pg is not None
        return {key: pgbench(self.pg, args, timeout)}

    def _streams(self, streams: int) -> dict[str, float]:
        seconds = self.s.iperf_seconds
        figures = iperf3(self.iperf, seconds=seconds, streams=streams, timeout=seconds + 30)
        return {f"iperf{streams}_gbps": figures["bps"] / 1e9}

    def cpu_per_gib(self) -> None:
        roots = [proc.pid for proc in self.procs]
        if not roots:
            return  # direct: no process of its own

        def measure() -> dict[str, float]:
            before, before_kernel = tree_times(roots)
            moved = iperf3(self.iperf, nbytes=self.s.cpu_bytes, timeout=180)
            after, after_kernel = tree_times(roots)
            gib = moved["bytes"] / GIB
            return {
                "cpu_s_per_gib": (after - before) / gib,
                "cpu_kernel_s_per_gib": (after_kernel - before_kernel) / gib,
            }

        self.step(["cpu_s_per_gib", "cpu_kernel_s_per_gib"], measure)

    def fairness(self) -> None:
        s = self.s
        self.step(
            ["idle_p50_ms", "idle_p99_ms"],
            lambda: _prefixed(
                "idle_",
                _ms(
                    run_async(load.ping_series(self.redis, s.series_seconds), s.series_seconds + 30)
                ),
            ),
        )

        def beside_bulk(prefix: str, rate: str | None) -> dict[str, float]:
            bulk_seconds = s.series_seconds + 2.0
            argv = [
                "iperf3",
                "-c",
                "127.0.0.1",
                "-p",
                str(self.iperf),
                "-J",
                "-t",
                f"{bulk_seconds:g}",
                "--connect-timeout",
                "5000",
                *(["-b", rate] if rate else []),
            ]
            bulk = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                time.sleep(1.0)  # let the transfer reach its pace
                series = run_async(
                    load.ping_series(self.redis, s.series_seconds), s.series_seconds + 30
                )
                out, _ = bulk.communicate(timeout=bulk_seconds + 30)
            finally:
                if bulk.poll() is None:
                    bulk.kill()
                    bulk.wait()
            figures = _prefixed(prefix, _ms(series))
            report = _iperf_json(out)
            if "end" in report:
                received = report["end"]["sum_received"]["bits_per_second"] / 1e9
                figures[f"{prefix}gbps"] = received
            return figures

        self.step(["bulk_p50_ms", "bulk_p99_ms"], lambda: beside_bulk("bulk_", None))
        # The same beside a transfer paced well below what the chain can carry: what a request
        # waits for when the processes are busy but not saturated.
        self.step(["paced_p50_ms", "paced_p99_ms"], lambda: beside_bulk("paced_", PACED_RATE))

    def many_connections(self) -> None:
        s = self.s
        trees = {proc.name: descendants([proc.pid]) for proc in self.procs}
        for pids in trees.values():
            for pid in pids:
                reset_peak_rss(pid)
        rss: dict[str, float] = {}

        async def read_memory() -> None:
            for name, pids in trees.items():
                # Processes forked since (sshd's session) are found again now.
                peak = sum(memory_kib(pid).get("VmHWM", 0) for pid in descendants(pids[:1]))
                rss[f"rss:{name}"] = peak / 1024

        def measure() -> dict[str, float]:
            result = run_async(
                load.hold(self.redis, s.conns, s.series_seconds, read_memory, paced=s.paced_hold),
                timeout=600,
            )
            figures = {
                "hold_wanted": float(result.wanted),
                "hold_opened": float(result.opened),
                "hold_pinged": float(result.pinged),
                "hold_open_s": result.open_seconds,
                **rss,
            }
            if rss:
                figures["rss_total_mib"] = sum(rss.values())
            if result.each_latencies:
                figures.update(_prefixed("hold_each_", _ms(result.each_latencies)))
            if result.loaded_latencies:
                figures.update(_prefixed("hold_", _ms(result.loaded_latencies)))
            for why, count in result.errors.most_common(3):
                self.sample.notes.append(f"{s.conns} connections: {count} x {why}")
            return figures

        self.step(["hold_pinged", "hold_p99_ms"], measure)

    def long_link(self) -> None:
        s = self.s

        def first_bytes() -> dict[str, float]:
            async def several() -> list[float]:
                return [await load.first_response(self.redis) for _ in range(s.wan_samples)]

            times = run_async(several(), timeout=20 + s.wan_samples * 5)
            return {
                "wan_ttfb_ms": statistics.median(times) * 1e3,
                "wan_ttfb_p90_ms": _quantile(times, 0.9) * 1e3,
            }

        self.step(["wan_ttfb_ms"], first_bytes)
        for key, reverse in (("wan_mbps", False), ("wan_down_mbps", True)):
            self.step([key], functools.partial(self._wan_stream, key, reverse))

    def _wan_stream(self, key: str, reverse: bool) -> dict[str, float]:
        seconds = self.s.wan_iperf_seconds
        figures = iperf3(self.iperf, seconds=seconds, reverse=reverse, timeout=seconds + 60)
        return {key: figures["bps"] / 8e6}


def _prefixed(prefix: str, figures: dict[str, float]) -> dict[str, float]:
    names = {"p50": "p50_ms", "p99": "p99_ms"}
    return {prefix + names.get(key, key): value for key, value in figures.items()}
