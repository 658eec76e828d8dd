"""What a helper reports to the main process: its metrics as plain data, and its status."""

from __future__ import annotations

from typing import Any

from tunnel.operations import metrics


def helper_report(status: dict[str, Any]) -> dict[str, Any]:
    """What a helper answers the main process's ``?``: its metrics and its status."""
    return {"metrics": registry_families(), "status": status}


def registry_families() -> list[dict[str, Any]]:
    """This process's metrics as plain data, for a report."""
    return [
        {"name": family.name, "documentation": family.documentation, "type": family.type,
         "samples": [[s.name, s.labels, s.value] for s in family.samples]}
        for family in metrics.REGISTRY.collect()
    ]  # fmt: skip
