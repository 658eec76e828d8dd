"""The soak (tests/reliability/soak.py), 20 s long with a fault every 3 s: four faults of its
schedule happen under mixed traffic, and nothing comes back corrupted."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.integration.support import require_programs
from tests.reliability.soak import soak

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]


def test_short_soak_under_faults_corrupts_nothing(tmp_path: Path) -> None:
    require_programs("redis-server")
    result = asyncio.run(soak(20, 3, tmp_path, print))
    print(result)
    assert result.corrupted == 0, result.corruptions
    assert result.eof_otherwise == 0, result
    assert len(result.faults) >= 4, result.faults
    assert result.completed > 500, result
    assert (tmp_path / "memory.svg").read_text().startswith("<svg")
