"""Unix sockets on both ends of the pair, with real programs: psql to a PostgreSQL server that
listens only on its unix socket, and redis-cli -s to redis-server on TCP and on a socket."""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.environment import missing
from tests.integration.support import AmbassadorServer, Processes, Redis, Started
from tests.integration.unixsockets import Postgres, psql, redis_cli_s, wait_for_socket

pytestmark = pytest.mark.integration


def exposing(client: Started, path: Path) -> Started:
    client.wait_for_stderr(rf"exposing '[^']*' on {re.escape(f'unix:{path}')}(?!\S)")
    client.wait_for_stderr(r"tunnel up to ")
    return client


def test_psql_through_the_pair_to_postgres_on_its_unix_socket_only(
    postgres: Postgres,
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    free_port: Callable[..., int],
    tmp_path: Path,
) -> None:
    # PostgreSQL takes no TCP connection at all: the server must dial its socket.
    assert psql("-h", "127.0.0.1", "-p", "5432").startswith("psql: error")
    server = start_server(f"pg=unix:{postgres.directory}/.s.PGSQL.5432")
    local = tmp_path / "client"
    local.mkdir()
    port = free_port()
    exposing(
        start_client(f"--remote=127.0.0.1:{server.port}", f"--expose=unix:{local}/.s.PGSQL.5432=pg",
                     f"--expose=127.0.0.1:{port}=pg", listens=[("127.0.0.1", port)],
                     wait_tunnel=False),
        local / ".s.PGSQL.5432",
    )  # fmt: skip
    # A unix consumer to a unix backend: psql -h DIR uses DIR/.s.PGSQL.5432.
    assert psql("-h", str(local), "-p", "5432") == "through a unix socket"
    # A TCP consumer to the same unix backend.
    assert psql("-h", "127.0.0.1", "-p", str(port)) == "through a unix socket"


@pytest.fixture
def redis_on_socket(processes: Processes, tmp_path: Path) -> Path:
    """redis-server listening on a unix socket only (port 0), persisting nothing."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        missing("redis-server and redis-cli (Debian packages redis-server, redis-tools)")
    path = tmp_path / "redis.sock"
    process = processes.start(
        "redis-server",
        ["redis-server", "--port", "0", "--unixsocket", str(path), "--unixsocketperm", "700",
         "--save", "", "--appendonly", "no"],
    )  # fmt: skip
    wait_for_socket(path, process.alive)
    return path


def test_redis_cli_on_an_exposed_socket_to_redis_on_tcp(
    redis_server: Redis,
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    tmp_path: Path,
) -> None:
    # From a config file: the expose list and the socket's mode.
    server = start_server(f"redis=127.0.0.1:{redis_server.port}")
    exposed = tmp_path / "redis.sock"
    config = tmp_path / "client.toml"
    config.write_text(
        f'remote = "127.0.0.1:{server.port}"\n'
        f'expose = ["unix:{exposed}=redis"]\n'
        'expose_socket_mode = "0660"\n'
    )
    client = exposing(start_client(f"--config={config}", wait_tunnel=False), exposed)
    assert stat.S_IMODE(os.lstat(exposed).st_mode) == 0o660
    assert redis_cli_s(exposed, "SET", "k", "unix to tcp") == "OK"
    assert redis_cli_s(exposed, "GET", "k") == "unix to tcp"
    # A clean stop removes the socket file.
    assert client.stop() == 0
    assert not exposed.exists()


def test_redis_cli_on_an_exposed_socket_to_redis_on_a_socket(
    redis_on_socket: Path,
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    tmp_path: Path,
) -> None:
    server = start_server(f"redis=unix:{redis_on_socket}")
    exposed = tmp_path / "exposed" / "redis.sock"
    exposed.parent.mkdir()
    # A leftover of an earlier run that did not stop cleanly: replaced, since nobody listens.
    with socket.socket(socket.AF_UNIX) as old:
        old.bind(str(exposed))
    exposing(
        start_client(f"--remote=127.0.0.1:{server.port}", f"--expose=unix:{exposed}=redis",
                     wait_tunnel=False),
        exposed,
    )  # fmt: skip
    assert redis_cli_s(exposed, "SET", "k", "unix to unix") == "OK"
    assert redis_cli_s(exposed, "GET", "k") == "unix to unix"
    assert redis_cli_s(redis_on_socket, "GET", "k") == "unix to unix"  # the same redis
