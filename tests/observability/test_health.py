"""/healthz and /readyz follow the tunnel, as an orchestrator's probes would see them: the
client is live from the start and ready only while its tunnel is up; the server is ready while
it listens."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

from tests.integration.support import AmbassadorServer, Started
from tests.observability.conftest import MeteredPair
from tests.observability.support import http_get, wait_for

pytestmark = pytest.mark.integration

DOWN_DEADLINE = 5.0  # a killed server's connection ends at once; the client sees it in ms
UP_DEADLINE = 15.0  # the client's reconnect backoff is capped at 10 s


def readyz(port: int) -> int:
    return http_get(port, "/readyz").status


def wait_readyz(port: int, status: int, what: str, timeout: float) -> None:
    wait_for(f"{what}: /readyz {status}", lambda: readyz(port) == status, timeout=timeout)


def test_readiness_flips_with_the_tunnel(
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    free_port: Callable[..., int],
    wait_for_port: Callable[..., None],
) -> None:
    tunnel_port, server_metrics, client_metrics, local = (free_port() for _ in range(4))
    link = f"svc=127.0.0.1:{free_port()}"  # never dialled: no stream is opened here

    # The client starts first, with no server to reach.
    client = start_client(
        f"--remote=127.0.0.1:{tunnel_port}",
        f"--expose=127.0.0.1:{local}=svc",
        f"--metrics-listen=127.0.0.1:{client_metrics}",
        wait_tunnel=False,
    )
    wait_for_port("127.0.0.1", client_metrics, alive=client.alive)
    assert http_get(client_metrics, "/healthz").status == 200
    assert readyz(client_metrics) == 503
    assert http_get(client_metrics, "/readyz").text == "not ready\n"

    def start() -> AmbassadorServer:
        server = start_server(
            link, port=tunnel_port, args=[f"--metrics-listen=127.0.0.1:{server_metrics}"]
        )
        wait_for_port("127.0.0.1", server_metrics, alive=server.process.alive)
        return server

    server = start()
    assert readyz(server_metrics) == 200
    assert http_get(server_metrics, "/healthz").status == 200
    wait_readyz(client_metrics, 200, "the client once the server is up", UP_DEADLINE)

    server.process.kill()
    wait_readyz(client_metrics, 503, "the client after the server was killed", DOWN_DEADLINE)
    assert http_get(client_metrics, "/healthz").status == 200  # live, only not ready
    assert client.alive()

    start()
    wait_readyz(client_metrics, 200, "the client after the server restarted", UP_DEADLINE)
    assert http_get(client_metrics, "/healthz").status == 200


def test_draining_server_is_not_ready_but_still_answers(metered_pair: MeteredPair) -> None:
    # SIGTERM closes the tunnel port and lets open streams finish: a load balancer must stop
    # sending new clients at once, while the endpoint still answers for the drain's duration.
    server = metered_pair.server.process
    with socket.create_connection(("127.0.0.1", metered_pair.redis_port), timeout=5) as held:
        held.sendall(b"PING\r\n")
        assert held.recv(64) == b"+PONG\r\n"
        server.popen.terminate()
        wait_readyz(metered_pair.server_metrics, 503, "the draining server", DOWN_DEADLINE)
        assert http_get(metered_pair.server_metrics, "/healthz").status == 200
        assert server.alive(), "the server did not wait for the open stream"
        held.sendall(b"PING\r\n")  # the open stream still works
        assert held.recv(64) == b"+PONG\r\n"
    # The last stream is done: the drain ends and the server exits 0.
    assert server.popen.wait(timeout=10) == 0
