"""Unix sockets on both ends of the pair, with real programs: psql to a PostgreSQL server that
listens only on its unix socket, and redis-cli -s to redis-server on TCP and on a socket."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.environment import missing
from tests.integration.support import (
    AmbassadorServer,
    Processes,
    Redis,
    Started,
    run_program,
)
from tests.integration.unixsockets import Postgres, psql, redis_cli_s, wait_for_socket

pytestmark = pytest.mark.integration


def exposing(client: Started, path: Path) -> Started:
    client.wait_for_stderr(rf"exposing '[^']*' on {re.escape(f'unix:{path}')}(?!\S)")
    client.wait_for_stderr(r"tunnel up to ")
    return client


def test_psql_through_the_pair_to_postgres_on_its_unix_socket_only(
    postgres: Postgres,
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    free_port: Callable[..., int],
    tmp_path: Path,
) -> None:
    # PostgreSQL takes no TCP connection at all: the server must dial its socket.
    assert psql("-h", "127.0.0.1", "-p", "5432").startswith("psql: error")
    server = start_server(f"pg=unix:{postgres.directory}/.s.PGSQL.5432")
    local = tmp_path / "client"
    local.mkdir()
    port = free_port()
    exposing(
        start_client(f"--remote=127.0.0.1:{server.port}", f"--expose=unix:{local}/.s.PGSQL.5432=pg",
                     f"--expose=127.0.0.1:{port}=pg", listens=[("127.0.0.1", port)],
                     wait_tunnel=False),
        local / ".s.PGSQL.5432",
    )  # fmt: skip
    # A unix consumer to a unix backend: psql -h DIR uses DIR/.s.PGSQL.5432.
    assert psql("-h", str(local), "-p", "5432") == "through a unix socket"
    # A TCP consumer to the same unix backend.
    assert psql("-h", "127.0.0.1", "-p", str(port)) == "through a unix socket"


@pytest.fixture
def redis_on_socket(processes: Processes, tmp_path: Path) -> Path:
    """redis-server listening on a unix socket only (port 0), persisting nothing."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        missing("redis-server and redis-cli (Debian packages redis-server, redis-tools)")
    path = tmp_path / "redis.sock"
    process = processes.start(
        "redis-server",
        ["redis-server", "--port", "0", "--unixsocket", str(path), "--unixsocketperm", "700",
         "--save", "", "--appendonly", "no"],
    )  # fmt: skip
    wait_for_socket(path, process.alive)
    return path


def test_redis_cli_on_an_exposed_socket_to_redis_on_tcp(
    redis_server: Redis,
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    tmp_path: Path,
) -> None:
    # From a config file: the expose list and the socket's mode.
    server = start_server(f"redis=127.0.0.1:{redis_server.port}")
    exposed = tmp_path / "redis.sock"
    config = tmp_path / "client.toml"
    config.write_text(
        f'remote = "127.0.0.1:{server.port}"\n'
        f'expose = ["unix:{exposed}=redis"]\n'
        'expose_socket_mode = "0660"\n'
    )
    client = exposing(start_client(f"--config={config}", wait_tunnel=False), exposed)
    assert stat.S_IMODE(os.lstat(exposed).st_mode) == 0o660
    assert redis_cli_s(exposed, "SET", "k", "unix to tcp") == "OK"
    assert redis_cli_s(exposed, "GET", "k") == "unix to tcp"
    # A clean stop removes the socket file.
    assert client.stop() == 0
    assert not exposed.exists()


def test_redis_cli_on_an_exposed_socket_to_redis_on_a_socket(
    redis_on_socket: Path,
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    tmp_path: Path,
) -> None:
    server = start_server(f"redis=unix:{redis_on_socket}")
    exposed = tmp_path / "exposed" / "redis.sock"
    exposed.parent.mkdir()
    # A leftover of an earlier run that did not stop cleanly: replaced, since nobody listens.
    with socket.socket(socket.AF_UNIX) as old:
        old.bind(str(exposed))
    exposing(
        start_client(f"--remote=127.0.0.1:{server.port}", f"--expose=unix:{exposed}=redis",
                     wait_tunnel=False),
        exposed,
    )  # fmt: skip
    assert redis_cli_s(exposed, "SET", "k", "unix to unix") == "OK"
    assert redis_cli_s(exposed, "GET", "k") == "unix to unix"
    assert redis_cli_s(redis_on_socket, "GET", "k") == "unix to unix"  # the same redis


