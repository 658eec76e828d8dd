"""Tests for tunnel.security.certs: the private CA, its certificates, pins, CRLs and key files.

Everything is real: certificates are built and checked with cryptography, files are written in
``tmp_path``. Time is the fixed ``NOW`` passed in, as the module never reads a clock.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tunnel.errors import ConfigError
from tunnel.security import certs, pemfiles
from tunnel.security.certs import (
    BACKDATE,
    Validity,
    check_key_matches,
    describe,
    issue_client_cert,
    issue_server_cert,
    make_ca,
    make_crl,
    parse_pin,
    renew,
    spki_digest,
    spki_pin,
)
from tunnel.security.pemfiles import (
    load_cert,
    load_crl,
    load_key,
    load_pair,
    write_private,
    write_public,
)

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
CA = tuple[ec.EllipticCurvePrivateKey, x509.Certificate]
E = TypeVar("E", bound=x509.ExtensionType)


def one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    """The error's message, checked to be a single line."""
    message = str(error.value)
    assert message.splitlines() == [message], message
    return message


def ext(cert: x509.Certificate, kind: type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(kind)


def common_name(cert: x509.Certificate) -> object:
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


@pytest.fixture
def ca() -> CA:
    return make_ca("Test CA", 3650, now=NOW)


@pytest.fixture
def umask() -> Iterator[None]:
    """Restores the process umask after a test that changes it."""
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


# --- issuing -----------------------------------------------------------------------------------


def test_ca_may_sign_leaves_and_crls_only(ca: CA) -> None:
    key, cert = ca
    cert.verify_directly_issued_by(cert)  # self-signed
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    constraints = ext(cert, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value == x509.BasicConstraints(ca=True, path_length=0)
    usage = ext(cert, x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert ext(cert, x509.SubjectKeyIdentifier).value == (
        x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    )
    assert cert.not_valid_before_utc == NOW - BACKDATE
    assert cert.not_valid_after_utc == NOW + timedelta(days=3650)


def test_server_cert_names_ips_v4_v6_and_dns(ca: CA) -> None:
    ca_key, ca_cert = ca
    sans = ["big-server", "10.0.0.5", "::1", "[fe80::1]", "Big-Server.example.", "10.0.0.5"]
    key, cert = issue_server_cert(ca_key, ca_cert, "big-server", sans, 825, now=NOW)
    cert.verify_directly_issued_by(ca_cert)
    check_key_matches(cert, key)
    names = ext(cert, x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["big-server", "big-server.example"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("fe80::1"),
    ]
    assert ext(cert, x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH]
    )
    assert ext(cert, x509.BasicConstraints).value == x509.BasicConstraints(
        ca=False, path_length=None
    )
    ca_ski = ext(ca_cert, x509.SubjectKeyIdentifier).value
    aki = ext(cert, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    assert common_name(cert) == "big-server"
    assert cert.not_valid_after_utc == NOW + timedelta(days=825)


def test_client_cert_carries_its_identity_in_the_cn(ca: CA) -> None:
    ca_key, ca_cert = ca
    key, cert = issue_client_cert(ca_key, ca_cert, "alice", 825, now=NOW)
    cert.verify_directly_issued_by(ca_cert)
    check_key_matches(cert, key)
    assert common_name(cert) == "alice"
    assert ext(cert, x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    assert not certs.is_ca(cert)


def test_every_certificate_gets_its_own_key_and_serial(ca: CA) -> None:
    ca_key, ca_cert = ca
    issued = [issue_client_cert(ca_key, ca_cert, "alice", 1, now=NOW) for _ in range(3)]
    assert len({cert.serial_number for _, cert in issued}) == 3
    assert len({spki_pin(cert) for _, cert in issued}) == 3


@pytest.mark.parametrize(
    "san", ["bad name", "", "a..b", "-x.example", "x-.example", "bücher.example", "a/b", "*"]
)
def test_bad_san_is_one_clear_line(ca: CA, san: str) -> None:
    with pytest.raises(ConfigError) as error:
        issue_server_cert(*ca, "srv", [san], 825, now=NOW)
    assert "expected an IP address or a DNS name" in one_line(error)


def test_wildcard_san_is_allowed(ca: CA) -> None:
    _, cert = issue_server_cert(*ca, "srv", ["*.example.com"], 825, now=NOW)
    assert describe(cert, NOW).sans == ("*.example.com",)


def test_server_cert_needs_a_san(ca: CA) -> None:
    with pytest.raises(ConfigError) as error:
        issue_server_cert(*ca, "srv", [], 825, now=NOW)
    assert "at least one subject alternative name" in one_line(error)


@pytest.mark.parametrize("name", ["", "x" * 65, "tab\there"])
def test_bad_common_name_is_one_clear_line(ca: CA, name: str) -> None:
    with pytest.raises(ConfigError) as error:
        issue_client_cert(*ca, name, 825, now=NOW)
    assert "1 to 64 printable characters" in one_line(error)


def test_signing_with_a_key_that_is_not_the_cas_is_refused(ca: CA) -> None:
    other_key, _ = make_ca("Other CA", 10, now=NOW)
    with pytest.raises(ConfigError) as error:
        issue_client_cert(other_key, ca[1], "alice", 825, now=NOW)
    assert "the CA key does not belong to the CA certificate" in one_line(error)


def test_a_leaf_cannot_act_as_a_ca(ca: CA) -> None:
    key, leaf = issue_client_cert(*ca, "alice", 825, now=NOW)
    with pytest.raises(ConfigError) as error:
        issue_client_cert(key, leaf, "mallory", 825, now=NOW)
    assert "is not a CA certificate" in one_line(error)


def test_now_must_carry_a_timezone() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        make_ca("CA", 10, now=datetime(2025, 1, 1))


def test_zero_days_is_refused() -> None:
    with pytest.raises(ConfigError) as error:
        make_ca("CA", 0, now=NOW)
    assert "at least one day" in one_line(error)


# --- pins --------------------------------------------------------------------------------------


def self_signed(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fixed")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def test_pin_of_a_known_key_is_stable() -> None:
    # The P-256 key whose public point is the curve's generator: its SPKI never changes, so
    # neither may its pin. A change here breaks every --pin users have written down.
    cert = self_signed(ec.derive_private_key(1, ec.SECP256R1()))
    assert spki_pin(cert) == "sha256:XNJS+wzokyQ2+vjM0QQJgbie5K1rn+niorfnGqyyfNM="


def test_pin_is_sha256_of_the_spki_in_standard_base64(ca: CA) -> None:
    _, cert = issue_server_cert(*ca, "srv", ["srv"], 825, now=NOW)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pin = spki_pin(cert)
    assert pin == "sha256:" + base64.b64encode(hashlib.sha256(spki).digest()).decode()
    assert len(pin) == len("sha256:") + 44 and pin.endswith("=")
    assert parse_pin(pin) == spki_digest(cert) == hashlib.sha256(spki).digest()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl program")
def test_pin_matches_the_openssl_recipe(tmp_path: Path, ca: CA) -> None:
    # The recipe operators know from HPKP: public key, DER, SHA-256, base64.
    _, cert = issue_server_cert(*ca, "srv", ["srv"], 825, now=NOW)
    path = tmp_path / "srv.pem"
    path.write_bytes(pemfiles.cert_pem(cert))
    recipe = (
        f"openssl x509 -in {path} -pubkey -noout | openssl pkey -pubin -outform der"
        " | openssl dgst -sha256 -binary | base64"
    )
    output = subprocess.run(["sh", "-c", recipe], capture_output=True, check=True, text=True)
    assert spki_pin(cert) == "sha256:" + output.stdout.strip()


def test_pin_survives_whitespace_around_it(ca: CA) -> None:
    pin = spki_pin(ca[1])
    assert parse_pin(f"  {pin}\n") == spki_digest(ca[1])


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sha256:",
        "sha256",
        "XNJS+wzokyQ2+vjM0QQJgbie5K1rn+niorfnGqyyfNM=",  # no prefix
        "sha1:XNJS+wzokyQ2+vjM0QQJgbie5K1rn+niorfnGqyyfNM=",
        "SHA256:XNJS+wzokyQ2+vjM0QQJgbie5K1rn+niorfnGqyyfNM=",
        "sha256:XNJS-wzokyQ2-vjM0QQJgbie5K1rn-niorfnGqyyfNM=",  # base64url
        "sha256:XNJS+wzokyQ2+vjM0QQJgbie5K1rn+niorfnGqyyfNM",  # padding dropped
        "sha256:XNJS+wzokyQ2+vjM0QQJgbie5K1rn+niorfnGqyyfA==",  # 31 bytes
        "sha256:" + "5c" * 32,  # hex: one format only
        "sha256:XNJS+wzokyQ2\n+vjM0QQJgbie5K1rn+niorfnGqyyfNM=",
        "garbage\nwith a second line " * 40,
    ],
)
def test_parse_pin_rejects_anything_else_in_one_line(text: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_pin(text)
    message = one_line(error)
    assert message.startswith("bad pin ")
    assert "sha256:<base64 of the SHA-256 of the public key, 44 characters>" in message
    assert len(message) < 300


# --- describe ----------------------------------------------------------------------------------


def test_describe_reports_what_a_person_checks(ca: CA) -> None:
    _, cert = issue_server_cert(*ca, "srv", ["srv.example", "10.1.2.3", "::1"], 825, now=NOW)
    info = describe(cert, NOW + timedelta(days=25))
    assert info.subject_cn == "srv"
    assert info.issuer_cn == "Test CA"
    assert info.sans == ("srv.example", "10.1.2.3", "::1")
    assert info.usages == ("server",)
    assert info.not_before == NOW - BACKDATE
    assert info.not_after == NOW + timedelta(days=825)
    assert info.validity is Validity.VALID
    assert info.days_left == 800
    assert info.validity_text == "800 days left"
    assert info.serial == cert.serial_number
    assert not info.is_ca
    assert info.pin == spki_pin(cert)
    assert describe(ca[1], NOW).is_ca


def test_a_fresh_certificate_has_all_its_days_left(ca: CA) -> None:
    _, cert = issue_client_cert(*ca, "alice", 825, now=NOW)
    assert describe(cert, NOW + timedelta(seconds=3)).validity_text == "825 days left"


@pytest.mark.parametrize(
    ("offset", "validity", "text"),
    [
        (timedelta(days=9, hours=1), Validity.VALID, "1 day left"),
        (timedelta(days=9, hours=20), Validity.VALID, "expires in less than a day"),
        (timedelta(days=10, hours=1), Validity.EXPIRED, "EXPIRED less than a day ago"),
        (timedelta(days=13), Validity.EXPIRED, "EXPIRED 3 days ago"),
        (-timedelta(hours=2), Validity.NOT_YET_VALID, "not yet valid (starts in less than a day)"),
        (-timedelta(days=3), Validity.NOT_YET_VALID, "not yet valid (starts in 3 days)"),
    ],
)
def test_validity_for_a_given_now(ca: CA, offset: timedelta, validity: Validity, text: str) -> None:
    _, cert = issue_client_cert(*ca, "alice", 10, now=NOW)
    info = describe(cert, NOW + offset)
    assert info.validity is validity
    assert info.validity_text == text


# --- CRLs --------------------------------------------------------------------------------------


def test_crl_lists_the_revoked_serials(ca: CA) -> None:
    ca_key, ca_cert = ca
    _, alice = issue_client_cert(ca_key, ca_cert, "alice", 825, now=NOW)
    _, bob = issue_client_cert(ca_key, ca_cert, "bob", 825, now=NOW)
    crl = make_crl(ca_key, ca_cert, [alice.serial_number], NOW, 30)
    assert certs.crl_issued_by(crl, ca_cert)
    entry = crl.get_revoked_certificate_by_serial_number(alice.serial_number)
    assert entry is not None and entry.revocation_date_utc == NOW
    assert crl.get_revoked_certificate_by_serial_number(bob.serial_number) is None
    assert crl.next_update_utc == NOW + timedelta(days=30)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 1


def test_crl_update_keeps_earlier_entries_and_their_dates(ca: CA) -> None:
    ca_key, ca_cert = ca
    first = make_crl(ca_key, ca_cert, [11], NOW, 30)
    later = NOW + timedelta(days=5)
    second = make_crl(ca_key, ca_cert, [22, 11], later, 30, previous=first)
    assert {entry.serial_number: entry.revocation_date_utc for entry in second} == {
        11: NOW,
        22: later,
    }
    assert second.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2


def test_crl_of_another_ca_is_not_extended(ca: CA) -> None:
    other = make_crl(*make_ca("Other CA", 10, now=NOW), [1], NOW, 30)
    with pytest.raises(ConfigError) as error:
        make_crl(*ca, [2], NOW, 30, previous=other)
    assert "another CA" in one_line(error)
    assert not certs.crl_issued_by(other, ca[1])


# --- renew -------------------------------------------------------------------------------------


def test_renew_keeps_subject_names_usage_and_key(ca: CA) -> None:
    ca_key, ca_cert = ca
    key, old = issue_server_cert(ca_key, ca_cert, "srv", ["srv", "10.0.0.5", "::1"], 90, now=NOW)
    later = NOW + timedelta(days=80)
    new = renew(ca_key, ca_cert, old, 365, later)
    new.verify_directly_issued_by(ca_cert)
    check_key_matches(new, key)  # the existing key file goes on working
    assert new.subject == old.subject
    assert new.serial_number != old.serial_number
    assert ext(new, x509.SubjectAlternativeName) == ext(old, x509.SubjectAlternativeName)
    assert ext(new, x509.ExtendedKeyUsage) == ext(old, x509.ExtendedKeyUsage)
    assert ext(new, x509.AuthorityKeyIdentifier) == ext(old, x509.AuthorityKeyIdentifier)
    assert spki_pin(new) == spki_pin(old)
    assert new.not_valid_after_utc == later + timedelta(days=365)


def test_renewed_ca_still_verifies_what_the_old_one_issued(ca: CA) -> None:
    ca_key, ca_cert = ca
    _, leaf = issue_client_cert(ca_key, ca_cert, "alice", 825, now=NOW)
    new_ca = renew(ca_key, ca_cert, ca_cert, 7300, NOW + timedelta(days=3000))
    new_ca.verify_directly_issued_by(new_ca)
    leaf.verify_directly_issued_by(new_ca)
    assert certs.is_ca(new_ca)
    assert new_ca.serial_number != ca_cert.serial_number


def test_renew_refuses_a_certificate_of_another_ca(ca: CA) -> None:
    _, stranger = issue_client_cert(*make_ca("Other CA", 10, now=NOW), "eve", 5, now=NOW)
    with pytest.raises(ConfigError) as error:
        renew(*ca, stranger, 30, NOW)
    assert "was not issued by the CA 'Test CA'" in one_line(error)


# --- files -------------------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("umask")
def test_key_files_are_0600_and_certificates_0644_whatever_the_umask(tmp_path: Path) -> None:
    os.umask(0)
    write_private(tmp_path / "key.pem", b"secret", force=False)
    os.umask(0o077)
    write_public(tmp_path / "cert.pem", b"public", force=False)
    assert mode(tmp_path / "key.pem") == 0o600
    assert mode(tmp_path / "cert.pem") == 0o644
    assert (tmp_path / "key.pem").read_bytes() == b"secret"


def test_existing_files_are_never_overwritten_without_force(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(b"precious")
    for write in (write_private, write_public):
        with pytest.raises(ConfigError) as error:
            write(path, b"new", force=False)
        assert one_line(error) == f"{path} exists; pass --force to replace it"
    assert path.read_bytes() == b"precious"


def test_force_replaces_and_tightens_an_open_key_file(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(b"old")
    path.chmod(0o666)
    write_private(path, b"new", force=True)
    assert path.read_bytes() == b"new"
    assert mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.pem"]  # no temporary file left


def test_a_symlink_planted_at_the_key_path_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    (tmp_path / "key.pem").symlink_to(target)
    with pytest.raises(ConfigError):
        write_private(tmp_path / "key.pem", b"secret", force=False)
    assert not target.exists()


def test_writing_into_a_missing_directory_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        write_public(tmp_path / "nope" / "cert.pem", b"x", force=False)
    assert one_line(error).startswith(f"cannot write {tmp_path / 'nope' / 'cert.pem'}: ")


def test_written_files_load_back(tmp_path: Path, ca: CA) -> None:
    ca_key, ca_cert = ca
    key, cert = issue_client_cert(ca_key, ca_cert, "alice", 825, now=NOW)
    crl = make_crl(ca_key, ca_cert, [cert.serial_number], NOW, 30)
    write_public(tmp_path / "alice.pem", pemfiles.cert_pem(cert))
    write_private(tmp_path / "alice-key.pem", pemfiles.key_pem(key))
    write_public(tmp_path / "crl.pem", pemfiles.crl_pem(crl))
    loaded_cert, loaded_key = load_pair(tmp_path / "alice.pem", tmp_path / "alice-key.pem")
    assert loaded_cert == cert
    assert spki_pin(cert) == spki_pin(loaded_cert)
    check_key_matches(cert, loaded_key)
    assert load_crl(tmp_path / "crl.pem") == crl


def test_key_not_matching_its_certificate_is_detected(tmp_path: Path, ca: CA) -> None:
    _, alice = issue_client_cert(*ca, "alice", 825, now=NOW)
    bob_key, _ = issue_client_cert(*ca, "bob", 825, now=NOW)
    with pytest.raises(ConfigError) as error:
        check_key_matches(alice, bob_key)
    assert "does not belong to the certificate" in one_line(error)
    write_public(tmp_path / "alice.pem", pemfiles.cert_pem(alice))
    write_private(tmp_path / "bob-key.pem", pemfiles.key_pem(bob_key))
    with pytest.raises(ConfigError) as error:
        load_pair(tmp_path / "alice.pem", tmp_path / "bob-key.pem")
    assert one_line(error) == (
        f"{tmp_path / 'bob-key.pem'} does not belong to {tmp_path / 'alice.pem'}: "
        "their public keys differ"
    )


def test_loading_the_wrong_thing_is_one_line_naming_the_file(tmp_path: Path, ca: CA) -> None:
    ca_key, ca_cert = ca
    files = {
        "cert.pem": pemfiles.cert_pem(ca_cert),
        "key.pem": pemfiles.key_pem(ca_key),
        "crl.pem": pemfiles.crl_pem(make_crl(ca_key, ca_cert, [], NOW, 1)),
        "text.pem": b"hello\n",
        "broken.pem": b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        "locked.pem": ca_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        ),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    cases = [
        (load_cert, "key.pem", "holds a private key, expected a certificate"),
        (load_cert, "crl.pem", "holds a certificate revocation list, expected a certificate"),
        (load_cert, "text.pem", "not PEM; expected a certificate (-----BEGIN CERTIFICATE-----)"),
        (load_cert, "broken.pem", "damaged certificate"),
        (load_key, "cert.pem", "holds a certificate, expected a private key"),
        (load_key, "locked.pem", "the key is encrypted; give an unencrypted key"),
        (load_crl, "cert.pem", "holds a certificate, expected a certificate revocation list"),
    ]
    for load, name, expected in cases:
        with pytest.raises(ConfigError) as error:
            load(tmp_path / name)
        message = one_line(error)
        assert message.startswith(f"{tmp_path / name}: "), message
        assert expected in message, message
