"""``--workers``: a role in several processes, seen from outside as one.

Every test runs the real programs on loopback: the main process and the helpers it starts.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.environment import missing
from tests.integration.support import (
    AmbassadorServer,
    Redis,
    Started,
    ambassador,
    redis_cli,
    run_program,
)
from tests.observability.support import consumer_refused, http_get, scrape, wait_for
from tests.observability.test_forward import docker_link
from tests.workers.conftest import alive, children_of, wait_gone
from tunnel.operations.load import can_raise_priority

pytestmark = pytest.mark.integration

CHUNK = 256 * 1024


def status_of(port: int) -> dict[str, object]:
    response = http_get(port, "/status")
    assert response.status == 200, response.text
    found: dict[str, object] = json.loads(response.body)
    return found


def helpers_of(process: Started, count: int) -> list[int]:
    started = "1 helper process" if count == 1 else f"{count} helper processes"
    process.wait_for_stderr(rf"{started} started")
    return wait_for(
        f"{count} helpers of pid {process.pid}",
        lambda: (found := children_of(process.pid)) and len(found) == count and found,
    )


def test_server_workers_serve_one_client_each_and_report_as_one(
    redis_server: Redis,
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    free_port: Callable[..., int],
    wait_for_port: Callable[..., None],
) -> None:
    metrics, closed = free_port(), free_port()  # nothing listens on closed: "dead" refuses
    server = start_server(
        f"redis=127.0.0.1:{redis_server.port}",
        f"dead=127.0.0.1:{closed}",
        args=["--workers", "2", f"--metrics-listen=127.0.0.1:{metrics}"],
    )
    wait_for_port("127.0.0.1", metrics, alive=server.process.alive)
    (helper,) = helpers_of(server.process, 1)
    ports = [free_port(), free_port()]
    for port in ports:
        dead = free_port()
        start_client(
            f"--remote=127.0.0.1:{server.port}",
            f"--expose=127.0.0.1:{port}=redis",
            f"--expose=127.0.0.1:{dead}=dead",
            listens=[("127.0.0.1", port), ("127.0.0.1", dead)],
        )
        assert redis_cli(port, "PING") == "PONG"
        assert consumer_refused(dead)

    # One session in each process, and the main process reports both.
    server.process.wait_for_stderr(r"worker 1: session up with ")
    status = status_of(metrics)
    assert status["workers"] == 2
    sessions = status["sessions"]
    assert isinstance(sessions, list)
    assert sorted(row["worker"] for row in sessions) == [0, 1]
    assert all(row["state"] == "up" for row in sessions)
    service, dead_row = status["services"]  # type: ignore[misc]
    assert service["streams_total"] >= 2  # one PING through each client, summed over workers
    page = scrape(metrics)
    # A refusal in each process: /status sums them as /metrics does, worker by worker.
    refusals = "ambassador_stream_refusals_total"
    assert dead_row["refused"] == page.value(refusals, service="dead") == 2
    for worker in ("0", "1"):
        assert page.value(refusals, service="dead", worker=worker) == 1
    assert service["bytes_in"] == page.value("ambassador_bytes_total", service="redis",
                                             direction="to_backend")  # fmt: skip
    for worker in ("0", "1"):
        assert page.value("ambassador_sessions_open", role="server", worker=worker) == 1
        assert page.value("ambassador_streams_total", service="redis", worker=worker) >= 1
    assert page.value("ambassador_handovers_total", role="server") == 1
    assert page.value("ambassador_workers", role="server") == 2

    # SIGTERM to the main process drains every worker; all exit, the main one with 0.
    assert server.process.stop() == 0
    assert wait_gone(helper, 10), f"helper {helper} outlived the main process"
    assert "worker 1: draining" in server.process.stderr()


async def _bulk_while_small(
    port: int, small: int, during: Callable[[], None] = lambda: None
) -> tuple[bool, list[bool]]:
    """Echo a stream of bytes until ``small`` short echoes on new connections are done;
    (the long stream came back exact, the short ones did). ``during`` runs once the long
    stream is up to speed."""
    stop = asyncio.Event()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=4 * CHUNK)
    sent, got = hashlib.sha256(), hashlib.sha256()
    block = bytes(range(256)) * (CHUNK // 256)

    async def send() -> None:
        while not stop.is_set():
            writer.write(block)
            sent.update(block)
            await writer.drain()
        writer.write_eof()

    async def receive() -> None:
        while chunk := await reader.read(4 * CHUNK):
            got.update(chunk)

    async def short_ones() -> list[bool]:
        await asyncio.sleep(1.0)  # the long stream is up to speed: its process is busy
        await asyncio.to_thread(during)
        results = []
        for index in range(small):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            payload = f"short {index} ".encode() * 100
            w.write(payload)
            w.write_eof()
            results.append(await r.read() == payload)
            w.close()
            await asyncio.sleep(0.02)
        stop.set()
        return results

    async with asyncio.timeout(60):
        async with asyncio.TaskGroup() as group:
            group.create_task(send())
            group.create_task(receive())
            shorts = group.create_task(short_ones())
    writer.close()
    return sent.digest() == got.digest(), shorts.result()


EchoPair = Callable[..., tuple[AmbassadorServer, Started, int, int]]


@pytest.fixture
def echo_pair(
    start_backend: Callable[[str], int],
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    free_port: Callable[..., int],
) -> EchoPair:
    """``echo_pair(*server_args)``: an echo backend behind a pair of ``--workers 2`` each, both
    tunnels up: (server, client, the client's exposed port, the client's metrics port)."""

    def make(*server_args: str) -> tuple[AmbassadorServer, Started, int, int]:
        echo = start_backend("echo")
        server = start_server(f"echo=127.0.0.1:{echo}", args=["--workers", "2", *server_args])
        port, metrics = free_port(), free_port()
        client = start_client(
            f"--remote=127.0.0.1:{server.port}",
            f"--expose=127.0.0.1:{port}=echo",
            "--workers=2",
            f"--metrics-listen=127.0.0.1:{metrics}",
            listens=[("127.0.0.1", port)],
        )
        client.wait_for_stderr(r"worker 1: tunnel up to ")
        return server, client, port, metrics

    return make


def test_client_sends_new_connections_away_from_a_process_busy_with_bulk(
    echo_pair: EchoPair,
) -> None:
    _, client, port, metrics = echo_pair()
    helpers_of(client, 1)
    remotes = status_of(metrics)["remotes"]
    assert isinstance(remotes, list)
    assert sorted((row["worker"], row["state"]) for row in remotes) == [(0, "up"), (1, "up")]

    bulk_exact, shorts = asyncio.run(_bulk_while_small(port, 30))
    assert bulk_exact, "the long stream did not come back byte for byte"
    assert all(shorts), f"{shorts.count(False)} short echoes came back wrong"
    page = scrape(metrics)
    # The long stream kept the main process busy, so short connections went to the helper.
    assert page.value("ambassador_handovers_total", role="client") >= 1
    assert page.value("ambassador_streams_total", role="client", worker="1") >= 1
    assert page.value("ambassador_streams_total", role="client", service="echo") == 31


def nice_of(pid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, pid)


def test_processes_relaying_bulk_data_yield_the_cpu_until_it_stops(
    echo_pair: EchoPair, free_port: Callable[..., int]
) -> None:
    if not can_raise_priority(nice_of(0)):
        missing("needs CAP_SYS_NICE or RLIMIT_NICE to restore a priority")
    server_metrics = free_port()
    server, client, port, metrics = echo_pair(f"--metrics-listen=127.0.0.1:{server_metrics}")
    (client_helper,) = helpers_of(client, 1)
    (server_helper,) = helpers_of(server.process, 1)
    everyone = [client.pid, client_helper, server.process.pid, server_helper]
    base = {pid: nice_of(pid) for pid in everyone}
    seen: dict[int, int] = {}

    def look() -> None:
        servers = (server.process.pid, server_helper)
        wait_for("the processes carrying the bulk transfer to yield",
                 lambda: nice_of(client.pid) > base[client.pid]
                 and any(nice_of(pid) > base[pid] for pid in servers), timeout=5.0)  # fmt: skip
        seen.update({pid: nice_of(pid) - base[pid] for pid in everyone})
        assert scrape(metrics).value("ambassador_priority_lowered", worker="0") == 1

    bulk_exact, shorts = asyncio.run(_bulk_while_small(port, 5, look))
    assert bulk_exact and all(shorts)
    # The main client process carried the bulk stream and one server process did; the
    # client's helper, which took the short connections, kept its priority.
    assert seen[client.pid] == 5
    assert seen[client_helper] == 0
    assert sorted([seen[server.process.pid], seen[server_helper]]) == [0, 5]
    wait_for("every priority restored after the transfer",
             lambda: all(nice_of(pid) == base[pid] for pid in everyone), timeout=5.0)  # fmt: skip
    assert scrape(metrics).value("ambassador_priority_lowered") == 0
    assert scrape(server_metrics).value("ambassador_priority_lowered") == 0


def test_a_helper_that_dies_is_started_again_and_its_client_comes_back(
    redis_server: Redis,
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    free_port: Callable[..., int],
    wait_for_port: Callable[..., None],
    stray_helpers: list[int],
) -> None:
    metrics, closed = free_port(), free_port()  # nothing listens on closed: "dead" refuses
    server = start_server(
        f"redis=127.0.0.1:{redis_server.port}",
        f"dead=127.0.0.1:{closed}",
        args=["--workers", "2", f"--metrics-listen=127.0.0.1:{metrics}"],
    )
    (helper,) = helpers_of(server.process, 1)
    stray_helpers.append(helper)
    ports = [free_port(), free_port()]
    for port in ports:
        start_client(
            f"--remote=127.0.0.1:{server.port}",
            f"--expose=127.0.0.1:{port}=redis",
            "--backoff-max=0.5",
            listens=[("127.0.0.1", port)],
        )
    server.process.wait_for_stderr(r"worker 1: session up with ")

    os.kill(helper, signal.SIGKILL)
    server.process.wait_for_stderr(
        rf"helper 1 \(pid {helper}\) stopped with signal SIGKILL; starting it again"
    )
    found = server.process.wait_for_stderr(r"helper 1 started again: pid (\d+)")
    stray_helpers.append(int(found[1]))
    # The client whose session was in the helper reconnects; both reach redis again.
    for port in ports:
        wait_for(f"PONG through {port}", lambda p=port: redis_cli(p, "PING") == "PONG")
    page = scrape(metrics)
    assert page.value("ambassador_worker_exits_total", role="server", reason="signal") == 1
    assert page.value("ambassador_workers", role="server") == 2
    assert server.process.stop() == 0


@pytest.mark.parametrize("role", ["server", "client"])
def test_helpers_leave_when_the_main_process_is_killed(
    role: str,
    redis_server: Redis,
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    free_port: Callable[..., int],
    stray_helpers: list[int],
) -> None:
    server = start_server(
        f"redis=127.0.0.1:{redis_server.port}",
        args=["--workers", "2", "--drain-timeout", "1"] if role == "server" else [],
    )
    main = server.process
    if role == "client":
        port = free_port()
        main = start_client(
            f"--remote=127.0.0.1:{server.port}",
            f"--expose=127.0.0.1:{port}=redis",
            "--workers=2",
            listens=[("127.0.0.1", port)],
        )
    helpers = helpers_of(main, 1)
    stray_helpers.extend(helpers)
    main.kill()
    for helper in helpers:
        assert wait_gone(helper, 15), f"{role} helper {helper} outlived its killed main process"


def test_sighup_reloads_every_worker(
    redis_server: Redis,
    start_backend: Callable[[str], int],
    start_client: Callable[..., Started],
    processes: object,
    free_port: Callable[..., int],
    wait_for_port: Callable[..., None],
    tmp_path: Path,
) -> None:
    echo = start_backend("echo")
    tunnel = free_port()
    config = tmp_path / "server.toml"
    links = f'redis = "127.0.0.1:{redis_server.port}"\n'
    config.write_text(f'listen = "127.0.0.1:{tunnel}"\nworkers = 2\n[links]\n{links}'
                      f'echo = "127.0.0.1:{echo}"\n')  # fmt: skip
    server = processes.start(  # type: ignore[attr-defined]
        "ambassador-server", [*ambassador("server"), "--config", str(config)]
    )
    wait_for_port("127.0.0.1", tunnel, alive=server.alive)
    helpers_of(server, 1)
    echo_ports = []
    for _ in range(2):
        redis_port, echo_port = free_port(), free_port()
        start_client(
            f"--remote=127.0.0.1:{tunnel}",
            f"--expose=127.0.0.1:{redis_port}=redis",
            f"--expose=127.0.0.1:{echo_port}=echo",
            listens=[("127.0.0.1", redis_port), ("127.0.0.1", echo_port)],
        )
        echo_ports.append(echo_port)
    server.wait_for_stderr(r"worker 1: session up with ")

    # Take the echo link away; the file watcher could see it too, so SIGHUP at once.
    config.write_text(f'listen = "127.0.0.1:{tunnel}"\nworkers = 2\n[links]\n{links}')
    os.kill(server.pid, signal.SIGHUP)
    server.wait_for_stderr(r"(?m)^\S+ \S+ INFO ambassador.server: configuration reloaded: "
                           r"offering redis:\d+ to 1 session$")  # fmt: skip
    server.wait_for_stderr(
        r"(?m)worker 1: configuration reloaded: offering redis:\d+ to 1 session$"
    )
    # Both sessions, one in each process, now refuse echo.
    for port in echo_ports:
        wait_for(f"echo refused through {port}", lambda p=port: consumer_refused(p))


def test_workers_in_forward_mode_is_one_line_error() -> None:
    result = run_program(
        [*ambassador("server"), "--forward", "--link", "redis=127.0.0.1:1", "--workers", "2"]
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "ambassador-server: error: --workers applies to the tunnel; --forward runs in one process"
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "0 is not from 1 to 64 (or 'auto')"),
        ("65", "65 is not from 1 to 64 (or 'auto')"),
        ("two", "'two' is neither a number of processes nor 'auto'"),
    ],
)
@pytest.mark.parametrize("role", ["server", "client"])
def test_a_bad_worker_count_is_one_line_error(role: str, value: str, message: str) -> None:
    where = ["--link", "a=127.0.0.1:1"] if role == "server" else [
        "--remote", "127.0.0.1:1", "--expose", "127.0.0.1:1=a"]  # fmt: skip
    for how in (["--workers", value], []):
        env = dict(os.environ, AMBASSADOR_WORKERS=value) if not how else None
        result = run_program([*ambassador(role), *where, *how, "--check-config"], env=env)
        assert result.returncode == 2
        hint = "'--workers'" if how else "environment variable AMBASSADOR_WORKERS"
        assert result.stderr.strip().splitlines() == [
            f"ambassador-{role}: error: Invalid value for {hint}: {message}"
        ]


def test_auto_runs_one_process_per_cpu_and_one_in_drop_in_mode(
    redis_server: Redis,
    start_server: Callable[..., AmbassadorServer],
    processes: object,
    free_port: Callable[..., int],
    wait_for_port: Callable[..., None],
) -> None:
    mine = os.sched_getaffinity(0)
    if len(mine) < 2:
        pytest.skip("one CPU: auto means one process, as with no --workers")
    # The server inherits an affinity of two CPUs, as under taskset or a container's cpuset:
    # auto counts those, not the machine's.
    os.sched_setaffinity(0, sorted(mine)[:2])
    try:
        server = start_server(f"redis=127.0.0.1:{redis_server.port}", args=["--workers", "auto"])
    finally:
        os.sched_setaffinity(0, mine)
    assert len(helpers_of(server.process, 1)) == 1

    # Drop-in mode runs in one process: auto means one there, not an error.
    port = free_port()
    forward = processes.start(  # type: ignore[attr-defined]
        "ambassador-server --forward",
        [*ambassador("server"), "--links-from-env", "--forward", "--forward-bind", "127.0.0.1",
         "--workers", "auto"],
        env=docker_link("redis", port, "127.0.0.1", redis_server.port),
    )  # fmt: skip
    forward.wait_for_stderr(rf"forwarding 127\.0\.0\.1:{port} to ", timeout=10)
    assert redis_cli(port, "PING") == "PONG"
    assert children_of(forward.pid) == []


def process_state(pid: int) -> str:
    """The one-letter scheduler state of ``pid`` (R running, S sleeping, ...)."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rpartition(")")[2].split()[0]


