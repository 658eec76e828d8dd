"""The egress proxy's credentials: one ``USER:PASSWORD`` line in a file only its owner reads.

They are read from a file, never from a flag, a variable or the proxy URL, which ``ps``, shell
history and logs would show. A file others may read is used, with a warning, as token files
are. The bounds are SOCKS5's (RFC 1929: 1 to 255 bytes each), so one file serves either kind
of proxy; HTTP Basic forbids a colon in the user name, so the first colon splits the line.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tunnel.errors import ConfigError

MAX_FIELD = 255  # bytes in the user name and in the password (SOCKS5's one length byte)


def load_proxy_credentials(path: str) -> tuple[tuple[str, str], str | None]:
    """(user, password) from ``path``, and a warning when others than its owner may read it."""
    what = f"proxy credentials file {path}"
    try:
        text = Path(path).read_text()
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ConfigError(
            f"cannot read {what}: no such file; create it with one USER:PASSWORD line (chmod 600)"
        ) from None
    except (PermissionError, IsADirectoryError) as exc:
        raise ConfigError(
            f"cannot read {what}: {exc.strerror}; give a file this user may read"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"cannot read {what}: it is not UTF-8 text; save it as UTF-8") from None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if len(lines) != 1:
        raise ConfigError(f"{what} must hold one USER:PASSWORD line; it holds {len(lines)}")
    user, colon, password = lines[0].partition(":")
    if not colon or not user or not password:
        raise ConfigError(f"{what}: expected USER:PASSWORD (neither empty)")
    if len(user.encode()) > MAX_FIELD or len(password.encode()) > MAX_FIELD:
        raise ConfigError(f"{what}: the user and the password may have at most {MAX_FIELD} bytes")
    warning = None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warning = f"{what} can be read by other users; chmod 600 {path}"
    return (user, password), warning
