"""Turning socket errors into one line a person can act on."""

from __future__ import annotations

import errno
import os
import socket
import stat

from tunnel.errors import Reason
from tunnel.settings.unixpath import UnixPath


def listen_error(where: str, exc: OSError) -> str:
    """Why a listening socket could not be opened, and what to do about it."""
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {where}: the port is already in use; "
            "stop the other program or pick another port"
        )
    if exc.errno == errno.EACCES:
        return (
            f"cannot listen on {where}: permission denied; "
            "use a port above 1023 or grant CAP_NET_BIND_SERVICE"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"cannot listen on {where}: this host has no such address; "
            "use one of its addresses, or 0.0.0.0"
        )
    if isinstance(exc, socket.gaierror):
        return f"cannot listen on {where}: the name does not resolve ({exc.strerror})"
    return f"cannot listen on {where}: {exc.strerror or exc}"


def connect_error(where: str, exc: BaseException, timeout: float) -> tuple[str, str]:
    """Why a connection to ``where`` failed, in one line, and a short label for metrics."""
    if isinstance(exc, TimeoutError):
        return f"cannot reach {where}: no answer within {timeout:g}s", "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return (
            f"cannot reach {where}: connection refused (is ambassador-server running there, "
            "on that port?)",
            "refused",
        )
    if isinstance(exc, socket.gaierror):
        return f"cannot reach {where}: the name does not resolve ({exc.strerror})", "dns"
    if isinstance(exc, OSError):
        return f"cannot reach {where}: {exc.strerror or exc}", "unreachable"
    return f"cannot reach {where}: {exc}", "error"


def dial_error(target: object, exc: BaseException, timeout: float) -> tuple[Reason, str]:
    """Why a dial to a backend at ``target`` failed: the reason code the tunnel answers a
    stream with (and labels metrics with), and one line for the log.

    ``target`` is shown as ``str(target)``; a :class:`UnixPath` gets the reasons of a unix
    socket, which the kernel's errors alone do not tell apart (connecting to a plain file or
    a directory is "refused", like a socket nobody listens on).
    """
    if isinstance(exc, TimeoutError):
        if timeout <= 0:  # the system gave up on the connect before our own deadline did
            return Reason.BACKEND_TIMEOUT, f"{target} did not answer (the connection timed out)"
        return Reason.BACKEND_TIMEOUT, f"{target} did not answer within {timeout:g}s"
    if isinstance(target, UnixPath) and isinstance(exc, OSError):
        return _unix_dial_error(target, exc)
    if isinstance(exc, ConnectionRefusedError):
        return Reason.BACKEND_REFUSED, f"{target} refused the connection"
    if isinstance(exc, OSError):
        return Reason.BACKEND_UNREACHABLE, f"cannot reach {target}: {exc.strerror or exc}"
    return Reason.BACKEND_UNREACHABLE, f"cannot reach {target}: {exc!r}"


def _unix_dial_error(target: UnixPath, exc: OSError) -> tuple[Reason, str]:
    if isinstance(exc, FileNotFoundError):
        return Reason.BACKEND_UNREACHABLE, (
            f"cannot reach {target}: no such socket; start the backend, or fix the link's path"
        )
    if isinstance(exc, PermissionError):
        return Reason.BACKEND_UNREACHABLE, (
            f"cannot reach {target}: permission denied; let the server's user write the socket "
            "(its group or mode) and search its directories"
        )
    if isinstance(exc, ConnectionRefusedError):
        kind = _file_kind(target.path)
        if kind is not None:
            return Reason.BACKEND_UNREACHABLE, (
                f"cannot reach {target}: it is {kind}, not a socket; fix the link's path"
            )
        return Reason.BACKEND_REFUSED, (
            f"{target} refused the connection: nobody listens on that socket (a stale file?); "
            "start the backend"
        )
    if exc.errno == errno.ENOTDIR:
        return Reason.BACKEND_UNREACHABLE, (
            f"cannot reach {target}: a part of the path is not a directory; fix the link's path"
        )
    return Reason.BACKEND_UNREACHABLE, f"cannot reach {target}: {exc.strerror or exc}"


def _file_kind(path: str) -> str | None:
    """What ``path`` is when it exists and is not a socket: a directory, a plain file..."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISSOCK(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "a special file"
