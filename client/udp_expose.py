"""The client's UDP ports: one socket per exposed UDP service, one flow per source address.

Each source address (ip, port) that sends to an exposed UDP port becomes a flow on a stream of
its own (``tunnel.protocol.datagrams``): the flow header and the first datagram leave at once,
without waiting for the server. Answers come back on the stream and are sent to that source
from the same socket, so a consumer sees the service as if it were local.

What a flood of sources or datagrams can cost is bounded: at most ``udp_max_flows`` flows per
expose (a datagram from a new source beyond that is dropped and counted), flows idle for
``udp_idle_timeout`` seconds end, and a datagram that finds its stream without window or its
queue full is dropped and counted, never queued without bound.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, cast

from client.connector import find_service
from client.hosts import HostLink, split_service
from client.listeners import choose_service, other_transport
from client.sessions import Link, Router, route, wait_route
from client.tunnel_listener import TunnelListener
from tunnel.aio.flowstream import FlowStream
from tunnel.aio.transport import TunnelConnection
from tunnel.errors import ConfigError, RemoteProtocolError
from tunnel.operations import metrics
from tunnel.operations.datagram_meters import flow_meters
from tunnel.operations.logonce import Throttled
from tunnel.operations.oserrors import listen_error
from tunnel.protocol.datagrams import encode_flow_header
from tunnel.protocol.flows import FlowTable
from tunnel.protocol.messages import ServiceInfo, StreamAnswerParser
from tunnel.protocol.peertext import quoted, shown
from tunnel.settings.links import ExposeSpec
from tunnel.settings.wording import hostport

log = logging.getLogger("ambassador.client")
throttled = Throttled(log)

SOCKET_HIGH_WATER = 256 * 1024  # bytes the local socket may hold unsent before answers drop
Source = tuple[Any, ...]  # a consumer's socket address: (host, port) or (host, port, flow, scope)


class ConsumerFlow(FlowStream):
    """One source address's flow."""

    def __init__(self, expose: UdpExpose, tunnel: TunnelConnection, source: Source) -> None:
        super().__init__(tunnel, expose.meters, "client")
        self.expose = expose
        self.source = source
        self.service = expose.service
        self._answer = StreamAnswerParser()

    def start(self, first: bytes) -> bool:
        """Open the stream and send the header and the first datagram; False if the session
        stopped taking streams."""
        try:
            self.stream_id = self.tunnel.open_stream(self)
        except Exception:  # the session stopped taking streams a moment ago
            return False
        self.tunnel.send(self.stream_id, encode_flow_header(self.service))
        if self.send_datagram(first):
            self.meters.datagrams_to_backend += 1
        return True

    def on_preamble(self, data: bytes | bytearray) -> bytes | bytearray:
        try:
            answer, rest = self._answer.feed(data)
        except RemoteProtocolError as exc:
            self.broken(f"bad answer from the server: {exc}")
            return b""
        if answer is None:
            return b""
        if not answer.ok:
            throttled.warning(
                f"refused:{self.service}:{answer.reason.label}",
                "UDP flow to %r refused by the server (%s): %s",
                self.service,
                answer.reason.label,
                shown(answer.text),
            )
            metrics.refused("client", self.service, answer.reason.label)
            self.meters.drop("refused")
            self.close()  # the server's RST follows
            return b""
        self.preamble = False
        return rest

    def on_datagram(self, payload: bytes) -> None:
        self.expose.answer(self, payload)

    def expire(self) -> None:
        """Idle too long: end the stream (a FIN, which the server answers with its own)."""
        if self.closed:
            return
        self.meters.flows_expired += 1
        if self.stream_id is not None:
            self.tunnel.end(self.stream_id)
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.meters.flows_open -= 1
        self.expose.forget(self)


