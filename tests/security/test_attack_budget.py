"""What an unauthenticated peer can cost a real ambassador-server: memory, log lines, descriptors.

Each test starts ``python -m server`` on loopback with an honest client connected, attacks it
with raw sockets from this process, and reads the server's resident memory from
``/proc/PID/status``. The full-size run with a table of numbers is
``python -m tests.security.attack_budget``; these are smaller and bounded (seconds each).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

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
