"""Tests for tunnel.operations.statusview and the merge of workers' pool targets: what the text
``status`` command prints of a server's backend pools."""

from __future__ import annotations

from typing import Any

from tunnel.operations.statusview import render_text, render_watch
from tunnel.operations.workers.merge import merge_status


def target(name: str, state: str, opened: int, last_error: str = "") -> dict[str, Any]:
    return {"target": name, "state": state, "open": 0, "opened": opened, "last_error": last_error}


def server_status(*targets: dict[str, Any]) -> dict[str, Any]:
    return {
        "role": "ambassador-server", "name": "unit", "uptime": 3.0, "ready": True,
        "sessions": [],
        "services": [
            {"service": "db:5432 -> 10.0.0.1:5432,10.0.0.2:5432", "open_streams": 0,
             "streams_total": 5, "bytes_in": 0, "bytes_out": 0, "refused": 0,
             "targets": list(targets)},
            {"service": "redis:6379 -> 10.0.0.9:6379", "open_streams": 0, "streams_total": 0,
             "bytes_in": 0, "bytes_out": 0, "refused": 0},
        ],
    }  # fmt: skip


def section(text: str, title: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index(title) + 1
    end = lines.index("", start) if "" in lines[start:] else len(lines)
    return lines[start:end]


def test_each_pool_target_is_a_line_with_its_health() -> None:
    status = server_status(
        target("10.0.0.1:5432", "ejected", 1, "10.0.0.1:5432 refused the connection"),
        target("10.0.0.2:5432", "healthy", 4),
    )
    header, first, second = section(render_text(status), "TARGETS")
    assert header.split() == ["SERVICE", "TARGET", "STATE", "OPEN", "OPENED", "LAST_ERROR"]
    assert first.split()[:5] == ["db:5432", "10.0.0.1:5432", "ejected", "0", "1"]
    assert first.endswith("10.0.0.1:5432 refused the connection")
    assert second.split() == ["db:5432", "10.0.0.2:5432", "healthy", "0", "4", "-"]
    assert section(render_watch(status, "127.0.0.1:9700", 1.0), "TARGETS") == [
        header, first, second
    ]  # fmt: skip


def test_no_pool_no_targets_section() -> None:
    status = server_status()
    assert "TARGETS" not in render_text(status)


def test_what_a_backend_said_is_escaped_onto_one_line() -> None:
    status = server_status(target("db.internal:5432", "down", 0, "no\nsuch \x1b[2Jhost"))
    _, row = section(render_text(status), "TARGETS")
    assert row.endswith("no\\nsuch \\x1b[2Jhost")
    assert "\x1b" not in render_text(status)


def test_workers_merge_into_one_row_per_target_with_the_worst_health() -> None:
    main = server_status(
        target("10.0.0.1:5432", "healthy", 2), target("10.0.0.2:5432", "healthy", 3)
    )
    helper = server_status(
        target("10.0.0.1:5432", "ejected", 1, "refused"), target("10.0.0.2:5432", "healthy", 4)
    )
    merged = merge_status(main, [(1, {"status": helper})])
    first, second = merged["services"][0]["targets"]
    assert (first["state"], first["states"], first["opened"]) == (
        "ejected", {"healthy": 1, "ejected": 1}, 3
    )  # fmt: skip
    assert first["last_error"] == "refused"
    assert (second["state"], second["states"], second["opened"]) == ("healthy", {"healthy": 2}, 7)
    assert main["services"][0]["targets"][0]["state"] == "healthy"  # the main's own untouched
    _, line, _ = section(render_text(merged), "TARGETS")
    assert "ejected (1 of 2 workers)" in line
