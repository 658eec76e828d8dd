"""Three redis-servers behind one pooled link, under steady load through the pair: round-robin
spreads the streams evenly; one server killed is ejected and then given no stream at all, while
every answer that completes is right; restarted, it is taken back once its health checks pass.
Bounded: a few seconds of load per phase, every wait with a deadline."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from tests.integration.conftest import Processes
from tests.integration.support import Started, require_programs
from tests.reliability.redistraffic import Tally, steady

PHASE = 2.0  # seconds of load per phase


def start_redis(processes: Processes, port: int, wait_for_port: Callable[..., None]) -> Started:
    argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
    process = processes.start("redis-server", [*argv, "--appendonly", "no"])
    wait_for_port("127.0.0.1", port, alive=process.alive)
    return process


def targets(metrics_port: int) -> dict[str, dict[str, Any]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/status", timeout=5) as answer:
        status = json.load(answer)
    [row] = [row for row in status["services"] if row["service"].startswith("redis")]
    return {target["target"]: target for target in row["targets"]}


def wait_for(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not {what} within {timeout:g}s"
        time.sleep(0.05)


def load(port: int, seconds: float = PHASE, meanwhile: Callable[[], None] | None = None) -> Tally:
    """Steady traffic for ``seconds``; ``meanwhile`` is done a third of the way in."""
    tally = Tally()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.call_later(seconds, stop.set)
        if meanwhile is not None:
            loop.call_later(seconds / 3, meanwhile)
        await steady(port, stop, tally, short=4, kept=2)

    asyncio.run(run())
    return tally


def test_a_killed_redis_is_ejected_then_taken_back(
    processes: Processes,
    free_port: Callable[..., int],
    wait_for_port: Callable[..., None],
    start_server: Callable[..., Any],
    start_client: Callable[..., Started],
) -> None:
    require_programs("redis-server")
    ports = [free_port() for _ in range(3)]
    redises = [start_redis(processes, port, wait_for_port) for port in ports]
    names = [f"127.0.0.1:{port}" for port in ports]
    metrics, local = free_port(), free_port()
    server = start_server(
        "redis=" + ",".join(names),
        args=[
            "--pool-strategy=redis=round-robin",
            r"--health-check=redis=send=PING\r\n,expect=+PONG,interval=0.2,timeout=0.2,rise=2,fall=1",
            f"--metrics-listen=127.0.0.1:{metrics}",
        ],
    )
    start_client(
        f"--remote=127.0.0.1:{server.port}",
        f"--expose=127.0.0.1:{local}=redis",
        listens=[("127.0.0.1", local)],
    )

    steady_state = load(local)
    assert steady_state.corrupted == [] and steady_state.failed == []
    opened = {name: targets(metrics)[name]["opened"] for name in names}
    mean = sum(opened.values()) / 3
    assert mean > 20, opened
    assert all(abs(count - mean) <= 0.2 * mean + 2 for count in opened.values()), opened

    # Killed under load: only what was open to it may fail (reset), nothing is corrupted.
    across = load(local, meanwhile=redises[1].kill)
    assert across.corrupted == []
    assert len(across.failed) + len(across.eof) <= 6, across.failed
    wait_for(lambda: targets(metrics)[names[1]]["state"] != "healthy", "ejected")
    before = targets(metrics)[names[1]]["opened"]
    without = load(local)
    after = targets(metrics)
    assert without.corrupted == [] and without.failed == [], without.failed[:3]
    assert without.completed > 20
    assert after[names[1]]["opened"] == before  # not one stream sent to the dead one
    assert after[names[1]]["state"] == "down"
    assert after[names[1]]["last_error"]

    redises[1] = start_redis(processes, ports[1], wait_for_port)
    wait_for(lambda: targets(metrics)[names[1]]["state"] == "healthy", "taken back")
    back = load(local)
    assert back.corrupted == [] and back.failed == []
    assert targets(metrics)[names[1]]["opened"] > before + 5
