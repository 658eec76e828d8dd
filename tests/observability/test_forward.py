"""Drop-in mode, as the seed's image was used: only Docker's link variables in the environment,
``--links-from-env --forward``, and redis-cli on the linked port reaches redis. A Kubernetes
Service variable in the same environment is not a link."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.integration.support import Processes, Redis, ambassador, redis_cli, run_program
from tests.observability.support import http_get, listening_ports, scrape

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


@pytest.fixture
def unanswered_port(free_port: Callable[..., int]) -> Iterator[int]:
    """A loopback port whose listener never accepts and whose backlog is full: a new
    connection's SYN is dropped, so connecting to it hangs as to a backend that is down."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", free_port()))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    try:
        with socket.socket() as probe:
            probe.settimeout(0.3)
            try:
                probe.connect(("127.0.0.1", port))
                pytest.skip("this kernel accepts past a full backlog; no way to time out here")
            except TimeoutError:
                pass
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def consumer_ended(port: int, payload: bytes, timeout: float) -> float:
    """Seconds until a consumer's connection to ``port`` ended without an answer."""
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(payload)
            assert sock.recv(64) == b""
    except (ConnectionResetError, BrokenPipeError):
        pass
    return time.monotonic() - started


def test_forward_mode_counts_bytes_and_failures_by_reason_in_metrics_and_status(
    digest_backend: int,
    unanswered_port: int,
    processes: Processes,
    free_port: Callable[..., int],
    wait_for_port: Callable[..., None],
) -> None:
    digest_port, dead_port, slow_port, metrics = (free_port() for _ in range(4))
    closed = free_port()  # nothing listens there: the dial is refused
    server = processes.start(
        "ambassador-server",
        [
            *ambassador("server"),
            "--link", f"digest:{digest_port}=127.0.0.1:{digest_backend}",
            "--link", f"dead:{dead_port}=127.0.0.1:{closed}",
            "--link", f"slow:{slow_port}=127.0.0.1:{unanswered_port}",
            "--forward", "--forward-bind", "127.0.0.1",
            "--dial-timeout", "0.5",
            "--metrics-listen", f"127.0.0.1:{metrics}",
        ],
    )  # fmt: skip
    server.wait_for_stderr(rf"forwarding 127\.0\.0\.1:{slow_port} to ", timeout=10)
    wait_for_port("127.0.0.1", metrics, alive=server.alive)

    payload = bytes(range(256)) * 400
    with socket.create_connection(("127.0.0.1", digest_port), timeout=5) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer == hashlib.sha256(payload).hexdigest().encode()
    assert consumer_ended(dead_port, b"x", 5) < 2
    waited = consumer_ended(slow_port, b"x", 8)
    assert 0.4 < waited < 3, f"the dial gave up after {waited:.1f}s, not --dial-timeout 0.5"

    server.wait_for_stderr(r"connection to 'dead' refused \(backend_refused\)", 2)
    server.wait_for_stderr(r"connection to 'slow' refused \(backend_timeout\): .* 0\.5s", 2)
    scraped = scrape(metrics)

    def counted(name: str, **labels: str) -> int:
        return int(scraped.value(name, role="forward", **labels))

    assert counted("ambassador_bytes_total", service="digest", direction="to_backend") == len(
        payload
    )
    assert counted("ambassador_bytes_total", service="digest", direction="to_consumer") == 64
    assert counted("ambassador_streams_total", service="digest") == 1
    assert counted("ambassador_streams_open", service="digest") == 0
    refusals = "ambassador_stream_refusals_total"
    assert counted(refusals, service="dead", reason="backend_refused") == 1
    assert counted(refusals, service="slow", reason="backend_timeout") == 1
    assert counted(refusals, reason="backend_refused") == 1  # the timeout is not "refused"

    status = json.loads(http_get(metrics, "/status").text)
    rows = {row["service"].split(":")[0]: row for row in status["services"]}
    assert rows["digest"]["bytes_in"] == len(payload)
    assert rows["digest"]["bytes_out"] == 64
    for name in ("digest", "dead", "slow"):
        assert rows[name]["refused"] == counted(refusals, service=name), rows[name]
    assert server.stop() == 0


def test_forward_mode_runs_as_the_roles_do_a_taken_metrics_port_and_sighup(
    processes: Processes, free_port: Callable[..., int], wait_for_port: Callable[..., None]
) -> None:
    """Signals, the status endpoint and teardown are the tunnel roles' own: a taken
    --metrics-listen port is one line, SIGHUP is refused with one line and changes nothing,
    and SIGTERM stops it."""
    linked, backend = free_port(), free_port()
    link = ["--link", f"db:{linked}=127.0.0.1:{backend}", "--forward", "--forward-bind",
            "127.0.0.1"]  # fmt: skip
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = run_program(
            [*ambassador("server"), *link, "--metrics-listen", f"127.0.0.1:{port}"]
        )
    assert refused.returncode == 2, refused.stderr
    assert "Traceback" not in refused.stderr
    assert f"error: cannot listen on 127.0.0.1:{port}" in refused.stderr.splitlines()[-1]

    metrics = free_port()
    server = processes.start(
        "ambassador-server", [*ambassador("server"), *link, "--metrics-listen",
                              f"127.0.0.1:{metrics}"]
    )  # fmt: skip
    wait_for_port("127.0.0.1", metrics, alive=server.alive)
    os.kill(server.pid, signal.SIGHUP)
    server.wait_for_stderr(r"forward mode does not reload; restart to change the links", 5)
    assert server.alive()
    assert listening_ports(server.pid) >= {linked, metrics}
    assert server.stop() == 0
