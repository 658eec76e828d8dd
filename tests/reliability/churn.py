"""Churn: many short streams (connect, one request, close) through a client and a server,
with both processes' memory and descriptors sampled throughout.

    python -m tests.reliability.churn --streams 1000000 --seconds 600 --out /tmp/churn

Each stream is a new consumer connection to the client's local port for redis-server: it sends
``PING``, reads ``+PONG`` and closes; ``--concurrency`` of them run at once. The run ends after
``--streams`` streams or ``--seconds`` seconds, whichever comes first. It prints and writes
(``summary.json``, ``samples.csv``) the streams completed, failed (by kind) and wrong answers
(must be 0), the rate, and for the client and the server the RSS and descriptors at start and
end and their least-squares slope over the second half, per hour and per million streams, and
when the run stopped short of ``--streams``, the time the rest would take at the rate measured.
tests/reliability/test_churn.py runs a short version of it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.conftest import pick_free_port, wait_until_accepting
from tests.integration.support import Processes, ambassador
from tests.reliability.support import fd_count, rss

MIB = 1024 * 1024


@dataclass
class Sample:
    at: float
    streams: int  # completed so far
    name: str
    rss: int
    fds: int


@dataclass
class Result:
    asked: int
    seconds: float = 0.0
    completed: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    wrong: int = 0
    per_second: float = 0.0
    extrapolated_seconds: float | None = None  # for all of ``asked``, at the rate measured
    processes: dict[str, dict[str, float]] = field(default_factory=dict)


class OneRequest(asyncio.Protocol):
    """Sends PING once connected, and settles ``done`` with the answer or why there is none."""

    def __init__(self, done: asyncio.Future[bytes | str]) -> None:
        self.done = done
        self.answer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(b"PING\r\n")

    def data_received(self, data: bytes) -> None:
        self.answer += data
        if b"\r\n" in self.answer and not self.done.done():
            self.done.set_result(self.answer)
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(type(exc).__name__ if exc is not None else "eof")


class Pair:
    """redis-server, one ambassador-server linking it, one client exposing it."""

    def __init__(self, directory: Path, client_args: tuple[str, ...] = ()) -> None:
        self.processes = Processes(directory)
        redis_port, tunnel_port = pick_free_port(), pick_free_port()
        self.local = pick_free_port()
        redis = self.processes.start(
            "redis-server",
            ["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port),
             "--save", "", "--appendonly", "no"],
        )  # fmt: skip
        wait_until_accepting("127.0.0.1", redis_port, alive=redis.alive)
        self.server = self.processes.start(
            "ambassador-server",
            [*ambassador("server"), "--listen", f"127.0.0.1:{tunnel_port}",
             "--link", f"redis=127.0.0.1:{redis_port}"],
        )  # fmt: skip
        wait_until_accepting("127.0.0.1", tunnel_port, alive=self.server.alive)
        self.client = self.processes.start(
            "ambassador-client",
            [*ambassador("client"), f"--remote=127.0.0.1:{tunnel_port}",
             f"--expose=127.0.0.1:{self.local}=redis", *client_args],
        )  # fmt: skip
        self.client.wait_for_stderr("tunnel up to ", 15)
        wait_until_accepting("127.0.0.1", self.local, alive=self.client.alive)

    def pids(self) -> dict[str, int]:
        return {"client": self.client.pid, "server": self.server.pid}


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of the second half of ``points``."""
    points = points[len(points) // 2 :]
    n = len(points)
    if n < 2:
        return 0.0
    mx, my = sum(p[0] for p in points) / n, sum(p[1] for p in points) / n
    var = sum((p[0] - mx) ** 2 for p in points)
    return 0.0 if not var else sum((p[0] - mx) * (p[1] - my) for p in points) / var


async def churn(
    streams: int,
    seconds: float,
    concurrency: int,
    out: Path,
    log: Callable[[str], None] = print,
) -> Result:
    out.mkdir(parents=True, exist_ok=True)
    pair = await asyncio.to_thread(Pair, out)
    loop = asyncio.get_running_loop()
    result = Result(streams)
    samples: list[Sample] = []
    started = time.monotonic()
    deadline = started + seconds
    issued = 0
    stop = asyncio.Event()

    def sample() -> None:
        at = time.monotonic() - started
        for name, pid in pair.pids().items():
            with contextlib.suppress(OSError):
                samples.append(Sample(at, result.completed, name, rss(pid), fd_count(pid)))

    async def sampler() -> None:
        every = max(1.0, seconds / 300)
        while not stop.is_set():
            sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
            if samples and len(samples) % 40 == 0:
                log(f"{time.monotonic() - started:6.0f}s {result.completed} streams, "
                    f"client {samples[-2].rss / MIB:.1f} MiB {samples[-2].fds} fds, "
                    f"server {samples[-1].rss / MIB:.1f} MiB {samples[-1].fds} fds")  # fmt: skip

    async def worker() -> None:
        nonlocal issued
        while issued < streams and time.monotonic() < deadline:
            issued += 1
            done: asyncio.Future[bytes | str] = loop.create_future()
            try:
                protocol = functools.partial(OneRequest, done)
                await loop.create_connection(protocol, "127.0.0.1", pair.local)
                answer = await asyncio.wait_for(done, 15)
            except (OSError, TimeoutError) as exc:
                answer = type(exc).__name__
            if answer == b"+PONG\r\n":
                result.completed += 1
            elif isinstance(answer, bytes):
                result.wrong += 1
            else:
                result.failed[answer] = result.failed.get(answer, 0) + 1

    watching = asyncio.ensure_future(sampler())
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.seconds = time.monotonic() - started
        await asyncio.sleep(1.0)  # the last streams' descriptors close on both sides
        stop.set()
        await watching
        sample()
    finally:
        stop.set()
        await asyncio.to_thread(pair.processes.stop_all)
    result.per_second = round(result.completed / result.seconds, 1) if result.seconds else 0.0
    if result.completed < streams and result.per_second:
        result.extrapolated_seconds = round(streams / result.per_second)
    for name in ("client", "server"):
        mine = [s for s in samples if s.name == name]
        by_time = [(s.at, float(s.rss)) for s in mine]
        by_streams = [(float(s.streams), float(s.rss)) for s in mine]
        fds_by_time = [(s.at, float(s.fds)) for s in mine]
        fds_by_streams = [(float(s.streams), float(s.fds)) for s in mine]
        result.processes[name] = {
            "rss_mib_start": round(mine[0].rss / MIB, 1),
            "rss_mib_end": round(mine[-1].rss / MIB, 1),
            "rss_mib_max": round(max(s.rss for s in mine) / MIB, 1),
            "rss_mib_per_hour": round(slope(by_time) * 3600 / MIB, 2),
            "rss_mib_per_million_streams": round(slope(by_streams) * 1e6 / MIB, 2),
            "fds_start": mine[0].fds,
            "fds_end": mine[-1].fds,
            "fds_max": max(s.fds for s in mine),
            "fds_per_hour": round(slope(fds_by_time) * 3600, 2),
            "fds_per_million_streams": round(slope(fds_by_streams) * 1e6, 2),
        }
    (out / "summary.json").write_text(json.dumps(asdict(result), indent=2))
    with (out / "samples.csv").open("w") as csv:
        csv.write("seconds,streams,process,rss_bytes,fds\n")
        for s in samples:
            csv.write(f"{s.at:.1f},{s.streams},{s.name},{s.rss},{s.fds}\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("churn-out"))
    args = parser.parse_args()
    result = asyncio.run(churn(args.streams, args.seconds, args.concurrency, args.out))
    print(json.dumps(asdict(result), indent=2))
    sys.exit(1 if result.wrong or result.failed else 0)


if __name__ == "__main__":
    main()
