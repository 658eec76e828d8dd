"""Shared pieces of the roles' observability: reading metrics back, and the status command."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from tunnel.errors import ConfigError
from tunnel.metrics import REGISTRY
from tunnel.statusview import render_text

DEFAULT_METRICS_PORT = 9700


def sample(name: str, **labels: str) -> float:
    """The current value of one metric series (0 when it has not been touched)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def service_stats(role: str, service: str) -> dict[str, Any]:
    return {
        "service": service,
        "open_streams": int(sample("ambassador_streams_open", role=role, service=service)),
        "streams_total": int(sample("ambassador_streams_total", role=role, service=service)),
        "bytes_in": int(sample("ambassador_bytes_total", role=role, service=service,
                               direction="to_backend")),
        "bytes_out": int(sample("ambassador_bytes_total", role=role, service=service,
                                direction="to_consumer")),
    }  # fmt: skip


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


def print_status(endpoint: str) -> None:
    print(render_text(fetch_status(endpoint)), end="")
