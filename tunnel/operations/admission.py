"""Admitting tunnel connections: how many strangers a listening role holds at once.

A connection is *unauthenticated* from its accept until its hello is answered (or it closes).
Until then it costs memory (a few KiB, more under TLS), a descriptor and a handshake deadline's
worth of time, and anyone who can reach the port can open one. So they are bounded, in total
and per source address (an IPv6 peer by its /64, which one host usually holds whole), the way
OpenSSH's MaxStartups bounds connections that have not logged in. A connection over a bound is
closed as soon as it is accepted, counted in ``ambassador_connections_rejected_total`` with the
bound's name, and logged within a budget of lines.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass

from tunnel.operations import metrics
from tunnel.operations.loglimit import LogBudget
from tunnel.settings.wording import hostport

UNAUTHENTICATED = 256
UNAUTHENTICATED_PER_ADDRESS = 32
STREAMS_PER_IDENTITY = 1024
# Descriptors kept free of backend streams, so that a new session can always be accepted (and
# refused with a reason when even these run short: at half of them).
DESCRIPTOR_RESERVE = 64


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    # Connections that have not completed their hello, in all, and from one address (or /64).
    unauthenticated: int = UNAUTHENTICATED
    unauthenticated_per_address: int = UNAUTHENTICATED_PER_ADDRESS


def address_key(peername: object) -> str:
    """The source a connection is counted against: its IPv4 address, or its IPv6 /64."""
    host = peername[0] if isinstance(peername, tuple) and peername else peername
    try:
        address = ipaddress.ip_address(str(host))
    except ValueError:
        return str(host)
    if address.version == 6:
        mapped = address.ipv4_mapped
        if mapped is not None:
            return str(mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class Admission:
    """The counts of unauthenticated connections, and the decision for a new one."""

    def __init__(self) -> None:
        self._by_address: Counter[str] = Counter()
        self.count = 0

    def admit(self, key: str, limits: AdmissionLimits) -> str | None:
        """Count a new connection from ``key``; or the name of the bound it would exceed."""
        if self.count >= limits.unauthenticated:
            return "max_unauthenticated"
        if self._by_address[key] >= limits.unauthenticated_per_address:
            return "max_unauthenticated_per_address"
        self.count += 1
        self._by_address[key] += 1
        return None

    def release(self, key: str) -> None:
        """A connection counted with ``key`` authenticated or closed."""
        self.count -= 1
        left = self._by_address[key] - 1
        if left > 0:
            self._by_address[key] = left
        else:
            del self._by_address[key]


class StrangerGate:
    """One accepted connection's place among the strangers: counted from its accept until it
    authenticates or closes, and the lines it may cause, out of its role's one budget."""

    def __init__(self, admission: Admission, budget: LogBudget) -> None:
        self._admission = admission
        self._budget = budget
        self._key: str | None = None

    @property
    def counted(self) -> bool:
        return self._key is not None

    def admit(self, peername: object, limits: AdmissionLimits) -> str | None:
        """Count the connection; or, over a bound, say so once (within the budget), count
        the refusal and return the bound's name (the caller closes the connection)."""
        key = address_key(peername)
        bound = self._admission.admit(key, limits)
        if bound is None:
            self._key = key
            return None
        metrics.CONNECTIONS_REJECTED.labels(bound).inc()
        limit = (
            limits.unauthenticated
            if bound == "max_unauthenticated"
            else limits.unauthenticated_per_address
        )
        self._budget.warning(
            "refused connection from %s: %d connections that have not authenticated yet "
            "(--%s); raise it if peers wait for this",
            _peer(peername), limit, bound.replace("_", "-"),
        )  # fmt: skip
        return bound

    def release(self) -> None:
        """Authenticated or closed: it no longer counts (said twice, counted once)."""
        if self._key is not None:
            self._admission.release(self._key)
            self._key = None

    def say(self, message: str, *args: object) -> None:
        self._budget.warning(message, *args)


def _peer(peername: object) -> str:
    if isinstance(peername, tuple) and len(peername) >= 2:
        return hostport(str(peername[0]), peername[1])
    return str(peername or "?")
