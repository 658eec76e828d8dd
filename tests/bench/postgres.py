"""PostgreSQL as a backend of the run, for pgbench: a real client with a request/response
protocol of its own (one ``SELECT`` a transaction with ``-S``).

PostgreSQL refuses to run as root: as root, the cluster belongs to the ``postgres`` user (the
Debian package's) and runs through ``runuser``. It is started once for the run, in a folder of
its own, listening on 127.0.0.1 only, with ``fsync`` off (nothing here is kept).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from .procs import Proc, Procs

USER = "postgres"


def binaries() -> Path | None:
    """The folder of the newest installed PostgreSQL's programs (Debian's layout), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=_major)
    if found:
        return Path(found[-1]).parent
    postgres = shutil.which("postgres")
    return Path(postgres).parent if postgres else None


def _major(path: str) -> int:
    part = Path(path).parent.parent.name
    return int(part) if part.isdigit() else 0


def unavailable() -> str | None:
    if binaries() is None:
        return "PostgreSQL is not installed (apt-get install postgresql)"
    if shutil.which("pgbench") is None:
        return "pgbench is not installed (apt-get install postgresql-contrib)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(USER)
        except KeyError:
            return f"running as root and there is no '{USER}' user to run PostgreSQL as"
    return None


def _as_owner(argv: list[str]) -> list[str]:
    return ["runuser", "-u", USER, "--", *argv] if os.geteuid() == 0 else argv


def start(procs: Procs, port: int) -> tuple[Proc, Path]:
    """A fresh cluster listening on 127.0.0.1:``port``, with pgbench's tables (scale 1)."""
    bin_dir = binaries()
    assert bin_dir is not None
    home = Path(tempfile.mkdtemp(prefix="ambassador-bench-pg-"))
    if os.geteuid() == 0:
        owner = pwd.getpwnam(USER)
        os.chown(home, owner.pw_uid, owner.pw_gid)
    data = home / "data"
    subprocess.run(
        _as_owner([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", USER]),
        check=True,
        capture_output=True,
        timeout=120,
    )
    proc = procs.start(
        "postgres",
        _as_owner(
            [
                str(bin_dir / "postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-k",
                str(home),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=100",
                "-c",
                "fsync=off",
            ]
        ),
    )
    procs.wait_port(port, proc, timeout=30)
    subprocess.run(
        ["pgbench", "-i", "-s", "1", "-h", "127.0.0.1", "-p", str(port), "-U", USER, "postgres"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return proc, home
