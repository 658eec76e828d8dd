"""Listening on a unix socket's path (tunnel/aio/unixlisten.py): a leftover socket is replaced,
everything else at the path is refused in one line and left as it was, and a clean close
removes the file."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from pathlib import Path

import pytest

from tunnel.aio.unixlisten import listen_unix, socket_access
from tunnel.errors import ConfigError
from tunnel.settings.unixpath import SocketAccess


async def listen(path: Path, access: SocketAccess | None = None) -> str:
    """Listen at ``path``, talk to it once, close; the error text if it could not listen."""
    try:
        server, file = await listen_unix(
            asyncio.Protocol, os.fspath(path), access or SocketAccess()
        )
    except ConfigError as exc:
        return str(exc)
    try:
        _, writer = await asyncio.open_unix_connection(os.fspath(path))
        writer.close()
    finally:
        server.close()
        file.remove()
        await server.wait_closed()
    return ""


def run_listen(path: Path, access: SocketAccess | None = None) -> str:
    return asyncio.run(listen(path, access))


def test_listens_with_the_default_mode_and_removes_the_file_on_close(tmp_path: Path) -> None:
    path = tmp_path / "app.sock"

    async def scenario() -> None:
        server, file = await listen_unix(asyncio.Protocol, os.fspath(path), SocketAccess())
        info = os.lstat(path)
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o600
        server.close()
        file.remove()
        await server.wait_closed()

    asyncio.run(scenario())
    assert not path.exists()


def test_mode_and_owner_are_applied(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root, to give a socket to another user")
    path = tmp_path / "app.sock"
    access = socket_access("0660", "nobody:65534")

    async def scenario() -> None:
        server, file = await listen_unix(asyncio.Protocol, os.fspath(path), access)
        info = os.lstat(path)
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o660, 65534, 65534)
        server.close()
        file.remove()

    asyncio.run(scenario())


def test_a_leftover_socket_nobody_listens_on_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(os.fspath(path))
    stale.close()  # what a crashed program leaves behind
    assert run_listen(path) == ""


def test_a_socket_in_use_is_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    other = socket.socket(socket.AF_UNIX)
    other.bind(os.fspath(path))
    other.listen()
    try:
        assert run_listen(path) == (
            f"cannot listen on unix:{path}: another program is listening on it; stop that "
            "program or choose another path"
        )
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
    finally:
        other.close()


def test_a_symlink_is_refused_never_followed_nor_removed(tmp_path: Path) -> None:
    # The link points at a leftover socket, which would be replaced if the link were followed.
    target = tmp_path / "elsewhere.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(os.fspath(target))
    stale.close()
    path = tmp_path / "app.sock"
    path.symlink_to(target)
    assert run_listen(path) == (
        f"cannot listen on unix:{path}: it is a symbolic link, which is never followed or "
        "removed; remove it yourself or choose another path"
    )
    assert path.is_symlink()
    assert stat.S_ISSOCK(os.lstat(target).st_mode)


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda path: path.write_text("precious"), "a file that is not a socket"),
        (lambda path: path.mkdir(), "a directory"),
    ],
    ids=["file", "directory"],
)
def test_what_is_not_a_socket_is_refused_and_kept(tmp_path: Path, make: object, kind: str) -> None:
    path = tmp_path / "app.sock"
    make(path)  # type: ignore[operator]
    before = os.lstat(path)
    assert run_listen(path) == (
        f"cannot listen on unix:{path}: {kind} is there, and only a leftover socket is "
        "replaced; remove it yourself or choose another path"
    )
    assert os.lstat(path).st_ino == before.st_ino


def test_a_missing_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "absent" / "app.sock"
    assert run_listen(path) == (
        f"cannot listen on unix:{path}: the directory {tmp_path}/absent does not exist; "
        "create it (owned by the client's user) or choose another path"
    )
    assert not path.parent.exists()


def test_close_leaves_a_socket_that_replaced_ours(tmp_path: Path) -> None:
    path = tmp_path / "app.sock"

    async def scenario() -> None:
        server, file = await listen_unix(asyncio.Protocol, os.fspath(path), SocketAccess())
        server.close()
        await server.wait_closed()
        os.unlink(path)
        newcomer = socket.socket(socket.AF_UNIX)
        newcomer.bind(os.fspath(path))  # another program's socket, at the same path
        file.remove()
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        newcomer.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("mode", "owner", "said"),
    [
        ("660x", None, "bad socket mode '660x': give three octal digits like 0660"),
        ("0777", "no-such-user-here", "no user 'no-such-user-here' on this host"),
        (None, ":no-such-group-here", "no group 'no-such-group-here' on this host"),
        (None, ":", "give USER, USER:GROUP or :GROUP"),
    ],
)
def test_bad_mode_or_owner_is_one_line(mode: str | None, owner: str | None, said: str) -> None:
    with pytest.raises(ConfigError) as error:
        socket_access(mode, owner)
    assert said in str(error.value)
    assert "\n" not in str(error.value)


def test_giving_a_socket_away_without_permission_is_one_line(tmp_path: Path) -> None:
    # As root the chown would succeed: run the listener without CAP_CHOWN, as a plain user.
    if os.geteuid() != 0:
        pytest.skip("needs root, to drop a capability")
    import subprocess
    import sys

    probe = (
        "import asyncio, sys\n"
        "from tunnel.aio.unixlisten import listen_unix, socket_access\n"
        "from tunnel.errors import ConfigError\n"
        "async def main():\n"
        "    try:\n"
        "        access = socket_access('0660', 'nobody')\n"
        "        await listen_unix(asyncio.Protocol, sys.argv[1], access)\n"
        "    except ConfigError as exc:\n"
        "        print(exc)\n"
        "asyncio.run(main())\n"
    )
    path = tmp_path / "app.sock"
    done = subprocess.run(
        ["setpriv", "--bounding-set=-chown", sys.executable, "-c", probe, os.fspath(path)],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert done.stdout.strip() == (
        f"cannot listen on unix:{path}: cannot give the socket to 'nobody' (only root may give "
        "a file away, and a group only to its members); run the client as that user, or use a "
        "group it belongs to"
    )
    assert not path.exists()


def test_a_new_mode_is_applied_in_place_and_the_file_is_still_removed(tmp_path: Path) -> None:
    path = tmp_path / "app.sock"

    async def scenario() -> None:
        server, file = await listen_unix(asyncio.Protocol, os.fspath(path), SocketAccess())
        before = os.lstat(path)
        file, problem = file.apply(socket_access("0666", None))
        assert problem is None
        after = os.lstat(path)
        assert stat.S_IMODE(after.st_mode) == 0o666
        assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
        _, writer = await asyncio.open_unix_connection(os.fspath(path))  # still listening
        writer.close()
        server.close()
        file.remove()  # known by its new change time
        await server.wait_closed()

    asyncio.run(scenario())
    assert not path.exists()


def test_a_new_mode_leaves_a_file_that_replaced_ours_alone(tmp_path: Path) -> None:
    path, target = tmp_path / "app.sock", tmp_path / "target"
    target.write_text("not a socket")
    target.chmod(0o600)

    async def scenario() -> None:
        server, file = await listen_unix(asyncio.Protocol, os.fspath(path), SocketAccess())
        os.unlink(path)
        os.symlink(target, path)
        same, problem = file.apply(socket_access("0666", None))
        assert same == file
        assert problem == (
            f"unix:{path} is no longer the socket this client bound (replaced by another file); "
            "its mode and owner are left alone: restart the client to listen there again"
        )
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600


def test_an_owner_a_reload_may_not_give_is_one_line_and_the_mode_still_changes(
    tmp_path: Path,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root, to drop a capability")
    import subprocess
    import sys

    probe = (
        "import asyncio, os, stat, sys\n"
        "from tunnel.aio.unixlisten import listen_unix, socket_access\n"
        "from tunnel.settings.unixpath import SocketAccess\n"
        "async def main():\n"
        "    server, file = await listen_unix(asyncio.Protocol, sys.argv[1], SocketAccess())\n"
        "    file, problem = file.apply(socket_access('0660', 'nobody'))\n"
        "    print(problem)\n"
        "    print(oct(stat.S_IMODE(os.lstat(sys.argv[1]).st_mode)))\n"
        "    server.close()\n"
        "    file.remove()\n"
        "    print(os.path.exists(sys.argv[1]))\n"
        "asyncio.run(main())\n"
    )
    path = tmp_path / "app.sock"
    done = subprocess.run(
        ["setpriv", "--bounding-set=-chown", sys.executable, "-c", probe, os.fspath(path)],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert done.stdout.splitlines() == [
        f"cannot give unix:{path} to 'nobody': only root may give a file away, and a group only "
        "to its members; it keeps its owner until a reload after that is fixed",
        "0o660",
        "False",
    ]
