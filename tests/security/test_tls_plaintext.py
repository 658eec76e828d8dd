"""TLS and plaintext crossed, and a plaintext server reachable from the network.

A client speaking TLS to a plaintext server (and the reverse, in ``test_tls_handshake``) must
be turned away with a line on each side that says so, and the server must keep serving its
plaintext clients. A server without a token listening beyond loopback warns when it is plaintext
or when its TLS asks for no client certificate: anyone who reaches the port reaches the backends.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.security.conftest import (
    LOOPBACK,
    Attempt,
    Certificates,
    Client,
    Programs,
    Server,
    assert_each_refused_once,
    assert_not_let_in,
    assert_still_serving,
    bad_attempt,
    pick_free_port,
)
from tunnel.protocol.session import Role, Session


@pytest.fixture(scope="module")
def plain(module_programs: Programs, echo_port: int) -> tuple[Server, Client]:
    """A plaintext server on loopback, and a plaintext client connected throughout."""
    server = module_programs.server("--link", f"echo=127.0.0.1:{echo_port}")
    return server, module_programs.good_client(server)


@pytest.fixture(scope="module")
def tls_to_plain(
    module_programs: Programs, plain: tuple[Server, Client], certs: Certificates
) -> tuple[Attempt, int]:
    server, _ = plain
    since = server.program.mark()
    return bad_attempt(module_programs, server, "--tls-ca", str(certs.main.ca)), since


def test_tls_client_to_plaintext_port_is_turned_away(
    tls_to_plain: tuple[Attempt, int], plain: tuple[Server, Client]
) -> None:
    result, since = tls_to_plain
    server, good = plain
    assert_not_let_in(result)
    assert result.client_warnings, result.client_log
    for line in result.client_warnings:
        assert f"TLS with {server.address} failed" in line, line
    assert_still_serving(server, good, since)


def test_tls_client_to_plaintext_port_is_logged_by_the_server(
    tls_to_plain: tuple[Attempt, int], plain: tuple[Server, Client]
) -> None:
    result, _ = tls_to_plain
    _, good = plain
    assert_each_refused_once(result.server_lines, [good.peer_port or 0], "TLS")


class FakePeer:
    """A loopback listener answering each connection with ``behave(socket, index)``."""

    def __init__(self, behave: Callable[[socket.socket, int], None]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.behave = behave
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve)
        self.thread.start()

    def _serve(self) -> None:
        index = 0
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    self.behave(conn, index)
            index += 1

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        self.listener.close()


@contextlib.contextmanager
def fake_peer(behave: Callable[[socket.socket, int], None]) -> Iterator[FakePeer]:
    peer = FakePeer(behave)
    try:
        yield peer
    finally:
        peer.close()


def answer_like_a_plaintext_server(conn: socket.socket, index: int) -> None:
    """What a plaintext ambassador-server's session answers to what arrives: a Go Away."""
    session = Session(Role.SERVER)
    session.receive_data(conn.recv(65536), 0.0)
    conn.sendall(session.data_to_send())


def test_client_says_a_plaintext_peer_does_not_speak_tls(
    programs: Programs, certs: Certificates
) -> None:
    with fake_peer(answer_like_a_plaintext_server) as peer:
        result = bad_attempt(programs, f"127.0.0.1:{peer.port}", "--tls-ca", str(certs.main.ca))
    assert result.client_warnings, result.client_log
    for line in result.client_warnings:
        assert "does not speak TLS" in line, line


def hang_up_alternately(conn: socket.socket, index: int) -> None:
    """Read what the client sends, then close: cleanly, or with a reset, in turn."""
    conn.recv(65536)
    if index % 2:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def test_client_logs_one_line_for_the_same_hang_up(programs: Programs) -> None:
    with fake_peer(hang_up_alternately) as peer:
        result = bad_attempt(programs, f"127.0.0.1:{peer.port}", hold=1.0)
    assert len(result.client_warnings) == 1, "\n".join(result.client_warnings)


def test_plaintext_without_token_beyond_loopback_warns(
    programs: Programs, plain: tuple[Server, Client], echo_port: int
) -> None:
    server = programs.server(
        "--link", f"echo=127.0.0.1:{echo_port}", host="0.0.0.0", port=pick_free_port()
    )
    warnings = [line for line in server.program.lines() if " WARNING " in line]
    assert len(warnings) == 1, warnings
    line = warnings[0]
    for words in ("plaintext", "echo", "--tls-cert", "--token-file"):
        assert words in line, line
    server.program.stop()
    # The same server on loopback is not exposed, and says nothing of the kind.
    loopback, _ = plain
    assert "plaintext without a token" not in loopback.program.text()


@pytest.mark.parametrize(
    ("mutual", "token", "host", "warns"),
    [
        (False, False, "0.0.0.0", True),
        (True, False, "0.0.0.0", False),  # client certificates required
        (False, True, "0.0.0.0", False),  # a token required
        (False, False, LOOPBACK, False),  # not reachable from the network
    ],
)
def test_tls_without_client_authentication_beyond_loopback_warns(
    programs: Programs,
    certs: Certificates,
    echo_port: int,
    tmp_path: Path,
    mutual: bool,
    token: bool,
    host: str,
    warns: bool,
) -> None:
    args = ["--link", f"echo=127.0.0.1:{echo_port}", *certs.main.server_args(mutual)]
    if token:
        tokens = tmp_path / "tokens"
        tokens.write_text("alice:" + "s3cr3t-" * 6 + "\n")
        tokens.chmod(0o600)
        args += ["--token-file", str(tokens)]
    server = programs.server(*args, host=host, port=pick_free_port())
    warnings = [line for line in server.program.lines() if " WARNING " in line]
    if not warns:
        assert warnings == []
        return
    assert len(warnings) == 1, warnings
    for words in ("TLS", "without client certificates or a token", "echo", "--tls-ca"):
        assert words in warnings[0], warnings[0]
