"""Tests for ``ambassador-server certs``: run as a user would, then check the files with ssl.

Commands go through ``server.cli.main``, so the exit codes and one-line errors are the ones a
user sees. The end-to-end tests load the files into Python's ``ssl`` and complete real TLS
handshakes over a socket pair: the server requires a client certificate, the client checks the
server's name, as ambassador-server and ambassador-client do.
"""

from __future__ import annotations

import re
import socket
import ssl
import stat
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from server.cli import main
from tunnel.security import certs, pemfiles, tls


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


def ambassador_server(capsys: pytest.CaptureFixture[str], *args: str | Path) -> Run:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main([str(arg) for arg in args])
    captured = capsys.readouterr()
    code = exited.value.code
    return Run(code if isinstance(code, int) else 1, captured.out, captured.err)


def ok(capsys: pytest.CaptureFixture[str], *args: str | Path) -> str:
    run = ambassador_server(capsys, *args)
    assert (run.code, run.err) == (0, ""), run
    return run.out


def one_line_error(run: Run) -> str:
    """The error a failed command printed, checked to be one line and exit status 2."""
    assert run.code == 2, run
    assert "Traceback" not in run.err
    assert run.err.count("\n") == 1 and run.err.startswith("ambassador-server: error: "), run.err
    return run.err.strip()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def pki(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A directory after ``certs init`` with default names and ``certs client alice``."""
    directory = tmp_path / "pki"
    ok(capsys, "certs", "init", directory)
    ok(capsys, "certs", "client", "alice", "--dir", directory)
    return directory


# --- TLS over a socket pair ----------------------------------------------------------------------


@dataclass
class Handshake:
    client_cn: str | None = None  # the CN of the certificate the server verified
    server_error: BaseException | None = None
    client_error: BaseException | None = None
    received: bytes = b""


def server_context(pki: Path, crl: Path | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki / "server.pem", pki / "server-key.pem")
    context.load_verify_locations(pki / "ca.pem")
    context.verify_mode = ssl.CERT_REQUIRED
    # Strict: what Python 3.13's default contexts demand of certificates, so ours pass there too.
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    if crl is not None:
        context.load_verify_locations(crl)
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return context


def client_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the server and its name
    context.load_verify_locations(ca)
    context.load_cert_chain(cert, key)
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, server_name: str) -> Handshake:
    """One TLS connection over a socket pair; the server answers b"ok" once it trusts the client."""
    result = Handshake()
    server_sock, client_sock = socket.socketpair()
    for sock in (server_sock, client_sock):
        sock.settimeout(10)

    def serve() -> None:
        try:
            with server.wrap_socket(server_sock, server_side=True) as tls:
                peer = tls.getpeercert() or {}
                for rdn in peer.get("subject", ()):
                    for key, value in rdn:
                        if key == "commonName":
                            result.client_cn = value
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            result.server_error = exc
        finally:
            server_sock.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(client_sock, server_hostname=server_name) as tls:
            result.received = tls.recv(2)
    except (ssl.SSLError, OSError) as exc:
        result.client_error = exc
    finally:
        client_sock.close()
        thread.join(10)
    assert not thread.is_alive()
    return result


def alice_context(pki: Path) -> ssl.SSLContext:
    return client_context(pki / "ca.pem", pki / "alice.pem", pki / "alice-key.pem")


# --- tests ---------------------------------------------------------------------------------------


def test_init_writes_a_private_directory_and_says_what_next(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "pki"
    out = ok(capsys, "certs", "init", directory, "--san", "10.0.0.5", "--san", "big-server")
    assert mode(directory) == 0o700
    assert {p.name: mode(p) for p in directory.iterdir()} == {
        "ca.pem": 0o644,
        "ca-key.pem": 0o600,
        "server.pem": 0o644,
        "server-key.pem": 0o600,
        "issued.txt": 0o644,
    }
    server_cert = pemfiles.load_cert(directory / "server.pem")
    assert certs.describe(server_cert, datetime.now(UTC)).sans == ("10.0.0.5", "big-server")
    for name in ("ca.pem", "ca-key.pem", "server.pem", "server-key.pem"):
        assert f"wrote {directory / name}" in out
    assert f"server pin: {certs.spki_pin(server_cert)}" in out
    assert f"ambassador-server certs client NAME --dir {directory}" in out
    assert (
        f"--tls-cert {directory / 'server.pem'} --tls-key {directory / 'server-key.pem'} "
        f"--tls-ca {directory / 'ca.pem'}"
    ) in out
    assert "ambassador-client --remote 10.0.0.5 --tls-ca ca.pem --tls-cert NAME.pem" in out


def test_default_names_are_the_host_name_and_loopback(
    pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    info = certs.describe(pemfiles.load_cert(pki / "server.pem"), datetime.now(UTC))
    assert info.sans == (socket.gethostname().lower(), "localhost", "127.0.0.1", "::1")
    assert info.subject_cn == socket.gethostname()


def test_client_then_show_prints_the_pin_and_days_left(
    pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alice = pemfiles.load_cert(pki / "alice.pem")
    out = ok(capsys, "certs", "show", pki / "alice.pem")
    pin = certs.spki_pin(alice)
    assert re.search(r"^  pin: +sha256:[A-Za-z0-9+/]{43}=$", out, re.M)
    assert f"  pin:      {pin}\n" in out
    assert "(825 days left)" in out
    assert re.search(r"^  subject: +alice$", out, re.M)
    assert re.search(r"^  usage: +client$", out, re.M)
    assert re.search(r"^  CA: +no$", out, re.M)
    assert f"  serial:   {alice.serial_number:#x}\n" in out

    out = ok(capsys, "certs", "show", pki / "ca.pem")
    assert "(3650 days left)" in out
    assert re.search(r"^  CA: +yes", out, re.M)


def test_show_says_expired_and_not_yet_valid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = datetime.now(UTC)
    ca = certs.make_ca("CA", 30, now=now - timedelta(days=40))
    _, old = certs.issue_client_cert(*ca, "old", 10, now=now - timedelta(days=13))
    _, future = certs.issue_client_cert(*ca, "future", 10, now=now + timedelta(days=5))
    pemfiles.write_public(tmp_path / "old.pem", pemfiles.cert_pem(old))
    pemfiles.write_public(tmp_path / "future.pem", pemfiles.cert_pem(future))
    assert "(EXPIRED 3 days ago)" in ok(capsys, "certs", "show", tmp_path / "old.pem")
    assert "(not yet valid (starts in 5 days))" in ok(
        capsys, "certs", "show", tmp_path / "future.pem"
    )


def test_second_init_without_force_is_one_line_and_changes_nothing(
    pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {p.name: p.read_bytes() for p in pki.iterdir()}
    error = one_line_error(ambassador_server(capsys, "certs", "init", pki))
    assert error == f"ambassador-server: error: {pki / 'ca.pem'} exists; pass --force to replace it"
    assert {p.name: p.read_bytes() for p in pki.iterdir()} == before


def test_init_with_force_makes_a_new_ca(pki: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old_pin = certs.spki_pin(pemfiles.load_cert(pki / "ca.pem"))
    ok(capsys, "certs", "init", pki, "--force")
    new_ca = pemfiles.load_cert(pki / "ca.pem")
    assert certs.spki_pin(new_ca) != old_pin
    assert not certs.issued_by(pemfiles.load_cert(pki / "alice.pem"), new_ca)
    assert mode(pki / "ca-key.pem") == 0o600


def test_client_refuses_to_overwrite_and_needs_a_ca(
    pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    error = one_line_error(ambassador_server(capsys, "certs", "client", "alice", "--dir", pki))
    assert error.endswith(f"{pki / 'alice.pem'} exists; pass --force to replace it")
    error = one_line_error(ambassador_server(capsys, "certs", "client", "bob", "--dir", tmp_path))
    assert f"no CA in {tmp_path}" in error and "certs init" in error
    error = one_line_error(ambassador_server(capsys, "certs", "client", "../evil", "--dir", pki))
    assert "bad client name '../evil'" in error
    error = one_line_error(ambassador_server(capsys, "certs", "client", "ca", "--dir", pki))
    assert "bad client name 'ca'" in error
    assert not (tmp_path / "evil.pem").exists()


def test_client_out_dir(pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "for-bob"
    ok(capsys, "certs", "client", "bob", "--dir", pki, "--out-dir", out_dir, "--days", "30")
    assert mode(out_dir / "bob-key.pem") == 0o600
    bob = pemfiles.load_cert(out_dir / "bob.pem")
    assert certs.issued_by(bob, pemfiles.load_cert(pki / "ca.pem"))
    assert certs.describe(bob, datetime.now(UTC)).days_left == 30


def test_errors_for_unreadable_files_are_one_line(
    tmp_path: Path, pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    error = one_line_error(ambassador_server(capsys, "certs", "show", tmp_path / "nope.pem"))
    assert error.endswith(f"{tmp_path / 'nope.pem'}: no such file")
    error = one_line_error(ambassador_server(capsys, "certs", "show", pki / "alice-key.pem"))
    assert error.endswith("holds a private key, expected a certificate")
    error = one_line_error(ambassador_server(capsys, "certs", "revoke", "bogus", "--dir", pki))
    assert "not a serial number" in error


def test_tls_handshake_with_the_files_init_and_client_wrote(pki: Path) -> None:
    server = server_context(pki)
    for name in ("127.0.0.1", "::1", "localhost", socket.gethostname()):
        result = handshake(server, alice_context(pki), name)
        assert result.client_error is None and result.server_error is None, (name, result)
        assert result.client_cn == "alice"
        assert result.received == b"ok"


def test_tls_client_refuses_a_name_the_server_certificate_lacks(pki: Path) -> None:
    result = handshake(server_context(pki), alice_context(pki), "elsewhere.example")
    assert isinstance(result.client_error, ssl.SSLCertVerificationError)
    assert "Hostname mismatch" in result.client_error.verify_message
    assert result.client_cn is None


def test_revoked_client_is_refused_and_others_are_not(
    pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ok(capsys, "certs", "client", "bob", "--dir", pki)
    out = ok(capsys, "certs", "revoke", pki / "alice.pem", "--dir", pki)
    alice = pemfiles.load_cert(pki / "alice.pem")
    assert f"serial {alice.serial_number:#x}" in out and "--tls-crl" in out
    crl = pemfiles.load_crl(pki / "crl.pem")
    assert crl.get_revoked_certificate_by_serial_number(alice.serial_number) is not None
    assert f"{alice.serial_number:#x}" in ok(capsys, "certs", "show", pki / "crl.pem")

    server = server_context(pki, crl=pki / "crl.pem")
    refused = handshake(server, alice_context(pki), "127.0.0.1")
    assert isinstance(refused.server_error, ssl.SSLCertVerificationError)
    assert "revoked" in refused.server_error.verify_message
    assert refused.received == b""
    bob = client_context(pki / "ca.pem", pki / "bob.pem", pki / "bob-key.pem")
    accepted = handshake(server, bob, "127.0.0.1")
    assert accepted.server_error is None and accepted.client_cn == "bob"


def test_revoke_by_serial_adds_to_the_existing_crl(
    pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ok(capsys, "certs", "revoke", "0x1234", "--dir", pki)
    ok(capsys, "certs", "revoke", "4660", "--dir", pki)  # the same serial, in decimal
    ok(capsys, "certs", "revoke", pki / "alice.pem", "--dir", pki)
    crl = pemfiles.load_crl(pki / "crl.pem")
    alice = pemfiles.load_cert(pki / "alice.pem")
    assert sorted(entry.serial_number for entry in crl) == sorted([0x1234, alice.serial_number])
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 3
    ca = pemfiles.load_cert(pki / "ca.pem")
    assert crl.next_update_utc is not None
    assert abs(crl.next_update_utc - ca.not_valid_after_utc) < timedelta(days=1)


def test_renew_replaces_in_place_and_keeps_the_old_file(
    pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old_bytes = (pki / "server.pem").read_bytes()
    old = pemfiles.load_cert(pki / "server.pem")
    out = ok(capsys, "certs", "renew", pki / "server.pem", "--dir", pki, "--days", "90")
    new = pemfiles.load_cert(pki / "server.pem")
    assert (pki / "server.pem.old").read_bytes() == old_bytes
    assert new.serial_number != old.serial_number
    assert new.subject == old.subject
    now = datetime.now(UTC)
    assert certs.describe(new, now).sans == certs.describe(old, now).sans
    assert certs.describe(new, now).usages == ("server",)
    assert certs.describe(new, now).days_left == 90
    assert certs.spki_pin(new) in out

    # The CA too; everything issued before goes on working with both renewed files.
    ok(capsys, "certs", "renew", pki / "ca.pem", "--dir", pki)
    assert certs.describe(pemfiles.load_cert(pki / "ca.pem"), now).days_left == 3650
    result = handshake(server_context(pki), alice_context(pki), "127.0.0.1")
    assert result.server_error is None and result.client_cn == "alice"


def test_renew_needs_the_ca_that_issued_it(
    pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ok(capsys, "certs", "init", tmp_path / "other")
    run = ambassador_server(
        capsys, "certs", "renew", pki / "alice.pem", "--dir", tmp_path / "other"
    )
    assert "was not issued by the CA" in one_line_error(run)
    assert not (pki / "alice.pem.old").exists()


def test_certs_alone_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    out = ok(capsys, "certs")
    for command in ("init", "client", "show", "renew", "revoke"):
        assert re.search(rf"^  {command} ", out, re.M)


def test_renew_and_revoke_say_a_reload_picks_them_up(
    pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ok(capsys, "certs", "renew", pki / "alice.pem", "--dir", pki)
    assert "reload the program that uses it" in out
    assert "`systemctl reload ambassador-client`" in out
    out = ok(capsys, "certs", "renew", pki / "server.pem", "--dir", pki)
    assert "`systemctl reload ambassador-server`" in out
    out = ok(capsys, "certs", "revoke", pki / "alice.pem", "--dir", pki)
    assert "reload it if it runs (SIGHUP" in out
    for said in (ok(capsys, "certs", "renew", pki / "alice.pem", "--dir", pki), out):
        assert "restart the" not in said and "restart it" not in said, said


def test_revoking_a_renewed_client_revokes_its_earlier_certificates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = tmp_path / "pki"
    ok(capsys, "certs", "init", pki, "--san", "127.0.0.1")
    ok(capsys, "certs", "client", "c1", "--dir", pki)
    # What the client host still holds (and a live session still uses) after the renewals.
    first = tmp_path / "c1-first.pem"
    first.write_bytes((pki / "c1.pem").read_bytes())
    ok(capsys, "certs", "renew", pki / "c1.pem", "--dir", pki)
    second = pemfiles.load_cert(pki / "c1.pem")
    ok(capsys, "certs", "renew", pki / "c1.pem", "--dir", pki)  # c1.pem.old is now `second`
    newest = pemfiles.load_cert(pki / "c1.pem")
    old = pemfiles.load_cert(first)

    out = ok(capsys, "certs", "revoke", pki / "c1.pem", "--dir", pki)
    serials = [old.serial_number, second.serial_number, newest.serial_number]
    for serial in serials:
        assert f"{serial:#x}" in out
    assert "every earlier client certificate issued to 'c1'" in out
    crl = pemfiles.load_crl(pki / "crl.pem")
    assert sorted(entry.serial_number for entry in crl) == sorted(serials)

    server = server_context(pki, crl=pki / "crl.pem")
    for cert in (first, pki / "c1.pem"):
        refused = handshake(server, client_context(pki / "ca.pem", cert, pki / "c1-key.pem"),
                            "127.0.0.1")  # fmt: skip
        assert isinstance(refused.server_error, ssl.SSLCertVerificationError), cert
        assert "revoked" in refused.server_error.verify_message
        assert refused.received == b""


def test_revoke_says_when_no_earlier_certificate_is_on_record(
    pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (pki / "issued.txt").unlink()  # a directory made before the record was kept
    out = ok(capsys, "certs", "revoke", pki / "alice.pem", "--dir", pki)
    assert "records no other client certificate issued to 'alice'" in out
    assert "revoke any other by its serial" in out


def test_renew_finds_the_ca_beside_the_file(
    pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    old = pemfiles.load_cert(pki / "alice.pem")
    ok(capsys, "certs", "renew", pki / "alice.pem")
    assert pemfiles.load_cert(pki / "alice.pem").serial_number != old.serial_number
    assert (pki / "alice.pem.old").exists()

    # A copy away from its CA: the line asks for --dir rather than suggesting a new CA.
    copy = elsewhere / "alice.pem"
    copy.write_bytes((pki / "alice.pem").read_bytes())
    message = one_line_error(ambassador_server(capsys, "certs", "renew", copy))
    assert "give --dir" in message and "certs init" not in message


def test_server_reissues_the_server_certificate_under_the_same_ca(
    pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert handshake(server_context(pki), alice_context(pki), "new-name.example").client_error
    old = pemfiles.load_cert(pki / "server.pem")
    ca_before = (pki / "ca.pem").read_bytes()
    sans = [*certs.describe(old, datetime.now(UTC)).sans, "new-name.example"]
    out = ok(capsys, "certs", "server", "--dir", pki, *(f"--san={name}" for name in sans))
    new = pemfiles.load_cert(pki / "server.pem")
    assert (pki / "ca.pem").read_bytes() == ca_before
    assert certs.spki_pin(new) == certs.spki_pin(old) and certs.spki_pin(new) in out
    assert certs.describe(new, datetime.now(UTC)).sans == tuple(sans)
    assert pemfiles.load_cert(pki / "server.pem.old").serial_number == old.serial_number
    assert "reload ambassador-server" in out

    # alice's certificate, issued before, still works; the new name verifies, the old ones too.
    server = server_context(pki)
    for name in ("new-name.example", "127.0.0.1"):
        result = handshake(server, alice_context(pki), name)
        assert result.client_error is None and result.server_error is None, (name, result)
        assert result.client_cn == "alice"


def test_server_without_san_keeps_the_names_and_new_key_changes_the_pin(
    pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = pemfiles.load_cert(pki / "server.pem")
    ok(capsys, "certs", "server", "--dir", pki, "--new-key")
    new = pemfiles.load_cert(pki / "server.pem")
    now = datetime.now(UTC)
    assert certs.describe(new, now).sans == certs.describe(old, now).sans
    assert certs.spki_pin(new) != certs.spki_pin(old)
    result = handshake(server_context(pki), alice_context(pki), "127.0.0.1")
    assert result.server_error is None and result.client_cn == "alice"


def test_a_bundle_of_two_cas_in_tls_ca_admits_clients_of_either(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # CA rotation: the old and the new CA trusted side by side, as docs/operations.md says.
    old, new, stranger = tmp_path / "old", tmp_path / "new", tmp_path / "stranger"
    for directory, client in ((old, "before"), (new, "after"), (stranger, "mallory")):
        ok(capsys, "certs", "init", directory, "--san", "127.0.0.1")
        ok(capsys, "certs", "client", client, "--dir", directory)
    bundle = tmp_path / "ca-bundle.pem"
    bundle.write_bytes((old / "ca.pem").read_bytes() + (new / "ca.pem").read_bytes())

    for server_dir in (old, new):  # before and after the server's own certificate moves
        server = tls.server_context(
            tls.ServerTls(
                cert=str(server_dir / "server.pem"),
                key=str(server_dir / "server-key.pem"),
                ca=str(bundle),
            )
        )
        for directory, client in ((old, "before"), (new, "after"), (stranger, "mallory")):
            context = tls.client_context(
                tls.ClientTls(
                    ca=str(bundle),
                    cert=str(directory / f"{client}.pem"),
                    key=str(directory / f"{client}-key.pem"),
                )
            )
            result = handshake(server, context, "127.0.0.1")
            if client == "mallory":
                assert isinstance(result.server_error, ssl.SSLError), result
                assert result.received == b""
            else:
                assert result.server_error is None and result.client_error is None, result
                assert result.client_cn == client
