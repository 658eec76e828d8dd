"""The client role: keep the tunnel, expose its services on local ports, stop cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from client.config import ClientConfig
from client.connector import Connector
from client.listeners import ConsumerStream, Listeners
from client.sessions import Router, Sessions, member_for, status_fields
from client.tunnel_listener import TunnelListener
from client.udp_expose import UdpExposes
from tunnel.operations import metrics
from tunnel.operations.metrics import services as counted_services
from tunnel.operations.observe import service_stats
from tunnel.operations.runner import Reload
from tunnel.operations.runner import serve as run_role
from tunnel.operations.workers.channel import HelperChannel
from tunnel.operations.workers.handoff import serve_handed
from tunnel.operations.workers.pool import WorkerPool
from tunnel.operations.workers.report import helper_report
from tunnel.protocol.messages import ServiceInfo
from tunnel.security.auth import plaintext_warning
from tunnel.security.tls import not_after, warn_about_files

log = logging.getLogger("ambassador.client")


def check_own_certificate(config: ClientConfig) -> None:
    """The client's own certificate's expiry, for ambassador_certificate_expiry_days, and
    a warning if others may read its key (the token file is checked where it is read)."""
    own = config.tls.cert if config.tls is not None else None
    metrics.certificate_expires("client", "own", not_after(own) if own else None)
    warn_about_files(config.tls, None, datetime.now(UTC))


class Client:
    def __init__(self, config: ClientConfig, pool: WorkerPool | None = None) -> None:
        self.config = config
        # Servers dialing in, each a host; or one session, failing over between the remotes;
        # or, active-active, one to each.
        self.connector: Router | TunnelListener
        if config.listen is not None:
            self.connector = TunnelListener(config, on_catalog=self._catalog_changed)
        elif config.sessions == "all":
            self.connector = Sessions(config, on_catalog=self._catalog_changed)
        else:
            self.connector = Connector(config, on_catalog=self._catalog_changed)
        # ``pool``: helper processes, in the main one of several, to share connections with.
        self.listeners = Listeners(self.connector, config.expose, config.bind, pool, config.sockets)
        self.udp = UdpExposes(
            self.connector, config.expose, config.bind, config.udp_max_flows,
            config.udp_idle_timeout,
        )  # fmt: skip
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False
        self._stopping = False  # listeners closed: a catalog change must not bind them again
        self._born = time.monotonic()

    def track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        """Bind the fixed ports, start connecting, and bind the rest once the catalog is in."""
        check_own_certificate(self.config)
        await self.listeners.reconfigure(self.config.expose, self.config.bind, None)
        await self.udp.reconfigure(self.config.expose, self.config.bind, None)
        self._task = asyncio.get_running_loop().create_task(self.connector.run())
        # Fixed ports are bound already (consumers wait there while the tunnel comes up); the
        # first catalog binds the rest and says which exposed services the server lacks.
        catalog = await self._first_catalog()
        await self.listeners.reconfigure(self.config.expose, self.config.bind, catalog)
        await self.udp.reconfigure(self.config.expose, self.config.bind, catalog)
        self._started = True

    def _catalog_changed(self, catalog: tuple[ServiceInfo, ...] | None) -> None:
        if not self._started or self._stopping:
            # The first catalog is awaited in start(), which binds for it; once stopping, the
            # hosts of --listen going down one by one must not bind the closed listeners again
            # (a unix socket's file would outlive the client).
            return
        # Later catalogs (a reconnect, or the server's reload) rewire the listeners; a
        # service that disappeared only warns, it never stops the client.
        self.track(asyncio.get_running_loop().create_task(self.listeners.sync(catalog)))
        self.track(asyncio.get_running_loop().create_task(self.udp.sync(catalog)))

    @property
    def ready(self) -> bool:
        tunnel = self.connector.tunnel
        up = self._started and tunnel is not None and tunnel.accepts_streams
        return up and not self.listeners.missing and not self.udp.missing

    def unready_reason(self) -> str:
        """Why /readyz says not ready, when it is something the operator must fix."""
        missing = ", ".join(
            repr(service) for service in (*self.listeners.missing, *self.udp.missing)
        )
        return f"the server does not offer {missing}" if missing else ""

    def status(self) -> dict[str, Any]:
        """The live state, for /status and ``ambassador-client status``."""
        connector = self.connector
        mode: dict[str, Any] = {}
        if isinstance(connector, TunnelListener):
            remotes = connector.status_rows()
        else:
            remotes = remote_rows(connector)
            mode = status_fields(connector)
        services = []
        for listening in self.listeners.bound:
            row = service_stats("client", listening.service)
            row["service"] = f"{listening.service} on {listening.where}"
            services.append(row)
        return {
            "udp": self.udp.status(),
            "role": "ambassador-client",
            "pid": os.getpid(),
            "name": self.config.name,
            "uptime": round(time.monotonic() - self._born, 1),
            "ready": self.ready,
            "missing": list(self.listeners.missing),
            "remotes": remotes,
            **mode,
            "services": services,
        }  # fmt: skip

    async def reload(self, new: ClientConfig) -> None:
        """Take a new configuration: rewire listeners now, use new remotes and TLS from the
        next connection on. Open connections are untouched. A port that cannot be bound
        raises ConfigError before anything changed, so the running configuration stays."""
        catalog = self.connector.catalog
        # A reload names again what is still missing: the operator just asked.
        await self.listeners.reconfigure(
            new.expose, new.bind, catalog, remind=True, access=new.sockets
        )
        await self.udp.reconfigure(new.expose, new.bind, catalog)
        self.connector.reconfigure(new)
        self.config = new
        check_own_certificate(new)

    async def _first_catalog(self) -> tuple[ServiceInfo, ...] | None:
        assert self._task is not None
        catalog = asyncio.ensure_future(self.connector.wait_catalog())
        done, _ = await asyncio.wait((catalog, self._task), return_when=asyncio.FIRST_COMPLETED)
        if catalog not in done:
            catalog.cancel()
            self._task.result()  # raises what stopped the connector
        return catalog.result()

    async def stop(self) -> None:
        self._stopping = True
        await self.listeners.close()
        self.udp.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        tunnel = self.connector.tunnel
        if tunnel is not None and isinstance(self.connector, Connector):
            tunnel.close("client shutting down")


def remote_rows(router: Router) -> list[dict[str, Any]]:
    """A row per --remote, for /status."""
    remotes = []
    for remote in router.config.remotes:
        connector = member_for(router, remote)
        row: dict[str, Any] = {
            "peer": str(remote),
            "state": "down",
            "rtt_ms": None,
            "streams": 0,
            "bytes_in": 0,
            "bytes_out": 0,
            "last_error": "",
            "last_error_at": None,
        }
        tunnels = [t for t in connector.draining if t.peer == str(remote)]
        if connector.remote == remote and connector.tunnel is not None:
            tunnels.insert(0, connector.tunnel)
            row["state"] = "up"
        elif tunnels:
            row["state"] = "draining"
        else:
            row["last_error"] = connector.errors.get(remote, "")
            row["last_error_at"] = connector.error_times.get(remote)
        for tunnel in tunnels:
            stats = tunnel.session.stats()
            row["streams"] += stats.open_streams
            row["bytes_in"] += stats.bytes_received
            row["bytes_out"] += stats.bytes_sent
            if stats.rtt is not None:
                row["rtt_ms"] = stats.rtt * 1000
        remotes.append(row)
    return remotes


class ClientRole:
    """The client's part in :func:`tunnel.operations.runner.serve`: nothing to bind before
    the status endpoint, a start that waits for the first catalog, no drain."""

    log = log
    drain_timeout = None

    def __init__(self, client: Client) -> None:
        self.client = client

    async def open(self, stop: Callable[[], None]) -> None:
        pass

    async def start(self) -> None:
        await self.client.start()

    async def drain(self, now: asyncio.Event) -> None:
        pass  # a consumer's connection ends with the client

    async def stop(self) -> None:
        await self.client.stop()

    def reload(self, new: ClientConfig) -> Awaitable[None] | None:
        return self.client.reload(new)

    def status(self) -> dict[str, Any]:
        return self.client.status()

    def ready(self) -> bool:
        return self.client.ready

    def unready_reason(self) -> str:
        return self.client.unready_reason()


class ClientHelperRole(ClientRole):
    """A helper of a main client process: a tunnel of its own, serving the consumer
    connections the main process hands over (its listeners are never bound)."""

    def __init__(self, client: Client, channel: int) -> None:
        super().__init__(client)
        self._channel = channel
        self._link: HelperChannel | None = None
        self._running: asyncio.Task[None] | None = None

    async def open(self, stop: Callable[[], None]) -> None:
        client, loop = self.client, asyncio.get_running_loop()

        def take(sock: socket.socket, service: str) -> None:
            assert not isinstance(client.connector, TunnelListener)  # helpers serve --remote only
            here = functools.partial(ConsumerStream, client.connector, service)
            client.track(loop.create_task(serve_handed(sock, here)))

        def report() -> dict[str, Any]:
            status = client.status()
            services = counted_services("client")
            status["services"] = [service_stats("client", name) for name in services]
            return helper_report(status)

        self._link = HelperChannel(self._channel, take, report, stop, "client")
        self._link.install()

    async def start(self) -> None:
        self._running = asyncio.get_running_loop().create_task(self.client.connector.run())

    def reload(self, new: ClientConfig) -> None:
        self.client.connector.reconfigure(new)

    async def stop(self) -> None:
        if self._link is not None:
            self._link.close()
        if self._running is not None:
            self._running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._running
        tunnel = self.client.connector.tunnel
        if tunnel is not None:
            tunnel.close("client shutting down")


async def serve(
    config: ClientConfig,
    load: Callable[[], ClientConfig] | None = None,
    files: Callable[[ClientConfig], Iterable[str | None]] | None = None,
    metrics: tuple[str, int] | None = None,
    pool: WorkerPool | None = None,
) -> None:
    """Run the client until SIGINT or SIGTERM; reload on SIGHUP and changed files.

    ``pool`` (its helper processes, not started yet) makes this the main process of
    several: it accepts every consumer connection and hands some to its helpers.
    """
    client = Client(config, pool)
    if config.tls is None and config.token is not None:
        hosts = [remote.host for remote in config.remotes]
        warning = plaintext_warning([config.listen.host] if config.listen else hosts)
        if warning is not None:
            log.warning("%s", warning)
    await run_role(ClientRole(client), _reload(config, load, files), metrics, pool)


async def serve_helper(
    config: ClientConfig,
    channel: int,
    load: Callable[[], ClientConfig] | None = None,
    files: Callable[[ClientConfig], Iterable[str | None]] | None = None,
) -> None:
    """Run as a helper of a main client process: keep a tunnel of its own and serve the
    consumer connections the main process hands over, until SIGTERM or the main one is gone."""
    role = ClientHelperRole(Client(config), channel)
    await run_role(role, _reload(config, load, files))


def _reload(
    config: ClientConfig,
    load: Callable[[], ClientConfig] | None,
    files: Callable[[ClientConfig], Iterable[str | None]] | None,
) -> Reload[ClientConfig] | None:
    return None if load is None or files is None else Reload(load, files, config)
