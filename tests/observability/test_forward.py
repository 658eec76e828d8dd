"""Drop-in mode, as the seed's image was used: only Docker's link variables in the environment,
``--links-from-env --forward``, and redis-cli on the linked port reaches redis. A Kubernetes
Service variable in the same environment is not a link."""

from __future__ import annotations

import hashlib
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator

import pytest

from tests.integration.support import Processes, Redis, ambassador, redis_cli
from tests.observability.support import listening_ports

pytestmark = pytest.mark.integration


def docker_link(alias: str, port: int, host: str, target_port: int) -> dict[str, str]:
    """The variables Docker sets for ``--link NAME:ALIAS`` to a container exposing ``port``."""
    prefix = f"{alias.upper()}_PORT_{port}_TCP"
    url = f"tcp://{host}:{target_port}"
    return {
        f"{alias.upper()}_NAME": f"/consumer/{alias}",
        f"{alias.upper()}_PORT": url,
        prefix: url,
        f"{prefix}_ADDR": host,
        f"{prefix}_PORT": str(target_port),
        f"{prefix}_PROTO": "tcp",
        f"{alias.upper()}_ENV_REDIS_VERSION": "7.0.15",
    }


KUBERNETES = {
    "KUBERNETES_SERVICE_HOST": "10.96.0.1",
    "KUBERNETES_SERVICE_PORT": "443",
    "KUBERNETES_PORT": "tcp://10.96.0.1:443",
    "KUBERNETES_PORT_443_TCP": "tcp://10.96.0.1:443",
    "KUBERNETES_PORT_443_TCP_ADDR": "10.96.0.1",
    "KUBERNETES_PORT_443_TCP_PORT": "443",
    "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
}


def test_forward_mode_serves_redis_from_link_variables_only(
    redis_server: Redis,
    processes: Processes,
    free_port: Callable[..., int],
    wait_for_port: Callable[..., None],
) -> None:
    linked = free_port()
    env = {**docker_link("redis", linked, "127.0.0.1", redis_server.port), **KUBERNETES}
    server = processes.start(
        "ambassador-server",
        # In a pod the variables are read only when asked twice (enableServiceLinks: false).
        [
            *ambassador("server"),
            "--links-from-env",
            "--links-from-env-in-pod",
            "--forward",
            "--forward-bind",
            "127.0.0.1",
        ],
        env=env,
    )
    server.wait_for_stderr(rf"forwarding 127\.0\.0\.1:{linked} to ", timeout=10)

    assert redis_cli(linked, "PING") == "PONG"
    assert redis_cli(linked, "SET", "dropin", "forwarded") == "OK"
    assert redis_cli(linked, "GET", "dropin") == "forwarded"
    assert redis_cli(redis_server.port, "GET", "dropin") == "forwarded"  # really in redis

    # One listener, on the linked port: none on 443 for the Kubernetes variable, no tunnel port.
    assert listening_ports(server.pid) == {linked}
    assert "443" not in server.stderr()
    assert server.alive()
    assert server.stop() == 0


class _DigestAfterEof(socketserver.BaseRequestHandler):
    """Reads until the consumer half-closes, then answers with the SHA-256 of what it read."""

    def handle(self) -> None:
        digest = hashlib.sha256()
        while data := self.request.recv(65536):
            digest.update(data)
        self.request.sendall(digest.hexdigest().encode())


@pytest.fixture
def digest_backend() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _DigestAfterEof)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_forward_mode_keeps_half_closes_and_closes_once_both_sides_are_done(
    digest_backend: int,
    processes: Processes,
    free_port: Callable[..., int],
) -> None:
    # The consumer's EOF reaches the backend as a half-close, so the backend's answer, sent
    # after it, still comes back; then both sides have sent EOF and both sockets are closed.
    # Many times over, since closing after a half-close is where event loops have gone wrong.
    linked = free_port()
    server = processes.start(
        "ambassador-server",
        [
            *ambassador("server"),
            "--link", f"digest:{linked}=127.0.0.1:{digest_backend}",
            "--forward", "--forward-bind", "127.0.0.1",
        ],
    )  # fmt: skip
    server.wait_for_stderr(rf"forwarding 127\.0\.0\.1:{linked} to ", timeout=10)
    for n in range(300):
        payload = n.to_bytes(4, "big") * (1 + n * 37 % 5000)
        with socket.create_connection(("127.0.0.1", linked), timeout=5) as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        assert answer == hashlib.sha256(payload).hexdigest().encode(), n
    assert server.alive()
    assert server.stop() == 0
