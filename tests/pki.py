"""A CA and a server certificate for loopback, written as the roles' TLS files.

Shared by the TLS layer's tests and ``tests.bench.tlspath``; it needs no pytest. The files
come from the project's own issuing code (``tunnel.security.certs``) and writers
(``tunnel.security.pemfiles``), and the settings returned are those the roles build their ``ssl``
contexts from.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from tunnel.security.certs import IssuerKey, issue_server_cert, make_ca, make_crl
from tunnel.security.pemfiles import cert_pem, crl_pem, key_pem, write_private, write_public
from tunnel.security.tls import ClientTls, ServerTls

HOST = "127.0.0.1"


def loopback_pki(directory: Path) -> tuple[ServerTls, ClientTls]:
    """Write ca.pem, server.pem and server-key.pem into ``directory`` (valid for a day)."""
    now = datetime.now(UTC)
    ca_key, ca_cert = make_ca("test CA", 1, now=now)
    key, cert = issue_server_cert(ca_key, ca_cert, "server", [HOST], 1, now=now)
    write_public(directory / "ca.pem", cert_pem(ca_cert))
    write_public(directory / "server.pem", cert_pem(cert))
    write_private(directory / "server-key.pem", key_pem(key))
    server = ServerTls(cert=str(directory / "server.pem"), key=str(directory / "server-key.pem"))
    return server, ClientTls(ca=str(directory / "ca.pem"), server_name=HOST)


def write_crls(
    path: Path,
    revocations: Iterable[tuple[IssuerKey, x509.Certificate, Iterable[int]]],
    now: datetime,
    days: int = 1,
) -> None:
    """One PEM file holding a CRL per (CA key, CA certificate, revoked serials), in order:
    what ``--tls-crl`` is given for a ``--tls-ca`` bundle of several CAs."""
    blocks = [
        crl_pem(make_crl(key, cert, serials, now, days)) for key, cert, serials in revocations
    ]
    write_public(path, b"".join(blocks), force=True)
