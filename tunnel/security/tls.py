"""TLS for the tunnel connection: contexts built from files by pure functions.

The standard library's ``ssl`` does the protocol. These functions only decide the policy, the
same everywhere: TLS 1.2 at least (1.3 preferred, as OpenSSL negotiates the highest), forward-
secret AEAD ciphers only for 1.2, no compression, no renegotiation, and verification always on.
There is no switch that skips verification: a client checks the server against a CA (the
certificate's IP or DNS SAN must match the name it dialed) or against a pinned public key, or
both; a server given a CA requires and checks client certificates (mutual TLS).

A broken file (missing, not PEM, key not matching its certificate) is a
:class:`~tunnel.errors.ConfigError` with one line naming the file.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.x509.oid import ExtendedKeyUsageOID

from tunnel.errors import ConfigError
from tunnel.security.binding import server_end_point_of_chain
from tunnel.security.certs import spki_pin
from tunnel.security.tlserrors import CRL_REFRESH
from tunnel.security.trust import crl_expired, load_crls
from tunnel.settings.wording import unreadable

log = logging.getLogger("ambassador.tls")

# TLS 1.2 suites: ECDHE key exchange with AEAD ciphers only. TLS 1.3 suites are all AEAD.
CIPHERS_TLS12 = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!SHA1:!SHA256:!SHA384"


@dataclass(frozen=True, slots=True)
class ServerTls:
    cert: str  # PEM certificate chain of the server
    key: str  # PEM private key
    ca: str | None = None  # PEM CA bundle: set, client certificates are required (mutual TLS)
    crl: str | None = None  # PEM CRL of that CA: revoked client certificates are refused


@dataclass(frozen=True, slots=True)
class ClientTls:
    ca: str | None = None  # PEM CA bundle to verify the server; None: system CAs, unless pinned
    cert: str | None = None  # the client's own certificate (for mutual TLS)
    key: str | None = None
    server_name: str | None = None  # name to check the server's SAN against (default: --remote)
    pins: tuple[str, ...] = ()  # "sha256:<base64>" SPKI pins; any one must match


def _base_context(purpose: ssl._SSLMethod) -> ssl.SSLContext:
    context = ssl.SSLContext(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS_TLS12)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return context


def _load_chain(context: ssl.SSLContext, cert: str, key: str) -> None:
    try:
        context.load_cert_chain(cert, key)
    except (FileNotFoundError, PermissionError) as exc:
        # ssl does not say which of the two files it could not open: find it.
        name = exc.filename or next((p for p in (cert, key) if not os.access(p, os.R_OK)), cert)
        raise unreadable(name, exc) from None
    except ssl.SSLError as exc:
        raise ConfigError(
            _chain_problem(cert, key)
            or (
                f"cannot load certificate {cert} with key {key}: {exc.reason or exc}; "
                "check both are PEM and the key belongs to the certificate"
            )
        ) from None


def _chain_problem(cert: str, key: str) -> str | None:
    """Why ssl refused the pair, in words (its own is "[SSL] PEM lib"), or None if unclear."""
    from tunnel.security.pemfiles import pem_kind

    try:
        with open(cert, "rb") as file:
            holds_cert = pem_kind(file.read())
        with open(key, "rb") as file:
            holds_key = pem_kind(file.read())
    except OSError:
        return None
    if holds_cert == "a private key" and holds_key == "a certificate":
        return f"--tls-cert {cert} holds a private key and --tls-key {key} a certificate: swap them"
    if holds_cert != "a certificate":
        return f"--tls-cert {cert} holds {holds_cert}, not a certificate; give the PEM certificate"
    if holds_key != "a private key":
        return f"--tls-key {key} holds {holds_key}, not a private key; give the PEM private key"
    return (
        f"--tls-key {key} is not the private key of --tls-cert {cert}; "
        "give the key that was made with that certificate"
    )


# What each role's certificate must allow (RFC 5280 extended key usage), and how to get one.
_USAGES = {
    "client": (ExtendedKeyUsageOID.CLIENT_AUTH, "'ambassador-server certs client NAME'"),
    "server": (ExtendedKeyUsageOID.SERVER_AUTH, "'ambassador-server certs init DIR'"),
}


def _check_usage(cert: str, role: str) -> None:
    """Refuse at start a certificate the peer would refuse in every handshake: one whose
    extended key usage leaves out this role (a server certificate given to a client)."""
    from cryptography import x509

    wanted, command = _USAGES[role]
    try:
        with open(cert, "rb") as file:
            usage = x509.load_pem_x509_certificate(file.read()).extensions.get_extension_for_class(
                x509.ExtendedKeyUsage
            )
    except (OSError, ValueError, x509.ExtensionNotFound):
        return  # unreadable was reported by ssl; no extension: good for any use
    allowed = list(usage.value)
    if wanted in allowed or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in allowed:
        return
    other = "server" if role == "client" else "client"
    made_for = (
        f"a {other} certificate" if _USAGES[other][0] in allowed else "not made for a " + role
    )
    names = ", ".join(getattr(oid, "_name", oid.dotted_string) for oid in allowed)
    raise ConfigError(
        f"--tls-cert {cert} is {made_for} (extended key usage: {names}); "
        f"the {role} needs a {role} certificate: make one with {command}"
    )


def _load_ca(context: ssl.SSLContext, ca: str) -> None:
    try:
        context.load_verify_locations(cafile=ca)
    except FileNotFoundError:
        raise ConfigError(f"cannot read CA file {ca}: no such file") from None
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(
            f"cannot load CA file {ca}: {exc}; it must hold PEM certificates"
        ) from None


def server_context(tls: ServerTls) -> ssl.SSLContext:
    context = _base_context(ssl.PROTOCOL_TLS_SERVER)
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_chain(context, tls.cert, tls.key)
    _check_usage(tls.cert, "server")
    if tls.ca is not None:
        _load_ca(context, tls.ca)
        context.verify_mode = ssl.CERT_REQUIRED
        if tls.crl is not None:
            load_crls(tls.crl)  # a file too big, or holding no CRL, is one line at start
            _load_ca(context, tls.crl)  # load_verify_locations also takes CRLs, all of them
            context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return context


def bound_server_context(tls: ServerTls) -> tuple[ssl.SSLContext, bytes]:
    """The server's context, and the channel binding of the certificate it presents
    (:mod:`tunnel.security.binding`), which the token proofs of its connections cover.

    ``ssl`` takes the certificate by path and does not show it back, so the file is read
    again for the binding: before and after the load, to be sure both saw the same certificate
    (a renewal being written at that moment would otherwise make every token proof fail).
    """
    for _ in range(3):
        before = _binding_of(tls.cert)
        context = server_context(tls)  # refuses a broken file in words
        after = _binding_of(tls.cert)
        if before is not None and before == after:
            return context, after
    raise ConfigError(f"--tls-cert {tls.cert} changed while it was loaded; load it again")


def _binding_of(cert: str) -> bytes | None:
    try:
        with open(cert, "rb") as file:
            return server_end_point_of_chain(file.read())
    except (OSError, ValueError):
        return None


def client_context(tls: ClientTls) -> ssl.SSLContext:
    context = _base_context(ssl.PROTOCOL_TLS_CLIENT)
    if tls.ca is not None:
        _load_ca(context, tls.ca)
    elif tls.pins:
        # Pinned and no CA: the pin is the verification (checked right after the handshake),
        # as for a self-signed server whose key the operator copied out of band.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.load_default_certs()
    if tls.cert is not None or tls.key is not None:
        if tls.cert is None or tls.key is None:
            raise ConfigError("--tls-cert and --tls-key go together; give both or neither")
        _load_chain(context, tls.cert, tls.key)
        _check_usage(tls.cert, "client")
    return context


def spki_pin_of_der(certificate_der: bytes) -> str:
    """``sha256:<base64>`` of the certificate's SubjectPublicKeyInfo (see tunnel.security.certs)."""
    from cryptography import x509

    return spki_pin(x509.load_der_x509_certificate(certificate_der))


