"""A reload judges every live session again, as if it connected now.

Real programs on loopback: an ambassador-server whose token file, config file or CA bundle is
changed under it, then sent SIGHUP; ambassador-clients holding sessions; a real redis-server
behind the tunnel. A session the new configuration would not admit is closed, with one line in
the server's log and a count by reason on /metrics; a session it still admits keeps running,
and a redis connection open through it carries on, on the same tunnel connection.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.pki import write_crls
from tests.security.conftest import (
    LOOPBACK,
    Certificates,
    Client,
    Programs,
    Server,
    consumer_receives,
    pick_free_port,
    wait_up,
)
from tunnel.security.pemfiles import load_cert, load_key

SECRET = "a3f1c0de9b7e4d2a8c6b5e4f3a2d1c0b"
ROTATED = "77e0b2c4d6f8a1c3e5a7b9d1f3e5a7c9"
BOB = "b0b5ecre7b0b5ecre7b0b5ecre7b0b5e"


@pytest.fixture
def redis_port(programs: Programs) -> Iterator[int]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = pick_free_port()
    argv = ["redis-server", "--port", str(port), "--bind", LOOPBACK, "--save", "",
            "--appendonly", "no"]  # fmt: skip
    redis = programs.start("redis", argv)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection((LOOPBACK, port), timeout=1).close()
            break
        except OSError:
            assert redis.alive() and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    yield port


class Redis:
    """One consumer connection to redis through a client's local port, kept open."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout=5)

    def call(self, *words: str) -> bytes:
        command = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
        self.sock.sendall(command.encode())
        reply = b""
        while not reply.endswith(b"\r\n") or (reply.startswith(b"$") and reply.count(b"\r\n") < 2):
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            reply += chunk
        return reply

    def close(self) -> None:
        self.sock.close()


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
    return text


def closed_count(port: int, reason: str) -> float:
    prefix = f'ambassador_reload_closed_sessions_total{{reason="{reason}"}} '
    for line in metrics_text(port).splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


def reload(server: Server) -> int:
    """SIGHUP, and wait for the reload to be done; the log mark from before it."""
    since = server.program.mark()
    server.program.send(signal.SIGHUP)
    server.program.wait_for(r"reloaded \(SIGHUP\)", since)
    time.sleep(0.8)  # a closed session goes after half a second
    return since


def closing_lines(server: Server, since: int, client: Client) -> list[str]:
    peer = re.compile(rf"closing session with 127\.0\.0\.1:{client.peer_port}\b")
    return [line for line in server.program.lines(since) if peer.search(line)]


def start_server(programs: Programs, *args: str) -> tuple[Server, int]:
    metrics = pick_free_port()
    return programs.server(*args, "--metrics-listen", f"{LOOPBACK}:{metrics}"), metrics


def test_token_file_added_closes_the_anonymous_session(
    programs: Programs, redis_port: int, tmp_path: Path
) -> None:
    config = write(tmp_path / "server.toml", f'link = "redis=127.0.0.1:{redis_port}"\n')
    server, metrics = start_server(programs, "--config", str(config))
    anonymous = programs.good_client(server, service="redis")
    assert consumer_receives(anonymous.port, timeout=2.0) == b"+PONG\r\n"
    tokens = write(tmp_path / "tokens", f"alice:{SECRET}\n")

    config.write_text(f'link = "redis=127.0.0.1:{redis_port}"\ntoken-file = "{tokens}"\n')
    since = reload(server)

    (line,) = closing_lines(server, since, anonymous)
    assert "WARNING" in line, line
    assert "now requires a token or a client certificate" in line, line
    assert consumer_receives(anonymous.port, timeout=1.0) == b""
    assert closed_count(metrics, "token_required") == 1


def test_rotated_secret_closes_its_session_and_spares_the_others(
    programs: Programs, redis_port: int, tmp_path: Path
) -> None:
    tokens = write(tmp_path / "tokens", f"alice:{SECRET}\nbob:{BOB}\n")
    server, metrics = start_server(
        programs, "--token-file", str(tokens), "--link", f"redis=127.0.0.1:{redis_port}"
    )
    alice_token = write(tmp_path / "alice", f"alice:{SECRET}\n")
    bob_token = write(tmp_path / "bob", f"bob:{BOB}\n")
    alice = programs.good_client(
        server, "--token-file", str(alice_token), identity="alice", service="redis"
    )
    bob = programs.good_client(
        server, "--token-file", str(bob_token), identity="bob", service="redis"
    )
    held = Redis(bob.port)
    try:
        assert held.call("SET", "reauth", "before") == b"+OK\r\n"
        tokens.write_text(f"alice:{ROTATED}\nbob:{BOB}\n")
        since = reload(server)

        (line,) = closing_lines(server, since, alice)
        assert "its token's secret was changed" in line, line
        assert consumer_receives(alice.port, timeout=1.0) == b""
        assert closed_count(metrics, "token_changed") == 1
        # bob's session and his open redis connection carry on, undisturbed.
        assert held.call("GET", "reauth") == b"$6\r\nbefore\r\n"
        assert held.call("SET", "reauth", "after") == b"+OK\r\n"
    finally:
        held.close()
    assert closing_lines(server, since, bob) == []
    assert bob.program.text().count("tunnel up to ") == 1
    for secret in (SECRET, ROTATED, BOB):
        assert secret not in server.program.text()


