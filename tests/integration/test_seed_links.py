"""The seed's client form on two "hosts" (network namespaces), with real redis-server and
redis-cli: ``REDIS_PORT_<LOCAL>_TCP=tcp://<server>:<published port>`` in the client's
environment forwards local port LOCAL to the service the server host published on that port.

As the seed's docs put it: ``-expose 1234 -e REDIS_PORT_1234_TCP=tcp://192.168.1.52:6379``
"will forward the local 1234 port to the remote IP and port".
"""

from __future__ import annotations

import pytest

from tests.integration.netns import TwoHosts, wait_for_port_in
from tests.integration.support import Processes, Started, ambassador, redis_cli, require_programs

pytestmark = pytest.mark.integration

REDIS_PORT = 6379
TUNNEL_PORT = 7700  # the documented default: the link variable does not name it


def start_server_host(two_hosts: TwoHosts, processes: Processes, *links: str) -> None:
    """Host A: redis on its loopback, and an ambassador-server on the default tunnel port."""
    require_programs("redis-server", "redis-cli")
    a = two_hosts.server_ns
    redis_argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(REDIS_PORT)]
    processes.start("redis-server", [*redis_argv, "--save", "", "--appendonly", "no"], netns=a)
    wait_for_port_in(a, "127.0.0.1", REDIS_PORT)
    server_argv = [*ambassador("server")]
    for link in links:
        server_argv += ["--link", link]
    processes.start("ambassador-server", server_argv, netns=a)
    wait_for_port_in(a, two_hosts.server_address, TUNNEL_PORT)


def start_seed_client(
    two_hosts: TwoHosts, processes: Processes, local_port: int, published_port: int
) -> Started:
    """Host B: an ambassador-client given only the seed's link variable (and its siblings)."""
    remote = two_hosts.server_address
    name = f"REDIS_PORT_{local_port}_TCP"
    env = {
        name: f"tcp://{remote}:{published_port}",
        f"{name}_ADDR": remote,
        f"{name}_PORT": str(published_port),
        f"{name}_PROTO": "tcp",
    }
    argv = [*ambassador("client"), "--links-from-env"]
    client = processes.start("ambassador-client", argv, env=env, netns=two_hosts.client_ns)
    client.wait_for_stderr(f"tunnel up to {remote}:{TUNNEL_PORT}", timeout=15)
    return client


def test_the_seeds_two_host_example(two_hosts: TwoHosts, processes: Processes) -> None:
    start_server_host(two_hosts, processes, f"redis=127.0.0.1:{REDIS_PORT}")
    client = start_seed_client(two_hosts, processes, REDIS_PORT, REDIS_PORT)
    client.wait_for_stderr(
        f"local port {REDIS_PORT}: asked the server for 'redis:6379', then '6379', then "
        "'redis'; it offers 'redis:6379'"
    )
    assert redis_cli(REDIS_PORT, "PING", netns=two_hosts.client_ns) == "PONG"
    # The siblings describe the same service: one listener, not one per variable.
    assert client.stderr().count("exposing ") == 1


@pytest.mark.parametrize(
    ("link", "matched"),
    [
        (f"redis=127.0.0.1:{REDIS_PORT}", "redis:6379"),  # alias and port
        (f"{REDIS_PORT}=127.0.0.1:{REDIS_PORT}", "6379"),  # by port alone
        (f"REDIS:7000=127.0.0.1:{REDIS_PORT}", "redis"),  # by alias, announced on another port
    ],
)
def test_the_local_port_is_the_one_in_the_variables_name(
    two_hosts: TwoHosts, processes: Processes, link: str, matched: str
) -> None:
    start_server_host(two_hosts, processes, link)
    client = start_seed_client(two_hosts, processes, 1234, REDIS_PORT)
    client.wait_for_stderr(f"local port 1234: .*; it offers '{matched}'")
    b = two_hosts.client_ns
    assert redis_cli(1234, "PING", netns=b) == "PONG"
    assert redis_cli(1234, "SET", "seed", "1234 to 6379", netns=b) == "OK"
    assert redis_cli(REDIS_PORT, "GET", "seed", netns=two_hosts.server_ns) == "1234 to 6379"
    # Nothing listens on the published port on the client's side.
    assert "PONG" not in redis_cli(REDIS_PORT, "PING", netns=b)
