"""The last minutes of a role's status, for the status page's charts and rates.

The status endpoint samples the role's status (the counts the process keeps anyway) once per
interval and keeps, per sample, four numbers: the bytes a second in and out over all services,
the streams open, and the highest tunnel round trip. The ring holds ``capacity`` samples, so its
memory is bounded whatever runs through the process (360 samples of a few floats: some tens of
KiB). Each session's and service's rate is the difference between the last two samples; only
those two samples' counts are kept per row, so a process with many short sessions does not
grow it either.

Time is passed in: :meth:`History.record` takes the sample's time, and nothing here reads a
clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

SAMPLE_INTERVAL = 1.0  # seconds between samples
CAPACITY = 360  # samples kept: six minutes at one a second

_ROWS = ("sessions", "remotes", "services")


@dataclass(frozen=True)
class Sample:
    at: float  # seconds, on the caller's clock
    rate_in: float  # bytes a second toward the backends, over every service
    rate_out: float  # bytes a second toward the consumers
    streams: int  # streams open
    rtt_ms: float | None  # the highest round trip of the tunnel sessions, None without one


def _row_key(which: str, row: dict[str, Any]) -> tuple[str, str, str]:
    return which, str(row.get("worker", "")), str(row.get("peer", row.get("service", "")))


def _counts(status: dict[str, Any]) -> dict[tuple[str, str, str], tuple[int, int]]:
    return {
        _row_key(which, row): (int(row.get("bytes_in") or 0), int(row.get("bytes_out") or 0))
        for which in _ROWS
        for row in status.get(which) or []
    }


def _rate(now: int, then: int, seconds: float) -> float | None:
    # A count that went down belongs to a new session or process under the same name.
    return (now - then) / seconds if now >= then and seconds > 0 else None


class History:
    """A bounded ring of :class:`Sample` and the latest rate of each row."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.samples: deque[Sample] = deque(maxlen=capacity)
        self._last: tuple[float, dict[tuple[str, str, str], tuple[int, int]]] | None = None
        self._rates: dict[tuple[str, str, str], tuple[float | None, float | None]] = {}

    def record(self, status: dict[str, Any], now: float) -> None:
        """Take one sample of ``status`` at time ``now``."""
        counts = _counts(status)
        services = list(status.get("services") or [])
        rtts = [
            float(row["rtt_ms"])
            for which in ("sessions", "remotes")
            for row in status.get(which) or []
            if row.get("rtt_ms") is not None
        ]
        rate_in = rate_out = 0.0
        self._rates = {}
        if self._last is not None:
            then, before = self._last
            seconds = now - then
            for key, (now_in, now_out) in counts.items():
                old = before.get(key)
                if old is not None:
                    self._rates[key] = (
                        _rate(now_in, old[0], seconds),
                        _rate(now_out, old[1], seconds),
                    )
            for row in services:
                got = self._rates.get(_row_key("services", row), (None, None))
                rate_in += got[0] or 0.0
                rate_out += got[1] or 0.0
        streams = sum(int(row.get("open_streams") or 0) for row in services)
        self.samples.append(Sample(now, rate_in, rate_out, streams, max(rtts, default=None)))
        self._last = (now, counts)

    def annotate(self, status: dict[str, Any]) -> dict[str, Any]:
        """``status`` with each session's and service's ``rate_in`` and ``rate_out`` (bytes a
        second over the last sample interval; None for a row not yet sampled twice)."""
        status = dict(status)
        for which in _ROWS:
            if which in status:
                status[which] = [
                    dict(row, rate_in=got[0], rate_out=got[1])
                    for row in status[which]
                    for got in [self._rates.get(_row_key(which, row), (None, None))]
                ]
        return status

    def series(self, now: float) -> dict[str, Any]:
        """The ring as columns for the charts: each sample's age in seconds at ``now``, its
        rates in and out, streams open and RTT."""
        samples = list(self.samples)
        return {
            "interval": SAMPLE_INTERVAL,
            "capacity": self.samples.maxlen,
            "age": [round(now - sample.at, 2) for sample in samples],
            "rate_in": [round(sample.rate_in, 1) for sample in samples],
            "rate_out": [round(sample.rate_out, 1) for sample in samples],
            "streams": [sample.streams for sample in samples],
            "rtt_ms": [
                None if sample.rtt_ms is None else round(sample.rtt_ms, 3) for sample in samples
            ],
        }