def peer_certificate(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> bytes | None:
    if ssl_object is None:
        return None
    return ssl_object.getpeercert(binary_form=True)


def peer_common_name(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The verified peer certificate's common name: the client's identity under mutual TLS."""
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    if not cert:
        return None
    subject: Any = cert.get("subject", ())
    for rdn in subject:
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def days_left(cert_path: str) -> float | None:
    from cryptography import x509

    try:
        with open(cert_path, "rb") as file:
            cert = x509.load_pem_x509_certificate(file.read())
    except (OSError, ValueError):
        return None
    remaining = cert.not_valid_after_utc - datetime.now(UTC)
    return remaining.total_seconds() / 86400


def not_after(cert_path: str) -> float | None:
    """When the PEM certificate at ``cert_path`` expires, as a POSIX time; None when it
    cannot be read (the TLS context has refused it already)."""
    from cryptography import x509

    try:
        with open(cert_path, "rb") as file:
            cert = x509.load_pem_x509_certificate(file.read())
    except (OSError, ValueError):
        return None
    return cert.not_valid_after_utc.timestamp()


def not_after_der(der: bytes | None) -> float | None:
    """When a DER certificate (a peer's, from the handshake) expires, as a POSIX time."""
    from cryptography import x509

    if not der:
        return None
    try:
        return x509.load_der_x509_certificate(der).not_valid_after_utc.timestamp()
    except ValueError:
        return None


EXPIRY_WARNING_DAYS = 30


def warn_if_expiring(tls: ServerTls | ClientTls | None) -> None:
    """Log a warning for a certificate of ours that expires within 30 days."""
    cert = getattr(tls, "cert", None) if tls is not None else None
    if not cert:
        return
    left = days_left(cert)
    if left is not None and left < EXPIRY_WARNING_DAYS:
        if left < 0:
            log.error("certificate %s expired %d days ago; renew it (certs renew)", cert, -left)
        else:
            log.warning("certificate %s expires in %.0f days; renew it (certs renew)", cert, left)


def warn_about_files(
    tls: ServerTls | ClientTls | None, token_file: str | None, now: datetime
) -> None:
    """At start and on every reload: a secret file others may read, a CRL past its date.

    ``tls`` is this side's own: a listener's, or a dialer's with its client certificate.
    """
    if tls is not None and tls.key is not None:
        _warn_if_readable(tls.key, "TLS key")
    if isinstance(tls, ServerTls) and tls.crl is not None:
        _warn_if_crl_expired(tls.crl, now)
    if token_file is not None:
        _warn_if_readable(token_file, "token file")


def _warn_if_crl_expired(path: str, now: datetime) -> None:
    try:
        crls = load_crls(path)
    except ConfigError:
        return  # server_context already refused a broken file
    for crl in crls:
        if crl_expired(crl, now):
            log.error(
                "CRL %s expired on %s: every client certificate of its CA is refused; %s",
                path, f"{crl.next_update_utc:%Y-%m-%d %H:%M} UTC", CRL_REFRESH,
            )  # fmt: skip


def _warn_if_readable(path: str, what: str) -> None:
    # Group read is how a process reads a file it does not own (a Kubernetes Secret mounted
    # with fsGroup, defaultMode 0440): only then is it needed, and not worth a warning.
    try:
        info = os.stat(path)
    except OSError:
        return
    others = info.st_mode & 0o007
    group = info.st_mode & 0o070 and info.st_uid == os.geteuid()
    if others or group:
        log.warning("%s %s can be read by other users; chmod 600 %s", what, path, path)
