"""Soak: mixed traffic through a client and two servers for a given time, under a schedule of
faults, with the processes' descriptors and memory sampled throughout.

    python -m tests.reliability.soak --seconds 1800 --out /tmp/soak

Traffic: short redis requests and kept redis connections (tests/reliability/redistraffic.py),
SHA-256-checked echoes of random sizes up to 4 MiB, and idle redis connections held open and
pinged every 10 s. Faults, one every ``--fault-every`` seconds, in turn: SIGKILL the first
server (restarted on its port 2 s later), SIGSTOP the second for 4 s, cut every connection on
the path to the first (a fault proxy), SIGTERM (drain) the first and start it again, SIGKILL
redis-server (restarted on its port 1 s later).

It prints and writes (``summary.json``, ``samples.csv``, ``memory.svg``) the transfers
completed, failed (each a reset or a refusal: the consumer was told), corrupted (wrong bytes:
must be 0), short EOFs within 15 s of a redis-server kill (its own close, passed on) and any
other short EOF (must be 0), and the slope of the client's and servers'
RSS and descriptor counts over the second half of the run. tests/reliability/test_soak.py
runs a 20 s version of it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.conftest import pick_free_port, wait_until_accepting
from tests.integration.support import BACKENDS, Processes, Started, ambassador
from tests.progress import Progress
from tests.reliability.faultproxy import FaultProxy
from tests.reliability.redistraffic import Tally, command, kept_connection, short_request
from tests.reliability.support import Transfer, echo_transfer, fd_count, rss

MIB = 1024 * 1024


@dataclass
class Sample:
    at: float
    name: str
    rss: int
    fds: int


@dataclass
class Result:
    seconds: float
    completed: int = 0
    failed: int = 0
    corrupted: int = 0
    eof_after_backend_kill: int = 0  # the backend closed: its FIN passed on, as it should be
    eof_otherwise: int = 0  # a short EOF with no backend fault to explain it: must be 0
    faults: list[str] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    corruptions: list[str] = field(default_factory=list)
    slopes: dict[str, dict[str, float]] = field(default_factory=dict)


class Rig:
    """redis-server, an echo backend, two servers (the first behind a fault proxy), a client."""

    def __init__(self, directory: Path) -> None:
        self.backend_kills: list[float] = []  # time.monotonic() of each
        self.processes = Processes(directory)
        self.redis_port = pick_free_port()
        self.redis = self._start_redis()
        echo = self.processes.start("backend-echo", [sys.executable, str(BACKENDS), "echo"])
        self.echo_port = int(echo.stdout_line())
        self.ports = [pick_free_port(), pick_free_port()]
        self.servers = [self._start_server(i) for i in range(2)]
        self.proxy = FaultProxy(self.ports[0]).start()
        self.redis_local, self.echo_local = pick_free_port(), pick_free_port()
        self.client = self.processes.start(
            "ambassador-client",
            [
                *ambassador("client"),
                f"--remote=127.0.0.1:{self.proxy.port}",
                f"--remote=127.0.0.1:{self.ports[1]}",
                f"--expose=127.0.0.1:{self.redis_local}=redis",
                f"--expose=127.0.0.1:{self.echo_local}=echo",
            ],
        )
        self.client.wait_for_stderr("tunnel up to ", 15)
        wait_until_accepting("127.0.0.1", self.redis_local)

    def _start_redis(self) -> Started:
        argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.redis_port)]
        process = self.processes.start("redis-server", [*argv, "--save", "", "--appendonly", "no"])
        wait_until_accepting("127.0.0.1", self.redis_port, alive=process.alive)
        return process

    def _start_server(self, index: int) -> Started:
        argv = [*ambassador("server"), "--listen", f"127.0.0.1:{self.ports[index]}"]
        argv += ["--link", f"redis=127.0.0.1:{self.redis_port}"]
        argv += ["--link", f"echo=127.0.0.1:{self.echo_port}", "--drain-timeout", "5"]
        process = self.processes.start(f"ambassador-server-{index}", argv)
        wait_until_accepting("127.0.0.1", self.ports[index], alive=process.alive)
        return process

    def pids(self) -> dict[str, int]:
        pids = {"client": self.client.pid}
        for index, server in enumerate(self.servers):
            if server.alive():
                pids[f"server{index}"] = server.pid
        return pids

    async def fault(self, number: int) -> str:
        kind = number % 5
        if kind == 0:
            self.servers[0].popen.kill()
            self.servers[0].popen.wait()
            await asyncio.sleep(2)
            self.servers[0] = await asyncio.to_thread(self._start_server, 0)
            return "kill server0"
        if kind == 1:
            os.kill(self.servers[1].pid, signal.SIGSTOP)
            await asyncio.sleep(4)
            os.kill(self.servers[1].pid, signal.SIGCONT)
            return "freeze server1 4s"
        if kind == 2:
            return f"cut {self.proxy.cut()} links to server0"
        if kind == 3:
            self.servers[0].popen.send_signal(signal.SIGTERM)
            await asyncio.to_thread(self.servers[0].popen.wait, 15)
            self.servers[0] = await asyncio.to_thread(self._start_server, 0)
            return "drain and restart server0"
        self.backend_kills.append(time.monotonic())
        self.redis.popen.kill()
        self.redis.popen.wait()
        await asyncio.sleep(1)
        self.redis = await asyncio.to_thread(self._start_redis)
        return "kill redis-server"

    def stop(self) -> None:
        self.proxy.stop()
        for server in self.servers:
            if server.alive():
                os.kill(server.pid, signal.SIGCONT)
        self.processes.stop_all()


async def echoes(port: int, tally: Tally, stop: asyncio.Event, rng: random.Random) -> None:
    while not stop.is_set():
        transfer = await echo_transfer(
            port, Transfer(rng.randint(1, 4 * MIB), rng.randint(0, 2**30))
        )
        if transfer.exact:
            tally.completed += 1
        elif transfer.outcome == "eof":
            tally.eof.append(time.monotonic())
        elif transfer.failed_cleanly:
            tally.failed.append(f"echo {transfer.outcome}: {transfer.error}")
        else:
            tally.corrupted.append(f"echo {transfer.outcome}: {transfer.error}")


async def held(port: int, tally: Tally, stop: asyncio.Event) -> None:
    """An idle connection, pinged every 10 s; opened again when the tunnel took it away."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as exc:
            tally.fail(exc)
            await asyncio.sleep(1)
            continue
        try:
            while not stop.is_set():
                writer.write(command(b"PING"))
                answer = await asyncio.wait_for(reader.readuntil(b"\r\n"), 15)
                if answer != b"+PONG\r\n":
                    tally.corrupted.append(f"held PING answered {answer!r}")
                tally.completed += 1
                await asyncio.sleep(10)
        except (OSError, TimeoutError) as exc:
            tally.fail(exc)
        except asyncio.IncompleteReadError as exc:
            tally.fail(exc)
            await asyncio.sleep(0.5)  # redis-server is being restarted
        finally:
            writer.close()


