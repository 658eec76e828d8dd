"""Fixtures of the observability tests.

The programs start through the end-to-end tests' fixtures, imported here unchanged: each is a
real subprocess on loopback, stopped by its own pid at teardown, with its output shown when a
test fails. To those this adds :func:`metered_pair`: redis-server behind a pair whose server
and client both serve their status endpoint (``--metrics-listen``), after some redis traffic
and one stream refused by a closed backend port.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.integration.conftest import (
    processes,
    pytest_runtest_makereport,
    redis_server,
    start_client,
    start_server,
)
from tests.integration.support import AmbassadorServer, Redis, Started, redis_cli
from tests.observability.support import consumer_refused

# Re-exported so that pytest finds them for the tests of this directory.
__all__ = [
    "metered_pair",
    "processes",
    "pytest_runtest_makereport",
    "redis_server",
    "start_client",
    "start_server",
]

SERVER_NAME = "obs-server"
CLIENT_NAME = "obs-client"


@dataclass
class MeteredPair:
    """A running pair with both status endpoints, and what was sent through it."""

    redis: Redis
    server: AmbassadorServer
    client: Started
    server_metrics: int  # the server's --metrics-listen port
    client_metrics: int  # the client's --metrics-listen port
    redis_port: int  # the client's local port for "redis"
    dead_port: int  # the client's local port for "dead", whose backend port is closed
    dead_backend: int  # the closed backend port behind "dead"
    redis_connections: int  # redis-cli runs made through the pair (one connection each)

    @property
    def links(self) -> tuple[str, str]:
        return (f"redis=127.0.0.1:{self.redis.port}", f"dead=127.0.0.1:{self.dead_backend}")


@pytest.fixture
def metered_pair(
    redis_server: Redis,
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    free_port: Callable[..., int],
    wait_for_port: Callable[..., None],
) -> MeteredPair:
    server_metrics, client_metrics = free_port(), free_port()
    redis_port, dead_port, dead_backend = free_port(), free_port(), free_port()
    server = start_server(
        f"redis=127.0.0.1:{redis_server.port}",
        f"dead=127.0.0.1:{dead_backend}",
        args=[f"--metrics-listen=127.0.0.1:{server_metrics}", f"--name={SERVER_NAME}"],
    )
    wait_for_port("127.0.0.1", server_metrics, alive=server.process.alive)
    client = start_client(
        f"--remote=127.0.0.1:{server.port}",
        f"--expose=127.0.0.1:{redis_port}=redis",
        f"--expose=127.0.0.1:{dead_port}=dead",
        f"--metrics-listen=127.0.0.1:{client_metrics}",
        f"--name={CLIENT_NAME}",
        listens=[("127.0.0.1", redis_port), ("127.0.0.1", dead_port)],
    )
    wait_for_port("127.0.0.1", client_metrics, alive=client.alive)

    assert redis_cli(redis_port, "PING") == "PONG"
    assert redis_cli(redis_port, "SET", "observed", "x" * 2000) == "OK"
    assert redis_cli(redis_port, "GET", "observed") == "x" * 2000
    assert consumer_refused(dead_port), "a stream to a closed backend port was answered"
    return MeteredPair(
        redis=redis_server,
        server=server,
        client=client,
        server_metrics=server_metrics,
        client_metrics=client_metrics,
        redis_port=redis_port,
        dead_port=dead_port,
        dead_backend=dead_backend,
        redis_connections=3,
    )
