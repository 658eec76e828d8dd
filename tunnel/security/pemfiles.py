"""Certificates, keys and CRLs as PEM files: reading them, and writing them safely.

Every problem with a file (missing, unreadable, not PEM, the wrong kind of PEM block, damaged)
becomes one :class:`~tunnel.errors.ConfigError` line that names the file and what was expected.
Private keys are written with mode 0600 and public material with 0644; nothing is overwritten
unless asked to.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from tunnel.errors import ConfigError
from tunnel.security.certs import ISSUER_PRIVATE_KEYS, IssuerKey, PathLike, check_key_matches
from tunnel.settings.wording import unreadable


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def crl_pem(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.PEM)


def key_pem(key: IssuerKey) -> bytes:
    """Unencrypted PKCS#8: the file's 0600 mode is what protects it."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_cert(path: PathLike) -> x509.Certificate:
    data = _read_pem(path, "CERTIFICATE", "a certificate")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise ConfigError(f"{path}: damaged certificate ({_first_line(exc)})") from None


def load_key(path: PathLike) -> IssuerKey:
    data = _read_pem(path, "PRIVATE KEY", "a private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        # cryptography's way of saying the key is encrypted and we gave no password.
        raise ConfigError(f"{path}: the key is encrypted; give an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{path}: damaged private key ({_first_line(exc)})") from None
    if not isinstance(key, ISSUER_PRIVATE_KEYS):
        raise ConfigError(f"{path}: a {type(key).__name__} cannot sign; expected an EC or RSA key")
    return key


def load_crl(path: PathLike) -> x509.CertificateRevocationList:
    data = _read_pem(path, "X509 CRL", "a certificate revocation list")
    try:
        return x509.load_pem_x509_crl(data)
    except ValueError as exc:
        raise ConfigError(f"{path}: damaged CRL ({_first_line(exc)})") from None


def load_pair(cert_path: PathLike, key_path: PathLike) -> tuple[x509.Certificate, IssuerKey]:
    """A certificate and its key, checked to belong together."""
    cert, key = load_cert(cert_path), load_key(key_path)
    check_key_matches(cert, key, str(cert_path), str(key_path))
    return cert, key


def pem_label(data: bytes) -> str | None:
    """The type in the first ``-----BEGIN TYPE-----`` line, or None if ``data`` is not PEM."""
    match = re.search(rb"-----BEGIN ([A-Z0-9 ]+)-----", data)
    return match.group(1).decode("ascii") if match else None


def pem_kind(data: bytes) -> str:
    """What ``data`` holds, in words: "a certificate", "a private key", "no PEM data"..."""
    label = pem_label(data)
    if label is None:
        return "no PEM data"
    return next((w for end, w in _PEM_WHATS if label.endswith(end)), f"a {label!r} block")


def read_file(path: PathLike) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise unreadable(path, exc) from None


def _read_pem(path: PathLike, wanted: str, what: str) -> bytes:
    data = read_file(path)
    label = pem_label(data)
    if label is None:
        raise ConfigError(f"{path}: not PEM; expected {what} (-----BEGIN {wanted}-----)")
    # "EC PRIVATE KEY", "RSA PRIVATE KEY" and "PRIVATE KEY" are all private keys.
    if not label.endswith(wanted):
        raise ConfigError(f"{path}: holds {pem_kind(data)}, expected {what}")
    return data


_PEM_WHATS = [
    ("CERTIFICATE", "a certificate"),
    ("PRIVATE KEY", "a private key"),
    ("PUBLIC KEY", "a public key"),
    ("X509 CRL", "a certificate revocation list"),
    ("CERTIFICATE REQUEST", "a certificate request"),
]


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def write_private(path: PathLike, data: bytes, force: bool = False) -> None:
    """Write a private key, mode 0600 from the moment the file exists."""
    _write(Path(path), data, 0o600, force)


def write_public(path: PathLike, data: bytes, force: bool = False) -> None:
    """Write a certificate or CRL, mode 0644 so the other host's operator can read it."""
    _write(Path(path), data, 0o644, force)


def _write(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Create ``path`` holding ``data``; an existing file is replaced only with ``force``.

    Without ``force`` O_EXCL makes "does it exist" and "create it" one step, and does not
    follow a symlink planted at ``path``. With ``force`` the data goes to a new file beside it
    that is renamed over the old one: readers see the old file or the new one, never half of
    one, and the new file has ``mode`` even when the old one was more open.
    """
    tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp") if force else path
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise ConfigError(f"{path} exists; pass --force to replace it") from None
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as file:
            # The umask may have taken bits from ``mode``; the mode we promise is exact.
            os.fchmod(file.fileno(), mode)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if tmp != path:
            os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
