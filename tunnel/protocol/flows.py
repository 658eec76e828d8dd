"""The datagram flows of one UDP expose: who they are, when they go idle, how many there may be.

Theory of operation. A UDP socket has no connections: every datagram names its source, and the
client makes each source address a flow, carried on a stream of its own
(:mod:`tunnel.protocol.datagrams`). A flow ends when it has been idle (no datagram either way)
for ``idle_timeout`` seconds: DNS-like traffic is one question and one answer, so flows are
short-lived and must not pile up. There are at most ``max_flows`` at once; a datagram from a
new source beyond that is refused (the caller drops and counts it), never queued.

Time is passed in: the table keeps no clock, and :meth:`FlowTable.next_expiry` tells the caller
when to come back.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)
Flow = TypeVar("Flow")

DEFAULT_IDLE_TIMEOUT = 60.0
DEFAULT_MAX_FLOWS = 1024


class FlowTable(Generic[Key, Flow]):
    """Flows by source, least recently active first."""

    __slots__ = ("_flows", "idle_timeout", "max_flows")

    def __init__(
        self, max_flows: int = DEFAULT_MAX_FLOWS, idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    ) -> None:
        if max_flows < 1:
            raise ValueError("max_flows must be at least 1")
        if idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")
        self.max_flows = max_flows
        self.idle_timeout = idle_timeout
        # key -> (flow, last activity); kept in order of last activity, oldest first, so
        # expiry looks only at the front.
        self._flows: OrderedDict[Key, tuple[Flow, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._flows)

    def __contains__(self, key: object) -> bool:
        return key in self._flows

    def get(self, key: Key) -> Flow | None:
        found = self._flows.get(key)
        return None if found is None else found[0]

    def flows(self) -> list[Flow]:
        return [flow for flow, _ in self._flows.values()]

    @property
    def full(self) -> bool:
        """A new source would be one flow too many."""
        return len(self._flows) >= self.max_flows

    def add(self, key: Key, flow: Flow, now: float) -> bool:
        """Start a flow for ``key``; False (nothing added) when the table is full."""
        if key in self._flows:
            raise KeyError(f"a flow for {key!r} exists")
        if self.full:
            return False
        self._flows[key] = (flow, now)
        return True

    def touch(self, key: Key, now: float) -> None:
        """A datagram went either way on ``key``'s flow: it is active now."""
        found = self._flows.get(key)
        if found is not None:
            self._flows[key] = (found[0], now)
            self._flows.move_to_end(key)

    def remove(self, key: Key) -> Flow | None:
        found = self._flows.pop(key, None)
        return None if found is None else found[0]

    def expired(self, now: float) -> list[tuple[Key, Flow]]:
        """Take out and return the flows idle for ``idle_timeout`` or longer."""
        out: list[tuple[Key, Flow]] = []
        flows = self._flows
        while flows:
            key, (flow, last) = next(iter(flows.items()))
            if now - last < self.idle_timeout:
                break
            del flows[key]
            out.append((key, flow))
        return out

    def next_expiry(self) -> float | None:
        """When the oldest flow expires if nothing happens on it; None with no flows."""
        if not self._flows:
            return None
        _, last = next(iter(self._flows.values()))
        return last + self.idle_timeout
