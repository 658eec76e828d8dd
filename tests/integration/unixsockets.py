"""Real programs on unix sockets: PostgreSQL listening on its socket only, redis-cli -s, and
waiting for a program's socket file to appear."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.environment import missing
from tests.integration.support import Processes, Started, run_program


def wait_for_socket(path: Path, alive: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and stat.S_ISSOCK(os.lstat(path).st_mode)):
        if not alive():
            pytest.fail(f"the program that was to listen on {path} has exited")
        if time.monotonic() > deadline:
            pytest.fail(f"nothing listened on {path} within {timeout:g}s")
        time.sleep(0.05)


@dataclass
class Postgres:
    directory: Path  # where its socket is, .s.PGSQL.5432
    process: Started


@contextlib.contextmanager
def running_postgres(processes: Processes) -> Iterator[Postgres]:
    """A PostgreSQL server listening only on a unix socket, run as the postgres user (it will
    not run as root) in a directory of its own, stopped with a fast shutdown."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not found or shutil.which("psql") is None:
        missing("postgresql (Debian package postgresql)")
    bin_dir = Path(found[-1]).parent
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        missing("postgresql (Debian package postgresql): its postgres user")
    if os.geteuid() != 0:
        pytest.skip("needs root, to run PostgreSQL as the postgres user")
    home = Path(tempfile.mkdtemp(prefix="amb-pg-"))
    os.chown(home, user.pw_uid, user.pw_gid)
    as_postgres = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups"]
    data = home / "data"
    try:
        initdb = run_program(
            [*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres",
             "--auth=trust", "--no-sync"],
            timeout=120,
        )  # fmt: skip
        assert initdb.returncode == 0, initdb.stderr
        process = processes.start(
            "postgres",
            [*as_postgres, str(bin_dir / "postgres"), "-D", str(data), "-k", str(home),
             "-c", "listen_addresses=", "-c", "fsync=off"],
        )  # fmt: skip
        wait_for_socket(home / ".s.PGSQL.5432", process.alive)
        yield Postgres(home, process)
        if process.alive():
            process.popen.send_signal(signal.SIGINT)  # fast shutdown: no waiting for clients
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=30)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def psql(*where: str) -> str:
    result = run_program(
        ["psql", *where, "-U", "postgres", "-d", "postgres", "-At", "-c",
         "select 'through ' || coalesce(inet_server_addr()::text, 'a unix socket')"],
        timeout=30,
    )  # fmt: skip
    return (result.stdout + result.stderr).strip()


def redis_cli_s(path: Path, *command: str) -> str:
    result = run_program(["redis-cli", "-s", str(path), *command])
    return (result.stdout + result.stderr).strip()
