"""A server certificate the client must not accept: expired, or for another host.

The client refuses before any tunnel frame is exchanged and says why in one line; the server
logs, once per connection, that the client rejected its certificate; and the server keeps
serving a client that has a legitimate way in.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.security.conftest import (
    Certificates,
    Pair,
    Programs,
    assert_each_refused_once,
    assert_not_let_in,
    assert_one_client_line,
    assert_still_serving,
    bad_attempt,
)


def pin_of(pair: Pair) -> str:
    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + base64.b64encode(hashlib.sha256(spki).digest()).decode()


def test_expired_server_certificate(
    programs: Programs, certs: Certificates, echo_port: int
) -> None:
    expired = certs.expired_server
    server = programs.server(*expired.args(), "--link", f"echo=127.0.0.1:{echo_port}")
    startup = server.program.text()
    assert "expired" in startup and "certs renew" in startup, startup
    # A client that trusts the key itself (--pin) is not checking dates: it stays connected.
    pinned = programs.good_client(server, "--pin", pin_of(expired))
    since = server.program.mark()

    result = bad_attempt(programs, server, "--tls-ca", str(certs.main.ca))

    assert_not_let_in(result)
    assert_one_client_line(result, "the peer's certificate has expired")
    assert_each_refused_once(
        result.server_lines, [pinned.peer_port or 0], "the peer says our certificate has expired"
    )
    assert_still_serving(server, pinned, since)


def test_certificate_for_another_host(
    programs: Programs, certs: Certificates, echo_port: int
) -> None:
    pki = certs.elsewhere  # its server certificate names other.example only
    server = programs.server(
        *pki.server_args(mutual=False), "--link", f"echo=127.0.0.1:{echo_port}"
    )
    right_name = programs.good_client(
        server, "--tls-ca", str(pki.ca), "--server-name", "other.example"
    )
    since = server.program.mark()

    result = bad_attempt(programs, server, "--tls-ca", str(pki.ca))  # --remote 127.0.0.1

    assert_not_let_in(result)
    line = assert_one_client_line(result, "does not name this host", "--server-name", "--san")
    assert "127.0.0.1" in line, line
    assert_each_refused_once(
        result.server_lines, [right_name.peer_port or 0], "the peer rejected our certificate"
    )
    assert_still_serving(server, right_name, since)
