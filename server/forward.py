"""Drop-in mode: plain per-port forwarding from the link variables, as the seed's image did.

With ``--forward`` the server opens no tunnel port: it listens on every linked service's own
port and forwards each connection to its backend, byte for byte, like the old socat
ambassador. Backpressure holds both ways (a side whose peer's buffer is full stops reading),
and a reset on one side becomes a reset on the other.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import cast

from tunnel import metrics
from tunnel.errors import ConfigError
from tunnel.links import Catalog, Service
from tunnel.oserrors import listen_error
from tunnel.relay import abort_with_reset

log = logging.getLogger("ambassador.forward")

HIGH_WATER = 256 * 1024


class _Side(asyncio.Protocol):
    """One socket of a forwarded pair; ``peer`` is the other."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.pending: list[bytes] = []
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(HIGH_WATER)
        for data in self.pending:
            self.transport.write(data)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            if peer is not None:
                peer.pending.append(data)
            return
        peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is not None and peer.eof:
            # Both sides are done: close both (which flushes what is queued). Never half-close
            # a socket that has already received EOF: uvloop 0.23 can corrupt its heap when
            # such a socket is closed later.
            if self.transport is not None:
                self.transport.close()
            if peer.transport is not None:
                peer.transport.close()
        elif peer is not None and peer.transport is not None and peer.transport.can_write_eof():
            peer.transport.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        peer, self.peer = self.peer, None
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            if exc is not None:
                abort_with_reset(peer.transport)
            else:
                peer.transport.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class _Consumer(_Side):
    def __init__(self, service: Service) -> None:
        super().__init__()
        self.service = service

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        backend = _Side()
        backend.peer, self.peer = self, backend
        if self.transport is not None:
            self.transport.pause_reading()  # until the backend is connected
        task = asyncio.get_running_loop().create_task(self._dial(backend))
        _TASKS.add(task)
        task.add_done_callback(_TASKS.discard)

    async def _dial(self, backend: _Side) -> None:
        target = self.service.target
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(5):
                await loop.create_connection(lambda: backend, target.host, target.port)
        except (OSError, TimeoutError) as exc:
            log.warning("cannot reach %s for %s: %s", target, self.service.name, exc)
            metrics.STREAM_REFUSALS.labels("forward", self.service.name, "backend_refused").inc()
            if self.transport is not None:
                abort_with_reset(self.transport)
            return
        metrics.meters("forward", self.service.name).opened += 1
        if self.transport is not None:
            self.transport.resume_reading()


_TASKS: set[asyncio.Task[None]] = set()


async def start_forwarding(catalog: Catalog, bind: str) -> list[asyncio.Server]:
    """One listener per linked service, on its own port."""
    loop = asyncio.get_running_loop()
    servers: list[asyncio.Server] = []
    for service in catalog:
        try:
            server = await loop.create_server(
                partial(_Consumer, service), bind, service.port, reuse_address=True
            )
        except OSError as exc:
            for started in servers:
                started.close()
            raise ConfigError(listen_error(f"{bind}:{service.port}", exc)) from None
        servers.append(server)
        log.info("forwarding %s:%d to %s (%s)", bind, service.port, service.target, service.name)
    return servers
