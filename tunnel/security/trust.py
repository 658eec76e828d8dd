"""Would a client certificate admitted earlier be admitted now? The check a reload runs.

A TLS handshake verifies the client's chain once, against the CA and CRL loaded then. After a
reload replaces ``--tls-ca`` or ``--tls-crl`` (or simply later), the same certificate may no
longer pass: it expired, it was revoked, its CA is no longer trusted, or the CRL itself has
expired (OpenSSL then refuses every certificate of that CA). :class:`Trust` holds what the new
configuration trusts and answers, for the leaf certificate a session was admitted with, why it
would be refused now, in the same words a handshake failure is logged with.

The chain is verified with ``cryptography``'s RFC 5280 verifier. That verifier is stricter than
OpenSSL's (it insists on well-formed CA extensions, for one), and a session OpenSSL admitted must
not be closed for a detail the handshake accepts: a leaf directly signed by a CA certificate of
the new bundle, both valid at ``now``, counts as trusted too, which covers every chain the
``certs`` commands make. The clock is the caller's: ``now`` is passed in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from tunnel.errors import ConfigError
from tunnel.security.certs import issued_by
from tunnel.security.tlserrors import CRL_REFRESH
from tunnel.settings.wording import unreadable

# How to refresh a CRL: revoking any serial it lists again re-signs it with a new validity.


@dataclass(frozen=True, slots=True)
class Untrusted:
    """Why a certificate would be refused now: a metric label and a sentence for the log."""

    label: str
    text: str


@dataclass(frozen=True)
class Trust:
    """The CA certificates and CRL a server configuration verifies client certificates with."""

    cas: tuple[x509.Certificate, ...]
    crls: tuple[x509.CertificateRevocationList, ...] = ()  # every CRL of the --tls-crl file

    def check(self, leaf_der: bytes, now: datetime) -> Untrusted | None:
        """None if the certificate (DER) would pass a handshake at ``now``, else why not."""
        leaf = x509.load_der_x509_certificate(leaf_der)
        if leaf.not_valid_after_utc < now:
            return Untrusted("certificate_expired", "its certificate has expired")
        if leaf.not_valid_before_utc > now:
            return Untrusted("certificate_not_yet_valid", "its certificate is not yet valid")
        if not self._trusted(leaf, now):
            return Untrusted("certificate_untrusted", "its certificate is not signed by a CA "
                             "of the new --tls-ca")  # fmt: skip
        crls = [crl for crl in self.crls if crl.issuer == leaf.issuer]
        for crl in crls:
            if crl.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None:
                return Untrusted("certificate_revoked", "its certificate was revoked")
        if any(crl_expired(crl, now) for crl in crls):
            return Untrusted("crl_expired", f"the CRL has expired; {CRL_REFRESH}")
        return None

    def _trusted(self, leaf: x509.Certificate, now: datetime) -> bool:
        if not self.cas:
            return False
        try:
            verifier = PolicyBuilder().store(Store(list(self.cas))).time(now)
            verifier.build_client_verifier().verify(leaf, [])
            return True
        except (VerificationError, ValueError):
            pass
        return any(
            issued_by(leaf, ca) and ca.not_valid_before_utc <= now <= ca.not_valid_after_utc
            for ca in self.cas
        )


def crl_expired(crl: x509.CertificateRevocationList, now: datetime) -> bool:
    """Past its next update: OpenSSL then refuses every certificate the CRL's CA issued."""
    next_update = crl.next_update_utc
    return next_update is not None and next_update < now


def load_trust(ca_path: str, crl_path: str | None) -> Trust:
    """The CA bundle and CRL of a configuration; ConfigError if a file cannot be read."""
    try:
        with open(ca_path, "rb") as file:
            cas = tuple(x509.load_pem_x509_certificates(file.read()))
    except OSError as exc:
        raise unreadable(ca_path, exc, "CA file") from None
    except ValueError:
        raise ConfigError(f"cannot load CA file {ca_path}: it must hold PEM certificates") from None
    return Trust(cas, load_crls(crl_path) if crl_path is not None else ())


# A CRL file larger than this is refused: the file is read whole, on every start and reload,
# and a private CA's CRL lists a few hundred serials (about 40 bytes each), not millions.
MAX_CRL_FILE = 16 * 1024 * 1024
_CRL_BLOCK = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)


def load_crls(crl_path: str) -> tuple[x509.CertificateRevocationList, ...]:
    """Every CRL of a PEM file (one per CA of a bundle, say), as OpenSSL's handshake reads
    them all; ConfigError in one line if the file cannot be read, holds none, or is too big."""
    try:
        with open(crl_path, "rb") as file:
            data = file.read(MAX_CRL_FILE + 1)
    except OSError as exc:
        raise unreadable(crl_path, exc, "CRL") from None
    if len(data) > MAX_CRL_FILE:
        raise ConfigError(
            f"CRL {crl_path} is over {MAX_CRL_FILE // (1024 * 1024)} MiB: give a file holding "
            "only the CRLs of the CAs in --tls-ca"
        )
    try:
        crls = tuple(x509.load_pem_x509_crl(block) for block in _CRL_BLOCK.findall(data))
    except ValueError:
        crls = ()
    if not crls:
        raise ConfigError(f"cannot load CRL {crl_path}: not a PEM certificate revocation list")
    return crls
