"""Drop-in mode: plain per-port forwarding from the link variables, as the seed's image did.

With ``--forward`` the server opens no tunnel port: it listens on every linked service's own
port and forwards each connection to its backend, byte for byte, like the old socat
ambassador. Backpressure holds both ways (a side whose peer's buffer is full stops reading),
and a reset on one side becomes a reset on the other.

It is counted as the tunnel is (role ``forward``): streams and bytes per service in the same
meters, and a failed dial under the same reason codes (refused, timed out, unreachable) a
tunnel stream would be refused with, logged once per service and reason, then rate-limited.

With ``--proxy-protocol SERVICE=v1|v2`` that service's backend gets a PROXY header first, as in
tunnel mode; here the consumer's own socket names its endpoints.

It runs as the tunnel roles do (:func:`tunnel.operations.runner.serve`): the same signals,
status endpoint and teardown; it has nothing to drain, and a reload is refused with one line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, cast

from server.config import ServerConfig
from tunnel.aio.dial import connect
from tunnel.aio.relay import abort_with_reset
from tunnel.aio.transport import socket_origin
from tunnel.errors import ConfigError
from tunnel.operations import metrics
from tunnel.operations.logonce import Throttled
from tunnel.operations.metrics import ServiceMeters
from tunnel.operations.observe import service_stats
from tunnel.operations.oserrors import dial_error, listen_error
from tunnel.operations.runner import Reload
from tunnel.operations.runner import serve as run_role
from tunnel.protocol import proxyheader
from tunnel.settings.links import Catalog, Service
from tunnel.settings.wording import hostport

log = logging.getLogger("ambassador.forward")
throttled = Throttled(log)

HIGH_WATER = 256 * 1024


class _Side(asyncio.Protocol):
    """One socket of a forwarded pair; ``peer`` is the other.

    ``meters`` counts what the backend side reads as ``read`` and what the consumer side
    reads (and the backend is sent) as ``written``, as the server counts a stream's backend.
    """

    def __init__(self, meters: ServiceMeters, backend: bool) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.pending: list[bytes] = []
        self.eof = False
        self.meters = meters
        self.backend = backend

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(HIGH_WATER)
        if self.backend:  # counted open from here to connection_lost
            self.meters.opened += 1
            self.meters.open_now += 1
        for data in self.pending:
            self.transport.write(data)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        if self.backend:
            self.meters.read += len(data)
        else:
            self.meters.written += len(data)
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
        if self.backend:
            self.meters.open_now -= 1
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
    def __init__(self, service: Service, dial_timeout: float, proxy_version: int | None) -> None:
        super().__init__(metrics.meters("forward", service.name), backend=False)
        self.service = service
        self.dial_timeout = dial_timeout
        self.proxy_version = proxy_version  # --proxy-protocol for this service: 1, 2 or None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        backend = _Side(self.meters, backend=True)
        backend.peer, self.peer = self, backend
        if self.proxy_version is not None:
            # The consumer's socket names it directly; the backend reads the header first,
            # before anything relayed (written as soon as the backend is connected).
            origin = socket_origin(transport)
            backend.pending.append(proxyheader.encode(self.proxy_version, origin))
        if self.transport is not None:
            self.transport.pause_reading()  # until the backend is connected
        task = asyncio.get_running_loop().create_task(self._dial(backend))
        _TASKS.add(task)
        task.add_done_callback(_TASKS.discard)

    async def _dial(self, backend: _Side) -> None:
        target = self.service.target
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.dial_timeout):
                await connect(loop, lambda: backend, target)
        except (OSError, TimeoutError) as exc:
            reason, text = dial_error(target, exc, self.dial_timeout)
            name = self.service.name
            throttled.warning(f"{name}:{reason.label}", "connection to %r refused (%s): %s",
                              name, reason.label, text)  # fmt: skip
            metrics.refused("forward", name, reason.label)
            if self.transport is not None:
                abort_with_reset(self.transport)
            return
        if self.transport is not None:
            self.transport.resume_reading()


_TASKS: set[asyncio.Task[None]] = set()


async def start_forwarding(
    catalog: Catalog,
    bind: str,
    dial_timeout: float,
    proxy_protocol: Mapping[Service, int] | None = None,
) -> list[asyncio.Server]:
    """One listener per linked service, on its own port; a backend not reached within
    ``dial_timeout`` seconds resets its consumer. A service in ``proxy_protocol`` gets a
    PROXY header of that version naming the consumer first."""
    versions = proxy_protocol or {}
    loop = asyncio.get_running_loop()
    servers: list[asyncio.Server] = []
    for service in catalog:
        if service.transport != "tcp":
            # A TCP listener would take nothing its clients send; UDP forwarding is not done.
            log.warning(
                "not forwarding %s: it is a UDP service, and forward mode carries TCP only; "
                "reach it directly, or through the tunnel",
                service.full_name,
            )
            continue
        if service.pool:
            log.warning(
                "forwarding %s to its first target %s only: forward mode does not pool; use "
                "the tunnel for a pool",
                service.full_name,
                service.target,
            )
        if service.port is None:
            log.warning("not forwarding %s: it has no port to listen on; link it as "
                        "%s:PORT=%s", service.name, service.name, service.target)  # fmt: skip
            continue
        try:
            server = await loop.create_server(
                partial(_Consumer, service, dial_timeout, versions.get(service)),
                bind,
                service.port,
                reuse_address=True,
            )
        except OSError as exc:
            for started in servers:
                started.close()
            raise ConfigError(listen_error(hostport(bind, service.port), exc)) from None
        servers.append(server)
        log.info("forwarding %s to %s (%s)", hostport(bind, service.port), service.target,
                 service.name)  # fmt: skip
    return servers


class ForwardRole:
    """Forward mode's part in :func:`tunnel.operations.runner.serve`: the per-port listeners
    first, nothing to drain, no reload (the links are read once, at start)."""

    log = log
    drain_timeout = None

    def __init__(self, config: ServerConfig, bind: str) -> None:
        self.config = config
        self.bind = bind
        self._servers: list[asyncio.Server] = []
        self._started = time.monotonic()

    async def open(self, stop: Callable[[], None]) -> None:
        config = self.config
        self._servers = await start_forwarding(
            config.catalog, self.bind, config.dial_timeout, config.proxy_protocol
        )

    async def start(self) -> None:
        pass  # forwarding since open()

    async def drain(self, now: asyncio.Event) -> None:
        pass  # a forwarded connection ends with the process

    async def stop(self) -> None:
        for server in self._servers:
            server.close()

    def reload(self, new: ServerConfig) -> None:
        raise ConfigError("forward mode does not reload; restart to change the links")

    def status(self) -> dict[str, Any]:
        return forward_status(self.config, self._started)

    def ready(self) -> bool:
        return True

    def unready_reason(self) -> str:
        return ""


async def serve_forwarding(
    config: ServerConfig, bind: str, metrics: tuple[str, int] | None = None
) -> None:
    """Drop-in mode: per-port forwarding of every linked service until SIGINT or SIGTERM."""
    unchanged = Reload(lambda: config, lambda _: (), config)  # SIGHUP: says it does not reload
    await run_role(ForwardRole(config, bind), unchanged, metrics)


def forward_status(config: ServerConfig, started: float) -> dict[str, Any]:
    """The live state in forward mode (``started``: time.monotonic() then), for /status."""
    services = []
    for service in config.catalog:
        row = service_stats("forward", service.name)
        row["service"] = f"{service.full_name} -> {service.target}"
        services.append(row)
    return {"role": "ambassador-server", "pid": os.getpid(), "name": config.name,
            "mode": "forward",
            "uptime": round(time.monotonic() - started, 1), "ready": True,
            "sessions": [], "services": services}  # fmt: skip
