"""The benchmark's chains are ready when a request crosses them, not when a port is open:
reverse mode's listening client opens its listeners before the dialing server has connected."""

from __future__ import annotations

import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bench.chains import AmbassadorReverse, Ports, Setup
from tests.bench.procs import Procs, StartError, ping
from tests.environment import missing
from tests.integration.support import clean_environ

pytestmark = pytest.mark.integration


def free_base() -> int:
    """A port base whose ports these tests use are all free on loopback."""
    for base in range(13000, 20000, 97):
        ports = Ports(base)
        wanted = (ports.redis, ports.c_redis, ports.c_iperf, ports.c_pg, ports.tunnel)
        try:
            for port in wanted:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    pytest.fail("no free port base between 13000 and 20000")


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    if shutil.which("redis-server") is None:
        missing("redis-server (Debian package redis-server)")
    procs = Procs(tmp_path, clean_environ())
    ports = Ports(free_base())
    amb_bin = Path(sys.executable).parent
    try:
        yield Setup(procs, ports, tmp_path, amb_bin, max_streams=1024)
    finally:
        procs.stop_all()


def start_redis(setup: Setup) -> None:
    port = setup.ports.redis
    redis = setup.procs.start(
        "redis-server",
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
    )
    setup.procs.wait_port(port, redis)


@pytest.mark.timeout(60)
def test_the_reverse_chain_carries_a_request_as_soon_as_it_is_started(setup: Setup) -> None:
    start_redis(setup)
    AmbassadorReverse().start(setup)
    # One PING, no retry: the first consumer of a round must not be reset.
    assert ping(setup.ports.c_redis, timeout=5) == "+PONG"


@pytest.mark.timeout(60)
def test_a_chain_that_never_carries_is_one_bounded_error(setup: Setup) -> None:
    start_redis(setup)
    port = setup.ports.c_redis
    client = setup.procs.start(
        "ambassador-client",
        [str(setup.amb_bin / "ambassador-client"), "--listen",
         f"127.0.0.1:{setup.ports.tunnel}", "--expose", f"127.0.0.1:{port}=redis"],
    )  # fmt: skip
    setup.procs.wait_port(port, client)
    began = time.monotonic()
    with pytest.raises(StartError, match=rf"no \+PONG through port {port} after 2s \(last: "):
        setup.procs.wait_pong(port, [client], timeout=2)
    assert time.monotonic() - began < 5