@pytest.fixture
def open_directory() -> Iterator[Path]:
    """A directory any user may reach (pytest's own is root's alone), removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="amb-sock-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def reloaded(client: Started, config: Path, lines: list[str], times: int) -> None:
    """Write ``config`` and SIGHUP the client; wait until it has reloaded ``times`` times."""
    config.write_text("".join(f"{line}\n" for line in lines))
    client.popen.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while client.stderr().count("reloaded (SIGHUP)") < times:
        assert time.monotonic() < deadline, f"no reload:\n{client.stderr()}"
        assert client.alive(), client.stderr()
        time.sleep(0.05)


def as_nobody(path: Path, *command: str) -> str:
    """redis-cli -s as the unprivileged user nobody: the socket's mode and owner apply."""
    nobody = pwd.getpwnam("nobody")
    result = run_program(
        ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
         "redis-cli", "-s", str(path), *command]
    )  # fmt: skip
    return (result.stdout + result.stderr).strip()


def test_a_reload_gives_the_exposed_socket_its_new_mode_in_place(
    redis_server: Redis,
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    tmp_path: Path,
    open_directory: Path,
) -> None:
    server = start_server(f"redis=127.0.0.1:{redis_server.port}")
    exposed = open_directory / "redis.sock"
    config = tmp_path / "client.toml"
    head = [f'remote = "127.0.0.1:{server.port}"', f'expose = ["unix:{exposed}=redis"]']
    config.write_text("".join(f"{line}\n" for line in head))
    client = exposing(start_client(f"--config={config}", wait_tunnel=False), exposed)
    bound = os.lstat(exposed)
    assert stat.S_IMODE(bound.st_mode) == 0o600
    if os.geteuid() == 0:
        assert "Permission denied" in as_nobody(exposed, "PING")

    reloaded(client, config, [*head, 'expose-socket-mode = "0666"'], times=1)
    client.wait_for_stderr(rf"INFO .*unix:{re.escape(str(exposed))} now has mode 0666\n")
    now = os.lstat(exposed)
    assert stat.S_IMODE(now.st_mode) == 0o666
    assert (now.st_dev, now.st_ino) == (bound.st_dev, bound.st_ino)  # the same socket: no rebind
    ping = as_nobody(exposed, "PING") if os.geteuid() == 0 else redis_cli_s(exposed, "PING")
    assert ping == "PONG"
    # A reload that changes nothing about the socket says nothing about it.
    reloaded(client, config, [*head, 'expose-socket-mode = "0666"', 'log-level = "info"'], 2)
    assert client.stderr().count("now has mode") == 1
    # The file is still known as ours: a clean stop removes it.
    assert client.stop() == 0
    assert not exposed.exists()


def test_a_reload_gives_the_exposed_socket_its_new_owner(
    redis_server: Redis,
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    tmp_path: Path,
    open_directory: Path,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: only root may give a file to another user")
    nobody = pwd.getpwnam("nobody")
    server = start_server(f"redis=127.0.0.1:{redis_server.port}")
    exposed = open_directory / "redis.sock"
    config = tmp_path / "client.toml"
    head = [f'remote = "127.0.0.1:{server.port}"', f'expose = ["unix:{exposed}=redis"]']
    config.write_text("".join(f"{line}\n" for line in head))
    client = exposing(start_client(f"--config={config}", wait_tunnel=False), exposed)
    assert "Permission denied" in as_nobody(exposed, "PING")

    reloaded(client, config, [*head, 'expose-socket-owner = "nobody"'], times=1)
    client.wait_for_stderr(rf"unix:{re.escape(str(exposed))} now has mode 0600, owner 'nobody'\n")
    assert os.lstat(exposed).st_uid == nobody.pw_uid
    assert as_nobody(exposed, "PING") == "PONG"


def test_a_reload_never_changes_a_file_that_took_the_sockets_place(
    redis_server: Redis,
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    tmp_path: Path,
) -> None:
    server = start_server(f"redis=127.0.0.1:{redis_server.port}")
    exposed = tmp_path / "redis.sock"
    config = tmp_path / "client.toml"
    head = [f'remote = "127.0.0.1:{server.port}"', f'expose = ["unix:{exposed}=redis"]']
    config.write_text("".join(f"{line}\n" for line in head))
    client = exposing(start_client(f"--config={config}", wait_tunnel=False), exposed)
    # Someone swaps the socket for a symbolic link to a file of theirs.
    target = tmp_path / "precious"
    target.write_text("secret")
    target.chmod(0o600)
    exposed.unlink()
    exposed.symlink_to(target)

    reloaded(client, config, [*head, 'expose-socket-mode = "0666"'], times=1)
    client.wait_for_stderr(
        rf"WARNING .*unix:{re.escape(str(exposed))} is no longer the socket this client bound "
        r"\(replaced by another file\); its mode and owner are left alone: restart the client "
        r"to listen there again\n"
    )
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert client.stop() == 0
    assert exposed.is_symlink()  # and it is not removed either
