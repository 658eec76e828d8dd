"""``status --json`` for scripts, and ``status --watch``: the tables redrawn every interval
with rates, a frame replacing the last on a terminal, one frame after another in a pipe."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import time

import pytest

from tests.integration.support import ambassador, clean_environ, run_program
from tests.observability.conftest import CLIENT_NAME, MeteredPair
from tests.observability.support import table_rows
from tests.observability.traffic import RedisTraffic

pytestmark = pytest.mark.integration


def frames(text: str) -> list[str]:
    """The frames of a piped --watch, each starting with the head line."""
    parts: list[str] = []
    for line in text.splitlines(keepends=True):
        if line.startswith("ambassador-"):
            parts.append("")
        if parts:
            parts[-1] += line
    return parts


def test_status_json_is_the_status_endpoint(metered_pair: MeteredPair) -> None:
    cm = metered_pair.client_metrics
    result = run_program([*ambassador("client"), "status", "--json", f"--endpoint=127.0.0.1:{cm}"])
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["role"] == "ambassador-client"
    assert status["name"] == CLIENT_NAME
    assert status["pid"] == metered_pair.client.pid
    [remote] = status["remotes"]
    assert remote["state"] == "up"
    refused = {row["service"].split()[0]: row["refused"] for row in status["services"]}
    assert refused["dead"] == 1


def test_watch_in_a_pipe_prints_frames_with_rates(metered_pair: MeteredPair) -> None:
    sm = metered_pair.server_metrics
    argv = [*ambassador("server"), "status", "--watch", "--interval=0.5", "--count=4"]
    with RedisTraffic(metered_pair.redis_port) as traffic:
        result = run_program([*argv, f"--endpoint=127.0.0.1:{sm}"], timeout=20)
    assert traffic.sent > 0
    assert result.returncode == 0, result.stderr
    assert "\x1b[" not in result.stdout, "terminal codes in a pipe"
    shown = frames(result.stdout)
    assert len(shown) == 4
    assert "every 0.5s; Ctrl-C to stop" in shown[0]
    first = {row["service"].split()[0]: row for row in table_rows(shown[0], "SERVICES")}
    last = {row["service"].split()[0]: row for row in table_rows(shown[-1], "SERVICES")}
    redis = f"redis:{metered_pair.redis.port}"
    assert first[redis]["in/s"] == "-"  # no rate before a second reading
    rate = last[redis]["in/s"]
    assert rate.endswith(("KiB/s", "MiB/s", "GiB/s")), rate
    assert last[redis]["bytes_in"].endswith(("KiB", "MiB", "GiB"))
    [session] = table_rows(shown[-1], "SESSIONS")
    assert session["state"] == "up"
    assert session["in/s"].endswith("/s") and session["in/s"] != "0 B/s"


def test_watch_as_json_is_one_object_a_line(metered_pair: MeteredPair) -> None:
    cm = metered_pair.client_metrics
    argv = [*ambassador("client"), "status", "--watch", "--json", "--interval=0.3", "--count=3"]
    with RedisTraffic(metered_pair.redis_port):
        result = run_program([*argv, f"--endpoint=127.0.0.1:{cm}"], timeout=20)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 3
    assert lines[0]["remotes"][0]["rate_out"] is None
    assert lines[-1]["remotes"][0]["rate_out"] > 0


def test_watch_on_a_terminal_redraws_and_stops_at_ctrl_c(metered_pair: MeteredPair) -> None:
    cm = metered_pair.client_metrics
    argv = [*ambassador("client"), "status", "--watch", "--interval=0.2"]
    controller, terminal = pty.openpty()
    watch = subprocess.Popen(
        [*argv, f"--endpoint=127.0.0.1:{cm}"],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=clean_environ(),
        start_new_session=True,
    )
    os.close(terminal)
    screen = b""
    try:
        deadline = time.monotonic() + 15
        while screen.count(b"\x1b[H\x1b[2J") < 3 and time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if ready:
                screen += os.read(controller, 65536)
        assert screen.count(b"\x1b[H\x1b[2J") >= 3, screen[-2000:]
        watch.send_signal(signal.SIGINT)
        assert watch.wait(timeout=10) == 0
        while select.select([controller], [], [], 0.2)[0]:
            try:
                chunk = os.read(controller, 65536)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait(timeout=5)
        os.close(controller)
    text = screen.decode(errors="replace")
    assert "Traceback" not in text
    last = text.rsplit("\x1b[H\x1b[2J", 1)[1].replace("\r\n", "\n")
    assert table_rows(last, "REMOTES")[0]["state"] == "up"
