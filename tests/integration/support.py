"""Starting and stopping the real programs of the end-to-end tests.

Every process a test starts goes through :class:`Processes`: its stdout and stderr go to files
in the test's tmp_path (shown in the report when the test fails), and at teardown each one is
stopped by its own pid: SIGTERM, up to 5 s of grace, then SIGKILL.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.environment import missing as lacking

ROOT = Path(__file__).resolve().parents[2]
BACKENDS = Path(__file__).with_name("backends.py")
STOP_GRACE = 5.0

_DOCKER_LINK = re.compile(r"[A-Z][A-Z0-9_]*_PORT_[0-9]+_TCP(_.*)?")


def ambassador(role: str) -> list[str]:
    """The command for ``ambassador-server`` or ``ambassador-client``.

    The console script installed beside the running interpreter when there is one (what a user
    runs), else the package run as a module.
    """
    script = Path(sys.executable).with_name(f"ambassador-{role}")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", role]


def clean_environ(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment without settings that would change what the programs do."""
    environ = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("AMBASSADOR_") and not _DOCKER_LINK.fullmatch(name)
    }
    environ["PYTHONUNBUFFERED"] = "1"
    environ.update(extra or {})
    return environ


_DEBIAN_PACKAGE = {"redis-server": "redis-server", "redis-cli": "redis-tools", "ip": "iproute2"}


def require_programs(*names: str) -> None:
    """Skip the test (fail it under CI) unless every named program is on PATH."""
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        packages = " ".join(dict.fromkeys(_DEBIAN_PACKAGE.get(name, name) for name in missing))
        lacking(f"{', '.join(missing)} not installed (Debian: apt-get install {packages})")


@dataclass
class Started:
    """One running program and where its output goes."""

    name: str
    argv: Sequence[str]
    popen: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def wait_for_stderr(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Poll stderr until ``pattern`` (a regex) shows up; fail after ``timeout`` s."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = compiled.search(self.stderr())
            if found is not None:
                return found
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name} did not log {pattern!r} within {timeout:g}s")
            if not self.alive():
                pytest.fail(
                    f"{self.name} exited ({self.popen.returncode}) before logging {pattern!r}"
                )
            time.sleep(0.02)

    def stdout_line(self, timeout: float = 10.0) -> str:
        """The first line the program printed on stdout (waits for it, bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.stdout()
            if "\n" in text:
                return text.split("\n", 1)[0]
            if not self.alive():
                break
            time.sleep(0.02)
        pytest.fail(f"{self.name} printed no line on stdout within {timeout:g}s")

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        self.popen.kill()
        self.popen.wait(timeout=STOP_GRACE)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it is still there after the grace period; the exit code."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=STOP_GRACE)
        return self.popen.returncode


@dataclass
class Processes:
    """The programs one test started, stopped in reverse order at teardown."""

    directory: Path
    started: list[Started] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        netns: str | None = None,
    ) -> Started:
        if netns is not None:
            # ip execs the program inside the namespace: the pid stays the program's own.
            argv = ["ip", "netns", "exec", netns, *argv]
        label = f"{name}-{len(self.started)}"
        stdout_path = self.directory / f"{label}.out"
        stderr_path = self.directory / f"{label}.err"
        with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                env=clean_environ(env),
                cwd=ROOT,
            )
        started = Started(label, list(argv), popen, stdout_path, stderr_path)
        self.started.append(started)
        return started

    def stop_all(self) -> None:
        """Stop every program, newest first; one that will not die does not spare the others."""
        stuck = []
        for started in reversed(self.started):
            try:
                started.stop()
            except subprocess.TimeoutExpired:
                stuck.append(f"{started.name} (pid {started.pid})")
        if stuck:
            raise RuntimeError(f"still running after SIGKILL: {', '.join(stuck)}")

    def logs(self) -> Iterable[tuple[str, str]]:
        for started in self.started:
            for kind, path in (("stderr", started.stderr_path), ("stdout", started.stdout_path)):
                text = path.read_text(errors="replace") if path.exists() else ""
                if text:
                    header = (
                        f"{kind} of {started.name} (pid {started.pid}): {' '.join(started.argv)}"
                    )
                    yield header, text[-20000:]


def run_program(
    argv: Sequence[str],
    timeout: float = 10.0,
    env: Mapping[str, str] | None = None,
    netns: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a short-lived program to completion (bounded), capturing its output as text."""
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    return subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_environ(env),
        cwd=ROOT,
        check=False,
    )


@dataclass
class Redis:
    host: str
    port: int
    process: Started


def redis_cli(port: int, *command: str, host: str = "127.0.0.1", netns: str | None = None) -> str:
    """One redis-cli command (bounded to 10 s); its output, stripped."""
    result = run_program(["redis-cli", "-h", host, "-p", str(port), *command], netns=netns)
    return (result.stdout + result.stderr).strip()


@dataclass
class AmbassadorServer:
    port: int
    process: Started


@dataclass
class Pair:
    """A running ambassador pair: the client's local port for each service, and both programs."""

    ports: dict[str, int]
    server: AmbassadorServer
    client: Started

    @property
    def port(self) -> int:
        """The local port of the first service."""
        return next(iter(self.ports.values()))
