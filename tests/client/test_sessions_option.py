"""--sessions and --spread from flags and from a config file: the forms a user writes are
taken, anything else is one line naming the choices."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.integration.support import ambassador, clean_environ


def check_config(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ambassador("client"), "--remote=127.0.0.1:7700", *args, "--check-config"],
        capture_output=True, text=True, env=clean_environ(), timeout=30,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "sessions", "spread"),
    [
        ("", '"1"', '"least-streams"'),
        ("sessions = 1\n", '"1"', '"least-streams"'),
        ('sessions = "all"\nspread = "round-robin"\n', '"all"', '"round-robin"'),
        ('sessions = "ALL"\nspread = "in-order"\n', '"all"', '"in-order"'),
    ],
)
def test_the_forms_a_config_file_may_use(
    tmp_path: Path, text: str, sessions: str, spread: str
) -> None:
    config = tmp_path / "client.toml"
    config.write_text(text)
    done = check_config(f"--config={config}")
    assert done.returncode == 0, done.stderr
    assert f"sessions = {sessions}" in done.stdout
    assert f"spread = {spread}" in done.stdout


@pytest.mark.parametrize(
    ("args", "named"),
    [(("--sessions=2",), "'1', 'all'"), (("--spread=fastest",), "'least-streams', 'round-robin'")],
)
def test_a_wrong_value_is_one_line_naming_the_choices(args: tuple[str, ...], named: str) -> None:
    done = check_config(*args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], done.stderr
    assert "Traceback" not in done.stderr
