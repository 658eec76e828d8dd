"""Showing a string that came from a peer: bounded in length, escaped, on one line.

Every string a peer sends (its hello's name, a service name in a stream header, a refusal's
text, an alias in a catalog, a certificate's name) is hostile forever, authenticated or not. It
is never logged, put in a metric label, or shown on /status as it came: a newline in it would
forge a log line, a terminal escape would repaint the operator's screen, and a megabyte of it
repeated per stream would fill the disk. :func:`shown` is the one place that makes such a string
safe: at most ``limit`` characters of the original are kept (the rest is counted, not copied),
and every character that is not printable (control characters, line and paragraph separators,
bidirectional overrides and other format characters, unassigned code points), and the backslash
itself, is written as a Python escape, so the result is one line and says unambiguously what was
sent. HTML pages escape the result again for markup (``tunnel.operations.statuspage``).
"""

from __future__ import annotations

NAME_LIMIT = 64  # a name shown in a log line or a label (a peer's name, an identity, a service)
TEXT_LIMIT = 256  # a sentence shown in a log line or /status (a refusal's reason)

_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def shown(text: str, limit: int = TEXT_LIMIT) -> str:
    """``text`` safe to log, label or show: one line, at most ``limit`` characters of it."""
    # The common case (short, printable, no backslash) returns the string itself: this runs
    # for names on every refused stream.
    if len(text) <= limit and text.isprintable() and "\\" not in text:
        return text
    kept = text[:limit]
    out = "".join(_escape(char) for char in kept)
    if len(text) > limit:
        out += f"...(+{len(text) - limit} chars)"
    return out


def quoted(text: str, limit: int = NAME_LIMIT) -> str:
    """``shown(text)`` in single quotes, where the log would otherwise use ``%r``."""
    return "'" + shown(text, limit).replace("'", "\\'") + "'"


def _escape(char: str) -> str:
    if char in _ESCAPES:
        return _ESCAPES[char]
    if char.isprintable():
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
