"""What an unauthenticated peer can cost a real ambassador-server: memory, log lines, descriptors.

Each test starts ``python -m server`` on loopback with an honest client connected, attacks it
with raw sockets from this process, and reads the server's resident memory from
``/proc/PID/status``. The full-size run with a table of numbers is
``python -m tests.security.attack_budget``; these are smaller and bounded (seconds each).
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import pick_free_port
from tests.security import attack
from tests.security.attack import KIB, MIB

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
def test_a_frame_header_announcing_128_mib_allocates_nothing(tmp_path: Path, tls: bool) -> None:
    # Four connections each announce a 128 MiB Data frame before any hello and send 256 KiB
    # of it: the server used to make room for the whole announced payload (512 MiB in all),
    # and kept it after they closed.
    with attack.target(tmp_path, tls) as server:
        idle = attack.settled_rss(server.pid)
        for _ in range(2):  # a second round must not add to the first
            attack.big_frames(server.port, tls, conns=4, size=256 * KIB)
        after = attack.settled_rss(server.pid)
        assert after - idle < 8 * MIB, f"RSS went from {idle / MIB:.0f} to {after / MIB:.0f} MiB"
        server.server.wait_for(r"exceeds the \d+ byte limit")


def rejected(metrics_port: int) -> dict[str, float]:
    """ambassador_connections_rejected_total by reason, from the server's /metrics."""
    with urllib.request.urlopen(f"http://{attack.HOST}:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    found = re.findall(r'ambassador_connections_rejected_total\{reason="(\w+)"\} (\S+)', text)
    return {reason: float(value) for reason, value in found}


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
def test_unauthenticated_connections_are_bounded_in_total_and_per_address(
    tmp_path: Path, tls: bool
) -> None:
    attack.raise_nofile(4096)
    metrics_port = pick_free_port(attack.HOST)
    args = ["--max-unauthenticated", "40", "--max-unauthenticated-per-address", "10",
            "--metrics-listen", f"{attack.HOST}:{metrics_port}"]  # fmt: skip
    payload = attack.CLIENT_HELLO_START if tls else attack.HELLO_START
    with attack.target(tmp_path, tls, args) as server:
        base = attack.descriptors(server.pid)
        one, closed = attack.open_half_hellos(server.port, 30, payload)
        assert (len(one), closed) == (10, 20)
        many, closed = attack.open_half_hellos(server.port, 100, payload, spread=20)
        assert len(many) == 30  # 40 in all
        assert attack.descriptors(server.pid) - base <= 40
        assert rejected(metrics_port) == {
            "max_unauthenticated_per_address": 20,
            "max_unauthenticated": 70,
        }
        attack.close_all(one + many)
        attack.wait_for_descriptors(server.pid, base)
        # The honest client's session was never disturbed, and the slots are free again.
        again, closed = attack.open_half_hellos(server.port, 10, payload)
        attack.close_all(again)
        assert (len(again), closed) == (10, 0)
        assert "session with" not in server.server.text()


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
def test_a_thousand_half_open_connections_cost_little_and_leave_nothing(
    tmp_path: Path, tls: bool
) -> None:
    # 1,000 connections that send the start of a hello (TLS: five bytes of a ClientHello),
    # from 100 addresses: they used to hold 256 KiB each (TLS: 550 KiB) and keep it after
    # closing (python -m tests.security.attack_budget has the numbers).
    attack.raise_nofile(4096)
    payload = attack.CLIENT_HELLO_START if tls else attack.HELLO_START
    with attack.target(tmp_path, tls) as server:
        idle = attack.settled_rss(server.pid)
        log = server.server.log_size()
        held, _ = attack.open_half_hellos(server.port, 1000, payload, 100)
        during = attack.settled_rss(server.pid)
        assert len(held) <= 256
        attack.close_all(held)
        time.sleep(1.5)  # the heap is given back a second after they closed
        after = attack.settled_rss(server.pid)
        grown = server.server.log_size() - log
    assert during - idle < 64 * MIB
    assert after - idle < 8 * MIB, f"RSS {idle / MIB:.0f} -> {after / MIB:.0f} MiB after close"
    assert grown < 20 * KIB, f"the log grew by {grown} bytes"


def test_failed_handshakes_are_logged_within_a_budget(tmp_path: Path) -> None:
    with attack.target(tmp_path, tls=True) as server:
        mark = server.server.log_size()
        for _ in range(200):  # plaintext to a TLS port: each handshake fails at once
            with attack.connect(server.port) as sock:
                sock.sendall(attack.HELLO_START)
                with contextlib.suppress(OSError):
                    sock.recv(100)
        time.sleep(0.3)
        lines = server.server.text()[mark:].splitlines()
    refused = [line for line in lines if "refused connection from" in line]
    assert 0 < len(refused) <= 25, len(refused)
