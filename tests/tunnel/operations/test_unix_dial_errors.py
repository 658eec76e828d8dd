"""A failed dial to a unix socket, named in one line: each error is the kernel's own, from a
real connect() to a real path."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tunnel.errors import Reason
from tunnel.operations.oserrors import dial_error
from tunnel.settings.unixpath import UnixPath


def failed_connect(path: Path) -> OSError:
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.connect(os.fspath(path))
    except OSError as exc:
        return exc
    finally:
        sock.close()
    pytest.fail(f"connecting to {path} worked")


def test_no_such_socket(tmp_path: Path) -> None:
    path = tmp_path / "gone.sock"
    reason, text = dial_error(UnixPath(str(path)), failed_connect(path), 5.0)
    assert reason is Reason.BACKEND_UNREACHABLE
    assert text == (
        f"cannot reach unix:{path}: no such socket; start the backend, or fix the link's path"
    )


def test_a_directory_is_not_a_socket(tmp_path: Path) -> None:
    reason, text = dial_error(UnixPath(str(tmp_path)), failed_connect(tmp_path), 5.0)
    assert reason is Reason.BACKEND_UNREACHABLE
    assert (
        text
        == f"cannot reach unix:{tmp_path}: it is a directory, not a socket; fix the link's path"
    )


def test_a_regular_file_is_not_a_socket(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    reason, text = dial_error(UnixPath(str(path)), failed_connect(path), 5.0)
    assert reason is Reason.BACKEND_UNREACHABLE
    assert "it is a regular file, not a socket; fix the link's path" in text


def test_a_socket_nobody_listens_on_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(os.fspath(path))
    sock.close()  # the file stays: a stale socket, as a crashed backend leaves it
    reason, text = dial_error(UnixPath(str(path)), failed_connect(path), 5.0)
    assert reason is Reason.BACKEND_REFUSED
    assert text == (
        f"unix:{path} refused the connection: nobody listens on that socket (a stale file?); "
        "start the backend"
    )


def test_a_timeout_names_the_socket_and_the_time(tmp_path: Path) -> None:
    reason, text = dial_error(UnixPath(str(tmp_path / "s")), TimeoutError(), 2.5)
    assert (reason, text) == (
        Reason.BACKEND_TIMEOUT,
        f"unix:{tmp_path}/s did not answer within 2.5s",
    )


def test_a_socket_of_another_user_is_permission_denied(tmp_path: Path) -> None:
    # The test runs as root, which may connect anywhere: the probe runs without the
    # capabilities that bypass file permissions, as an unprivileged server would.
    if os.geteuid() != 0:
        pytest.skip("needs root, to make a socket another user owns")
    tmp_path.chmod(0o755)
    path = tmp_path / "private.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(os.fspath(path))
    listener.listen()
    os.chown(path, 65534, 65534)
    path.chmod(0o600)
    probe = (
        "import socket, sys\n"
        "from tunnel.operations.oserrors import dial_error\n"
        "from tunnel.settings.unixpath import UnixPath\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        "    s.connect(sys.argv[1])\n"
        "except OSError as exc:\n"
        "    reason, text = dial_error(UnixPath(sys.argv[1]), exc, 5.0)\n"
        "    print(reason.label, text, sep='|')\n"
    )
    try:
        done = subprocess.run(
            ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
             sys.executable, "-c", probe, os.fspath(path)],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
    finally:
        listener.close()
    label, text = done.stdout.strip().split("|")
    assert label == Reason.BACKEND_UNREACHABLE.label
    assert text == (
        f"cannot reach unix:{path}: permission denied; let the server's user write the socket "
        "(its group or mode) and search its directories"
    )


def test_a_connect_the_system_timed_out_names_no_deadline_of_ours() -> None:
    # ETIMEDOUT from the kernel (about two minutes of SYN retries) arrives as TimeoutError
    # before --dial-timeout passed: "within 0s" would be wrong.
    timed_out = TimeoutError(errno.ETIMEDOUT, "Connection timed out")
    reason, text = dial_error("10.0.0.5:6379", timed_out, 0.0)
    assert reason is Reason.BACKEND_TIMEOUT
    assert text == "10.0.0.5:6379 did not answer (the connection timed out)"
    reason, text = dial_error("10.0.0.5:6379", TimeoutError(), 2.5)
    assert text == "10.0.0.5:6379 did not answer within 2.5s"
