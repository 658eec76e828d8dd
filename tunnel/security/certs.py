"""A private certificate authority for one server and its clients.

Theory of operation: ``make_ca`` creates a self-signed CA that may sign leaf certificates only
(pathlen 0). ``issue_server_cert`` gives the server a certificate whose subject alternative names
are what clients check the host against (IP literals become IPAddress names, everything else a
DNSName; the CN is never checked by TLS clients). ``issue_client_cert`` gives a client a
certificate whose CN is its identity. Every key is EC P-256. ``renew`` reissues a certificate
for the key it already has, so key files and pins stay valid; ``make_crl`` lists revoked serials
for the server's ``--tls-crl``.

A pin names a public key rather than a certificate, so it survives renewal: ``sha256:`` followed
by the standard base64 (with padding, 44 characters) of the SHA-256 digest of the DER-encoded
SubjectPublicKeyInfo, the same digest HPKP used. That is the only pin format we read or write.

Nothing here reads the clock: whoever calls passes ``now`` (a timezone-aware datetime), and
nothing here touches a file: :mod:`tunnel.security.pemfiles` reads and writes them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tunnel.errors import ConfigError

PIN_PREFIX = "sha256:"
PIN_FORM = "sha256:<base64 of the SHA-256 of the public key, 44 characters>"

# Certificates start a little in the past: the two hosts' clocks rarely agree to the second,
# and a certificate issued on one must not be "not yet valid" on the other.
BACKDATE = timedelta(hours=1)

_IssuerKey = CertificateIssuerPrivateKeyTypes
PathLike = str | os.PathLike[str]
# The keys that can sign a certificate here, private and public. DSA is left out: TLS 1.3 has
# no DSA, and cryptography deprecates it (importing its key classes warns).
IssuerKey = (
    ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | rsa.RSAPrivateKey
)
ISSUER_PRIVATE_KEYS = (
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    rsa.RSAPrivateKey,
)
ISSUER_PUBLIC_KEYS = (
    ec.EllipticCurvePublicKey,
    ed25519.Ed25519PublicKey,
    ed448.Ed448PublicKey,
    rsa.RSAPublicKey,
)
_DNS_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_USAGE_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "server",
    ExtendedKeyUsageOID.CLIENT_AUTH: "client",
}


class Validity(Enum):
    VALID = "valid"
    EXPIRED = "expired"
    NOT_YET_VALID = "not yet valid"


@dataclass(frozen=True)
class CertInfo:
    """What a person checking a certificate wants to see, as of ``checked_at``."""

    subject_cn: str  # "" when the subject has no common name
    issuer_cn: str
    sans: tuple[str, ...]  # DNS names and IP addresses, as written in --san
    usages: tuple[str, ...]  # "server", "client", or the OID of another extended key usage
    not_before: datetime  # UTC
    not_after: datetime  # UTC
    checked_at: datetime  # the ``now`` the rest was computed for
    validity: Validity
    days_left: int  # days from checked_at to not_after, rounded; negative once expired
    serial: int
    is_ca: bool
    pin: str  # see the module docstring

    @property
    def validity_text(self) -> str:
        """``825 days left``, ``EXPIRED 3 days ago`` or ``not yet valid (starts in 2 days)``."""
        if self.validity is Validity.EXPIRED:
            ago = -self.days_left
            return f"EXPIRED {_days(ago)} ago" if ago else "EXPIRED less than a day ago"
        if self.validity is Validity.NOT_YET_VALID:
            starts = _round_days(self.not_before - self.checked_at)
            return f"not yet valid (starts in {_days(starts) if starts else 'less than a day'})"
        if self.days_left == 0:
            return "expires in less than a day"
        return f"{_days(self.days_left)} left"


def _days(n: int) -> str:
    return f"{n} day" if n == 1 else f"{n} days"


def _round_days(span: timedelta) -> int:
    # To the nearest day, not down: a certificate issued for 825 days a few seconds ago is
    # described as having 825 days left, as its issuer said.
    return round(span / timedelta(days=1))


# --- issuing -----------------------------------------------------------------------------------


def make_ca(
    common_name: str, days: int, *, now: datetime
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new self-signed CA that may sign leaf certificates, valid ``days`` from ``now``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    builder = (
        _validity(x509.CertificateBuilder(), now, days)
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return key, builder.sign(key, _hash_for(key))


def issue_server_cert(
    ca_key: _IssuerKey,
    ca_cert: x509.Certificate,
    common_name: str,
    sans: Iterable[str],
    days: int,
    *,
    now: datetime,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A key and certificate for a server reachable under ``sans`` (host names or IPs)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = server_cert_for(ca_key, ca_cert, key.public_key(), common_name, sans, days, now=now)
    return key, cert


def server_cert_for(
    ca_key: _IssuerKey,
    ca_cert: x509.Certificate,
    public_key: CertificateIssuerPublicKeyTypes,
    common_name: str,
    sans: Iterable[str],
    days: int,
    *,
    now: datetime,
) -> x509.Certificate:
    """A server certificate for an existing key: reissuing one with other names keeps the
    key file, and every pin of it, valid."""
    names = parse_sans(sans)
    if not names:
        raise ConfigError(
            "a server certificate needs at least one subject alternative name "
            "(the host names and IP addresses clients connect to)"
        )
    builder = _leaf(ca_key, ca_cert, public_key, _name(common_name), now, days)
    builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    builder = builder.add_extension(
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
    )
    return builder.sign(ca_key, _hash_for(ca_key))


def issue_client_cert(
    ca_key: _IssuerKey,
    ca_cert: x509.Certificate,
    name: str,
    days: int,
    *,
    now: datetime,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A key and certificate for a client; the server takes the CN, ``name``, as its identity."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _leaf(ca_key, ca_cert, key.public_key(), _name(name), now, days)
    builder = builder.add_extension(
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
    )
    return key, builder.sign(ca_key, _hash_for(ca_key))


def renew(
    ca_key: _IssuerKey,
    ca_cert: x509.Certificate,
    cert: x509.Certificate,
    days: int,
    now: datetime,
) -> x509.Certificate:
    """``cert`` again, for the same key, with a new serial and validity.

    Subject and every extension (SANs, key usages, CA constraints) are copied; only the
    authority key identifier is taken afresh from the CA. Keeping the key means the key file
    and any pin of it stay valid. Renewing the CA itself (``cert`` is ``ca_cert``) works too:
    the same key and subject keep every certificate it issued verifying.
    """
    _check_ca(ca_key, ca_cert)
    if not issued_by(cert, ca_cert):
        raise ConfigError(
            f"the certificate for {common_name(cert.subject)!r} was not issued by the CA "
            f"{common_name(ca_cert.subject)!r}"
        )
    self_signed = cert.subject == ca_cert.subject and _spki(cert) == _spki(ca_cert)
    builder = (
        _validity(x509.CertificateBuilder(), now, days)
        .subject_name(cert.subject)
        .issuer_name(ca_cert.subject)
        .public_key(_issuer_public_key(cert))
        .serial_number(x509.random_serial_number())
    )
    for ext in cert.extensions:
        if not isinstance(ext.value, x509.AuthorityKeyIdentifier):
            builder = builder.add_extension(ext.value, critical=ext.critical)
    if not self_signed:
        builder = builder.add_extension(_aki(ca_cert), critical=False)
    return builder.sign(ca_key, _hash_for(ca_key))


def make_crl(
    ca_key: _IssuerKey,
    ca_cert: x509.Certificate,
    revoked_serials: Iterable[int],
    now: datetime,
    days: int,
    *,
    previous: x509.CertificateRevocationList | None = None,
) -> x509.CertificateRevocationList:
    """A CRL listing ``revoked_serials`` (revoked ``now``) and every entry of ``previous``.

    Entries carried over keep their revocation date; the CRL number goes up by one. The CRL
    is valid for ``days``: OpenSSL refuses every peer once a CRL it checks has expired.
    """
    _check_ca(ca_key, ca_cert)
    now = _utc(now)
    dates: dict[int, datetime] = {}
    number = 1
    if previous is not None:
        if not crl_issued_by(previous, ca_cert):
            raise ConfigError("the existing CRL was signed by another CA")
        dates = {entry.serial_number: entry.revocation_date_utc for entry in previous}
        try:
            number = previous.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
            number += 1
        except x509.ExtensionNotFound:
            pass
    for serial in revoked_serials:
        dates.setdefault(serial, now)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(now + timedelta(days=days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(_aki(ca_cert), critical=False)
    )
    for serial, date in sorted(dates.items()):
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(date)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(ca_key, _hash_for(ca_key))


def parse_sans(sans: Iterable[str]) -> list[x509.GeneralName]:
    """``--san`` values as general names: IP literals (``[::1]`` too) as IPs, the rest DNS.

    Duplicates are dropped, order is kept. A DNS name must be ASCII (write IDNs as punycode);
    a leading ``*.`` label is allowed for a wildcard.
    """
    names: list[x509.GeneralName] = []
    for text in sans:
        name = _general_name(text.strip())
        if name not in names:
            names.append(name)
    return names


def _general_name(text: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(text.removeprefix("[").removesuffix("]")))
    except ValueError:
        pass
    host = text.rstrip(".").lower()
    labels = host.split(".")
    if labels[0] == "*" and len(labels) > 1:
        labels = labels[1:]
    if len(host) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise ConfigError(
            f"bad subject alternative name {text[:80]!r}: expected an IP address or a DNS name "
            "(letters, digits, '-' and '.'; punycode for international names)"
        )
    return x509.DNSName(host)


def _leaf(
    ca_key: _IssuerKey,
    ca_cert: x509.Certificate,
    public_key: CertificateIssuerPublicKeyTypes,
    subject: x509.Name,
    now: datetime,
    days: int,
) -> x509.CertificateBuilder:
    """What server and client certificates share: a non-CA signed by ``ca_cert``."""
    _check_ca(ca_key, ca_cert)
    return (
        _validity(x509.CertificateBuilder(), now, days)
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_aki(ca_cert), critical=False)
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates and CRLs; a leaf signs handshakes (ECDHE, so nothing else)."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _check_ca(ca_key: _IssuerKey, ca_cert: x509.Certificate) -> None:
    if not is_ca(ca_cert):
        raise ConfigError(
            f"{common_name(ca_cert.subject)!r} is not a CA certificate; it cannot sign"
        )
    check_key_matches(ca_cert, ca_key, "the CA certificate", "the CA key")


def _validity(
    builder: x509.CertificateBuilder, now: datetime, days: int
) -> x509.CertificateBuilder:
    if days < 1:
        raise ConfigError(f"a certificate must be valid for at least one day, not {days}")
    now = _utc(now)
    return builder.not_valid_before(now - BACKDATE).not_valid_after(now + timedelta(days=days))


def _aki(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(_issuer_public_key(ca_cert))
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _name(common_name: str) -> x509.Name:
    # X.509 caps a common name at 64 characters; say so before cryptography does, less clearly.
    if not 1 <= len(common_name) <= 64 or not common_name.isprintable():
        raise ConfigError(
            f"bad common name {common_name[:80]!r}: expected 1 to 64 printable characters"
        )
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _hash_for(key: _IssuerKey) -> hashes.SHA256 | None:
    # Ed25519 and Ed448 hash internally and refuse a separate digest.
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    return hashes.SHA256()


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime")
    # Certificates hold whole seconds; dropping the rest keeps what we build equal to what we read.
    return now.astimezone(UTC).replace(microsecond=0)


# --- checking ----------------------------------------------------------------------------------


def spki_pin(cert: x509.Certificate) -> str:
    """The pin of ``cert``'s public key, ``sha256:`` + base64 (see the module docstring)."""
    return PIN_PREFIX + base64.b64encode(spki_digest(cert)).decode("ascii")


