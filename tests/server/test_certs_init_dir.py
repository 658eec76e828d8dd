"""`certs init` into a directory every user may write to says so, on stderr, and still works."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def certs_init(directory: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMBASSADOR_")}
    return subprocess.run(
        [sys.executable, "-m", "server", "certs", "init", str(directory), "--san", "127.0.0.1"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip


@pytest.mark.parametrize(("mode", "warned"), [(0o1777, True), (0o777, True), (0o755, False)])
def test_init_warns_about_a_world_writable_directory(
    tmp_path: Path, mode: int, warned: bool
) -> None:
    directory = tmp_path / "pki"
    directory.mkdir()
    directory.chmod(mode)
    done = certs_init(directory)
    assert done.returncode == 0, done.stderr
    assert (directory / "ca-key.pem").exists()
    lines = done.stderr.strip().splitlines()
    if warned:
        assert len(lines) == 1, done.stderr
        assert "writable by every user" in lines[0] and "chmod 700" in lines[0], lines
    else:
        assert lines == [], done.stderr
