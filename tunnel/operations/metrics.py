"""Prometheus metrics shared by both roles (served by the roles' metrics endpoint).

One registry per process; every fault the network or a peer can cause is counted here with a
reason label, so a dashboard shows the same reasons the logs name.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Metric
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
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


class _Refusals(Collector):
    """Streams refused or failed, by (role, service, reason): plain counts, read directly by
    /status (:func:`refusals`) and exported here as ``ambassador_stream_refusals``, with the
    ``_created`` series prometheus_client's own counters have, so /metrics is as it was.

    The labels are bounded: a service is one the configuration names (``-`` for one the server
    does not know), a reason one of :class:`tunnel.errors.Reason`'s labels or the client's few.
    """

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], int] = {}
        self.created: dict[tuple[str, str, str], float] = {}
        # (role, service) -> the latest refusal's reason and wall-clock time, for /status
        self.latest: dict[tuple[str, str], tuple[str, float]] = {}

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "ambassador_stream_refusals",
            "Streams refused or failed, by reason",
            labels=["role", "service", "reason"],
        )
        for key, count in list(self.counts.items()):
            family.add_metric(key, count, created=self.created[key])
        yield family


_REFUSALS = _Refusals()
REGISTRY.register(_REFUSALS)


def refused(role: str, service: str, reason: str) -> None:
    """Count one stream of ``service`` refused or failed in ``role``, for ``reason``."""
    key = (role, service, reason)
    counts = _REFUSALS.counts
    now = time.time()
    if key not in counts:
        _REFUSALS.created[key] = now
        counts[key] = 0
    counts[key] += 1
    _REFUSALS.latest[(role, service)] = (reason, now)


def refusals(role: str, service: str) -> int:
    """Streams of ``service`` refused or failed in ``role``, every reason."""
    return sum(
        count
        for (owner, name, _), count in list(_REFUSALS.counts.items())
        if owner == role and name == service
    )


def refusals_by_reason(role: str, service: str) -> dict[str, int]:
    """Streams of ``service`` refused or failed in ``role``, by reason."""
    return {
        reason: count
        for (owner, name, reason), count in list(_REFUSALS.counts.items())
        if owner == role and name == service
    }


def latest_refusal(role: str, service: str) -> tuple[str, float] | None:
    """The reason and wall-clock time (time.time()) of ``service``'s latest refusal."""
    return _REFUSALS.latest.get((role, service))


RELOAD_CLOSES = Counter(
    "ambassador_reload_closed_sessions",
    "Sessions a reload closed because the new configuration would not admit them, by reason",
    ["reason"],
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
CONNECTIONS_REJECTED = Counter(
    "ambassador_connections_rejected",
    "Tunnel connections closed as soon as they were accepted, by the bound they exceeded",
    ["reason"],
    registry=REGISTRY,
)
UNRESPONSIVE_PEERS = Counter(
    "ambassador_unresponsive_peers",
    "Sessions ended because the peer answered neither a stream open or data nor the probe "
    "ping that followed (fast detection)",
    registry=REGISTRY,
)
LIMIT_HITS = Counter(
    "ambassador_limit_hits", "Times a peer hit a limit, by limit", ["limit"], registry=REGISTRY
)


class _CertificateExpiry(Collector):
    """``ambassador_certificate_expiry_days``: days until each certificate in use expires,
    computed at each scrape from its expiry time, so that it falls day by day without a
    reload. ``certificate`` is ``own`` (the server's served certificate, or the client's
    own) or ``peer`` (the server's certificate as the client was last shown it)."""

    def __init__(self) -> None:
        self.not_after: dict[tuple[str, str], float] = {}

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "ambassador_certificate_expiry_days",
            "Days until the certificate expires (negative once it has)",
            labels=["role", "certificate"],
        )
        now = time.time()
        for key, when in list(self.not_after.items()):
            family.add_metric(key, round((when - now) / 86400, 3))
        yield family


_CERTIFICATES = _CertificateExpiry()
REGISTRY.register(_CERTIFICATES)


def certificate_expires(role: str, certificate: str, not_after: float | None) -> None:
    """Export when ``role``'s ``certificate`` (own or peer) expires; None: it has none."""
    if not_after is None:
        _CERTIFICATES.not_after.pop((role, certificate), None)
    else:
        _CERTIFICATES.not_after[(role, certificate)] = not_after


class ServiceMeters:
    """The counts of one (role, service): streams and bytes.

    They are plain ints, bumped for every stream and every message relayed and read only when
    metrics are scraped (:class:`_ServiceCollector`): a Prometheus counter takes a lock on every
    increment, which showed in profiles of small-message and new-connection traffic. The byte
    counts are what the local socket gave (``read``) and took (``written``); the role says which
    way that is.
    """

    __slots__ = ("open_now", "opened", "read", "role", "service", "written")

    def __init__(self, role: str, service: str) -> None:
        self.role, self.service = role, service
        self.opened = 0  # streams opened
        self.open_now = 0  # streams open now
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


def counted(role: str, service: str) -> ServiceMeters:
    """The meters of (role, service) to read, zeros when it has none; unlike :func:`meters`
    it adds no series to /metrics."""
    return _METERS.get((role, service)) or ServiceMeters(role, service)


def relayed_bytes() -> int:
    """Every byte this process has read from or written to local sockets, all services."""
    return sum(found.read + found.written for found in list(_METERS.values()))


def services(role: str) -> list[str]:
    """The services this process has counted streams for, in ``role``."""
    return [service for (owner, service) in _METERS if owner == role]


class _ServiceCollector(Collector):
    """The per-service series, read from the meters when metrics are scraped."""

    def collect(self) -> Iterator[Metric]:
        labels = ["role", "service"]
        opened = CounterMetricFamily("ambassador_streams", "Streams opened", labels=labels)
        open_now = GaugeMetricFamily(
            "ambassador_streams_open", "Streams currently open", labels=labels
        )
        moved = CounterMetricFamily(
            "ambassador_bytes",
            "Bytes relayed, by direction (to_backend / to_consumer)",
            labels=[*labels, "direction"],
        )
        for found in list(_METERS.values()):
            names = [found.role, found.service]
            opened.add_metric(names, found.opened)
            open_now.add_metric(names, found.open_now)
            moved.add_metric([*names, "to_backend"], found.to_backend)
            moved.add_metric([*names, "to_consumer"], found.to_consumer)
        yield from (opened, open_now, moved)


REGISTRY.register(_ServiceCollector())
