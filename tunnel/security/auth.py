"""Token authentication: a challenge-response that never sends the token.

For links where certificates are too much, client and server share a secret per client name
(the token file holds ``NAME:SECRET`` lines). The exchange rides the control stream::

    client -> server   hello      name, client nonce
    server -> client   challenge  server nonce (fresh for every connection)
    client -> server   auth       HMAC(secret, "client", name, client nonce, server nonce)
    server -> client   welcome    HMAC(secret, "server", name, client nonce, server nonce)

From protocol version 2 on, both proofs also cover the channel binding
(:mod:`tunnel.security.binding`): over TLS, a hash of the server's certificate, so a proof made on a
man in the middle's TLS connection does not match on the server's. Version 1 proofs cover no
binding; the roles of this release make them only over plaintext, never over TLS (see
``docs/protocol.md``), so a downgrade to version 1 cannot strip the binding. The two versions'
proofs use different context strings: one is never valid as the other.

Over plaintext the binding is empty and this proves who the client is, and nothing more: an
active man in the middle can relay the challenge and the proofs and then keep the authenticated
connection for itself. Both roles say so in one warning line at start
(:func:`plaintext_warning`); TLS is what protects the path.

The secret never crosses the wire. A recorded proof is useless on another connection because
the server's nonce differs, so it cannot be replayed; the server's own proof shows the client
that the server knows the secret too. Nonces are made by the caller (this module does no I/O
beyond reading the token file).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import stat
from pathlib import Path

from tunnel.errors import ConfigError
from tunnel.protocol.handshake import BOUND_SINCE  # a rule of the protocol, proved here
from tunnel.settings.wording import unreadable

NONCE_SIZE = 32
_CONTEXTS = {1: b"ambassador token v1", 2: b"ambassador token v2"}


def _proof(
    secret: bytes,
    role: bytes,
    name: str,
    client_nonce: bytes,
    server_nonce: bytes,
    version: int,
    binding: bytes,
) -> bytes:
    parts = [_CONTEXTS[version], role, name.encode(), client_nonce.hex().encode(),
             server_nonce.hex().encode()]  # fmt: skip
    if version >= BOUND_SINCE:
        parts.append(binding.hex().encode())  # hex: no byte of it can be a separator
    elif binding:
        raise ValueError(f"a version {version} proof cannot carry a channel binding")
    return hmac.new(secret, b"\0".join(parts), hashlib.sha256).digest()


def client_proof(
    secret: bytes,
    name: str,
    client_nonce: bytes,
    server_nonce: bytes,
    *,
    version: int,
    binding: bytes,
) -> bytes:
    return _proof(secret, b"client", name, client_nonce, server_nonce, version, binding)


def server_proof(
    secret: bytes,
    name: str,
    client_nonce: bytes,
    server_nonce: bytes,
    *,
    version: int,
    binding: bytes,
) -> bytes:
    return _proof(secret, b"server", name, client_nonce, server_nonce, version, binding)


def plaintext_warning(hosts: list[str]) -> str | None:
    """The warning for a token used without TLS, unless every host is this machine."""
    if all(is_loopback(host) for host in hosts):
        return None
    return (
        "a token over plaintext proves who the client is but protects nothing on the path: "
        "anyone who can intercept the connection can relay the token exchange and keep the "
        "session, and reads every byte; use TLS (--tls-cert/--tls-key and --tls-ca)"
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def fingerprint(secret: bytes) -> bytes:
    """What a session keeps of the secret it proved: enough to tell whether a reload changed
    that secret, useless for proving anything (a hash, never logged either)."""
    return hashlib.sha256(b"ambassador token fingerprint\0" + secret).digest()


def proofs_match(expected: bytes, given: bytes) -> bool:
    return hmac.compare_digest(expected, given)


def parse_tokens(text: str, source: str) -> dict[str, bytes]:
    """``NAME:SECRET`` lines (``#`` comments, blank lines ignored) as name -> secret."""
    tokens: dict[str, bytes] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, secret = line.partition(":")
        name, secret = name.strip(), secret.strip()
        if not colon or not name or not secret:
            raise ConfigError(f"{source}:{number}: expected NAME:SECRET")
        if len(secret) < 16:
            raise ConfigError(
                f"{source}:{number}: the secret of {name!r} is shorter than 16 "
                "characters; use a long random one (openssl rand -hex 32)"
            )
        if name in tokens:
            raise ConfigError(f"{source}:{number}: {name!r} appears twice")
        tokens[name] = secret.encode()
    if not tokens:
        raise ConfigError(f"{source}: no NAME:SECRET line")
    return tokens


def load_tokens(path: str) -> tuple[dict[str, bytes], str | None]:
    """The tokens of a file, and a warning when others than its owner may read it."""
    try:
        text = Path(path).read_text()
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise unreadable(path, exc, "token file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read token file {path}: {exc}") from None
    warning = None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warning = f"token file {path} can be read by other users; chmod 600 {path}"
    return parse_tokens(text, path), warning


def token_names(path: str | None) -> list[str] | None:
    """The names of a token file's tokens (never their secrets); None without a file."""
    return None if path is None else list(load_tokens(path)[0])
