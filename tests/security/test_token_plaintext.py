"""A token over plaintext, beyond loopback: each role says in one line at start that the token
proves identity but protects nothing on the path.

Both run in a network namespace this test creates (``unshare -rn``), so the server can listen on
0.0.0.0 and the client aim at a non-loopback address while no packet leaves the namespace.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.security.conftest import STOP_GRACE, environ

SECRET = "a3f1c0de9b7e4d2a8c6b5e4f3a2d1c0b"
SETUP = 'ip link set lo up && ip addr add 10.200.0.1/32 dev lo && exec "$@"'
WARNING = "a token over plaintext proves who the client is but protects nothing on the path"


def in_namespace(tmp_path: Path, role: str, *args: str, until: str) -> str:
    """Run a role in its own network namespace until its stderr holds ``until``; its stderr."""
    if not all(shutil.which(p) for p in ("unshare", "ip")):
        pytest.skip("unshare and ip are needed for a network namespace")
    err_path = tmp_path / f"{role}.err"
    with err_path.open("wb") as err:
        process = subprocess.Popen(
            ["unshare", "-rn", "sh", "-c", SETUP, "sh", sys.executable, "-m", role, *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=environ(),
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while until not in err_path.read_text() and time.monotonic() < deadline:
            if process.poll() is not None:
                if "Operation not permitted" in err_path.read_text():
                    pytest.skip("unprivileged network namespaces are not available here")
                break
            time.sleep(0.05)
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_GRACE)
    return err_path.read_text()


def test_both_roles_warn_about_a_token_over_plaintext(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice:{SECRET}\n")
    tokens.chmod(0o600)
    server = in_namespace(
        tmp_path, "server", "--listen", "0.0.0.0:7700", "--token-file", str(tokens),
        "--link", "echo=127.0.0.1:9", until="listening on",
    )  # fmt: skip
    client = in_namespace(
        tmp_path, "client", "--remote", "10.200.0.1:7700", "--token-file", str(tokens),
        "--expose", "127.0.0.1:7701=echo", until="WARNING",
    )  # fmt: skip
    for log in (server, client):
        lines = [line for line in log.splitlines() if WARNING in line]
        assert len(lines) == 1, log
        assert "use TLS" in lines[0]
    assert SECRET not in server + client
