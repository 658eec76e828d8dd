"""Fixtures of the reliability tests.

The programs (ambassador-server, ambassador-client, the separate-process echo backend) start
through the end-to-end tests' fixtures, imported here unchanged: each is a real subprocess on
loopback, stopped by its own pid at teardown, and its output is shown when a test fails. To
those this adds the fault proxy and the controllable in-process echo backends, both stopped at
teardown, and :func:`echo_pair`, the usual arrangement of all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from tests.integration.conftest import (
    processes,
    pytest_runtest_makereport,
    redis_server,
    start_backend,
    start_client,
    start_server,
)
from tests.integration.support import AmbassadorServer, Started
from tests.reliability.backends import EchoBackend
from tests.reliability.faultproxy import FaultProxy

# Re-exported so that pytest finds them for the tests of this directory.
__all__ = [
    "echo_pair",
    "make_echo",
    "make_proxy",
    "processes",
    "pytest_runtest_makereport",
    "redis_server",
    "start_backend",
    "start_client",
    "start_server",
]


@pytest.fixture
def make_proxy() -> Iterator[Callable[..., FaultProxy]]:
    """``make_proxy(upstream_port, **options)``: a started :class:`FaultProxy`."""
    proxies: list[FaultProxy] = []

    def make(upstream_port: int, **options: Any) -> FaultProxy:
        proxy = FaultProxy(upstream_port, **options)
        proxies.append(proxy)
        return proxy.start()

    yield make
    for proxy in proxies:
        proxy.stop()


@pytest.fixture
def make_echo() -> Iterator[Callable[..., EchoBackend]]:
    """``make_echo(reset_after=None)``: a started in-process :class:`EchoBackend`."""
    backends: list[EchoBackend] = []

    def make(reset_after: int | None = None) -> EchoBackend:
        backend = EchoBackend(reset_after)
        backends.append(backend)
        backend.start()
        return backend

    yield make
    for backend in backends:
        backend.close()


@dataclass
class EchoPair:
    """An echo service behind a running pair; consumers connect to ``port``."""

    port: int
    server: AmbassadorServer
    client: Started
    backend_port: int


@pytest.fixture
def echo_pair(
    start_backend: Callable[[str], int],
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    free_port: Callable[..., int],
) -> Callable[..., EchoPair]:
    """``echo_pair(server_args=(), client_args=(), remote=None, backend_port=None)``.

    A separate-process echo backend (unless ``backend_port`` names one), a server linking it
    as ``echo``, and a client exposing ``echo`` on a free loopback port, connected to
    ``remote`` (a port, e.g. a fault proxy's, made from the server's port) or to the server.
    """

    def make(
        server_args: Sequence[str] = (),
        client_args: Sequence[str] = (),
        remote: Callable[[int], int] | None = None,
        backend_port: int | None = None,
    ) -> EchoPair:
        backend = backend_port or start_backend("echo")
        server = start_server(f"echo=127.0.0.1:{backend}", args=server_args)
        local = free_port()
        target = remote(server.port) if remote is not None else server.port
        client = start_client(
            f"--remote=127.0.0.1:{target}",
            f"--expose=127.0.0.1:{local}=echo",
            *client_args,
            listens=[("127.0.0.1", local)],
        )
        return EchoPair(local, server, client, backend)

    return make
