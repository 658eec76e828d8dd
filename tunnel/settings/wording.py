"""How the roles write counts and addresses in the lines people read (logs, errors, status).

One place for each, so that every line agrees: ``1 session`` and ``2 sessions``, never
``1 sessions``; ``[::1]:7700`` with an IPv6 host in brackets, never ``::1:7700``, whose port
cannot be told from the address.
"""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``1 session``, ``0 sessions``, ``2 sessions`` (``plural`` for irregular nouns)."""
    return f"{n} {noun}" if n == 1 else f"{n} {plural or noun + 's'}"


def hostport(host: str, port: int) -> str:
    """``host:port`` as a person or a URL writes it: an IPv6 host in brackets (``[::1]:80``),
    so that the port cannot be read as part of the address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
