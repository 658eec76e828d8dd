"""Active-active (``--sessions all``): a client holding sessions to three servers at once
carries steady redis traffic and SHA-checked echoes while each server in turn is killed,
restarted, frozen (SIGSTOP) and thawed.

What a consumer may see: a reset of a request that was in flight on the server at the moment it
was killed, or that went to a frozen server before the client could know it was frozen (the
liveness probe finds it within about 2 s, tests/reliability/test_failover.py). No consumer is
ever refused for want of a session (``link_down``), none that connected outside those windows
fails, and every completed transfer is exact.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import wait_until_accepting
from tests.integration.support import BACKENDS, Processes, Started, ambassador, require_programs
from tests.reliability.redistraffic import Corrupted, set_get
from tests.reliability.support import Transfer, echo_transfer, log_count, run, wait_for_log

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

KILL_WINDOW = 0.5  # a request started this soon after a kill may still be routed to it
FREEZE_WINDOW = 3.0  # the liveness probe's bound (2.2 s measured) with a margin for load


@dataclass
class Attempt:
    kind: str
    started: float
    ended: float = 0.0
    outcome: str = ""  # complete | reset | refused | eof | corrupted | timeout
    error: str = ""


@dataclass
class Rig:
    processes: Processes
    free_port: Callable[..., int]
    redis_port: int = 0
    echo_port: int = 0
    ports: list[int] = field(default_factory=list)
    servers: list[Started] = field(default_factory=list)
    client: Started | None = None
    redis_local: int = 0
    echo_local: int = 0
    metrics: int = 0

    def start_server(self, index: int, links: tuple[str, ...] = ("redis", "echo")) -> Started:
        argv = [*ambassador("server"), "--listen", f"127.0.0.1:{self.ports[index]}"]
        ports = {"redis": self.redis_port, "echo": self.echo_port}
        for name in links:
            argv += ["--link", f"{name}=127.0.0.1:{ports[name]}"]
        server = self.processes.start(f"ambassador-server-{index}", argv)
        wait_until_accepting("127.0.0.1", self.ports[index], alive=server.alive)
        return server

    def status(self) -> dict[str, object]:
        url = f"http://127.0.0.1:{self.metrics}/status"
        with urllib.request.urlopen(url, timeout=5) as answer:
            result: dict[str, object] = json.loads(answer.read())
        return result

    def metric_lines(self, name: str) -> list[str]:
        url = f"http://127.0.0.1:{self.metrics}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            text = answer.read().decode()
        return [line for line in text.splitlines() if line.startswith(name)]


@pytest.fixture
def rig(processes: Processes, free_port: Callable[..., int]) -> Iterator[Callable[..., Rig]]:
    def make(
        servers: int = 3, links: tuple[tuple[str, ...], ...] = (), args: tuple[str, ...] = ()
    ) -> Rig:
        require_programs("redis-server")
        rig = Rig(processes, free_port)
        rig.redis_port = free_port()
        redis = processes.start(
            "redis-server",
            ["redis-server", "--bind", "127.0.0.1", "--port", str(rig.redis_port),
             "--save", "", "--appendonly", "no"],
        )  # fmt: skip
        wait_until_accepting("127.0.0.1", rig.redis_port, alive=redis.alive)
        echo = processes.start("backend-echo", [sys.executable, str(BACKENDS), "echo"])
        rig.echo_port = int(echo.stdout_line())
        rig.ports = [free_port() for _ in range(servers)]
        for index in range(servers):
            rig.servers.append(rig.start_server(index, *links[index : index + 1]))
        rig.redis_local, rig.echo_local, rig.metrics = free_port(), free_port(), free_port()
        rig.client = processes.start(
            "ambassador-client",
            [
                *ambassador("client"),
                "--sessions=all",
                *(f"--remote=127.0.0.1:{port}" for port in rig.ports),
                f"--expose=127.0.0.1:{rig.redis_local}=redis",
                f"--expose=127.0.0.1:{rig.echo_local}=echo",
                f"--metrics-listen=127.0.0.1:{rig.metrics}",
                "--backoff-max=0.5",
                *args,
            ],
        )
        wait_until_accepting("127.0.0.1", rig.echo_local, alive=rig.client.alive)
        for port in rig.ports:
            rig.client.wait_for_stderr(rf"tunnel up to 127\.0\.0\.1:{port}\b", 15)
        return rig

    yield make


async def redis_once(port: int, log: list[Attempt]) -> None:
    attempt = Attempt("redis", time.monotonic())
    log.append(attempt)
    try:
        async with asyncio.timeout(15):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                await set_get(reader, writer, random.randrange(1, 4096))
            finally:
                writer.close()
        attempt.outcome = "complete"
    except ConnectionRefusedError as exc:
        attempt.outcome, attempt.error = "refused", repr(exc)
    except OSError as exc:
        attempt.outcome, attempt.error = "reset", repr(exc)
    except asyncio.IncompleteReadError as exc:
        attempt.outcome, attempt.error = "eof", repr(exc)
    except Corrupted as exc:
        attempt.outcome, attempt.error = "corrupted", repr(exc)
    except TimeoutError:
        attempt.outcome = "timeout"
    attempt.ended = time.monotonic()


async def echo_once(port: int, log: list[Attempt]) -> None:
    attempt = Attempt("echo", time.monotonic())
    log.append(attempt)
    transfer = await echo_transfer(
        port, Transfer(random.randrange(1, 1 << 20), random.randrange(1 << 30)), timeout=20
    )
    attempt.ended = time.monotonic()
    if transfer.exact:
        attempt.outcome = "complete"
    elif transfer.outcome == "complete":
        attempt.outcome = "corrupted"  # the whole length came back, other bytes
    else:
        attempt.outcome, attempt.error = transfer.outcome, transfer.error


async def traffic(
    rig: Rig, stop: asyncio.Event, log: list[Attempt], redis_loops: int = 4, echo_loops: int = 2
) -> None:
    async def loop(one: Callable[[int, list[Attempt]], Awaitable[None]], port: int) -> None:
        while not stop.is_set():
            await one(port, log)

    await asyncio.gather(
        *(loop(redis_once, rig.redis_local) for _ in range(redis_loops)),
        *(loop(echo_once, rig.echo_local) for _ in range(echo_loops)),
    )


def up_count(rig: Rig, index: int) -> int:
    assert rig.client is not None
    return log_count(rig.client, rf"tunnel up to 127\.0\.0\.1:{rig.ports[index]}\b")


async def faults(rig: Rig, windows: list[tuple[str, float, float]]) -> None:
    """Each server in turn: SIGKILL, restart on its port, SIGSTOP for 3 s, SIGCONT; each
    back up (a new session logged) before the next fault."""
    assert rig.client is not None
    await asyncio.sleep(1.5)
    for index in range(len(rig.servers)):
        ups = up_count(rig, index)
        at = time.monotonic()
        rig.servers[index].popen.kill()
        rig.servers[index].popen.wait()
        windows.append((f"kill server{index}", at, at + KILL_WINDOW))
        await asyncio.sleep(1.0)
        rig.servers[index] = await asyncio.to_thread(rig.start_server, index)
        await wait_for_log(rig.client, rf"tunnel up to 127\.0\.0\.1:{rig.ports[index]}\b",
                           10, count=ups + 1)  # fmt: skip
        await asyncio.sleep(1.0)
        ups = up_count(rig, index)
        at = time.monotonic()
        os.kill(rig.servers[index].pid, signal.SIGSTOP)
        windows.append((f"freeze server{index}", at, at + FREEZE_WINDOW))
        try:
            await asyncio.sleep(3.0)
        finally:
            os.kill(rig.servers[index].pid, signal.SIGCONT)
        await wait_for_log(rig.client, rf"tunnel up to 127\.0\.0\.1:{rig.ports[index]}\b",
                           15, count=ups + 1)  # fmt: skip
        await asyncio.sleep(1.0)


def test_three_servers_killed_frozen_and_restarted_in_turn(rig: Callable[..., Rig]) -> None:
    setup = rig()
    log: list[Attempt] = []
    windows: list[tuple[str, float, float]] = []

    async def scenario() -> None:
        stop = asyncio.Event()
        running = asyncio.ensure_future(traffic(setup, stop, log))
        try:
            await faults(setup, windows)
        finally:
            stop.set()
            await running

    started = time.monotonic()
    run(scenario(), timeout=75)
    took = time.monotonic() - started
    outcomes: dict[str, int] = {}
    for attempt in log:
        outcomes[attempt.outcome] = outcomes.get(attempt.outcome, 0) + 1
    print(f"{took:.1f}s, {len(log)} consumers: {outcomes}; faults: {[w[0] for w in windows]}")

    assert outcomes.get("complete", 0) > 200, outcomes
    # Never a wrong byte, never a made-up EOF, never a refusal or a hang.
    for bad in ("corrupted", "eof", "refused", "timeout"):
        assert outcomes.get(bad, 0) == 0, [a for a in log if a.outcome == bad]
    # A reset only for a consumer that was in flight on a server when it was killed or frozen,
    # or that connected before the client could know.
    for attempt in log:
        if attempt.outcome != "complete":
            explained = [
                name
                for name, at, until in windows
                if attempt.started < until and attempt.ended > at
            ]
            assert explained, (attempt, windows)
    refusals = setup.metric_lines('ambassador_stream_refusals_total{role="client"')
    lacking = r'reason="(link_down|unknown_service)"'
    assert not [line for line in refusals if re.search(lacking, line)], refusals
    # Each session is shown by remote; all three are up again and all three carried streams.
    rows = {row["peer"]: row for row in setup.status()["remotes"]}  # type: ignore[index]
    assert sorted(rows) == sorted(f"127.0.0.1:{port}" for port in setup.ports)
    assert all(row["state"] == "up" for row in rows.values()), rows
    before = {peer: row["bytes_out"] for peer, row in rows.items()}

    async def more() -> None:
        await asyncio.gather(*(redis_once(setup.redis_local, log) for _ in range(30)))

    run(more())
    after = {row["peer"]: row["bytes_out"] for row in setup.status()["remotes"]}  # type: ignore[index]
    assert all(after[peer] > before[peer] for peer in before), (before, after)
    up = setup.metric_lines("ambassador_client_session_up")
    assert len([line for line in up if line.endswith(" 1.0")]) == 3, up


def test_a_service_one_server_links_is_routed_only_to_it(rig: Callable[..., Rig]) -> None:
    """The catalog is the union: echo, linked by the second server alone, is exposed, its
    consumers go only to that server, and while it is down they wait rather than fail."""
    setup = rig(servers=2, links=(("redis",), ("redis", "echo")))
    log: list[Attempt] = []

    async def scenario() -> None:
        await asyncio.gather(*(echo_once(setup.echo_local, log) for _ in range(10)))
        setup.servers[1].popen.kill()
        setup.servers[1].popen.wait()
        # Consumers connect while the only server offering echo is down; it comes back 1 s on.
        waiting = [asyncio.ensure_future(echo_once(setup.echo_local, log)) for _ in range(5)]
        redis = [asyncio.ensure_future(redis_once(setup.redis_local, log)) for _ in range(5)]
        await asyncio.sleep(1.0)
        setup.servers[1] = await asyncio.to_thread(setup.start_server, 1, ("redis", "echo"))
        await asyncio.gather(*waiting, *redis)

    run(scenario(), timeout=40)
    assert [a.outcome for a in log] == ["complete"] * 20, log
    refusals = setup.metric_lines('ambassador_stream_refusals_total{role="client"')
    assert not [line for line in refusals if not line.endswith(" 0.0")], refusals


def test_in_order_keeps_the_later_remotes_as_hot_standbys(rig: Callable[..., Rig]) -> None:
    """--spread in-order: every stream goes to the first remote while it is up, then at once
    (no connect, no hello) to the second."""
    setup = rig(servers=2, args=("--spread=in-order",))
    log: list[Attempt] = []

    def bytes_out() -> list[int]:
        rows = setup.status()["remotes"]
        return [row["bytes_out"] for row in rows]  # type: ignore[union-attr,index]

    async def requests(count: int) -> None:
        for _ in range(count):
            await redis_once(setup.redis_local, log)

    before = bytes_out()
    run(requests(20))
    middle = bytes_out()
    assert middle[0] - before[0] > 20 * 100 and middle[1] - before[1] < 200, (before, middle)
    setup.servers[0].popen.kill()
    setup.servers[0].popen.wait()
    started = time.monotonic()
    run(requests(20))
    took = time.monotonic() - started
    after = bytes_out()
    assert after[1] - middle[1] > 20 * 100, (middle, after)
    assert [a.outcome for a in log] == ["complete"] * 40, log
    assert took < 5, took


def test_a_reload_opens_sessions_to_new_remotes_and_drains_removed_ones(
    rig: Callable[..., Rig], processes: Processes, tmp_path: Path
) -> None:
    """remote = [s0, s1] becomes [s1, s2] on SIGHUP: a session to s2 opens, s0's takes no
    new streams and closes once its open one has finished, and s1's carries on untouched."""
    setup = rig(servers=3)
    metrics = setup.free_port()
    local = setup.free_port()
    config = tmp_path / "client.toml"

    def write(ports: list[int]) -> None:
        remotes = ", ".join(f'"127.0.0.1:{port}"' for port in ports)
        config.write_text(
            f'sessions = "all"\nremote = [{remotes}]\nmetrics-listen = "127.0.0.1:{metrics}"\n'
            f'expose = ["127.0.0.1:{local}=redis"]\nbackoff-max = 0.5\n'
        )

    write(setup.ports[:2])
    client = processes.start("ambassador-client", [*ambassador("client"), "--config", str(config)])
    for port in setup.ports[:2]:
        client.wait_for_stderr(rf"tunnel up to 127\.0\.0\.1:{port}\b", 15)
    wait_until_accepting("127.0.0.1", local, alive=client.alive)
    setup.client, setup.metrics, setup.redis_local = client, metrics, local
    log: list[Attempt] = []

    async def scenario() -> None:
        # A kept connection on each session, open across the reload.
        kept = [await asyncio.open_connection("127.0.0.1", local) for _ in range(2)]
        write(setup.ports[1:])
        client.popen.send_signal(signal.SIGHUP)
        await wait_for_log(client, rf"tunnel up to 127\.0\.0\.1:{setup.ports[2]}\b", 10)
        await asyncio.gather(*(redis_once(local, log) for _ in range(30)))
        for reader, writer in kept:  # both still answer, whichever session they are on
            await set_get(reader, writer, 10)
            writer.close()

    run(scenario(), timeout=40)
    assert [a.outcome for a in log] == ["complete"] * 30, log
    rows = setup.status()["remotes"]
    assert [row["peer"] for row in rows] == [f"127.0.0.1:{p}" for p in setup.ports[1:]]  # type: ignore[index,union-attr]
    assert all(row["state"] == "up" for row in rows)  # type: ignore[index,union-attr]
    setup.servers[0].wait_for_stderr("ended", 10)  # s0's session closed once idle
    assert log_count(client, rf"tunnel up to 127\.0\.0\.1:{setup.ports[1]}\b") == 1
    assert log_count(client, "dropped|ERROR") == 0, client.stderr()
