"""The seed's scenario on two "hosts": two network namespaces joined by a veth pair.

Host A (server namespace) runs redis-server on its own loopback and ambassador-server on the
default tunnel port; host B (client namespace) runs ambassador-client with --remote pointing at
host A and reaches redis with redis-cli as if it were local. Both namespaces and their link exist
only for the test; they are deleted at teardown, whatever happened.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.environment import missing
from tests.integration.support import (
    Processes,
    ambassador,
    redis_cli,
    require_programs,
    run_program,
)

pytestmark = pytest.mark.integration

REDIS_PORT = 6379  # each namespace has its own ports: the seed's own numbers are free here
TUNNEL_PORT = 7700  # the documented default, used by both sides without being named

_WAIT_FOR_PORT = """
import socket, sys, time
host, port, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    try:
        socket.create_connection((host, port), timeout=0.2).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.02)
sys.exit(1)
"""


@dataclass(frozen=True)
class TwoHosts:
    server_ns: str
    client_ns: str
    server_address: str
    client_address: str


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    result = run_program(["ip", *args])
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def wait_for_port_in(netns: str, host: str, port: int, timeout: float = 10.0) -> None:
    argv = [sys.executable, "-c", _WAIT_FOR_PORT, host, str(port), str(timeout)]
    if run_program(argv, timeout=timeout + 5, netns=netns).returncode != 0:
        pytest.fail(f"nothing accepted on {host}:{port} in namespace {netns} within {timeout:g}s")


@pytest.fixture
def two_hosts(processes: Processes) -> Iterator[TwoHosts]:
    require_programs("ip")
    suffix = secrets.token_hex(4)
    server_ns, client_ns = f"amb-srv-{suffix}", f"amb-cli-{suffix}"
    subnet = f"10.201.{secrets.randbelow(256)}"
    created: list[str] = []
    try:
        result = run_program(["ip", "netns", "add", server_ns])
        if result.returncode != 0:
            reason = result.stderr.strip()
            missing(f"cannot create a network namespace (needs CAP_SYS_ADMIN): {reason}")
        created.append(server_ns)
        ip("netns", "add", client_ns)
        created.append(client_ns)
        # The veth pair is made inside the server namespace, its far end moved straight into the
        # client namespace: no interface ever appears in the host's own namespace.
        ip("-n", server_ns, "link", "add", "amb0", "type", "veth", "peer", "name", "amb1")
        ip("-n", server_ns, "link", "set", "amb1", "netns", client_ns)
        for netns, device, host in ((server_ns, "amb0", 1), (client_ns, "amb1", 2)):
            ip("-n", netns, "addr", "add", f"{subnet}.{host}/30", "dev", device)
            ip("-n", netns, "link", "set", device, "up")
            ip("-n", netns, "link", "set", "lo", "up")
        yield TwoHosts(server_ns, client_ns, f"{subnet}.1", f"{subnet}.2")
    finally:
        processes.stop_all()  # nothing may still run in a namespace that is being deleted
        for netns in reversed(created):
            run_program(["ip", "netns", "del", netns])


def test_redis_on_host_a_answers_on_host_b(two_hosts: TwoHosts, processes: Processes) -> None:
    require_programs("redis-server", "redis-cli")
    a, b = two_hosts.server_ns, two_hosts.client_ns
    redis_argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(REDIS_PORT)]
    processes.start("redis-server", [*redis_argv, "--save", "", "--appendonly", "no"], netns=a)
    wait_for_port_in(a, "127.0.0.1", REDIS_PORT)

    # Host A: offer redis on the default tunnel port (0.0.0.0:7700).
    server_argv = [*ambassador("server"), "--link", f"redis=127.0.0.1:{REDIS_PORT}"]
    server = processes.start("ambassador-server", server_argv, netns=a)
    wait_for_port_in(a, two_hosts.server_address, TUNNEL_PORT)

    # Host B: reach host A on its default tunnel port, expose redis on 127.0.0.1:6379.
    remote = two_hosts.server_address
    client_argv = [*ambassador("client"), "--remote", remote, "--expose", str(REDIS_PORT)]
    client = processes.start("ambassador-client", client_argv, netns=b)
    client.wait_for_stderr(f"tunnel up to {remote}:{TUNNEL_PORT}", timeout=15)
    client.wait_for_stderr(f"exposing '{REDIS_PORT}' on 127.0.0.1:{REDIS_PORT}")

    assert redis_cli(REDIS_PORT, "PING", netns=b) == "PONG"
    assert redis_cli(REDIS_PORT, "SET", "seed", "two hosts", netns=b) == "OK"
    assert redis_cli(REDIS_PORT, "GET", "seed", netns=b) == "two hosts"
    assert redis_cli(REDIS_PORT, "GET", "seed", netns=a) == "two hosts"

    # Host B has no other way to redis: it listens on host A's loopback only.
    direct = redis_cli(REDIS_PORT, "PING", host=remote, netns=b)
    assert "PONG" not in direct and "refused" in direct.lower()
    # And host A saw host B's tunnel come from across the link.
    assert f"session up with {two_hosts.client_address}:" in server.stderr()
