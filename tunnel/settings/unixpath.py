"""Unix socket paths, written ``unix:/run/app.sock``: a link's target or an expose's listener.

Theory of operation. A path is checked when it is parsed, so that nothing later has to: it is
absolute (a relative path would depend on the directory the ambassador was started in), it is
printable text (it is shown in logs, status pages and errors as written), and it fits the
kernel's ``sun_path``: 108 bytes on Linux, one of them the terminating NUL. Abstract sockets
(Linux's ``@name``, a leading NUL byte) are refused rather than half supported: they have no
file, so neither a mode nor an owner, and anyone in the network namespace may connect to them.

Only text is handled here; no file is looked at. Whether the path exists, is a socket, and may
be connected to is found out when it is dialled or bound (``tunnel.aio.unixlisten``,
``tunnel.operations.oserrors``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = [
    "DEFAULT_SOCKET_MODE",
    "MAX_PATH_BYTES",
    "SocketAccess",
    "UnixPath",
    "parse_socket_mode",
    "unix_path_problem",
]

#: The longest path a unix socket may have: ``sun_path`` is 108 bytes on Linux, the
#: terminating NUL included.
MAX_PATH_BYTES = 107

_EXAMPLE = "like unix:/run/ambassador/app.sock"


def unix_path_problem(path: str) -> str | None:
    """Why ``path`` cannot name a unix socket (None if it can)."""
    if path == "":
        return f"the socket path is missing; give an absolute path, {_EXAMPLE}"
    if path.startswith("@") or "\0" in path:
        return (
            "abstract sockets are not supported (they have no file, so no mode or owner); "
            f"give a path in the file system, {_EXAMPLE}"
        )
    if not path.isprintable():
        return "the socket path holds unprintable characters; use printable text"
    if not path.startswith("/"):
        return f"the socket path {path!r} is not absolute; give an absolute path, {_EXAMPLE}"
    if path.endswith("/"):
        return f"the socket path {path!r} names a directory; add the socket's file name"
    size = len(os.fsencode(path))
    if size > MAX_PATH_BYTES:
        return (
            f"the socket path is {size} bytes long, and a unix socket path may have at most "
            f"{MAX_PATH_BYTES}; use a shorter path (a directory nearer the root, like /run)"
        )
    return None


@dataclass(frozen=True, slots=True)
class UnixPath:
    """The path of a unix socket in the file system, absolute and printable."""

    path: str

    def __post_init__(self) -> None:
        problem = unix_path_problem(self.path)
        if problem is not None:
            raise ValueError(problem)

    def __str__(self) -> str:
        return f"unix:{self.path}"


#: The mode an exposed socket gets unless told otherwise: its owner only, the safe default
#: for a service that may hold secrets; --expose-socket-mode 0660 shares it with a group.
DEFAULT_SOCKET_MODE = 0o600


@dataclass(frozen=True, slots=True)
class SocketAccess:
    """Who may connect to the sockets the client listens on: their mode, and their owner
    (-1 leaves the user or group as created, which is os.chown's own convention)."""

    mode: int = DEFAULT_SOCKET_MODE
    uid: int = -1
    gid: int = -1
    owner: str = ""  # as the user wrote it, for messages


def parse_socket_mode(text: str) -> int:
    """An octal mode like ``0660`` or ``660``; ValueError saying what is accepted."""
    digits = text[1:] if len(text) == 4 and text.startswith("0") else text
    if len(digits) != 3 or any(char not in "01234567" for char in digits):
        raise ValueError(
            f"bad socket mode {text[:20]!r}: give three octal digits like 0660 "
            "(owner, group, others; 6 is read and write)"
        )
    return int(digits, 8)
