"""Unix socket mistakes a user can make end in one line that says what to fix, exit code 2, no
traceback; and what is at the path is left as it was."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.support import ambassador, run_program
from tests.integration.test_cli_errors import assert_one_line_error

pytestmark = pytest.mark.integration

TOO_LONG = "/tmp/" + "s" * 103  # 108 bytes: one more than sun_path holds with its NUL


def client(free_port: Callable[..., int], *args: str) -> list[str]:
    # The remote is never contacted: the expose fails first.
    return [*ambassador("client"), "--remote", f"127.0.0.1:{free_port()}", *args]


def test_a_link_path_too_long(free_port: Callable[..., int]) -> None:
    argv = [*ambassador("server"), "--listen", f"127.0.0.1:{free_port()}"]
    result = run_program([*argv, "--link", f"pg=unix:{TOO_LONG}"])
    assert_one_line_error(
        result, "ambassador-server", "108 bytes long", "at most 107", "use a shorter path"
    )


def test_an_expose_path_too_long(free_port: Callable[..., int]) -> None:
    result = run_program(client(free_port, "--expose", f"unix:{TOO_LONG}=pg"))
    assert_one_line_error(
        result, "ambassador-client", "108 bytes long", "at most 107", "use a shorter path"
    )


UDP_UNIX = "a unix socket carries TCP services only, so udp: does not go with unix:"


def test_a_udp_link_to_a_socket(free_port: Callable[..., int]) -> None:
    argv = [*ambassador("server"), "--listen", f"127.0.0.1:{free_port()}"]
    result = run_program([*argv, "--link", "dns=udp:unix:/run/dns.sock"])
    assert_one_line_error(result, "ambassador-server", "bad link", UDP_UNIX, "udp:HOST:PORT")


def test_a_udp_expose_on_a_socket(free_port: Callable[..., int], tmp_path: Path) -> None:
    result = run_program(client(free_port, "--expose", f"udp:unix:{tmp_path}/dns.sock=dns"))
    assert_one_line_error(result, "ambassador-client", "bad expose", UDP_UNIX)
    assert not (tmp_path / "dns.sock").exists()


@pytest.mark.parametrize(
    ("make", "fix"),
    [
        (lambda path: path.mkdir(), "a directory is there"),
        (lambda path: path.write_text("precious"), "a file that is not a socket is there"),
        (lambda path: path.symlink_to(path.with_name("elsewhere")), "it is a symbolic link"),
    ],
    ids=["directory", "file", "symlink"],
)
def test_an_expose_path_taken_by_something_else(
    tmp_path: Path, free_port: Callable[..., int], make: Callable[[Path], None], fix: str
) -> None:
    path = tmp_path / "app.sock"
    make(path)
    before = os.lstat(path)
    result = run_program(client(free_port, "--expose", f"unix:{path}=redis"))
    assert_one_line_error(
        result, "ambassador-client", f"unix:{path}", fix,
        "remove it yourself or choose another path", first=False,
    )  # fmt: skip
    assert os.lstat(path).st_ino == before.st_ino  # left as it was


def test_an_expose_in_a_directory_that_does_not_exist(
    tmp_path: Path, free_port: Callable[..., int]
) -> None:
    path = tmp_path / "absent" / "app.sock"
    result = run_program(client(free_port, "--expose", f"unix:{path}=redis"))
    assert_one_line_error(
        result, "ambassador-client", f"the directory {tmp_path}/absent does not exist",
        "create it", first=False,
    )  # fmt: skip


def test_an_expose_on_a_socket_another_program_listens_on(
    tmp_path: Path, free_port: Callable[..., int]
) -> None:
    path = tmp_path / "app.sock"
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(os.fspath(path))
        other.listen()
        result = run_program(client(free_port, "--expose", f"unix:{path}=redis"))
        assert_one_line_error(
            result, "ambassador-client", "another program is listening on it",
            "stop that program or choose another path", first=False,
        )  # fmt: skip
        assert stat.S_ISSOCK(os.lstat(path).st_mode)


def test_an_expose_where_the_user_may_not_write(
    tmp_path: Path, free_port: Callable[..., int]
) -> None:
    # A directory another user owns; the client runs without the capability that lets root
    # write anywhere, as a plain user would.
    if os.geteuid() != 0:
        pytest.skip("needs root, to make a directory another user owns")
    tmp_path.chmod(0o755)
    directory = tmp_path / "theirs"
    directory.mkdir(mode=0o755)
    os.chown(directory, 65534, 65534)
    path = directory / "app.sock"
    argv = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *client(free_port)]
    result = run_program([*argv, "--expose", f"unix:{path}=redis"])
    assert_one_line_error(
        result, "ambassador-client", "permission denied", "let the client's user write the "
        "directory, or choose another path", first=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "fix"),
    [
        (["--expose-socket-mode", "rw-rw----"], "give three octal digits like 0660"),
        (["--expose-socket-owner", "no-such-user-here"], "no user 'no-such-user-here'"),
    ],
    ids=["mode", "owner"],
)
def test_bad_socket_mode_or_owner(
    tmp_path: Path, free_port: Callable[..., int], args: list[str], fix: str
) -> None:
    result = run_program(client(free_port, "--expose", f"unix:{tmp_path}/a.sock=redis", *args))
    assert_one_line_error(result, "ambassador-client", fix)
