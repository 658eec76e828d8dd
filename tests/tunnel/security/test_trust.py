"""A reload's trust check reads every CRL of the --tls-crl file, as the handshake does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.pki import write_crls
from tunnel.errors import ConfigError
from tunnel.security.certs import issue_client_cert, make_ca
from tunnel.security.pemfiles import cert_pem, write_public
from tunnel.security.trust import MAX_CRL_FILE, load_crls, load_trust

NOW = datetime.now(UTC)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def test_a_certificate_revoked_in_the_second_crl_of_the_file_is_untrusted(tmp_path: Path) -> None:
    first_key, first_ca = make_ca("first CA", 1, now=NOW)
    second_key, second_ca = make_ca("second CA", 1, now=NOW)
    _, alice = issue_client_cert(first_key, first_ca, "alice", 1, now=NOW)
    _, mallory = issue_client_cert(second_key, second_ca, "mallory", 1, now=NOW)
    bundle, crls = tmp_path / "ca.pem", tmp_path / "crl.pem"
    write_public(bundle, cert_pem(first_ca) + cert_pem(second_ca))
    write_crls(crls, [(first_key, first_ca, []), (second_key, second_ca, [mallory.serial_number])],
               NOW)  # fmt: skip

    assert len(load_crls(str(crls))) == 2
    trust = load_trust(str(bundle), str(crls))
    refused = trust.check(der(mallory), NOW)
    assert refused is not None and refused.label == "certificate_revoked"
    assert trust.check(der(alice), NOW) is None


def test_an_expired_crl_later_in_the_file_refuses_its_own_cas_certificates(
    tmp_path: Path,
) -> None:
    first_key, first_ca = make_ca("first CA", 3, now=NOW)
    second_key, second_ca = make_ca("second CA", 3, now=NOW)
    _, alice = issue_client_cert(first_key, first_ca, "alice", 3, now=NOW)
    _, mallory = issue_client_cert(second_key, second_ca, "mallory", 3, now=NOW)
    bundle, crls = tmp_path / "ca.pem", tmp_path / "crl.pem"
    write_public(bundle, cert_pem(first_ca) + cert_pem(second_ca))
    # The first CRL is valid for three days, the second for one: two days on, only it expired.
    write_crls(crls, [(first_key, first_ca, [])], NOW, days=3)
    later = crls.read_bytes()
    write_crls(crls, [(second_key, second_ca, [])], NOW, days=1)
    crls.write_bytes(later + crls.read_bytes())

    trust = load_trust(str(bundle), str(crls))
    then = NOW + timedelta(days=2)
    refused = trust.check(der(mallory), then)
    assert refused is not None and refused.label == "crl_expired"
    assert trust.check(der(alice), then) is None


def test_a_crl_file_over_the_limit_is_one_line(tmp_path: Path) -> None:
    big = tmp_path / "crl.pem"
    with big.open("wb") as file:
        file.truncate(MAX_CRL_FILE + 1)
    with pytest.raises(ConfigError) as raised:
        load_crls(str(big))
    assert str(raised.value) == (
        f"CRL {big} is over 16 MiB: give a file holding only the CRLs of the CAs in --tls-ca"
    )


def test_a_file_without_a_crl_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "crl.pem"
    _, ca = make_ca("a CA", 1, now=NOW)
    path.write_bytes(cert_pem(ca))
    with pytest.raises(ConfigError) as raised:
        load_crls(str(path))
    assert str(raised.value) == f"cannot load CRL {path}: not a PEM certificate revocation list"