def test_load_meter_tells_a_busy_process_from_an_idle_one() -> None:
    from tunnel.operations.load import LoadMeter

    busy = os.fork()
    if busy == 0:  # pragma: no cover - the child spins, then leaves
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            pass
        os._exit(0)
    idle = os.fork()
    if idle == 0:  # pragma: no cover
        time.sleep(1.0)
        os._exit(0)
    try:
        # The idle child's own start (the rest of fork, the call into sleep) is CPU it wanted;
        # on a loaded machine it also waits for a core. Measure only once it sleeps.
        deadline = time.monotonic() + 5.0
        while process_state(idle) != "S" and time.monotonic() < deadline:
            time.sleep(0.01)
        meters = {busy: LoadMeter(busy), idle: LoadMeter(idle)}
        time.sleep(0.3)
        rates = {pid: meter.update(time.monotonic()) for pid, meter in meters.items()}
        assert rates[busy] > 0.3, rates
        assert rates[idle] < 0.05, rates
        assert rates[busy] <= 1.2, rates  # about one core: it has one thread
    finally:
        for pid in (busy, idle):
            os.waitpid(pid, 0)
    assert not alive(busy)


def test_pool_targets_of_every_worker_show_in_status_and_its_text(
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    free_port: Callable[..., int],
    wait_for_port: Callable[..., None],
    start_backend: Callable[[str], int],
) -> None:
    # A pool whose first target refuses: each process fails over past it on its own, and
    # ejects it in its own balancer. /status shows one row per target, over both processes.
    metrics, dead, echo_backend = free_port(), free_port(), start_backend("echo")
    server = start_server(
        f"echo=127.0.0.1:{dead},127.0.0.1:{echo_backend}",
        args=["--workers", "2", f"--metrics-listen=127.0.0.1:{metrics}"],
    )
    wait_for_port("127.0.0.1", metrics, alive=server.process.alive)
    helpers_of(server.process, 1)
    for _ in range(2):  # one client's session in each process
        port = free_port()
        start_client(
            f"--remote=127.0.0.1:{server.port}",
            f"--expose=127.0.0.1:{port}=echo",
            listens=[("127.0.0.1", port)],
        )
        with socket.create_connection(("127.0.0.1", port), timeout=5) as consumer:
            consumer.sendall(b"ping")
            assert consumer.recv(4) == b"ping"
    server.process.wait_for_stderr(r"worker 1: session up with ")
    status = status_of(metrics)
    [service] = status["services"]  # type: ignore[misc]
    first, second = service["targets"]
    assert first["target"] == f"127.0.0.1:{dead}"
    assert (first["state"], first["states"]) == ("ejected", {"ejected": 2})
    assert "refused" in first["last_error"]
    assert (second["state"], second["opened"]) == ("healthy", 2)  # a stream in each process

    text = run_program(
        [*ambassador("server"), "status", f"--endpoint=127.0.0.1:{metrics}"]
    ).stdout.splitlines()
    lines = text[text.index("TARGETS") + 2 :]
    name = f"echo:{dead}"  # the pool's name in the catalog: its first target's port
    assert lines[0].split()[:3] == [name, f"127.0.0.1:{dead}", "ejected"]
    assert lines[1].split()[:5] == [name, f"127.0.0.1:{echo_backend}", "healthy", "0", "2"]
