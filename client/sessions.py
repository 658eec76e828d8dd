"""Active-active: one session to every remote at once, new streams spread across them.

With ``sessions = "all"`` the client keeps a :class:`~client.connector.Connector` per remote,
each with that one remote, so each reconnects, backs off, probes and drains on its own exactly
as a single session does. :class:`Sessions` stands where the Connector stands for the
listeners and the status page, and adds one step: :func:`route` picks, for each new consumer,
the member whose session opens its stream.

Routing. A member is healthy when its session is up, takes streams and is not being probed
(``suspect``: silent past the liveness deadline). Of the healthy members whose catalog offers
the service, the policy (``spread``) picks: ``least-streams`` (the default: the session with
the fewest open streams, ties in turn), ``round-robin``, or ``in-order`` (the first remote
listed that is healthy: the others are hot standbys). Least open streams is the default
because it also steers away from a server that has stopped answering before the probe has
found it: its streams never finish, so its count only grows.

The catalog is the union of the members' catalogs (the last each announced, kept while it is
down), so a service only one server links is exposed too, and its consumers are routed only to
the sessions that offer it. When none of those is healthy, a consumer waits (up to
``link_wait_timeout``) as it would for a single tunnel; it is refused only when no member ever
offered the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import weakref
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from prometheus_client import Metric
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from client.config import ClientConfig
from client.connector import Connector, find_service
from client.hosts import HostLink
from tunnel.aio.transport import TunnelConnection
from tunnel.operations import metrics
from tunnel.protocol.messages import ServiceInfo
from tunnel.settings.links import Address

SPREADS = ("least-streams", "round-robin", "in-order")
RETIRE_WAIT = 60.0  # seconds a removed remote's open streams may take to finish


def healthy(tunnel: TunnelConnection | None) -> bool:
    return tunnel is not None and tunnel.accepts_streams and not tunnel.suspect


class Sessions:
    """A Connector per remote, and the union of their catalogs."""

    def __init__(
        self,
        config: ClientConfig,
        on_catalog: Callable[[tuple[ServiceInfo, ...]], None] | None = None,
    ) -> None:
        self.config = config
        self.on_catalog = on_catalog
        self.members: dict[Address, Connector] = {}
        self.catalog: tuple[ServiceInfo, ...] | None = None
        self._turn = itertools.count()
        self._changed = asyncio.Event()  # set when a member comes up or its catalog changes
        self._tasks: dict[Address, asyncio.Task[None]] = {}
        self._running = False
        for remote in config.remotes:
            self._add(remote)
        _COLLECTOR.sessions.add(self)

    # -- what the listeners and the status page ask of a connector --------------------------

    @property
    def tunnel(self) -> TunnelConnection | None:
        """A healthy session, if any (readiness)."""
        for member in self.members.values():
            if healthy(member.tunnel):
                return member.tunnel
        return None

    @property
    def draining(self) -> set[TunnelConnection]:
        return {t for member in self.members.values() for t in member.draining}

    @property
    def identity(self) -> str:
        return next((m.identity for m in self.members.values() if m.identity), "")

    @property
    def stream_header(self) -> int:
        member = self.route("")
        return member.stream_header if member is not None else 1

    @property
    def last_error(self) -> str:
        errors = [m.last_error for m in self.members.values() if m.last_error]
        return "; ".join(errors)

    def offers(self, service: str, transport: str = "tcp") -> bool:
        catalog = self.catalog
        return catalog is None or find_service(catalog, service, transport) is not None

    def rotate_if_exhausted(self, tunnel: TunnelConnection) -> None:
        for member in self.members.values():
            member.rotate_if_exhausted(tunnel)

    async def wait_tunnel(self, timeout: float) -> TunnelConnection | None:
        member = await self.wait_route("", timeout)
        return member.tunnel if member is not None else None

    async def wait_catalog(self) -> tuple[ServiceInfo, ...]:
        while self.catalog is None:
            self._changed.clear()
            await self._changed.wait()
        return self.catalog

    # -- routing ------------------------------------------------------------------------------

    def route(self, service: str, transport: str = "tcp") -> Connector | None:
        """The member a new stream (or UDP flow, ``transport`` "udp") to ``service`` opens on
        (any healthy one for ""), or None while no healthy member offers it. A service no
        member ever offered goes to any healthy member, whose catalog then refuses it in one
        line."""
        up = [m for m in self.members.values() if healthy(m.tunnel)]
        if not up:
            return None
        if service:
            offering = [m for m in up if m.catalog is not None and m.offers(service, transport)]
            if not offering:
                return None if self.offers(service, transport) else up[0]
            up = offering
        spread = self.config.spread
        if spread == "in-order" or len(up) == 1:
            return up[0]
        turn = next(self._turn) % len(up)
        up = up[turn:] + up[:turn]
        if spread == "round-robin":
            return up[0]
        return min(up, key=lambda m: m.tunnel.session.open_streams if m.tunnel else 0)

    async def wait_route(
        self, service: str, timeout: float, transport: str = "tcp"
    ) -> Connector | None:
        """:meth:`route` once it has an answer, or None after ``timeout`` seconds."""
        member = self.route(service, transport)
        if member is not None:
            return member
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while member is None:
                    self._changed.clear()
                    # A probed session clears without a catalog: look again now and then.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.05):
                            await self._changed.wait()
                    member = self.route(service, transport)
        return member

    # -- running --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Keep a session up to every remote until cancelled; then close them all."""
        self._running = True
        try:
            for remote in self.members:
                self._start(remote)
            await asyncio.Event().wait()
        finally:
            self._running = False
            for task in self._tasks.values():
                task.cancel()
            for member in self.members.values():
                if member.tunnel is not None:
                    member.tunnel.close("client shutting down")

    def reconfigure(self, config: ClientConfig) -> None:
        """New remotes: sessions to the new ones open, removed ones drain; the rest carry on
        with the new settings from their next connection."""
        self.config = config
        for remote in [r for r in self.members if r not in config.remotes]:
            self._retire(remote)
        for remote in config.remotes:
            if remote in self.members:
                self.members[remote].reconfigure(replace(config, remotes=(remote,)))
            else:
                self._add(remote)
                if self._running:
                    self._start(remote)
        self._catalog_changed(())

    def _add(self, remote: Address) -> None:
        member = Connector(replace(self.config, remotes=(remote,)), self._catalog_changed)
        self.members[remote] = member

    def _start(self, remote: Address) -> None:
        self._tasks[remote] = asyncio.get_running_loop().create_task(self.members[remote].run())

    def _retire(self, remote: Address) -> None:
        member = self.members.pop(remote)
        tunnel = member.tunnel
        if tunnel is not None and tunnel.on_go_away is not None:
            tunnel.on_go_away()  # ends the connector's wait for its session before it stops
        task = self._tasks.pop(remote, None)
        if task is not None:
            task.cancel()
        if tunnel is not None and tunnel.is_open:
            tunnel.go_away()  # no new streams; the open ones finish, then it closes
            asyncio.get_running_loop().create_task(_close_when_idle(tunnel))

    def _catalog_changed(self, _: tuple[ServiceInfo, ...]) -> None:
        """A member came up or its server changed its catalog: the union may have changed."""
        self._changed.set()
        known = [m.catalog for m in self.members.values() if m.catalog is not None]
        if not known:
            return
        union = tuple(dict.fromkeys(info for catalog in known for info in catalog))
        if union != self.catalog:
            self.catalog = union
            if self.on_catalog is not None:
                self.on_catalog(union)


