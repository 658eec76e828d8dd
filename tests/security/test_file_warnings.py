"""What a server says about its own files, at start and again on every reload: a TLS key or
token file other users may read, and a CRL past its next update (which makes OpenSSL refuse
every client certificate of its CA, and which the refused handshake must name as such)."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.security.conftest import Certificates, Programs, Server, bad_attempt
from tunnel.security.certs import make_crl
from tunnel.security.pemfiles import crl_pem

SECRET = "a3f1c0de9b7e4d2a8c6b5e4f3a2d1c0b"


def reloaded(server: Server) -> list[str]:
    since = server.program.mark()
    server.program.send(signal.SIGHUP)
    server.program.wait_for(r"reloaded \(SIGHUP\)", since)
    return server.program.lines(since)


def test_readable_key_and_token_file_are_warned_about_at_start_and_on_reload(
    programs: Programs, certs: Certificates, echo_port: int, tmp_path: Path
) -> None:
    pki = certs.main.copy(tmp_path / "pki")
    pki.server.key.chmod(0o644)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice:{SECRET}\n")
    tokens.chmod(0o640)  # group-readable, and this process owns it: nobody else needs to read
    server = programs.server(
        *pki.server_args(), "--token-file", str(tokens), "--link", f"echo=127.0.0.1:{echo_port}"
    )
    for lines in (server.program.lines(), reloaded(server)):
        warnings = [line for line in lines if "can be read by other users" in line]
        assert any(f"TLS key {pki.server.key}" in w and "chmod 600" in w for w in warnings), lines
        assert any(f"token file {tokens}" in w for w in warnings), lines
        assert len(warnings) == 2, warnings

    pki.server.key.chmod(0o600)
    tokens.chmod(0o600)
    assert not [line for line in reloaded(server) if "can be read by other users" in line]


def expired_crl(certs: Certificates, path: Path) -> Path:
    ca = certs.main
    ca_cert = x509.load_pem_x509_certificate(ca.ca.read_bytes())
    ca_key = serialization.load_pem_private_key((ca.dir / "ca-key.pem").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    crl = make_crl(ca_key, ca_cert, [0x1234], datetime.now(UTC) - timedelta(days=3), 1)
    path.write_bytes(crl_pem(crl))
    return path


def test_an_expired_crl_is_named_at_start_and_in_the_refusal(
    programs: Programs, certs: Certificates, echo_port: int, tmp_path: Path
) -> None:
    crl = expired_crl(certs, tmp_path / "crl.pem")
    server = programs.server(
        *certs.main.server_args(), "--tls-crl", str(crl), "--link", f"echo=127.0.0.1:{echo_port}"
    )
    (line,) = [line for line in server.program.lines() if "CRL" in line]
    assert f"CRL {crl} expired on" in line and "certs revoke" in line, line

    attempt = bad_attempt(
        programs, server, "--tls-ca", str(certs.main.ca), *certs.main.client("alice").args()
    )
    refused = [line for line in attempt.server_lines if "refused connection" in line]
    assert refused, attempt.server_lines
    for line in refused:
        assert "the server's CRL has expired" in line, line
        assert "certs revoke" in line, line
        assert "peer's certificate has expired" not in line, line
