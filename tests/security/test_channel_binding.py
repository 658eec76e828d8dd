"""A token proved over TLS is bound to that TLS connection (RFC 5929 tls-server-end-point).

The attack: a man in the middle holds a certificate the client trusts (here one from a second
CA in the client's --tls-ca bundle), terminates the client's TLS, and opens its own TLS
connection to the real server, relaying the plaintext between the two. Without a binding the
token exchange passes through untouched and the relay keeps an authenticated session. With it,
the client's proof covers the relay's certificate and the server's check covers its own: the
server refuses, and both ends say why in one line.

A peer that asks for an unbound (version 1) token exchange over TLS, as a man in the middle
stripping version 2 from the hello would, is refused with a line telling it to upgrade.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.reliability.loopthread import LoopThread
from tests.security.conftest import (
    LOOPBACK,
    Certificates,
    Programs,
    RawTunnel,
    Server,
    assert_not_let_in,
    assert_one_client_line,
    bad_attempt,
    echo,
    tls_connect,
    tls_context,
)
from tests.security.hostileserver import HostileServer
from tunnel.errors import Reason
from tunnel.protocol.messages import Hello, Refusal, Welcome, encode_message
from tunnel.security import auth

SECRET = "5be1d0c4a9e84f6b8d2c7a3e1f0b9d8c"


class TlsRelay:
    """A TLS-terminating relay on loopback: it presents its own certificate to whoever dials
    it, opens a connection of its own to ``target`` (TLS with ``back``, else plaintext), and
    copies the plaintext both ways."""

    def __init__(self, target: int, front: ssl.SSLContext, back: ssl.SSLContext | None) -> None:
        self.target, self.front, self.back = target, front, back
        self.relayed = 0  # connections whose both TLS handshakes completed
        self.thread = LoopThread("tls-relay")
        self.port = self.thread.call(self._listen)

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    async def _listen(self) -> int:
        self.listener = await asyncio.start_server(self._relay, LOOPBACK, 0, ssl=self.front)
        port: int = self.listener.sockets[0].getsockname()[1]
        return port

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                up_reader, up_writer = await asyncio.open_connection(
                    LOOPBACK, self.target, ssl=self.back,
                    server_hostname=LOOPBACK if self.back else None,
                )  # fmt: skip
        except (OSError, TimeoutError):
            writer.close()
            return
        self.relayed += 1
        await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.thread.call(self._close)
        self.thread.stop()

    async def _close(self) -> None:
        self.listener.close()


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, ssl.SSLError):
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    sink.close()


@dataclass
class Bound:
    server: Server
    ca_bundle: Path  # the server's CA and the relay's: the client trusts both
    token: Path  # alice's token file


@pytest.fixture
def bound(programs: Programs, certs: Certificates, echo_port: int, tmp_path: Path) -> Bound:
    """A TLS server (no client certificates) that takes alice's token."""
    tokens = tmp_path / "server-tokens"
    tokens.write_text(f"alice:{SECRET}\n")
    token = tmp_path / "alice-token"
    token.write_text(f"alice:{SECRET}\n")
    for path in (tokens, token):
        path.chmod(0o600)
    bundle = tmp_path / "trusted.pem"
    bundle.write_bytes(certs.main.ca.read_bytes() + certs.other.ca.read_bytes())
    server = programs.server(
        *certs.main.server_args(mutual=False),
        "--token-file", str(tokens),
        "--link", f"echo=127.0.0.1:{echo_port}",
    )  # fmt: skip
    return Bound(server, bundle, token)


@pytest.fixture
def relay(bound: Bound, certs: Certificates) -> Iterator[TlsRelay]:
    """The man in the middle, with the other CA's certificate for 127.0.0.1."""
    front = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    front.load_cert_chain(str(certs.other.server.cert), str(certs.other.server.key))
    back = tls_context(certs.main)
    relay = TlsRelay(bound.server.port, front, back)
    try:
        yield relay
    finally:
        relay.close()


def client_args(bound: Bound) -> list[str]:
    return ["--tls-ca", str(bound.ca_bundle), "--token-file", str(bound.token)]


