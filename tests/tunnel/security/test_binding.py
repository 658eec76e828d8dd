"""The channel binding (RFC 5929 tls-server-end-point) and the token proofs that cover it."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from tunnel.security import auth
from tunnel.security.binding import (
    PREFIX,
    UNBOUND,
    end_point_hash,
    server_end_point,
    server_end_point_of_chain,
)
from tunnel.security.certs import issue_server_cert, make_ca
from tunnel.security.pemfiles import cert_pem

NOW = datetime(2026, 1, 1, tzinfo=UTC)
KEY = ec.generate_private_key(ec.SECP256R1())


def signed_with(algorithm: hashes.HashAlgorithm | None, key: object = KEY) -> bytes:
    """A self-signed certificate whose signature uses ``algorithm`` (DER)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "binding test")])
    public = key.public_key()  # type: ignore[attr-defined]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .sign(key, algorithm)  # type: ignore[arg-type]
    )
    return cert.public_bytes(Encoding.DER)


def test_the_project_s_own_server_certificate_is_hashed_with_sha256() -> None:
    ca_key, ca_cert = make_ca("test CA", 1, now=NOW)
    _, cert = issue_server_cert(ca_key, ca_cert, "server", ["127.0.0.1"], 1, now=NOW)
    der = cert.public_bytes(Encoding.DER)
    assert cert.signature_algorithm_oid == x509.SignatureAlgorithmOID.ECDSA_WITH_SHA256
    assert end_point_hash(der) == hashlib.sha256(der).digest()
    assert server_end_point(der) == PREFIX + hashlib.sha256(der).digest()


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        pytest.param(hashes.SHA384(), hashlib.sha384, id="sha384-uses-sha384"),
        pytest.param(hashes.SHA512(), hashlib.sha512, id="sha512-uses-sha512"),
        pytest.param(hashes.SHA256(), hashlib.sha256, id="sha256-uses-sha256"),
    ],
)
def test_the_hash_is_the_one_the_signature_uses(
    algorithm: hashes.HashAlgorithm, expected: object
) -> None:
    der = signed_with(algorithm)
    assert end_point_hash(der) == expected(der).digest()  # type: ignore[operator]


# sha256WithRSAEncryption (1.2.840.113549.1.1.11) and the older ones of the same DER length.
RSA_SHA256_OID = bytes.fromhex("06092a864886f70d01010b")
WEAK_RSA_OIDS = {"md5": bytes.fromhex("06092a864886f70d010104"),
                 "sha1": bytes.fromhex("06092a864886f70d010105")}  # fmt: skip


@pytest.mark.parametrize("weak", sorted(WEAK_RSA_OIDS))
def test_an_md5_or_sha1_signature_is_hashed_with_sha256(weak: str) -> None:
    # RFC 5929 section 4.1: MD5 and SHA-1 are replaced by SHA-256. cryptography no longer
    # signs with them, so the algorithm identifiers of an RSA-SHA256 certificate are rewritten
    # (the signature no longer verifies, which the binding never checks).
    der = signed_with(hashes.SHA256(), rsa.generate_private_key(65537, 2048))
    assert der.count(RSA_SHA256_OID) == 2  # in the signed part and beside the signature
    der = der.replace(RSA_SHA256_OID, WEAK_RSA_OIDS[weak])
    assert x509.load_der_x509_certificate(der).signature_hash_algorithm.name == weak  # type: ignore[union-attr]
    assert end_point_hash(der) == hashlib.sha256(der).digest()


def test_a_signature_with_no_separate_hash_is_hashed_with_sha256() -> None:
    # Ed25519 names no hash; the RFC leaves it undefined and both ends here use SHA-256.
    der = signed_with(None, ed25519.Ed25519PrivateKey.generate())
    assert end_point_hash(der) == hashlib.sha256(der).digest()


def test_a_server_binds_to_the_first_certificate_of_its_chain() -> None:
    ca_key, ca_cert = make_ca("test CA", 1, now=NOW)
    _, cert = issue_server_cert(ca_key, ca_cert, "server", ["127.0.0.1"], 1, now=NOW)
    chain = cert_pem(cert) + cert_pem(ca_cert)
    assert server_end_point_of_chain(chain) == server_end_point(cert.public_bytes(Encoding.DER))


def test_no_certificate_is_no_binding() -> None:
    assert server_end_point(None) == UNBOUND == b""


# ------------------------------------------------------------------------ the proofs

SECRET, NAME, CLIENT_NONCE, SERVER_NONCE = b"s" * 32, "alice", b"c" * 32, b"n" * 32


def proof(version: int, binding: bytes, role: str = "client") -> bytes:
    make = auth.client_proof if role == "client" else auth.server_proof
    return make(SECRET, NAME, CLIENT_NONCE, SERVER_NONCE, version=version, binding=binding)


def test_a_proof_made_for_another_certificate_does_not_match() -> None:
    relay = server_end_point(signed_with(hashes.SHA256()))
    server = server_end_point(signed_with(hashes.SHA256(), ec.generate_private_key(ec.SECP256R1())))
    assert not auth.proofs_match(proof(2, server), proof(2, relay))
    assert not auth.proofs_match(proof(2, server, "server"), proof(2, relay, "server"))
    assert auth.proofs_match(proof(2, server), proof(2, server))


def test_proofs_of_the_two_versions_never_stand_for_each_other() -> None:
    assert proof(1, UNBOUND) != proof(2, UNBOUND)
    assert proof(2, UNBOUND) != proof(2, PREFIX)  # an empty binding is not a TLS one


def test_the_version_1_proof_is_unchanged() -> None:
    # What a client of the previous release sends over plaintext must still be accepted.
    message = b"\0".join(
        (b"ambassador token v1", b"client", NAME.encode(), CLIENT_NONCE.hex().encode(),
         SERVER_NONCE.hex().encode())
    )  # fmt: skip
    assert proof(1, UNBOUND) == hmac.new(SECRET, message, hashlib.sha256).digest()


def test_a_version_1_proof_cannot_carry_a_binding() -> None:
    with pytest.raises(ValueError, match="cannot carry a channel binding"):
        proof(1, PREFIX + b"x")
