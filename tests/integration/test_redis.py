"""redis-cli talks to a real redis-server through the ambassador pair, configured each way a
user would: an explicit --expose, the seed's Docker link variable (environment or flag), and
no --expose at all (the whole catalog)."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.support import (
    AmbassadorServer,
    Pair,
    Processes,
    Redis,
    Started,
    ambassador,
    redis_cli,
)

pytestmark = pytest.mark.integration

DEFAULT_TUNNEL_PORT = 7700  # documented default: where a seed-configured client dials
SEED_BIND = "127.0.0.2"  # any 127/8 address is local on Linux; keeps clear of a system redis


def require_free(host: str, port: int) -> None:
    """Skip unless host:port can be bound the way the programs bind (SO_REUSEADDR)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            pytest.skip(f"{host}:{port} is not free here ({exc.strerror}); the seed form needs it")


def assert_round_trip(port: int, host: str = "127.0.0.1") -> None:
    assert redis_cli(port, "PING", host=host) == "PONG"
    assert redis_cli(port, "SET", "ambassador:key", "crossed the tunnel", host=host) == "OK"
    assert redis_cli(port, "GET", "ambassador:key", host=host) == "crossed the tunnel"


def test_ping_set_get_through_the_pair(redis_pair: Pair, redis_server: Redis) -> None:
    assert_round_trip(redis_pair.port)
    # The value really lives in the backend, not in some buffer of the pair.
    assert redis_cli(redis_server.port, "GET", "ambassador:key") == "crossed the tunnel"


def start_on_fixed_ports(processes: Processes, name: str, argv: list[str], **kw: Any) -> Started:
    """Start a program that binds a fixed seed port; wait until it logs that it runs.

    Skips if another program took the port between the check and the bind.
    """
    process = processes.start(name, argv, **kw)
    deadline = time.monotonic() + 10
    while not re.search(r"listening on|tunnel up to", process.stderr()):
        if not process.alive() and "already in use" in process.stderr():
            pytest.skip(f"a seed port was taken meanwhile: {process.stderr().strip()}")
        if not process.alive() or time.monotonic() > deadline:
            pytest.fail(f"{name} did not start: {process.stderr()}")
        time.sleep(0.02)
    return process


@pytest.mark.parametrize("where", ["environment", "command-line"])
def test_seed_link_variable(where: str, redis_server: Redis, processes: Processes) -> None:
    # REDIS_PORT_6379_TCP=tcp://127.0.0.1:6379 on the client: the host is the remote, the
    # name's 6379 is the local port, the URL's 6379 the service's published port (offered here
    # by port alone), and the tunnel port is the default.
    require_free("127.0.0.1", DEFAULT_TUNNEL_PORT)
    require_free(SEED_BIND, 6379)
    listen = f"--listen=127.0.0.1:{DEFAULT_TUNNEL_PORT}"
    link = f"--link=6379=127.0.0.1:{redis_server.port}"
    start_on_fixed_ports(processes, "ambassador-server", [*ambassador("server"), listen, link])
    variable, url = "REDIS_PORT_6379_TCP", "tcp://127.0.0.1:6379"
    if where == "environment":
        args, env = ["--links-from-env"], {variable: url}
    else:
        args, env = [f"--expose={variable}={url}"], {}
    argv = [*ambassador("client"), *args, f"--bind={SEED_BIND}"]
    client = start_on_fixed_ports(processes, "ambassador-client", argv, env=env)
    assert f"tunnel up to 127.0.0.1:{DEFAULT_TUNNEL_PORT}" in client.stderr()
    assert f"exposing 'redis:6379' on {SEED_BIND}:6379 (or '6379', or 'redis'" in client.stderr()
    client.wait_for_stderr("local port 6379: .*; it offers '6379'")
    assert_round_trip(6379, host=SEED_BIND)


def test_whole_catalog_exposed_when_nothing_is_named(
    redis_server: Redis,
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
) -> None:
    # No --expose: every service the server announces gets a listener on its own port.
    server = start_server(f"redis=127.0.0.1:{redis_server.port}")
    bind = "127.0.0.3"  # the service's port is already taken on 127.0.0.1 by redis itself
    start_client(
        "--remote",
        f"127.0.0.1:{server.port}",
        "--bind",
        bind,
        listens=[(bind, redis_server.port)],
    )
    assert_round_trip(redis_server.port, host=bind)
