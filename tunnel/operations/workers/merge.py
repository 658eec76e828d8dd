"""The main process's metrics and status with its helpers' reports merged in."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import Metric
from prometheus_client.registry import Collector

from tunnel.operations.workers.report import registry_families


class MergedMetrics(Collector):
    """The main process's metrics and its helpers', each series labelled with its worker."""

    def __init__(self, reports: Iterable[tuple[int, dict[str, Any]]]) -> None:
        self._reports = list(reports)

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        sources = [(0, registry_families())]
        sources += [(index, report.get("metrics", [])) for index, report in self._reports]
        for index, families in sources:
            for family in families:
                name = family["name"]
                if name in merged:
                    target = merged[name]
                else:
                    target = merged[name] = Metric(name, family["documentation"], family["type"])
                for sample_name, labels, value in family["samples"]:
                    labels = dict(labels, worker=str(index))
                    target.add_sample(sample_name, labels, value)
        yield from merged.values()


def merge_status(main: dict[str, Any], reports: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """One status for the role: sessions (or remotes) of every worker, services summed."""
    merged = dict(main)
    merged["workers"] = 1 + len(reports)
    for key in ("sessions", "remotes"):
        if key in main:
            rows = [dict(row, worker=0) for row in main[key]]
            for index, report in reports:
                rows += [dict(row, worker=index) for row in report["status"].get(key, [])]
            merged[key] = rows
    services = [dict(row) for row in main.get("services", [])]
    for _, report in reports:
        for extra in report["status"].get("services", []):
            for row in services:
                if row["service"] == extra["service"] or row["service"].startswith(
                    extra["service"] + " "
                ):
                    merge_service(row, extra)
                    break
    merged["services"] = services
    return merged


def merge_service(row: dict[str, Any], extra: dict[str, Any]) -> None:
    """Add one worker's counts of a service to ``row``: counts summed (by reason too), the
    latest error the one most recently seen by any worker."""
    if (extra.get("last_error_at") or 0) > (row.get("last_error_at") or 0):
        row["last_error"], row["last_error_at"] = extra["last_error"], extra["last_error_at"]
    for name, value in extra.items():
        if name in ("service", "last_error", "last_error_at"):
            continue
        if isinstance(value, int | float):
            row[name] = row.get(name, 0) + value
        elif isinstance(value, dict):
            into = row.setdefault(name, {})
            for key, count in value.items():
                into[key] = into.get(key, 0) + count
        elif name == "targets" and isinstance(value, list):
            row["targets"] = merge_targets(row.get("targets") or [], value)


# A target's health as the worst any process sees it: a target one worker cannot reach is one
# that worker's streams fail over from, and the operator should see that first.
_WORST = {"healthy": 0, "ejected": 1, "down": 2}


def merge_targets(rows: list[dict[str, Any]], extra: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per target of a pool, over the workers: each process balances and checks its
    own streams, so streams are summed, the state is the worst seen (``states`` counts the
    workers in each), and the last error is that of a worker that sees the worst state."""
    merged = {str(row.get("target")): _with_states(row) for row in rows}
    for other in extra:
        key = str(other.get("target"))
        row = merged.get(key)
        if row is None:  # a worker reloaded into a pool the main process has not (yet)
            merged[key] = _with_states(other)
            continue
        for name in ("open", "opened"):
            row[name] = row.get(name, 0) + other.get(name, 0)
        state = str(other.get("state", ""))
        row["states"][state] = row["states"].get(state, 0) + 1
        if _WORST.get(state, 0) > _WORST.get(str(row.get("state")), 0):
            row["state"] = state
            row["last_error"] = other.get("last_error", "")
        elif not row.get("last_error"):
            row["last_error"] = other.get("last_error", "")
    return list(merged.values())


def _with_states(row: dict[str, Any]) -> dict[str, Any]:
    if "states" in row:  # merged already, from a worker before this one
        return dict(row, states=dict(row["states"]))
    return dict(row, states={str(row.get("state", "")): 1})
