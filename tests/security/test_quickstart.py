"""The README's secure quickstart, run as written, on one machine.

The section's shell block is taken from README.md and run command by command in a temporary
directory. The section says it runs as written on one machine with a redis-server on 6379; the
test only moves things onto free loopback ports: its own redis-server instead of 6379, the
tunnel port instead of 7700 (also where ``--remote`` leaves the port to its default), the local
port instead of 16379, and 127.0.0.1 instead of 0.0.0.0. Commands ending in ``&`` run in the
background (and are stopped by pid); the others must succeed; ``redis-cli ... PING`` must
answer PONG through the tunnel.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.environment import missing
from tests.security.conftest import ROOT, Programs, environ, pick_free_port

README = ROOT / "README.md"


def quickstart_block() -> str:
    text = README.read_text()
    section = re.search(r"^## Secure quickstart\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    if section is None:
        missing("README.md has no 'Secure quickstart' section")
    blocks = re.findall(r"```(?:sh|bash|shell)\n(.*?)```", section.group(1), re.S)
    if not blocks:
        missing("the README's 'Secure quickstart' section has no shell block")
    return "\n".join(blocks)


def commands(block: str) -> list[tuple[list[str], bool]]:
    """Each command's argv, and whether it runs in the background."""
    found = []
    for line in block.replace("\\\n", " ").splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if not line:
            continue
        background = line.endswith("&")
        found.append((shlex.split(line.rstrip("&")), background))
    return found


def adjust(argv: list[str], ports: dict[str, int]) -> list[str]:
    out = []
    for i, arg in enumerate(argv):
        arg = re.sub(r"(?<!\d)16379(?!\d)", str(ports["local"]), arg)
        arg = re.sub(r"(?<!\d)6379(?!\d)", str(ports["redis"]), arg)
        arg = re.sub(r"(?<!\d)7700(?!\d)", str(ports["tunnel"]), arg)
        arg = arg.replace("0.0.0.0", "127.0.0.1")
        previous = argv[i - 1] if i else ""
        if previous == "--remote" and not re.search(r":\d+$", arg):
            arg = f"{arg}:{ports['tunnel']}"
        out.append(arg)
    program = Path(sys.executable).with_name(out[0])
    if out[0].startswith("ambassador-"):
        role = out[0].removeprefix("ambassador-")
        out[:1] = [str(program)] if program.exists() else [sys.executable, "-m", role]
    return out


def wait_accepting(port: int, alive: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    pytest.fail(f"nothing accepted connections on 127.0.0.1:{port}")


def test_secure_quickstart(programs: Programs, tmp_path: Path) -> None:
    steps = commands(quickstart_block())
    for program in ("redis-server", "redis-cli"):
        if shutil.which(program) is None:
            missing(f"{program} is not installed (Debian: redis-server, redis-tools)")
    ports = {"redis": pick_free_port(), "tunnel": pick_free_port(), "local": pick_free_port()}
    redis = programs.start(
        "redis-server",
        ["redis-server", "--bind", "127.0.0.1", "--port", str(ports["redis"]),
         "--save", "", "--appendonly", "no"],
    )  # fmt: skip
    wait_accepting(ports["redis"], redis.alive)

    pong = ""
    for argv, background in steps:
        argv = adjust(argv, ports)
        shown = " ".join(argv)
        if background:
            role = "client" if "client" in " ".join(argv[:3]) else "server"
            started = programs.start(role, argv)
            started.wait_for("tunnel up to " if role == "client" else "listening on ")
            continue
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=30, cwd=tmp_path, env=environ(),
            stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip
        assert result.returncode == 0, f"{shown}\n{result.stdout}{result.stderr}"
        if argv[0] == "redis-cli":
            pong = result.stdout.strip()
    assert pong == "PONG", steps
    assert (tmp_path / "pki" / "alice-key.pem").stat().st_mode & 0o077 == 0
