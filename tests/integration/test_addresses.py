"""Addresses in the roles' lines are written so they can be read back: an IPv6 listener is
``[::1]:PORT``, never ``::1:PORT``; and a count agrees with its number (``1 session``)."""

from __future__ import annotations

import re
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.support import Processes, Started, ambassador, run_program

pytestmark = pytest.mark.integration


@pytest.fixture
def ipv6() -> None:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        pytest.skip("::1 is not available here")


@pytest.fixture
def busy_v6(ipv6: None, free_port: Callable[..., int]) -> Iterator[int]:
    with socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", free_port("::1")))
        sock.listen()
        yield sock.getsockname()[1]


def test_ipv6_listeners_are_written_in_brackets(
    ipv6: None,
    tmp_path: Path,
    processes: Processes,
    start_backend: Callable[[str], int],
    start_client: Callable[..., Started],
    free_port: Callable[..., int],
    wait_for_port: Callable[..., None],
) -> None:
    backend = start_backend("echo")
    tunnel, local, metrics, forwarded = (free_port("::1") for _ in range(4))
    config = tmp_path / "server.toml"
    config.write_text(f'listen = "[::1]:{tunnel}"\n[links]\necho = "127.0.0.1:{backend}"\n')
    server = processes.start(
        "ambassador-server",
        [*ambassador("server"), "--config", str(config), f"--metrics-listen=[::1]:{metrics}"],
    )
    wait_for_port("::1", tunnel, alive=server.alive)
    server.wait_for_stderr(rf"listening on \[::1\]:{tunnel} ")
    server.wait_for_stderr(rf"metrics and status on http://\[::1\]:{metrics}/")
    client = start_client(
        f"--remote=[::1]:{tunnel}", f"--expose=[::1]:{local}=echo", listens=[("::1", local)]
    )
    client.wait_for_stderr(rf"tunnel up to \[::1\]:{tunnel} ")
    server.wait_for_stderr(r"session up with \[::1\]:\d+ ")

    # One session: the reload says "1 session", the drain "1 session, 0 open streams".
    server.popen.send_signal(signal.SIGHUP)
    server.wait_for_stderr(r"configuration reloaded: offering echo:\d+ to 1 session\n")
    server.popen.send_signal(signal.SIGTERM)
    server.wait_for_stderr(r"draining: 1 session, 0 open streams, ")
    assert server.popen.wait(timeout=10) == 0

    drop_in = processes.start(
        "ambassador-server",
        [*ambassador("server"), "--link", f"echo:{forwarded}=127.0.0.1:{backend}",
         "--forward", "--forward-bind", "::1"],
    )  # fmt: skip
    drop_in.wait_for_stderr(rf"forwarding \[::1\]:{forwarded} to 127\.0\.0\.1:{backend} ")
    assert not re.search(r"(?<!\[)::1:\d", server.stderr() + client.stderr() + drop_in.stderr())


def test_an_ipv6_port_in_use_is_named_in_brackets(
    busy_v6: int, free_port: Callable[..., int]
) -> None:
    argv = [*ambassador("client"), f"--remote=127.0.0.1:{free_port()}",
            f"--metrics-listen=[::1]:{busy_v6}"]  # fmt: skip
    result = run_program(argv)
    assert result.returncode == 2, result.stderr
    assert f"cannot listen on [::1]:{busy_v6}: the port is already in use" in result.stderr