def test_replaced_ca_closes_the_old_ca_session_and_spares_the_others(
    programs: Programs, certs: Certificates, redis_port: int, tmp_path: Path
) -> None:
    main, other = certs.main, certs.other
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(main.ca.read_bytes() + other.ca.read_bytes())
    server, metrics = start_server(
        programs, *main.server.args(), "--tls-ca", str(bundle),
        "--link", f"redis=127.0.0.1:{redis_port}",
    )  # fmt: skip
    since = server.program.mark()
    alice = programs.client(
        server, "--tls-ca", str(main.ca), *main.client("alice").args(), service="redis"
    )
    mallory = programs.client(
        server, "--tls-ca", str(main.ca), *other.client("mallory").args(), service="redis"
    )
    wait_up(server, alice, "alice", since)
    wait_up(server, mallory, "mallory", since)
    held = Redis(mallory.port)
    try:
        assert held.call("SET", "reauth", "before") == b"+OK\r\n"
        bundle.write_bytes(other.ca.read_bytes())  # main's CA is trusted no more
        since = reload(server)

        (line,) = closing_lines(server, since, alice)
        assert "its certificate is not signed by a CA of the new --tls-ca" in line, line
        assert consumer_receives(alice.port, timeout=1.0) == b""
        assert closed_count(metrics, "certificate_untrusted") == 1
        assert held.call("GET", "reauth") == b"$6\r\nbefore\r\n"
    finally:
        held.close()
    assert closing_lines(server, since, mallory) == []
    assert mallory.program.text().count("tunnel up to ") == 1


def test_a_reload_that_changes_nothing_closes_nothing(
    programs: Programs, certs: Certificates, redis_port: int, tmp_path: Path
) -> None:
    """Mutual TLS and a token together: the checks must not close a session still admitted."""
    pki = certs.main.copy(tmp_path / "pki")
    tokens = write(tmp_path / "tokens", f"alice:{SECRET}\n")
    server, metrics = start_server(
        programs, *pki.server_args(), "--token-file", str(tokens),
        "--link", f"redis=127.0.0.1:{redis_port}",
    )  # fmt: skip
    alice = programs.good_client(
        server, "--tls-ca", str(pki.ca), *pki.client("alice").args(),
        "--token-file", str(write(tmp_path / "alice", f"alice:{SECRET}\n")),
        identity="alice", service="redis",
    )  # fmt: skip
    held = Redis(alice.port)
    try:
        assert held.call("PING") == b"+PONG\r\n"
        since = reload(server)
        assert held.call("PING") == b"+PONG\r\n"
    finally:
        held.close()
    assert closing_lines(server, since, alice) == []
    assert "ambassador_reload_closed_sessions_total{" not in metrics_text(metrics)


def test_a_serial_revoked_in_the_second_crl_of_the_file_closes_its_session(
    programs: Programs, certs: Certificates, redis_port: int, tmp_path: Path
) -> None:
    """A CA bundle of two CAs and a CRL file with one CRL each: the reload reads both, as
    the handshake does, not only the first."""
    main, other = certs.main, certs.other
    bundle, crl = tmp_path / "bundle.pem", tmp_path / "crl.pem"
    bundle.write_bytes(main.ca.read_bytes() + other.ca.read_bytes())
    issuers = [(load_key(pki.dir / "ca-key.pem"), load_cert(pki.ca)) for pki in (main, other)]
    now = datetime.now(UTC)
    write_crls(crl, [(key, ca, []) for key, ca in issuers], now)
    server, metrics = start_server(
        programs, *main.server.args(), "--tls-ca", str(bundle), "--tls-crl", str(crl),
        "--link", f"redis=127.0.0.1:{redis_port}",
    )  # fmt: skip
    since = server.program.mark()
    alice = programs.client(
        server, "--tls-ca", str(main.ca), *main.client("alice").args(), service="redis"
    )
    mallory = programs.client(
        server, "--tls-ca", str(main.ca), *other.client("mallory").args(), service="redis"
    )
    wait_up(server, alice, "alice", since)
    wait_up(server, mallory, "mallory", since)

    serial = load_cert(other.client("mallory").cert).serial_number
    (main_ca, other_ca) = issuers
    write_crls(crl, [(*main_ca, []), (*other_ca, [serial])], now)
    since = reload(server)

    (line,) = closing_lines(server, since, mallory)
    assert "its certificate was revoked" in line, line
    assert closed_count(metrics, "certificate_revoked") == 1
    assert closing_lines(server, since, alice) == []
