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
                    for name, value in extra.items():
                        if name != "service" and isinstance(value, int | float):
                            row[name] = row.get(name, 0) + value
                    break
    merged["services"] = services
    return merged
