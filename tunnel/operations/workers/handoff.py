"""A connection accepted by the main process, handed to a helper or served here."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import cast

from prometheus_client import Counter

from tunnel.operations import metrics
from tunnel.operations.workers.pool import Helper, WorkerPool

log = logging.getLogger("ambassador.workers")

HANDOVERS = Counter(
    "ambassador_handovers", "Connections handed to a helper process", ["role"],
    registry=metrics.REGISTRY,
)  # fmt: skip


class Handoff(asyncio.Protocol):
    """An accepted connection on its way to a helper; served here if the helper cannot take it."""

    def __init__(
        self, pool: WorkerPool, helper: Helper, tag: str, local: Callable[[], asyncio.BaseProtocol]
    ) -> None:
        self.pool, self.helper, self.tag, self.local = pool, helper, tag, local

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        transport.pause_reading()  # not one byte is read here: the helper reads it all
        sock = transport.get_extra_info("socket")
        if sock is not None and self.helper.hand_over(sock.fileno(), self.tag.encode()):
            HANDOVERS.labels(self.pool.role).inc()
            transport.abort()  # closes this process's descriptor; the helper holds its own
            return
        protocol = self.local()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        transport.resume_reading()


async def serve_handed(sock: socket.socket, protocol: Callable[[], asyncio.BaseProtocol]) -> bool:
    """Serve a connection the main process handed over; False (logged) if it was lost first."""
    try:
        await asyncio.get_running_loop().connect_accepted_socket(protocol, sock)
    except OSError as exc:
        log.warning("a connection handed over was lost before it started: %s", exc)
        sock.close()
        return False
    return True
