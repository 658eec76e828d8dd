"""A missing program or capability skips a test locally and fails it under CI."""

from __future__ import annotations

import pytest

from tests.environment import missing


def test_missing_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="frobnicate is not installed"):
        missing("frobnicate is not installed")


@pytest.mark.parametrize("value", ["true", "TRUE", "1"])
def test_missing_fails_under_ci_naming_what(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match=r"CI must provide.*frobnicate"):
        missing("frobnicate is not installed")