async def _close_when_idle(tunnel: TunnelConnection) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(RETIRE_WAIT):
            while tunnel.is_open and tunnel.session.open_streams > 1:  # the control stream
                await asyncio.sleep(0.5)
    tunnel.close("no longer a remote")


Router = Connector | Sessions
# One link to one server, that a stream opens on: a session's connector, or, for a listening
# client, the link to the host a HOST/SERVICE names (it answers the same questions).
Link = Connector | HostLink


def route(router: Router | HostLink, service: str, transport: str = "tcp") -> Link | None:
    """The link a new stream (or UDP flow) to ``service`` opens on: the one connector of a
    single session or a host's link, while healthy, or a member of several that offers it."""
    if isinstance(router, Sessions):
        return router.route(service, transport)
    return router if healthy(router.tunnel) else None


async def wait_route(
    router: Router | HostLink, service: str, timeout: float, transport: str = "tcp"
) -> Link | None:
    if isinstance(router, Sessions):
        return await router.wait_route(service, timeout, transport)
    return router if await router.wait_tunnel(timeout) is not None else None


def member_for(router: Router, remote: Address) -> Connector:
    """The connector that keeps the session to ``remote``."""
    if isinstance(router, Sessions):
        return router.members[remote]
    return router


def refusal(router: Router | HostLink) -> str:
    """Why the server refused this client, while it does: its consumers are refused at once.
    Active-active never says so: another remote may take them, so they wait as when down."""
    if isinstance(router, Sessions):
        return ""
    return router.refusal


class _SessionCollector(Collector):
    """Each active-active session by remote: whether it takes new streams, and its open
    streams (the control stream not counted)."""

    def __init__(self) -> None:
        self.sessions: weakref.WeakSet[Sessions] = weakref.WeakSet()

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "ambassador_client_session_up",
            "1 while the session to this remote takes new streams (active-active)",
            labels=["remote"],
        )
        streams = GaugeMetricFamily(
            "ambassador_client_session_streams",
            "Streams open on the session to this remote (active-active)",
            labels=["remote"],
        )
        for sessions in list(self.sessions):
            for remote, member in list(sessions.members.items()):
                tunnel = member.tunnel
                up.add_metric([str(remote)], 1.0 if healthy(tunnel) else 0.0)
                count = max(0, tunnel.session.open_streams - 1) if tunnel is not None else 0
                streams.add_metric([str(remote)], float(count))
        yield up
        yield streams

    def describe(self) -> Iterator[Metric]:
        return iter(())


_COLLECTOR = _SessionCollector()
metrics.REGISTRY.register(_COLLECTOR)


def status_fields(router: Router) -> dict[str, Any]:
    """What /status says of the mode: how many sessions at once, and how streams spread."""
    if isinstance(router, Sessions):
        return {"session_mode": "all", "spread": router.config.spread}
    return {"session_mode": "1"}
