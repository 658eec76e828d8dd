"""The counts of UDP services: flows, datagrams, and datagrams dropped by reason.

A datagram that cannot travel (its stream has no window, the session's send budget is full,
too many sources, larger than a datagram may be, ...) is dropped, as a router would: UDP
consumers expect loss and retry. Every drop is counted here by reason, and logged at most once
per interval per (service, reason), never once per datagram. Plain ints, read when metrics are
scraped, as :class:`tunnel.operations.metrics.ServiceMeters` are.

The labels are bounded: a service is one the configuration names, a reason one of
:data:`DROP_REASONS`.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import Metric
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from tunnel.operations.metrics import REGISTRY

DROP_REASONS = (
    "too_large",  # longer than a UDP datagram may be (65,507 bytes)
    "no_window",  # the flow's stream is paused: no window, or its queue is at its bound
    "session_full",  # the session's send budget is full
    "too_many_flows",  # a new source beyond --udp-max-flows
    "no_tunnel",  # no tunnel to carry it
    "not_offered",  # the server does not offer the service as UDP
    "refused",  # the server refused the flow
    "not_ready",  # the backend socket was not open yet, and the few held were enough
    "socket_full",  # the local socket's send buffer is full
    "backend_error",  # the backend's socket reported an error (ICMP port unreachable, ...)
    "bad_stream",  # the peer broke the framing; the flow was reset
)


class FlowMeters:
    """The counts of one (role, UDP service)."""

    __slots__ = (
        "datagrams_to_backend",
        "datagrams_to_consumer",
        "drops",
        "flows_expired",
        "flows_open",
        "flows_opened",
        "role",
        "service",
    )

    def __init__(self, role: str, service: str) -> None:
        self.role, self.service = role, service
        self.flows_opened = 0
        self.flows_open = 0
        self.flows_expired = 0  # ended for being idle
        self.datagrams_to_backend = 0
        self.datagrams_to_consumer = 0
        self.drops: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)

    def drop(self, reason: str) -> None:
        self.drops[reason] += 1

    def to_json(self) -> dict[str, object]:
        return {
            "service": self.service,
            "flows_open": self.flows_open,
            "flows_opened": self.flows_opened,
            "flows_expired": self.flows_expired,
            "datagrams_to_backend": self.datagrams_to_backend,
            "datagrams_to_consumer": self.datagrams_to_consumer,
            "drops": {reason: count for reason, count in self.drops.items() if count},
        }


_METERS: dict[tuple[str, str], FlowMeters] = {}


def flow_meters(role: str, service: str) -> FlowMeters:
    key = (role, service)
    found = _METERS.get(key)
    if found is None:
        found = _METERS[key] = FlowMeters(role, service)
    return found


def all_meters(role: str) -> list[FlowMeters]:
    return [found for (owner, _), found in list(_METERS.items()) if owner == role]


class _FlowCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        labels = ["role", "service"]
        opened = CounterMetricFamily("ambassador_udp_flows", "UDP flows opened", labels=labels)
        open_now = GaugeMetricFamily(
            "ambassador_udp_flows_open", "UDP flows currently open", labels=labels
        )
        expired = CounterMetricFamily(
            "ambassador_udp_flows_expired", "UDP flows ended for being idle", labels=labels
        )
        moved = CounterMetricFamily(
            "ambassador_udp_datagrams",
            "UDP datagrams relayed, by direction (to_backend / to_consumer)",
            labels=[*labels, "direction"],
        )
        dropped = CounterMetricFamily(
            "ambassador_udp_drops", "UDP datagrams dropped, by reason", labels=[*labels, "reason"]
        )
        for found in list(_METERS.values()):
            names = [found.role, found.service]
            opened.add_metric(names, found.flows_opened)
            open_now.add_metric(names, found.flows_open)
            expired.add_metric(names, found.flows_expired)
            moved.add_metric([*names, "to_backend"], found.datagrams_to_backend)
            moved.add_metric([*names, "to_consumer"], found.datagrams_to_consumer)
            for reason, count in found.drops.items():
                dropped.add_metric([*names, reason], count)
        yield from (opened, open_now, expired, moved, dropped)


REGISTRY.register(_FlowCollector())