def slope(samples: list[Sample], name: str, what: str) -> float:
    """Least-squares slope per hour over the second half of the samples of ``name``."""
    points = [(s.at, getattr(s, what)) for s in samples if s.name == name]
    points = points[len(points) // 2 :]
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx, my = sum(p[0] for p in points) / n, sum(p[1] for p in points) / n
    var = sum((p[0] - mx) ** 2 for p in points)
    return 0.0 if not var else sum((p[0] - mx) * (p[1] - my) for p in points) / var * 3600


def svg(samples: list[Sample], path: Path) -> None:
    """RSS (MiB) and descriptors of each process over time, as two hand-drawn line charts."""
    colours = {"client": "#1f77b4", "server0": "#d62728", "server1": "#2ca02c"}
    width, height, pad = 720, 220, 40
    end = max((s.at for s in samples), default=1.0) or 1.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{2 * height}">']
    for row, (what, label, scale) in enumerate((("rss", "RSS MiB", MIB), ("fds", "fds", 1))):
        top = row * height
        values = [getattr(s, what) / scale for s in samples] or [1.0]
        high = max(values) * 1.1 or 1.0
        parts.append(f'<text x="{pad}" y="{top + 15}" font-size="12">{label} (max {high:.0f}) '
                     f"over {end:.0f} s</text>")  # fmt: skip
        parts.append(f'<rect x="{pad}" y="{top + 20}" width="{width - 2 * pad}" '
                     f'height="{height - 50}" fill="none" stroke="#999"/>')  # fmt: skip
        for name, colour in colours.items():
            points = [
                f"{pad + s.at / end * (width - 2 * pad):.1f},"
                f"{top + height - 30 - getattr(s, what) / scale / high * (height - 50):.1f}"
                for s in samples
                if s.name == name
            ]
            if points:
                parts.append(
                    f'<polyline fill="none" stroke="{colour}" points="{" ".join(points)}"/>'
                )
        for index, (name, colour) in enumerate(colours.items()):
            parts.append(f'<text x="{pad + 10 + 90 * index}" y="{top + height - 8}" '
                         f'font-size="11" fill="{colour}">{name}</text>')  # fmt: skip
    parts.append("</svg>")
    path.write_text("\n".join(parts))


async def soak(
    seconds: float,
    fault_every: float,
    out: Path,
    log: Callable[[str], None],
    progress: Progress | None = None,
) -> Result:
    out.mkdir(parents=True, exist_ok=True)
    rig = await asyncio.to_thread(Rig, out)
    tally, stop, rng = Tally(), asyncio.Event(), random.Random(7)
    samples: list[Sample] = []
    result = Result(seconds)
    start = time.monotonic()

    async def sampler() -> None:
        while not stop.is_set():
            at = time.monotonic() - start
            for name, pid in rig.pids().items():
                with contextlib.suppress(OSError):  # it was just restarted
                    samples.append(Sample(at, name, rss(pid), fd_count(pid)))
            if progress is not None:
                progress.phase(
                    f"{tally.completed:,} completed, {len(tally.failed):,} failed, "
                    f"{len(tally.corrupted)} corrupted, {len(result.faults)} faults"
                )
            await asyncio.sleep(max(1.0, seconds / 200))

    async def faults() -> None:
        number = 0
        while not stop.is_set():
            await asyncio.sleep(fault_every)
            if stop.is_set():
                break
            done = await rig.fault(number)
            result.faults.append(f"{time.monotonic() - start:.0f}s {done}")
            log(f"{time.monotonic() - start:6.0f}s {done}; {tally.completed} completed, "
                f"{len(tally.failed)} failed, {len(tally.corrupted)} corrupted")  # fmt: skip
            number += 1

    async def shorts() -> None:
        while not stop.is_set():
            await short_request(rig.redis_local, tally, size=rng.randint(1, 4096))

    async def keeps() -> None:
        while not stop.is_set():
            await kept_connection(rig.redis_local, tally, rng.uniform(0.2, 3.0))

    tasks = [
        asyncio.ensure_future(coroutine)
        for coroutine in (
            sampler(),
            faults(),
            *(shorts() for _ in range(4)),
            *(keeps() for _ in range(2)),
            *(echoes(rig.echo_local, tally, stop, random.Random(seed)) for seed in range(2)),
            *(held(rig.redis_local, tally, stop) for _ in range(20)),
        )
    ]
    try:
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 90)
    finally:
        await asyncio.to_thread(rig.stop)
    result.completed, result.failed = tally.completed, len(tally.failed)
    result.corrupted, result.corruptions = len(tally.corrupted), tally.corrupted[:20]
    # A held connection finds its backend gone at its next ping, up to 10 s later; the kill
    # and restart themselves take a second or two.
    explained = [t for t in tally.eof if any(0 <= t - k <= 15 for k in rig.backend_kills)]
    result.eof_after_backend_kill = len(explained)
    result.eof_otherwise = len(tally.eof) - len(explained)
    for failure in tally.failed:
        kind = failure.split("(")[0].split(":")[0]
        result.failures[kind] = result.failures.get(kind, 0) + 1
    for name in ("client", "server0", "server1"):
        result.slopes[name] = {
            "rss_mib_per_hour": round(slope(samples, name, "rss") / MIB, 2),
            "fds_per_hour": round(slope(samples, name, "fds"), 2),
            "rss_mib_last": round(max([s.rss for s in samples if s.name == name][-3:]) / MIB, 1),
            "fds_last": max([s.fds for s in samples if s.name == name][-3:]),
        }
    (out / "summary.json").write_text(json.dumps(asdict(result), indent=2))
    with (out / "samples.csv").open("w") as csv:
        csv.write("seconds,process,rss_bytes,fds\n")
        for s in samples:
            csv.write(f"{s.at:.1f},{s.name},{s.rss},{s.fds}\n")
    svg(samples, out / "memory.svg")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1800)
    parser.add_argument("--fault-every", type=float, default=20)
    parser.add_argument("--out", type=Path, default=Path("soak-out"))
    args = parser.parse_args()
    # On a terminal, one status line (counts, time left); in a log or under CI, only the lines.
    progress = Progress([("mixed traffic under faults", "soak")], expect={"soak": args.seconds})
    progress.next()

    def log(line: str) -> None:
        progress.clear()
        print(line, flush=True)
        progress.draw()

    result = asyncio.run(soak(args.seconds, args.fault_every, args.out, log, progress))
    progress.close()
    print(json.dumps(asdict(result), indent=2))
    sys.exit(1 if result.corrupted or result.eof_otherwise else 0)


if __name__ == "__main__":
    main()
