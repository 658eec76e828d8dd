"""Prometheus metrics shared by both roles (served by the roles' metrics endpoint).

One registry per process; every fault the network or a peer can cause is counted here with a
reason label, so a dashboard shows the same reasons the logs name.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Metric
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)

SESSIONS_OPEN = Gauge(
    "ambassador_sessions_open", "Tunnel sessions currently up", ["role"], registry=REGISTRY
)
SESSIONS = Counter(
    "ambassador_sessions", "Tunnel sessions established", ["role"], registry=REGISTRY
)
SESSION_ENDS = Counter(
    "ambassador_session_ends",
    "Tunnel sessions ended, by reason",
    ["role", "reason"],
    registry=REGISTRY,
)
STREAMS_OPEN = Gauge(
    "ambassador_streams_open", "Streams currently open", ["role", "service"], registry=REGISTRY
)
STREAMS = Counter("ambassador_streams", "Streams opened", ["role", "service"], registry=REGISTRY)
STREAM_REFUSALS = Counter(
    "ambassador_stream_refusals",
    "Streams refused or failed, by reason",
    ["role", "service", "reason"],
    registry=REGISTRY,
)
RECONNECTS = Counter(
    "ambassador_reconnects", "Connection attempts after the first", ["remote"], registry=REGISTRY
)
CONNECT_FAILURES = Counter(
    "ambassador_connect_failures",
    "Failed attempts to reach a server, by reason",
    ["remote", "reason"],
    registry=REGISTRY,
)
RTT = Gauge(
    "ambassador_rtt_seconds", "Last measured tunnel round trip", ["peer"], registry=REGISTRY
)
LIMIT_HITS = Counter(
    "ambassador_limit_hits", "Times a peer hit a limit, by limit", ["limit"], registry=REGISTRY
)


class ServiceMeters:
    """The series of one (role, service), looked up once: label lookups cost on every stream.

    The byte counts are plain ints, bumped for every message relayed and read only when
    metrics are scraped (:class:`_ByteCollector`): a Prometheus counter takes a lock on every
    increment, which showed in profiles of small-message traffic. They count what the local
    socket gave (``read``) and took (``written``); the role says which way that is.
    """

    __slots__ = ("open_now", "opened", "read", "role", "service", "written")

    def __init__(self, role: str, service: str) -> None:
        self.role, self.service = role, service
        self.opened = STREAMS.labels(role, service)
        self.open_now = STREAMS_OPEN.labels(role, service)
        self.read = 0  # bytes read from local sockets (consumers, or backends on the server)
        self.written = 0  # bytes written to them

    @property
    def to_backend(self) -> int:
        return self.read if self.role == "client" else self.written

    @property
    def to_consumer(self) -> int:
        return self.written if self.role == "client" else self.read


_METERS: dict[tuple[str, str], ServiceMeters] = {}


UNCOUNTED = ServiceMeters("", "")  # a relay's meters until it knows its service; never collected


def meters(role: str, service: str) -> ServiceMeters:
    key = (role, service)
    found = _METERS.get(key)
    if found is None:
        found = _METERS[key] = ServiceMeters(role, service)
    return found


class _ByteCollector(Collector):
    """``ambassador_bytes_total``, by role, service and direction, read from the meters."""

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "ambassador_bytes",
            "Bytes relayed, by direction (to_backend / to_consumer)",
            labels=["role", "service", "direction"],
        )
        for found in list(_METERS.values()):
            labels = [found.role, found.service]
            family.add_metric([*labels, "to_backend"], found.to_backend)
            family.add_metric([*labels, "to_consumer"], found.to_consumer)
        yield family


REGISTRY.register(_ByteCollector())
