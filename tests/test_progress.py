"""Progress of long runs: one status line on a terminal (what runs, what is left, an
estimate), nothing in a pipe or under CI; and the benchmark shows it, run in a pseudo-terminal."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from tests.environment import missing
from tests.integration.support import clean_environ, run_program
from tests.progress import Progress, duration

ROOT = Path(__file__).resolve().parents[1]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


PLAN = [("round 1/2: a", "a"), ("round 1/2: b", "b"), ("round 2/2: a", "a"), ("round 2/2: b", "b")]


def test_the_line_says_what_runs_and_estimates_from_the_same_step_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CI", raising=False)
    screen, clock = Terminal(), Clock()
    progress = Progress(PLAN, stream=screen, clock=clock)
    progress.next()
    assert screen.getvalue().endswith("[1/4] round 1/2: a · 0s so far, estimating")
    clock.now += 10
    progress.next()  # a took 10 s
    progress.phase("CPU per GiB")
    assert screen.getvalue().endswith("[2/4] round 1/2: b: CPU per GiB · 10s so far, ~30s left")
    clock.now += 50
    progress.next()  # b took 50 s: a again is expected to take 10 s, b 50 s
    assert screen.getvalue().endswith("[3/4] round 2/2: a · 1m00s so far, ~1m00s left")
    clock.now += 4
    progress.draw()
    assert screen.getvalue().endswith("~56s left")
    progress.close()
    assert screen.getvalue().endswith("\r\x1b[K")


def test_a_step_of_known_length_is_estimated_before_any_step_is_done() -> None:
    clock, out = Clock(), Terminal()
    progress = Progress([("soak", "soak")], stream=out, clock=clock, expect={"soak": 600.0})
    progress.next()
    clock.now += 240
    progress.phase("1,000 completed")
    assert progress.line().endswith("soak: 1,000 completed · 4m00s so far, ~6m00s left")


def test_nothing_is_written_in_a_pipe_or_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    pipe = io.StringIO()
    progress = Progress(PLAN, stream=pipe)
    progress.next()
    progress.phase("x")
    progress.close()
    assert pipe.getvalue() == ""
    monkeypatch.setenv("CI", "true")
    screen = Terminal()
    progress = Progress(PLAN, stream=screen)
    progress.next()
    progress.close()
    assert screen.getvalue() == ""


@pytest.mark.parametrize(("seconds", "text"), [(5, "5s"), (65, "1m05s"), (3700, "1h01m")])
def test_durations_read_as_people_write_them(seconds: float, text: str) -> None:
    assert duration(seconds) == text


BENCH = ["-m", "tests.bench", "--quick", "--chains", "direct", "--conns", "100"]


def bench_programs() -> None:
    for program in ("redis-server", "redis-benchmark", "iperf3"):
        if shutil.which(program) is None:
            missing(f"{program} (Debian packages redis-server, redis-tools, iperf3)")


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_the_benchmark_shows_progress_on_a_terminal(tmp_path: Path) -> None:
    bench_programs()
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    argv = [sys.executable, *BENCH, "--rounds", "2", "--out", str(tmp_path), "--port-base", "23600"]
    environ = clean_environ()
    environ.pop("CI", None)
    bench = subprocess.Popen(argv, cwd=ROOT, stdin=terminal, stdout=terminal, stderr=terminal,
                             env=environ, start_new_session=True)  # fmt: skip
    os.close(terminal)
    screen = b""
    try:
        deadline = time.monotonic() + 150
        while bench.poll() is None and time.monotonic() < deadline:
            if select.select([controller], [], [], 0.5)[0]:
                try:
                    screen += os.read(controller, 65536)
                except OSError:
                    break
        assert bench.wait(timeout=10) == 0, screen.decode(errors="replace")[-3000:]
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait(timeout=10)
        os.close(controller)
    text = screen.decode(errors="replace")
    assert "\x1b[K[1/2] round 1/2: direct" in text
    assert "direct: redis and iperf3 throughput" in text
    assert "[2/2] round 2/2: direct" in text and "left" in text.split("[2/2]", 1)[1]
    assert (tmp_path / "benchmarks.md").exists()


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_the_benchmark_in_a_log_has_no_progress_line(tmp_path: Path) -> None:
    bench_programs()
    argv = [sys.executable, *BENCH, "--rounds", "1", "--out", str(tmp_path), "--port-base", "27800"]
    result = run_program(argv, timeout=100, env=clean_environ({"CI": "true"}))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "round 1/1: direct" in result.stdout
    assert "\r" not in result.stdout + result.stderr and "\x1b" not in result.stdout + result.stderr
