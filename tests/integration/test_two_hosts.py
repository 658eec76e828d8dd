"""The seed's scenario on two "hosts": two network namespaces joined by a veth pair.

Host A (server namespace) runs redis-server on its own loopback and ambassador-server on the
default tunnel port; host B (client namespace) runs ambassador-client with --remote pointing at
host A and reaches redis with redis-cli as if it were local. Both namespaces and their link exist
only for the test; they are deleted at teardown, whatever happened.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.netns import TwoHosts, wait_for_port_in
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


def outbound_only(netns: str) -> None:
    """Let ``netns`` dial out but accept nothing: new connections towards it are dropped, as
    a site behind NAT or an outbound-only firewall."""
    from tests.environment import missing

    for rule in (
        ["-i", "lo", "-j", "ACCEPT"],
        ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
        ["-m", "conntrack", "--ctstate", "NEW", "-j", "DROP"],
    ):
        result = run_program(["iptables", "-A", "INPUT", *rule], netns=netns)
        if result.returncode != 0:
            missing(f"cannot add an iptables rule in a namespace: {result.stderr.strip()}")


def test_a_host_that_only_dials_out_offers_redis_in_reverse_mode(
    two_hosts: TwoHosts, processes: Processes, tmp_path: Path
) -> None:
    """Host A accepts no connection at all; its ambassador-server dials host B's listening
    client, and host B's redis-cli still reaches host A's redis."""
    require_programs("redis-server", "redis-cli", "iptables")
    a, b = two_hosts.server_ns, two_hosts.client_ns
    outbound_only(a)
    redis_argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(REDIS_PORT)]
    processes.start("redis-server", [*redis_argv, "--save", "", "--appendonly", "no"], netns=a)
    wait_for_port_in(a, "127.0.0.1", REDIS_PORT)
    tokens = tmp_path / "tokens"
    tokens.write_text("site-a:" + "s" * 32 + "\n")
    tokens.chmod(0o600)

    # Host B listens for hosts on its link address (plaintext, in a namespace of its own).
    listen = f"{two_hosts.client_address}:{TUNNEL_PORT}"
    client_argv = [*ambassador("client"), "--listen", listen, "--insecure-plaintext",
                   "--token-file", str(tokens), "--expose",
                   f"{REDIS_PORT}=site-a/redis"]  # fmt: skip
    client = processes.start("ambassador-client", client_argv, netns=b)
    client.wait_for_stderr("listening for hosts on ")
    # Host B cannot reach host A: the rule drops it.
    server_argv = [*ambassador("server"), "--listen", f"0.0.0.0:{TUNNEL_PORT}", "--link",
                   f"redis=127.0.0.1:{REDIS_PORT}"]  # fmt: skip
    processes.start("ambassador-server-listening", server_argv, netns=a)
    wait_for_port_in(a, "127.0.0.1", TUNNEL_PORT)
    probe = ["timeout", "2", "redis-cli", "-h", two_hosts.server_address, "-p", str(TUNNEL_PORT)]
    blocked = run_program([*probe, "PING"], netns=b)
    assert blocked.returncode != 0 and "PONG" not in blocked.stdout

    dial_argv = [*ambassador("server"), "--connect", listen, "--insecure-plaintext",
                 "--token-file", str(tokens), "--link",
                 f"redis=127.0.0.1:{REDIS_PORT}"]  # fmt: skip
    processes.start("ambassador-server", dial_argv, netns=a)
    client.wait_for_stderr(f"tunnel up from {two_hosts.server_address}:\\d+ as host 'site-a'",
                           timeout=15)  # fmt: skip
    client.wait_for_stderr(f"exposing 'site-a/redis' on 127.0.0.1:{REDIS_PORT}")
    assert redis_cli(REDIS_PORT, "SET", "site", "behind nat", netns=b) == "OK"
    assert redis_cli(REDIS_PORT, "GET", "site", netns=a) == "behind nat"
