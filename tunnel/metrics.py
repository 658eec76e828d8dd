"""Prometheus metrics shared by both roles (served by the roles' metrics endpoint).

One registry per process; every fault the network or a peer can cause is counted here with a
reason label, so a dashboard shows the same reasons the logs name.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

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
BYTES = Counter(
    "ambassador_bytes",
    "Bytes relayed, by direction (to_backend / to_consumer)",
    ["role", "service", "direction"],
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
    """The series of one (role, service), looked up once: label lookups cost on every stream."""

    __slots__ = ("open_now", "opened", "to_backend", "to_consumer")

    def __init__(self, role: str, service: str) -> None:
        self.opened = STREAMS.labels(role, service)
        self.open_now = STREAMS_OPEN.labels(role, service)
        self.to_backend = BYTES.labels(role, service, "to_backend")
        self.to_consumer = BYTES.labels(role, service, "to_consumer")


_METERS: dict[tuple[str, str], ServiceMeters] = {}


def meters(role: str, service: str) -> ServiceMeters:
    key = (role, service)
    found = _METERS.get(key)
    if found is None:
        found = _METERS[key] = ServiceMeters(role, service)
    return found