class UdpExpose(asyncio.DatagramProtocol):
    """One exposed UDP port and its flows."""

    def __init__(
        self,
        connector: Router | TunnelListener,
        refs: tuple[str, ...],
        max_flows: int,
        idle_timeout: float,
    ) -> None:
        self.connector = connector
        self.refs = refs
        self.service = refs[0]
        self.meters = flow_meters("client", self.service)
        self.flows: FlowTable[Source, ConsumerFlow] = FlowTable(max_flows, idle_timeout)
        self.transport: asyncio.DatagramTransport | None = None
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        # Sources whose first datagram waits for a session that offers the service.
        self._pending: dict[Source, asyncio.Task[None]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport is not a subclass of asyncio's, but has its methods.
        transport = cast(asyncio.DatagramTransport, transport)
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Source) -> None:
        now = self._loop.time()
        flow = self.flows.get(addr)
        if flow is None:
            self._new_flow(addr, data, now)
            return
        self.flows.touch(addr, now)
        if flow.send_datagram(data):
            self.meters.datagrams_to_backend += 1

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error about a consumer that went away: its flow will go idle

    def _new_flow(self, addr: Source, data: bytes, now: float) -> None:
        connector: Router | HostLink | Link
        refs = self.refs
        if isinstance(self.connector, TunnelListener):
            # A listening client's flow goes to the host its service names (HOST/SERVICE),
            # which knows the service by its own name.
            connector, _ = self.connector.route(self.refs[0])
            refs = tuple(split_service(ref)[1] for ref in refs)
        else:
            # As a TCP stream does: to a session whose server offers the service (with
            # --sessions all, of those up), or, while none is, after waiting for one.
            router = self.connector
            name = self._routed_name(router)
            link = route(router, name, "udp")
            if link is None:
                self._wait_for_route(router, name, addr, data)
                return
            connector = link
        self._start(connector, refs, addr, data, now)

    def _routed_name(self, router: Router) -> str:
        """The name a flow is routed by: the first of the expose's names that the catalog
        (with several sessions, the union of theirs) offers over UDP."""
        catalog = router.catalog
        chosen = choose_service(catalog, self.refs, "udp") if catalog is not None else None
        return chosen or self.refs[0]

    def _wait_for_route(self, router: Router, name: str, addr: Source, data: bytes) -> None:
        if addr in self._pending:
            self._drop("no_tunnel", "its flow waits for a session that offers it")
            return
        if len(self._pending) + len(self.flows) >= self.flows.max_flows:
            metrics.LIMIT_HITS.labels("udp_max_flows").inc()
            self._drop("too_many_flows", f"{self.flows.max_flows} flows are open (--udp-max-flows)")
            return
        # The first datagram waits with it (one per source: the rest are dropped meanwhile).
        task = self._loop.create_task(self._wait_then_start(router, name, addr, data))
        self._pending[addr] = task

    async def _wait_then_start(self, router: Router, name: str, addr: Source, data: bytes) -> None:
        timeout = router.config.link_wait_timeout
        try:
            link = await wait_route(router, name, timeout, "udp")
        finally:
            self._pending.pop(addr, None)
        if self.transport is None or self.transport.is_closing():
            return
        if link is None:
            why = router.last_error or "connecting"
            self._drop("no_tunnel", f"no session offering it came up in {timeout:g}s ({why})")
            return
        self._start(link, self.refs, addr, data, self._loop.time())

    def _start(
        self,
        connector: Router | HostLink | Link,
        refs: tuple[str, ...],
        addr: Source,
        data: bytes,
        now: float,
    ) -> None:
        tunnel = connector.tunnel
        if tunnel is None or not tunnel.accepts_streams:
            self._drop("no_tunnel", f"the tunnel is down ({connector.last_error or 'connecting'})")
            return
        catalog = connector.catalog
        if catalog is not None:
            chosen = choose_service(catalog, refs, "udp")
            if chosen is None:
                self._drop("not_offered", "the server does not offer it as a UDP service")
                return
            self.service = chosen
        if self.flows.full:
            metrics.LIMIT_HITS.labels("udp_max_flows").inc()
            self._drop("too_many_flows", f"{self.flows.max_flows} flows are open (--udp-max-flows)")
            return
        flow = ConsumerFlow(self, tunnel, addr)
        if not flow.start(data):
            self._drop("no_tunnel", "the session stopped taking streams")
            return
        self.flows.add(addr, flow, now)
        self.meters.flows_opened += 1
        self.meters.flows_open += 1
        if self._timer is None:
            self._arm()

    def _drop(self, reason: str, why: str) -> None:
        self.meters.drop(reason)
        throttled.warning(
            f"client:{self.service}:{reason}",
            "client: UDP datagram of %r dropped (%s): %s",
            self.service,
            reason,
            why,
        )

    def answer(self, flow: ConsumerFlow, payload: bytes) -> None:
        """A datagram from the server for ``flow``'s source."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self.flows.touch(flow.source, self._loop.time())
        unsent: int = getattr(transport, "get_write_buffer_size", lambda: 0)()
        if unsent > SOCKET_HIGH_WATER:
            self._drop("socket_full", "the local socket's send buffer is full")
            return
        transport.sendto(payload, flow.source)
        self.meters.datagrams_to_consumer += 1

    def forget(self, flow: ConsumerFlow) -> None:
        if self.flows.get(flow.source) is flow:
            self.flows.remove(flow.source)

    def _arm(self) -> None:
        when = self.flows.next_expiry()
        self._timer = None if when is None else self._loop.call_at(when, self._expire)

    def _expire(self) -> None:
        for _, flow in self.flows.expired(self._loop.time()):
            flow.expire()
        self._arm()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in self._pending.values():
            task.cancel()
        self._pending.clear()
        for flow in self.flows.flows():
            if flow.stream_id is not None and not flow.closed:
                flow.tunnel.end(flow.stream_id)
            flow.close()
        if self.transport is not None:
            self.transport.close()


@dataclass(frozen=True, slots=True)
class UdpBound:
    spec: ExposeSpec
    host: str
    port: int
    expose: UdpExpose


Key = tuple[str, int, str]


class UdpExposes:
    """The UDP sockets, one per exposed UDP service (or per UDP service of the catalog, when
    nothing is exposed explicitly); :meth:`reconfigure` binds what is new and closes what is
    no longer wanted, as :class:`client.listeners.Listeners` does for TCP."""

    def __init__(
        self,
        connector: Router | TunnelListener,
        specs: tuple[ExposeSpec, ...],
        bind: str,
        max_flows: int,
        idle_timeout: float,
    ) -> None:
        self.connector = connector
        self.specs = specs
        self.bind = bind
        self.max_flows = max_flows
        self.idle_timeout = idle_timeout
        self._bound: dict[Key, UdpBound] = {}
        self.missing: tuple[str, ...] = ()

    @property
    def bound(self) -> list[UdpBound]:
        return list(self._bound.values())

    def wanted(
        self, catalog: tuple[ServiceInfo, ...] | None, specs: tuple[ExposeSpec, ...], bind: str
    ) -> tuple[dict[Key, tuple[ExposeSpec, tuple[str, ...]]], list[str]]:
        wanted: dict[Key, tuple[ExposeSpec, tuple[str, ...]]] = {}
        missing: list[str] = []
        if not specs:
            for info in catalog or ():
                # A UDP entry always has a port (only a unix socket, a stream, goes without).
                if info.transport == "udp" and info.port is not None:
                    ref = (
                        info.name
                        if find_service(catalog or (), info.name, "udp")
                        else (f"{info.alias}:{info.port}")
                    )
                    spec = ExposeSpec(None, info.port, ref, transport="udp")
                    wanted[(bind, info.port, ref)] = (spec, (ref,))
            return wanted, missing
        for spec in specs:
            if spec.transport != "udp":
                continue
            refs, port, found = spec.refs, spec.port, None
            if catalog is not None:
                chosen = choose_service(catalog, refs, "udp")
                if chosen is None:
                    missing.append(spec.service)
                else:
                    found, refs = find_service(catalog, chosen, "udp"), (chosen,)
            if port is None:
                if found is None or found.port is None:
                    continue
                port = found.port
            wanted[(spec.bind or bind, port, spec.service)] = (spec, refs)
        return wanted, missing

    async def reconfigure(
        self, specs: tuple[ExposeSpec, ...], bind: str, catalog: tuple[ServiceInfo, ...] | None
    ) -> None:
        """Bind what is new first; a port that cannot be bound raises ConfigError and leaves
        everything as it was."""
        wanted, missing = self.wanted(catalog, specs, bind)
        added: dict[Key, UdpBound] = {}
        try:
            for key, (spec, refs) in wanted.items():
                if key not in self._bound:
                    added[key] = await self._bind(spec, key, refs)
        except ConfigError:
            for bound in added.values():
                bound.expose.close()
            raise
        self.specs, self.bind = specs, bind
        for key in [key for key in self._bound if key not in wanted]:
            bound = self._bound.pop(key)
            bound.expose.close()
            log.info("no longer exposing UDP %r on %s", key[2], hostport(bound.host, bound.port))
        for key, (_, refs) in wanted.items():
            if key in self._bound:
                self._bound[key].expose.refs = refs
        for key, bound in added.items():
            self._bound[key] = bound
            log.info(
                "exposing UDP %r on %s", bound.expose.service, hostport(bound.host, bound.port)
            )
        self._note_missing(missing, catalog or ())

    def _note_missing(self, missing: list[str], catalog: tuple[ServiceInfo, ...]) -> None:
        for service in missing:
            if service in self.missing:
                continue
            if find_service(catalog, service, "tcp") is not None:
                log.warning("%s", other_transport(service, "tcp"))
            else:
                offered = ", ".join(s.name for s in catalog if s.transport == "udp") or "nothing"
                log.warning(
                    "the server does not offer %s as a UDP service (UDP services offered: %s); "
                    "its datagrams are dropped until it does",
                    quoted(service),
                    offered,
                )
        self.missing = tuple(missing)

    async def sync(self, catalog: tuple[ServiceInfo, ...] | None) -> None:
        try:
            await self.reconfigure(self.specs, self.bind, catalog)
        except ConfigError as exc:
            log.error("%s", exc)

    async def _bind(self, spec: ExposeSpec, key: Key, refs: tuple[str, ...]) -> UdpBound:
        host, port, _ = key
        loop = asyncio.get_running_loop()
        try:
            transport, expose = await loop.create_datagram_endpoint(
                lambda: UdpExpose(self.connector, refs, self.max_flows, self.idle_timeout),
                local_addr=(host, port),
            )
        except OSError as exc:
            raise ConfigError(listen_error(f"udp:{hostport(host, port)}", exc)) from None
        bound_port = transport.get_extra_info("sockname")[1]
        return UdpBound(spec, host, bound_port, expose)

    def status(self) -> list[dict[str, Any]]:
        rows = []
        for bound in self._bound.values():
            row = bound.expose.meters.to_json()
            row["service"] = f"udp:{bound.expose.service} on {hostport(bound.host, bound.port)}"
            row["flows_open"] = len(bound.expose.flows)
            rows.append(row)
        return rows

    def close(self) -> None:
        for bound in self._bound.values():
            bound.expose.close()
        self._bound.clear()
