"""Listening on a unix socket's path, without harming whatever else is in the file system.

Theory of operation. Binding needs the path free, and a socket file outlives the program that
made it when that program crashes, so a leftover is removed, but only when it is certainly
ours to remove: the path is looked at with lstat (a symbolic link is never followed, and never
removed), it must be a socket, and a connect to it must be refused (nobody listens). Anything
else (a link, a plain file, a directory, a socket in use, one we may not probe) is refused in
one line that says what to do, and left as it was. The parent directory must exist: creating
directories is the operator's business (their owner and mode matter as much as the socket's).

The socket gets its mode and owner between bind() and listen(): connecting needs a listening
socket, so no consumer can reach it before they are in place. On close, the file is removed if
it is still the one we bound (same device and inode), so that a socket another process put at
the path since is left alone.

A reload that changes the mode or owner applies them to the socket file in place, again only
while it is the one we bound (same device, inode and change time), and never through a
symbolic link: chmod and chown are called with follow_symlinks=False, which on Linux holds the
path by an O_PATH descriptor that cannot be a link's target, so a link swapped in after the
identity check makes the change fail rather than reach the link's target.
"""

from __future__ import annotations

import asyncio
import errno
import grp
import os
import pwd
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass

from tunnel.errors import ConfigError
from tunnel.settings.unixpath import SocketAccess, parse_socket_mode

__all__ = ["SocketFile", "listen_unix", "socket_access"]

_BACKLOG = 1024


@dataclass(frozen=True, slots=True)
class SocketFile:
    """A socket file this process bound, known by its device, inode and change time: a file
    system reuses a freed inode at once (ext4 gave a socket bound after ours was unlinked our
    old number), and the change time, to the nanosecond, tells the two apart."""

    path: str
    identity: tuple[int, int, int]

    @classmethod
    def of(cls, path: str) -> SocketFile:
        return cls(path, _identity(os.lstat(path)))

    def remove(self) -> None:
        """Unlink the file if it is still the socket we bound; leave anything else alone."""
        try:
            info = os.lstat(self.path)
            if stat.S_ISSOCK(info.st_mode) and _identity(info) == self.identity:
                os.unlink(self.path)
        except OSError:
            pass  # gone already, or no longer ours to remove: nothing to clean up

    def apply(self, access: SocketAccess) -> tuple[SocketFile, str | None]:
        """Give the file ``access``'s mode and owner if it is still the socket we bound.

        Returns the file as it is now (a change moves its change time, by which it is known
        when removed) and, when the change could not be made in full, why, in one line."""
        where = f"unix:{self.path}"
        try:
            info = os.lstat(self.path)
        except OSError as exc:
            return self, _not_ours(where, exc.strerror or str(exc))
        if not stat.S_ISSOCK(info.st_mode) or _identity(info) != self.identity:
            return self, _not_ours(where, "replaced by another file")
        problem = None
        try:
            os.chmod(self.path, access.mode, follow_symlinks=False)
            if access.uid != -1 or access.gid != -1:
                os.chown(self.path, access.uid, access.gid, follow_symlinks=False)
        except NotImplementedError:  # a symbolic link took the socket's place meanwhile
            return self, _not_ours(where, "now a symbolic link")
        except OSError as exc:
            if exc.errno == errno.EPERM and access.owner:
                problem = (f"cannot give {where} to {access.owner!r}: only root may give a "
                           "file away, and a group only to its members; it keeps its owner "
                           "until a reload after that is fixed")  # fmt: skip
            else:
                problem = (f"cannot change the mode or owner of {where}: "
                           f"{exc.strerror or exc}; reload again once that is fixed")  # fmt: skip
        try:
            now = os.lstat(self.path)
        except OSError:
            return self, problem
        if (now.st_dev, now.st_ino) != self.identity[:2] or not stat.S_ISSOCK(now.st_mode):
            return self, problem or _not_ours(where, "replaced by another file")
        return SocketFile(self.path, _identity(now)), problem


def _not_ours(where: str, why: str) -> str:
    return (
        f"{where} is no longer the socket this client bound ({why}); its mode and owner are "
        "left alone: restart the client to listen there again"
    )


def _identity(info: os.stat_result) -> tuple[int, int, int]:
    return info.st_dev, info.st_ino, info.st_ctime_ns


