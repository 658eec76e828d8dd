"""How the roles write counts, addresses and unreadable files in the lines people read (logs,
errors, status).

One place for each, so that every line agrees: ``1 session`` and ``2 sessions``, never
``1 sessions``; ``[::1]:7700`` with an IPv6 host in brackets, never ``::1:7700``, whose port
cannot be told from the address; ``cannot read token file t.txt: no such file`` for every
file a user names (configuration, keys, certificates, tokens).
"""

from __future__ import annotations

from tunnel.errors import ConfigError


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``1 session``, ``0 sessions``, ``2 sessions`` (``plural`` for irregular nouns)."""
    return f"{n} {noun}" if n == 1 else f"{n} {plural or noun + 's'}"


def hostport(host: str, port: int) -> str:
    """``host:port`` as a person or a URL writes it: an IPv6 host in brackets (``[::1]:80``),
    so that the port cannot be read as part of the address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def unreadable(path: object, exc: OSError, what: str = "") -> ConfigError:
    """The one line for a file the user named that could not be read (``what``: which file it
    is, such as "config file", where the option does not say)."""
    if isinstance(exc, FileNotFoundError):
        why = "no such file"
    elif isinstance(exc, IsADirectoryError):
        why = "is a directory, expected a file"
    else:
        text = exc.strerror or str(exc)
        why = text[:1].lower() + text[1:]
    return ConfigError(f"cannot read {what + ' ' if what else ''}{path}: {why}")
