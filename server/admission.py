"""Admitting tunnel connections: how many strangers the server holds at once.

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
import logging
from collections import Counter
from dataclasses import dataclass

from tunnel.operations.loglimit import LogBudget

# Every line a connection that has not authenticated can cause (a refused or failed handshake,
# a missing hello) comes out of this one budget: 20 at once, then one a second.
stranger_log = LogBudget(logging.getLogger("ambassador.server"))


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
