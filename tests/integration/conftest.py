"""Fixtures for the end-to-end tests: redis-server, test backends and the ambassador pair.

Every program runs as a real subprocess on loopback, on ports found free by binding port 0.
Its stderr goes to a file in tmp_path; when a test fails, the report shows each program's
output. Each program is stopped by its own pid at teardown.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Generator, Iterator, Sequence

import pytest

from tests.integration.netns import TwoHosts, namespaces
from tests.integration.support import (
    BACKENDS,
    AmbassadorServer,
    Pair,
    Processes,
    Redis,
    Started,
    ambassador,
    require_programs,
)
from tests.integration.unixsockets import Postgres, running_postgres

PROCESSES = pytest.StashKey[Processes]()
FreePort = Callable[..., int]
WaitForPort = Callable[..., None]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Show the output of every program the test started when the test fails."""
    report = yield
    processes = item.stash.get(PROCESSES, None)
    if report.failed and processes is not None:
        for header, text in processes.logs():
            report.sections.append((header, text))
    return report


@pytest.fixture
def processes(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Processes]:
    """Start programs with ``processes.start(name, argv)``; all are stopped at teardown."""
    directory = tmp_path_factory.mktemp("programs")
    group = Processes(directory)
    request.node.stash[PROCESSES] = group
    yield group
    group.stop_all()


@pytest.fixture
def redis_server(processes: Processes, free_port: FreePort, wait_for_port: WaitForPort) -> Redis:
    """A throw-away redis-server on a free loopback port, persisting nothing."""
    require_programs("redis-server", "redis-cli")
    port = free_port()
    argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port)]
    process = processes.start("redis-server", [*argv, "--save", "", "--appendonly", "no"])
    wait_for_port("127.0.0.1", port, alive=process.alive)
    return Redis("127.0.0.1", port, process)


@pytest.fixture
def start_backend(processes: Processes, wait_for_port: WaitForPort) -> Callable[[str], int]:
    """``start_backend("echo" | "digest")``: start a test backend; its loopback port."""

    def start(mode: str) -> int:
        process = processes.start(f"backend-{mode}", [sys.executable, str(BACKENDS), mode])
        port = int(process.stdout_line())
        wait_for_port("127.0.0.1", port, alive=process.alive)
        return port

    return start


@pytest.fixture
def start_server(
    processes: Processes, free_port: FreePort, wait_for_port: WaitForPort
) -> Callable[..., AmbassadorServer]:
    """``start_server(*links, port=None, args=())``: ambassador-server on 127.0.0.1.

    Returns once its tunnel port accepts connections.
    """

    def start(*links: str, port: int | None = None, args: Sequence[str] = ()) -> AmbassadorServer:
        port = port or free_port()
        argv = [*ambassador("server"), "--listen", f"127.0.0.1:{port}"]
        for link in links:
            argv += ["--link", link]
        process = processes.start("ambassador-server", [*argv, *args])
        wait_for_port("127.0.0.1", port, alive=process.alive)
        return AmbassadorServer(port, process)

    return start


@pytest.fixture
def start_client(processes: Processes) -> Callable[..., Started]:
    """``start_client(*args, env=None, listens=(), wait_tunnel=True)``: ambassador-client.

    Returns once the client has logged that it listens on each (host, port) of ``listens``
    and, unless told not to wait, that its tunnel is up. Its log is watched rather than its
    ports probed, because every probe would be a consumer connection: a stream, a dial.
    """

    def start(
        *args: str,
        env: dict[str, str] | None = None,
        listens: Sequence[tuple[str, int]] = (),
        wait_tunnel: bool = True,
    ) -> Started:
        process = processes.start("ambassador-client", [*ambassador("client"), *args], env=env)
        for host, port in listens:
            where = re.escape(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
            process.wait_for_stderr(rf"exposing '[^']*' on {where}(?!\d)")
        if wait_tunnel:
            process.wait_for_stderr(r"tunnel up to ")
        return process

    return start


@pytest.fixture
def start_pair(
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    free_port: FreePort,
) -> Callable[..., Pair]:
    """``start_pair(*links, client_args=())``: a server offering the links, and a client
    exposing each link's service on a free loopback port; returns once the tunnel is up."""

    def start(*links: str, client_args: Sequence[str] = ()) -> Pair:
        server = start_server(*links)
        ports = {link.partition("=")[0]: free_port() for link in links}
        expose = [f"--expose=127.0.0.1:{port}={service}" for service, port in ports.items()]
        client = start_client(
            f"--remote=127.0.0.1:{server.port}",
            *expose,
            *client_args,
            listens=[("127.0.0.1", port) for port in ports.values()],
        )
        return Pair(ports, server, client)

    return start


@pytest.fixture
def redis_pair(redis_server: Redis, start_pair: Callable[..., Pair]) -> Pair:
    """redis-server behind a running pair: ``redis-cli -p pair.port`` reaches it."""
    return start_pair(f"redis=127.0.0.1:{redis_server.port}")


@pytest.fixture
def two_hosts(processes: Processes) -> Iterator[TwoHosts]:
    """Two network namespaces joined by a veth pair (skipped where they cannot be made)."""
    with namespaces(processes) as hosts:
        yield hosts


@pytest.fixture
def postgres(processes: Processes) -> Iterator[Postgres]:
    """A PostgreSQL server listening only on a unix socket (skipped without it, or not root)."""
    with running_postgres(processes) as server:
        yield server
