"""Shared pieces of the roles' observability: a service's status row, and the status command."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any, TextIO

from tunnel.errors import ConfigError
from tunnel.operations import metrics
from tunnel.operations.statusview import render_text, render_watch, with_rates


def service_stats(role: str, service: str) -> dict[str, Any]:
    """The /status row of one service, read from the counts themselves (never back through
    the Prometheus registry, which would cost a whole collection per number)."""
    found = metrics.counted(role, service)
    latest = metrics.latest_refusal(role, service)
    return {
        "service": service,
        "open_streams": found.open_now,
        "streams_total": found.opened,
        "bytes_in": found.to_backend,
        "bytes_out": found.to_consumer,
        "refused": metrics.refusals(role, service),
        "refusals": metrics.refusals_by_reason(role, service),
        "last_error": latest[0] if latest else "",
        "last_error_at": latest[1] if latest else None,
    }


def fetch_status(endpoint: str, timeout: float = 5.0) -> dict[str, Any]:
    """GET /status from a running role; ConfigError with one line when it cannot."""
    url = f"http://{endpoint}/status"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data: dict[str, Any] = json.loads(response.read())
            return data
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigError(
            f"cannot read status from {url}: {reason}; is the process running with "
            f"--metrics-listen {endpoint}?"
        ) from None


def _shown(value: object, limit: int = 64) -> str:
    # The endpoint may be anything that answers HTTP: what it says is bounded and escaped.
    text = str(value)
    return repr(text[:limit] + ("..." if len(text) > limit else ""))[1:-1]


def read_status(endpoint: str, role: str) -> dict[str, Any]:
    """/status of the ``role`` process serving at ``endpoint``; ConfigError (one line) when
    another role, or something else, answers there."""
    status = fetch_status(endpoint)
    pid = status.get("pid")
    process = f"pid {_shown(pid)}" if isinstance(pid, int) else "pid unknown"
    if status.get("role") != role:
        other = _shown(status.get("role", "an unknown program"))
        raise ConfigError(
            f"{endpoint} is the status endpoint of {other} ({process}), not of {role}; give "
            f"{role}'s metrics-listen address with --endpoint, or its config file with --config"
        )
    return status


def print_status(
    endpoint: str,
    role: str,
    as_json: bool = False,
    watch: bool = False,
    interval: float = 2.0,
    count: int | None = None,
    out: TextIO | None = None,
) -> None:
    """Print the status of the ``role`` process serving at ``endpoint``: tables, or the JSON
    of /status (``as_json``); with ``watch``, again every ``interval`` seconds (``count``
    times, or until Ctrl-C)."""
    out = out or sys.stdout
    if not watch:
        status = read_status(endpoint, role)
        out.write(json.dumps(status, indent=2) + "\n" if as_json else render_text(status, endpoint))
        return
    try:
        watch_status(endpoint, role, interval, count, as_json, out)
    except KeyboardInterrupt:
        out.write("\n")  # Ctrl-C is how a watch ends: no traceback, no error


# Clear the screen and go home, as top does between frames; only where a terminal reads it.
CLEAR = "\x1b[H\x1b[2J"


def watch_status(
    endpoint: str, role: str, interval: float, count: int | None, as_json: bool, out: TextIO
) -> None:
    """Redraw the status every ``interval`` seconds. On a terminal each frame replaces the
    last; in a pipe frames follow one another (JSON: one object a line). The first read must
    succeed; later failures (the process restarting) are shown and the watch goes on."""
    tty = out.isatty()
    status, at = read_status(endpoint, role), time.monotonic()
    previous: tuple[dict[str, Any], float] | None = None
    shown, problem = 0, ""
    while True:
        if previous is None or problem:
            view = with_rates(status, None, 0)
        else:
            view = with_rates(status, previous[0], at - previous[1])
        if as_json:
            out.write(json.dumps(view) + "\n")
        else:
            gap = CLEAR if tty else ("\n" if shown else "")
            out.write(gap + render_watch(view, endpoint, interval, problem))
        out.flush()
        shown += 1
        if count is not None and shown >= count:
            return
        time.sleep(interval)
        try:
            fresh = read_status(endpoint, role)
        except ConfigError as exc:
            problem = str(exc)
            continue
        previous, problem = (status, at), ""
        status, at = fresh, time.monotonic()
