"""The seed's scenario on two "hosts": two network namespaces joined by a veth pair.

Host A (server namespace) runs redis-server on its own loopback and ambassador-server on the
default tunnel port; host B (client namespace) runs ambassador-client with --remote pointing at
host A and reaches redis with redis-cli as if it were local. Both namespaces and their link exist
only for the test; they are deleted at teardown, whatever happened.
"""

from __future__ import annotations

import pytest

from tests.integration.netns import TwoHosts, wait_for_port_in
from tests.integration.support import (
    Processes,
    ambassador,
    redis_cli,
    require_programs,
)

pytestmark = pytest.mark.integration

REDIS_PORT = 6379  # each namespace has its own ports: the seed's own numbers are free here
TUNNEL_PORT = 7700  # the documented default, used by both sides without being named


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