def socket_access(mode: str | None, owner: str | None) -> SocketAccess:
    """The mode and owner for exposed sockets, from ``0660`` and ``user:group`` (either part
    may be left out, and either may be a number); ConfigError naming the fix."""
    access = SocketAccess()
    if mode:
        try:
            access = SocketAccess(mode=parse_socket_mode(mode))
        except ValueError as exc:
            raise ConfigError(f"{exc} (--expose-socket-mode)") from None
    if not owner:
        return access
    user, _, group = owner.partition(":")
    uid = _lookup(user, "user", lambda name: pwd.getpwnam(name).pw_uid) if user else -1
    gid = _lookup(group, "group", lambda name: grp.getgrnam(name).gr_gid) if group else -1
    if uid == -1 and gid == -1:
        raise ConfigError(
            f"bad socket owner {owner[:40]!r}: give USER, USER:GROUP or :GROUP "
            "(--expose-socket-owner)"
        )
    return SocketAccess(access.mode, uid, gid, owner)


def _lookup(name: str, kind: str, find: Callable[[str], int]) -> int:
    if name.isdigit() and len(name) <= 10:
        return int(name)
    try:
        return find(name)
    except KeyError:
        raise ConfigError(
            f"bad socket owner: no {kind} {name[:40]!r} on this host; create it, or give "
            f"an existing {kind} (--expose-socket-owner)"
        ) from None


async def listen_unix(
    protocol: Callable[[], asyncio.BaseProtocol], path: str, access: SocketAccess
) -> tuple[asyncio.Server, SocketFile]:
    """Listen on ``path`` with ``access``'s mode and owner; ConfigError in one line when the
    path cannot be used. The SocketFile removes the file once the server is closed."""
    sock, bound = _bind(path, access)
    try:
        server = await asyncio.get_running_loop().create_unix_server(
            protocol, sock=sock, backlog=_BACKLOG
        )
    except BaseException:
        sock.close()
        bound.remove()
        raise
    return server, bound


def _bind(path: str, access: SocketAccess) -> tuple[socket.socket, SocketFile]:
    where = f"unix:{path}"
    _check_parent(where, os.path.dirname(path))
    _clear_leftover(where, path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound: SocketFile | None = None
    try:
        sock.bind(path)
        bound = SocketFile.of(path)
        os.chmod(path, access.mode)
        bound = SocketFile.of(path)  # each change moves the change time
        if access.uid != -1 or access.gid != -1:
            os.chown(path, access.uid, access.gid, follow_symlinks=False)
            bound = SocketFile.of(path)
        sock.listen(_BACKLOG)
    except OSError as exc:
        sock.close()
        if bound is not None:
            bound.remove()
        raise ConfigError(_bind_error(where, exc, access)) from None
    return sock, bound


def _check_parent(where: str, parent: str) -> None:
    try:
        info = os.stat(parent)
    except FileNotFoundError:
        raise ConfigError(
            f"cannot listen on {where}: the directory {parent} does not exist; create it "
            "(owned by the client's user) or choose another path"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot listen on {where}: {parent}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(
            f"cannot listen on {where}: {parent} is not a directory; choose another path"
        )


def _clear_leftover(where: str, path: str) -> None:
    """Remove a socket file nobody listens on; refuse anything else at ``path``."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise ConfigError(
            f"cannot listen on {where}: it is a symbolic link, which is never followed or "
            "removed; remove it yourself or choose another path"
        )
    if not stat.S_ISSOCK(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "a file that is not a socket"
        raise ConfigError(
            f"cannot listen on {where}: {kind} is there, and only a leftover socket is "
            "replaced; remove it yourself or choose another path"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        pass  # nobody listens: a leftover of a program that is gone
    except BlockingIOError:
        raise ConfigError(_in_use(where)) from None  # a listener whose queue is full
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {where}: a socket is there and cannot be probed "
            f"({exc.strerror or exc}); remove it yourself or choose another path"
        ) from None
    else:
        raise ConfigError(_in_use(where))
    finally:
        probe.close()
    # Unlink only the socket that was probed, not one that took its place since.
    again = os.lstat(path)
    if (again.st_dev, again.st_ino) == (info.st_dev, info.st_ino) and stat.S_ISSOCK(again.st_mode):
        os.unlink(path)


def _in_use(where: str) -> str:
    return (
        f"cannot listen on {where}: another program is listening on it; stop that program "
        "or choose another path"
    )


def _bind_error(where: str, exc: OSError, access: SocketAccess) -> str:
    if exc.errno == errno.EADDRINUSE:
        return _in_use(where)
    if exc.errno == errno.EPERM and access.owner:
        return (
            f"cannot listen on {where}: cannot give the socket to {access.owner!r} (only root "
            "may give a file away, and a group only to its members); run the client as that "
            "user, or use a group it belongs to"
        )
    if exc.errno == errno.EACCES:
        return (
            f"cannot listen on {where}: permission denied; let the client's user write the "
            "directory, or choose another path"
        )
    return f"cannot listen on {where}: {exc.strerror or exc}"
