"""The pooled services of a running server: their balancers, checkers and resolvers.

Theory of operation. A service is pooled when its link lists several targets or a
``dns:HOST:PORT`` member, or when it has a ``--health-check``; any other link is dialed as it
always was, without passing through here. Each pooled service gets a :class:`Pool`: a
:class:`~server.balancer.Balancer` (the decisions, sans-IO) and, as asyncio tasks, a health
checker (with ``--health-check``) and a resolver for each ``dns:`` member (every
``--resolve-interval`` seconds, and at once when every address of the name has failed a dial).
A name that stops resolving keeps its last addresses, with one warning until it resolves again.

A stream's dial (:func:`Pool.connect`) asks the balancer for a target, dials it and, when that
fails, ejects it and tries the next one the balancer offers, within the stream's dial timeout;
when no target is left the stream is refused at once with the balancer's reason. A reload
(:meth:`Pools.reconfigure`) keeps the pool, and its targets' states, of every service whose
link and settings did not change; a changed pool is replaced, and the streams open to the old
one finish there (they hold it), so a reload never drops them.

Per-target counts are exported as ``ambassador_backend_target_*`` series labelled with the
service and the target (addresses from our configuration or from the resolver, at most
:data:`~tunnel.settings.links._MAX_MEMBERS` members and :data:`MAX_ADDRESSES` addresses each).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from server.balancer import Balancer
from server.health import probe
from tunnel.errors import Reason, TunnelError
from tunnel.operations.metrics import REGISTRY
from tunnel.operations.oserrors import dial_error
from tunnel.protocol.peertext import shown
from tunnel.settings.links import Address, AllAddresses, Catalog, Endpoint, Member, Service
from tunnel.settings.pooling import PoolSettings

log = logging.getLogger("ambassador.server")
MAX_ADDRESSES = 32  # of one dns: member: bounds the targets, series and status rows it adds
RESOLVE_INTERVAL = 30.0
_NO_SETTINGS = PoolSettings()
# loop.getaddrinfo's shape: (host, port, type=...) to (family, type, proto, name, sockaddr)s.
Resolver = Callable[..., Awaitable[list[tuple[Any, ...]]]]


class NoTarget(TunnelError):
    """Every target of a pool is ejected or down: the stream is refused at once."""

    reason = Reason.BACKEND_UNREACHABLE


class Pool:
    """One pooled service: its balancer, and the tasks that check and resolve its targets."""

    def __init__(
        self,
        service: Service,
        settings: PoolSettings,
        resolve_interval: float,
        resolver: Resolver | None = None,
    ) -> None:
        self.service = service
        self.resolver = resolver  # None: the loop's getaddrinfo (the system's resolver)
        self.settings = settings
        self.resolve_interval = resolve_interval
        # A dns: member stands for its host name (dialed as is) until it has resolved.
        self.addresses: dict[AllAddresses, list[Endpoint]] = {
            member: [member.address]
            for member in service.members
            if isinstance(member, AllAddresses)
        }
        keys = [k for member in service.members for k in self._expand(member)]
        self.balancer = Balancer(service.name, keys, settings.strategy, settings.check)
        self.dial_failures: dict[Endpoint, int] = {}
        self._unresolved: set[AllAddresses] = set()  # warned about, until they resolve again
        self._resolve_now = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def _expand(self, member: Member) -> list[Endpoint]:
        return self.addresses[member] if isinstance(member, AllAddresses) else [member]

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.settings.check is not None:
            self._tasks.append(loop.create_task(self._check_forever()))
        if self.addresses:
            self._tasks.append(loop.create_task(self._resolve_forever()))

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()

    async def connect(
        self,
        loop: asyncio.AbstractEventLoop,
        protocol: Callable[[], asyncio.BaseProtocol],
        timeout: float,
        chosen: Callable[[Endpoint], None],
    ) -> Endpoint:
        """Connect ``protocol`` to a target, trying the next on failure; NoTarget when none
        is left. ``chosen`` is told each target before it is dialed."""
        tried: list[Endpoint] = []
        while True:
            picked = self.balancer.choose(loop.time(), tried)
            if isinstance(picked, str):
                raise NoTarget(picked)
            target: Endpoint = picked  # type: ignore[assignment]
            chosen(target)
            tried.append(target)
            # A target that hangs may not take the whole timeout while another could answer.
            left = len(self.balancer.targets) - len(tried)
            try:
                async with asyncio.timeout(timeout / 2 if left else None):
                    if isinstance(target, Address):
                        await loop.create_connection(protocol, target.host, target.port)
                    else:
                        await loop.create_unix_connection(protocol, target.path)
            except (OSError, TimeoutError) as exc:
                self.failed(target, exc, timeout / 2)
                continue
            return target

    def failed(self, target: Endpoint, exc: BaseException, timeout: float) -> None:
        _, text = dial_error(target, exc, timeout)
        self.balancer.dial_failed(target, text, asyncio.get_running_loop().time())
        self.dial_failures[target] = self.dial_failures.get(target, 0) + 1
        for member, addresses in self.addresses.items():
            if target in addresses and all(self._ejected(a) for a in addresses):
                self._resolve_now.set()  # every address of the name failed: ask again
                log.debug("resolving %s again: every address failed", member)

    def _ejected(self, key: Endpoint) -> bool:
        now = asyncio.get_running_loop().time()
        return any(t.key == key and t.state(now) != "healthy" for t in self.balancer.targets)

    def opened(self, target: Endpoint) -> None:
        self.balancer.opened(target)

    def closed(self, target: Endpoint) -> None:
        self.balancer.closed(target)

    async def _check_forever(self) -> None:
        check = self.settings.check
        assert check is not None
        while True:
            targets = [t.key for t in self.balancer.targets]
            results = await asyncio.gather(*(probe(t, check) for t in targets))  # type: ignore[arg-type]
            for target, error in zip(targets, results, strict=True):
                if self.balancer.checked(target, error):
                    if error is None:
                        log.info(
                            "%s target %s is back: its health checks pass",
                            self.service.name,
                            target,
                        )
                    else:
                        log.warning(
                            "%s target %s is down: %s; streams go to the other targets",
                            self.service.name, target, error,
                        )  # fmt: skip
            await asyncio.sleep(check.interval)

    async def _resolve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            for member in list(self.addresses):
                await self._resolve(loop, member)
            try:
                async with asyncio.timeout(self.resolve_interval):
                    await self._resolve_now.wait()
                # At most once a second, however often dials fail.
                await asyncio.sleep(1.0)
            except TimeoutError:
                pass
            self._resolve_now.clear()

    async def _resolve(self, loop: asyncio.AbstractEventLoop, member: AllAddresses) -> None:
        host, port = member.address.host, member.address.port
        try:
            resolve = self.resolver or loop.getaddrinfo
            infos = await resolve(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            if member not in self._unresolved:
                self._unresolved.add(member)
                log.warning(
                    "%s: %s no longer resolves (%s); keeping its last addresses %s",
                    self.service.name, member, shown(str(exc)),
                    ", ".join(str(a) for a in self.addresses[member]),
                )  # fmt: skip
            return
        if member in self._unresolved:
            self._unresolved.discard(member)
            log.info("%s: %s resolves again", self.service.name, member)
        found = list(dict.fromkeys(Address(str(info[4][0]), port) for info in infos))[
            :MAX_ADDRESSES
        ]
        if not found or found == self.addresses[member]:
            return
        self.balancer.replace(self.addresses[member], found)
        self.addresses[member] = list(found)

    def rows(self) -> list[dict[str, Any]]:
        """A status row per target."""
        now = asyncio.get_running_loop().time()
        return [
            {
                "target": str(t.key),
                "state": t.state(now),
                "open": t.open,
                "opened": t.opened,
                "last_error": t.last_error,
            }
            for t in self.balancer.targets
        ]


class Pools:
    """Every pooled service of the server's catalog (see the module's theory)."""

    def __init__(self, resolve_interval: float = RESOLVE_INTERVAL) -> None:
        self.resolve_interval = resolve_interval
        self.pools: dict[Service, Pool] = {}
        self._running = False

    def get(self, service: Service) -> Pool | None:
        return self.pools.get(service)

    def reconfigure(
        self, catalog: Catalog, settings: Mapping[Service, PoolSettings], resolve_interval: float
    ) -> None:
        """The pools of a new catalog: unchanged ones kept, their state with them."""
        self.resolve_interval = resolve_interval
        fresh: dict[Service, Pool] = {}
        for service in catalog:
            wanted = settings.get(service, _NO_SETTINGS)
            if not service.pool and wanted.check is None:
                continue
            old = self.pools.pop(service, None)
            if (
                old is not None
                and old.settings == wanted
                and old.resolve_interval == resolve_interval
            ):
                fresh[service] = old
                continue
            if old is not None:
                old.stop()
            fresh[service] = pool = Pool(service, wanted, resolve_interval)
            if self._running:
                pool.start()
        for gone in self.pools.values():
            gone.stop()
        self.pools = fresh

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        _COLLECTOR.sources.append(self)
        for pool in self.pools.values():
            pool.start()

    def stop(self) -> None:
        self._running = False
        for pool in self.pools.values():
            pool.stop()
        if self in _COLLECTOR.sources:
            _COLLECTOR.sources.remove(self)


class _TargetCollector(Collector):
    """Per-target series, read from the pools when metrics are scraped."""

    def __init__(self) -> None:
        self.sources: list[Pools] = []

    def collect(self) -> Iterator[Any]:
        labels = ["service", "target"]
        opened = CounterMetricFamily(
            "ambassador_backend_target_streams", "Streams given to a pool's target", labels=labels
        )
        open_now = GaugeMetricFamily(
            "ambassador_backend_target_streams_open",
            "Streams open to a pool's target",
            labels=labels,
        )
        failures = CounterMetricFamily(
            "ambassador_backend_target_dial_failures",
            "Failed dials to a pool's target",
            labels=labels,
        )
        healthy = GaugeMetricFamily(
            "ambassador_backend_target_healthy",
            "1 when a pool's target may be given streams (not ejected, not down)",
            labels=labels,
        )
        try:
            now = asyncio.get_running_loop().time()
        except RuntimeError:  # scraped from another thread: states as of any time will do
            now = 0.0
        for source in list(self.sources):
            for pool in list(source.pools.values()):
                for target in list(pool.balancer.targets):
                    names = [pool.service.name, shown(str(target.key))]
                    opened.add_metric(names, target.opened)
                    open_now.add_metric(names, target.open)
                    failures.add_metric(names, pool.dial_failures.get(target.key, 0))  # type: ignore[call-overload]
                    healthy.add_metric(names, 1 if target.state(now) == "healthy" else 0)
        yield from (opened, open_now, failures, healthy)


_COLLECTOR = _TargetCollector()
REGISTRY.register(_COLLECTOR)
