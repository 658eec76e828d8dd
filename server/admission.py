"""The server's admission of tunnel connections (:mod:`tunnel.operations.admission`, which the
client's tunnel listener shares), and the one log budget of its strangers' lines."""

from __future__ import annotations

import logging

from tunnel.operations.admission import (
    DESCRIPTOR_RESERVE,
    STREAMS_PER_IDENTITY,
    UNAUTHENTICATED,
    UNAUTHENTICATED_PER_ADDRESS,
    Admission,
    AdmissionLimits,
    StrangerGate,
    address_key,
)
from tunnel.operations.loglimit import LogBudget

__all__ = [
    "DESCRIPTOR_RESERVE",
    "STREAMS_PER_IDENTITY",
    "UNAUTHENTICATED",
    "UNAUTHENTICATED_PER_ADDRESS",
    "Admission",
    "AdmissionLimits",
    "StrangerGate",
    "address_key",
    "stranger_log",
]

# Every line a connection that has not authenticated can cause (a refused or failed handshake,
# a missing hello) comes out of this one budget: 20 at once, then one a second.
stranger_log = LogBudget(logging.getLogger("ambassador.server"))
