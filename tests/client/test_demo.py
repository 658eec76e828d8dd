"""The README's first command: the demo starts both roles and shows traffic crossing."""

from __future__ import annotations

import subprocess
import sys


def test_demo_moves_bytes_through_a_real_pair_and_checks_them() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "client", "demo", "--streams", "3", "--megabytes", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = result.stdout
    assert result.returncode == 0, result.stderr
    assert "ambassador-server 127.0.0.1:" in out and "ambassador-client 127.0.0.1:" in out
    assert "round trip through the tunnel:" in out
    assert out.count(" ok") == 3  # one line per connection, sent and received digests equal
    assert "12 MiB crossed the tunnel" in out  # 3 connections x 2 MiB, both ways
    assert "all bytes came back exactly" in out
    assert "Traceback" not in result.stderr
