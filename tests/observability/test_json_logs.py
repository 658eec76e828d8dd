"""``--log-format json``: a log collector reads every stderr line as one JSON object with
time, level, logger and message, from start to stop."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.integration.support import AmbassadorServer, Started
from tests.observability.support import consumer_refused

pytestmark = pytest.mark.integration

LEVELS = {"debug", "info", "warning", "error", "critical"}
JSON = ("--log-format=json",)


def json_lines(stderr: str, who: str) -> list[dict[str, Any]]:
    """Every line of ``stderr`` parsed as JSON; fails naming the first line that is not."""
    entries = []
    for number, line in enumerate(stderr.splitlines(), 1):
        try:
            entry = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {number} of {who}'s stderr is not JSON: {line!r}") from None
        assert isinstance(entry, dict), line
        assert {"time", "level", "logger", "message"} <= entry.keys(), line
        assert entry["level"] in LEVELS, line
        assert entry["logger"].startswith(("ambassador", "asyncio")), line
        assert isinstance(entry["message"], str) and entry["message"], line
        datetime.fromisoformat(entry["time"])
        entries.append(entry)
    assert entries, f"{who} logged nothing"
    return entries


def test_every_line_of_a_server_run_is_json(
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    free_port: Callable[..., int],
) -> None:
    closed, local = free_port(), free_port()
    server = start_server(
        f"dead=127.0.0.1:{closed}",
        args=[*JSON, "--log-level=debug", f"--metrics-listen=127.0.0.1:{free_port()}"],
    )
    client = start_client(
        f"--remote=127.0.0.1:{server.port}",
        f"--expose=127.0.0.1:{local}=dead",
        *JSON,
        listens=[("127.0.0.1", local)],
    )
    assert consumer_refused(local)  # a warning on both sides
    server.process.wait_for_stderr(r"refused \(backend_refused\)", timeout=5)
    assert server.process.stop() == 0
    client.wait_for_stderr(r"reconnecting", timeout=5)  # the server went away

    messages = [entry["message"] for entry in json_lines(server.process.stderr(), "server")]
    expected = (
        "listening on ",
        "metrics and status on ",
        "session up with ",
        "refused (",
        "stopping",
    )
    for start in expected:
        assert any(start in message for message in messages), (start, messages)
    json_lines(client.stderr(), "client")


def test_client_warning_about_a_readable_token_file_is_json(
    start_client: Callable[..., Started], free_port: Callable[..., int], tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("alice:" + "x" * 32 + "\n")
    tokens.chmod(0o644)  # readable by others: the client warns
    local = free_port()
    client = start_client(
        f"--remote=127.0.0.1:{free_port()}",
        f"--expose=127.0.0.1:{local}=svc",
        f"--token-file={tokens}",
        *JSON,
        listens=[("127.0.0.1", local)],
        wait_tunnel=False,
    )
    client.wait_for_stderr("can be read by other users", timeout=5)
    entries = json_lines(client.stderr(), "client")
    assert any("can be read by other users" in entry["message"] for entry in entries)
