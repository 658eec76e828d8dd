"""Shared pieces of the roles' observability: a service's status row, and the status command."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from tunnel.errors import ConfigError
from tunnel.operations import metrics
from tunnel.operations.statusview import render_text


def service_stats(role: str, service: str) -> dict[str, Any]:
    """The /status row of one service, read from the counts themselves (never back through
    the Prometheus registry, which would cost a whole collection per number)."""
    found = metrics.counted(role, service)
    return {
        "service": service,
        "open_streams": found.open_now,
        "streams_total": found.opened,
        "bytes_in": found.to_backend,
        "bytes_out": found.to_consumer,
        "refused": metrics.refusals(role, service),
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


def print_status(endpoint: str, role: str) -> None:
    """Print the status table of the ``role`` process serving at ``endpoint``; ConfigError
    (one line) when another role, or something else, answers there."""
    status = fetch_status(endpoint)
    pid = status.get("pid")
    process = f"pid {_shown(pid)}" if isinstance(pid, int) else "pid unknown"
    if status.get("role") != role:
        other = _shown(status.get("role", "an unknown program"))
        raise ConfigError(
            f"{endpoint} is the status endpoint of {other} ({process}), not of {role}; give "
            f"{role}'s metrics-listen address with --endpoint, or its config file with --config"
        )
    print(render_text(status, endpoint), end="")
