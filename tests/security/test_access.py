"""Per-identity access: each client is shown, and reaches, only what its rules grant.

Identities are the names on the client certificates (mutual TLS). A stream naming a service the
identity may not reach is answered ``unknown_service``, as if it did not exist, and reset (the
server's log says ``not_allowed``); so is one naming a ``host:port``: the server never dials
anything but its catalog. Rules withdrawn by a reload close the sessions that lost everything.
"""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

import pytest

from tests.security.conftest import (
    Certificates,
    Client,
    Programs,
    RawTunnel,
    Server,
    consumer_receives,
    echo,
    stream_header,
    tls_connect,
    tls_context,
    wait_up,
)
from tunnel.errors import Reason
from tunnel.protocol.messages import ServiceInfo, Welcome


@pytest.fixture(scope="module")
def ruled(
    module_programs: Programs, certs: Certificates, echo_port: int
) -> tuple[Server, Client, Client]:
    """A server offering redis and db (both the echo backend) to alice and bob, one each."""
    pki = certs.main
    server = module_programs.server(
        *pki.server_args(),
        "--link", f"redis=127.0.0.1:{echo_port}",
        "--link", f"db=127.0.0.1:{echo_port}",
        "--access", "alice=redis",
        "--access", "bob=db",
    )  # fmt: skip
    ca, since = ["--tls-ca", str(pki.ca)], server.program.mark()
    alice = module_programs.client(server, *ca, *pki.client("alice").args(), service="redis")
    bob = module_programs.client(server, *ca, *pki.client("bob").args(), service="db")
    return server, wait_up(server, alice, "alice", since), wait_up(server, bob, "bob", since)


def test_each_identity_sees_only_its_services(ruled: tuple[Server, Client, Client]) -> None:
    server, alice, bob = ruled
    assert "offering redis\n" in alice.program.text()
    assert "offering db\n" in bob.program.text()
    log = server.program.text()
    assert f"127.0.0.1:{alice.peer_port} (alice) as alice, protocol 2, 1 of 2 services" in log
    assert f"127.0.0.1:{bob.peer_port} (bob) as bob, protocol 2, 1 of 2 services" in log
    assert echo(alice.port, b"alice\n") == b"alice\n"
    assert echo(bob.port, b"bob\n") == b"bob\n"


def test_client_cannot_expose_what_it_is_not_shown(
    programs: Programs, ruled: tuple[Server, Client, Client], certs: Certificates
) -> None:
    server, alice, _ = ruled
    pki = certs.main
    greedy = programs.client(
        server, "--tls-ca", str(pki.ca), *pki.client("alice").args(), service="db"
    )
    # It keeps running (its server may offer db later), says so once, and refuses consumers.
    warning = greedy.program.wait_for(r"WARNING .*'db'.*").group(0)
    assert "does not offer 'db'" in warning and "(offered: redis)" in warning, warning
    with contextlib.suppress(ConnectionResetError):
        assert echo(greedy.port, b"db?\n") == b""
    assert greedy.program.alive()
    assert echo(alice.port) == b"still serving\n"


def test_streams_on_the_wire(
    ruled: tuple[Server, Client, Client], certs: Certificates, echo_port: int
) -> None:
    """alice's own minimal client: the answers and resets, byte for byte."""
    server, *_ = ruled
    since = server.program.mark()
    context = tls_context(certs.main, certs.main.client("alice"))
    with tls_connect(server, context) as sock:
        raw = RawTunnel(sock)
        raw.hello()
        welcome = raw.next_message()
        assert isinstance(welcome, Welcome), welcome
        assert welcome.catalog == (ServiceInfo("redis", echo_port),)

        cases = {
            "db": Reason.UNKNOWN_SERVICE,  # hidden by the rules: answered as if absent
            "127.0.0.1:6379": Reason.UNKNOWN_SERVICE,
            f"127.0.0.1:{echo_port}": Reason.UNKNOWN_SERVICE,  # the backend's own address
        }
        for name, reason in cases.items():
            stream = raw.open(stream_header(name), b"PING\r\n")
            answer, rest = raw.answer(stream)
            assert answer is not None and answer.reason is reason, (name, answer)
            assert rest == b""
            assert raw.wait(lambda s=stream: s in raw.reset)  # type: ignore[misc]

        allowed = raw.open(stream_header("redis"), b"hello\n")
        raw.wait(lambda: len(raw.streams[allowed]) >= 3 + 6)
        answer, rest = raw.answer(allowed)
        assert answer is not None and answer.ok and rest == b"hello\n"

    lines = server.program.lines(since)
    assert any("as alice to 'db' refused (not_allowed)" in line for line in lines), lines
    # Unknown names are one fault for the log's throttle: the first is logged.
    assert any("to '127.0.0.1:6379' refused (unknown_service)" in line for line in lines), lines


def test_access_withdrawn_by_reload_closes_the_session(
    programs: Programs, certs: Certificates, echo_port: int, tmp_path: Path
) -> None:
    pki = certs.main
    config = tmp_path / "server.toml"
    config.write_text(f'[links]\necho = "127.0.0.1:{echo_port}"\n\n[access]\n'
                      'alice = "echo"\nbob = "echo"\n')  # fmt: skip
    server = programs.server(*pki.server_args(), "--config", str(config))
    ca, since = ["--tls-ca", str(pki.ca)], server.program.mark()
    alice = programs.client(server, *ca, *pki.client("alice").args())
    bob = programs.client(server, *ca, *pki.client("bob").args())
    wait_up(server, alice, "alice", since)
    wait_up(server, bob, "bob", since)
    since, alice_since = server.program.mark(), alice.program.mark()

    config.write_text(f'[links]\necho = "127.0.0.1:{echo_port}"\n\n[access]\nbob = "echo"\n')
    server.program.send(signal.SIGHUP)

    closing = server.program.wait_for(r".*closing session with .*", since).group(0)
    assert f"127.0.0.1:{alice.peer_port} (alice)" in closing, closing
    assert "access for 'alice' was withdrawn" in closing
    alice.program.wait_for(r"access for 'alice' was withdrawn", alice_since)
    refused = alice.program.wait_for(r".*refused this client.*", alice_since).group(0)
    assert "'alice' may reach no service here" in refused, refused
    assert consumer_receives(alice.port, timeout=1.0) == b""
    assert echo(bob.port) == b"still serving\n"
    assert bob.program.text().count("tunnel up to ") == 1
    assert f"127.0.0.1:{bob.peer_port}" not in "".join(server.program.lines(since))