def test_a_token_over_tls_still_brings_the_session_up_with_protocol_2(
    programs: Programs, bound: Bound
) -> None:
    since = bound.server.program.mark()
    client = programs.good_client(bound.server, *client_args(bound), identity="alice")
    assert echo(client.port) == b"still serving\n"
    bound.server.program.wait_for(r"session up with .* \(alice\) as alice, protocol 2", since)


def test_a_tls_terminating_relay_cannot_keep_the_token_session(
    programs: Programs, bound: Bound, relay: TlsRelay
) -> None:
    since = bound.server.program.mark()
    attempt = bad_attempt(programs, relay.address, *client_args(bound))
    assert relay.relayed >= 1  # the client trusted the relay: only the binding stops it
    assert_not_let_in(attempt)
    line = assert_one_client_line(
        attempt, "refused this client", "wrong or unknown token for 'alice'", "channel binding"
    )
    assert relay.address in line, line
    server_lines = bound.server.program.lines(since)
    assert not any("session up" in line for line in server_lines), server_lines
    refused = [line for line in server_lines if "refused 127.0.0.1:" in line]
    assert refused, server_lines
    assert all("channel binding mismatch" in line for line in refused), refused


def test_a_version_1_token_hello_over_tls_is_told_to_upgrade(
    bound: Bound, certs: Certificates
) -> None:
    since = bound.server.program.mark()
    with tls_connect(bound.server, tls_context(certs.main)) as sock:
        raw = RawTunnel(sock)
        raw.control = raw.session.open_stream()
        hello = Hello((1,), "old", "ambassador/1.0", "alice", os.urandom(auth.NONCE_SIZE))
        raw.session.send_data(raw.control, encode_message(hello))
        raw.flush()
        answer = raw.next_message()
        assert isinstance(answer, Refusal), answer
        assert answer.reason is Reason.VERSION_MISMATCH
        assert "upgrade the client" in answer.text, answer.text
        assert "[1]" in answer.text, answer.text
        assert raw.next_message(timeout=3) is None  # and the server hangs up
        local_port = sock.getsockname()[1]
    line = bound.server.program.wait_for(rf".*127\.0\.0\.1:{local_port}.*", since).group(0)
    assert "refused" in line and "upgrade the client" in line, line
    assert "Traceback" not in bound.server.program.text()


def test_a_version_1_client_with_a_certificate_and_no_token_is_still_welcomed(
    programs: Programs, certs: Certificates, echo_port: int
) -> None:
    """Only token proofs need the binding: mutual TLS alone keeps speaking version 1."""
    server = programs.server(*certs.main.server_args(), "--link", f"echo=127.0.0.1:{echo_port}")
    with tls_connect(server, tls_context(certs.main, certs.main.client("alice"))) as sock:
        raw = RawTunnel(sock)
        raw.control = raw.session.open_stream()
        raw.session.send_data(raw.control, encode_message(Hello((1,), "old", "")))
        raw.flush()
        answer = raw.next_message()
    assert isinstance(answer, Welcome), answer
    assert answer.version == 1 and answer.identity == "alice", answer


def test_a_client_refuses_an_unbound_challenge_over_tls(
    programs: Programs, certs: Certificates, tmp_path: Path
) -> None:
    """The other half of a downgrade: something in the path answers the client's hello (which
    lists only version 2) with a version 1 challenge, to get an unbound proof it can relay."""
    nonce = base64.b64encode(os.urandom(auth.NONCE_SIZE)).decode()
    hostile = HostileServer([{"type": "challenge", "nonce": nonce, "version": 1}])
    front = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    front.load_cert_chain(str(certs.main.server.cert), str(certs.main.server.key))
    relay = TlsRelay(int(hostile.address.rsplit(":", 1)[1]), front, None)
    token = tmp_path / "alice-token"
    token.write_text(f"alice:{SECRET}\n")
    token.chmod(0o600)
    try:
        args = ["--tls-ca", str(certs.main.ca), "--token-file", str(token)]
        attempt = bad_attempt(programs, relay.address, *args)
    finally:
        relay.close()
        hostile.stop()
    assert hostile.hellos >= 1
    assert_not_let_in(attempt)
    assert_one_client_line(attempt, "asked for a token proof of protocol 1", "did not offer ([2])")
