"""The churn run (tests/reliability/churn.py), 5,000 streams long: every one answered, and
neither process is left holding a descriptor or memory for the streams that came and went."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.integration.support import require_programs
from tests.reliability.churn import churn

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_short_churn_answers_every_stream_and_returns_its_descriptors(tmp_path: Path) -> None:
    require_programs("redis-server")
    result = asyncio.run(churn(5000, 60, 32, tmp_path, print))
    print(result)
    assert result.completed == 5000, result
    assert not result.failed and not result.wrong, result
    for name, numbers in result.processes.items():
        # Back to where it started (the listener, the tunnel, the log): nothing per stream.
        assert numbers["fds_end"] <= numbers["fds_start"] + 1, (name, numbers)
        assert numbers["rss_mib_end"] - numbers["rss_mib_start"] < 8, (name, numbers)
    assert (tmp_path / "samples.csv").read_text().startswith("seconds,streams,")