def spki_digest(cert: x509.Certificate) -> bytes:
    """The 32-byte SHA-256 digest of ``cert``'s DER SubjectPublicKeyInfo; what a pin encodes."""
    return hashlib.sha256(_spki(cert)).digest()


def parse_pin(text: str) -> bytes:
    """The 32-byte digest a pin names; compare it with :func:`spki_digest`."""
    shown = text[:80]
    body = text.strip()
    if not body.startswith(PIN_PREFIX):
        raise ConfigError(f"bad pin {shown!r}: expected {PIN_FORM}")
    try:
        digest = base64.b64decode(body.removeprefix(PIN_PREFIX), validate=True)
    except binascii.Error:
        raise ConfigError(f"bad pin {shown!r}: not base64; expected {PIN_FORM}") from None
    if len(digest) != hashlib.sha256().digest_size:
        raise ConfigError(
            f"bad pin {shown!r}: {len(digest)} bytes instead of 32; expected {PIN_FORM}"
        )
    return digest


def describe(cert: x509.Certificate, now: datetime) -> CertInfo:
    """What ``certs show`` prints, computed for ``now``."""
    now = _utc(now)
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < not_before:
        validity = Validity.NOT_YET_VALID
    elif now > not_after:
        validity = Validity.EXPIRED
    else:
        validity = Validity.VALID
    return CertInfo(
        subject_cn=common_name(cert.subject),
        issuer_cn=common_name(cert.issuer),
        sans=_sans(cert),
        usages=_usages(cert),
        not_before=not_before,
        not_after=not_after,
        checked_at=now,
        validity=validity,
        days_left=_round_days(not_after - now),
        serial=cert.serial_number,
        is_ca=is_ca(cert),
        pin=spki_pin(cert),
    )


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    """Whether ``ca_cert`` signed ``cert`` (names chain and the signature verifies)."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def crl_issued_by(crl: x509.CertificateRevocationList, ca_cert: x509.Certificate) -> bool:
    public_key = ca_cert.public_key()
    if crl.issuer != ca_cert.subject or not isinstance(public_key, ISSUER_PUBLIC_KEYS):
        return False
    return crl.is_signature_valid(public_key)


def check_key_matches(
    cert: x509.Certificate,
    key: _IssuerKey,
    cert_label: str = "the certificate",
    key_label: str = "the key",
) -> None:
    """Raise ConfigError unless ``key`` is the private half of ``cert``'s public key."""
    if _spki_of(key.public_key()) != _spki(cert):
        raise ConfigError(f"{key_label} does not belong to {cert_label}: their public keys differ")


def common_name(name: x509.Name) -> str:
    """The first CN in ``name``, or "" when it has none."""
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not values:
        return ""
    value = values[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _sans(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(str(name.value) for name in names)


def _usages(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(_USAGE_NAMES.get(oid, oid.dotted_string) for oid in usages)


def _spki(cert: x509.Certificate) -> bytes:
    return _spki_of(cert.public_key())


def _spki_of(public_key: CertificatePublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _issuer_public_key(cert: x509.Certificate) -> CertificateIssuerPublicKeyTypes:
    public_key = cert.public_key()
    if not isinstance(public_key, ISSUER_PUBLIC_KEYS):
        raise ConfigError(
            f"unsupported key type in the certificate for {common_name(cert.subject)!r}"
        )
    return public_key
