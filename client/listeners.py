"""The client's local ports: one listener per exposed service, one stream per connection.

A consumer's connection becomes a stream at once: the stream header leaves as soon as the
consumer connects, and its bytes follow without waiting for the server (no round trip to open).
The server's first bytes on the stream are its answer; a refusal is logged with its reason and
the consumer's connection is reset, so it sees an error rather than a socket accepted and then
silently closed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass, replace

from client.connector import find_service
from client.hosts import HostLink
from client.sessions import Link, Router, healthy, refusal, route, wait_route
from client.tunnel_listener import TunnelListener
from tunnel.aio.relay import Relay, abort_with_reset
from tunnel.aio.sourcegate import SourceGate
from tunnel.aio.transport import format_peer, socket_origin
from tunnel.aio.unixlisten import SocketFile, listen_unix
from tunnel.errors import ConfigError, Reason, RemoteProtocolError
from tunnel.operations import metrics
from tunnel.operations.logonce import Throttled
from tunnel.operations.oserrors import listen_error
from tunnel.operations.workers.handoff import Handoff
from tunnel.operations.workers.pool import WorkerPool
from tunnel.protocol.messages import (
    HEADER_VERSION,
    ServiceInfo,
    StreamAnswerParser,
    StreamHeader,
)
from tunnel.protocol.peertext import quoted, shown
from tunnel.security.allowlist import EVERY_EXPOSE, Allowlist
from tunnel.settings.links import ExposeSpec
from tunnel.settings.unixpath import SocketAccess
from tunnel.settings.wording import hostport

log = logging.getLogger("ambassador.client")
MAX_MOVES = 3  # a consumer whose session keeps dying under it is reset in the end
throttled = Throttled(log)


def choose_service(
    catalog: tuple[ServiceInfo, ...], refs: tuple[str, ...], transport: str = "tcp"
) -> str | None:
    """The first of ``refs`` (in order of preference) that names one catalog entry."""
    for ref in refs:
        if find_service(catalog, ref, transport) is not None:
            return ref
    return None


def other_transport(service: str, offered: str) -> str:
    """The one line for an expose whose service the server offers on the other transport."""
    expose = f"udp:PORT={service}" if offered == "udp" else f"PORT={service} (no udp: prefix)"
    wanted = "TCP" if offered == "udp" else "UDP"
    return (
        f"the server offers {service!r} as a {offered.upper()} service, not {wanted}: "
        f"expose it as {expose}"
    )


@functools.lru_cache(maxsize=256)
def _header(service: str) -> bytes:
    """The stream header naming ``service``, encoded once per service, not once per stream."""
    return StreamHeader(service).encode()


class ConsumerStream(Relay):
    """One consumer connection and its stream."""

    def __init__(
        self,
        connector: Router | HostLink,
        service: str,
        alternatives: tuple[str, ...] = (),
        label: str = "",
    ) -> None:
        # ``router`` picks the session (client.sessions); ``connector`` is the picked one's.
        self.router = connector
        self.connector: Link | None = route(connector, service)
        super().__init__(self.connector.tunnel if self.connector is not None else None)
        self.service = service
        self.label = label or service  # how logs and metrics name it (HOST/SERVICE, say)
        # Set only while the catalog is unknown: the stream opens with the first of
        # (service, *alternatives) that the catalog offers once it is in.
        self.alternatives = alternatives
        self._answer: StreamAnswerParser | None = StreamAnswerParser()
        self._wait: asyncio.Task[None] | None = None
        self.refused = False
        self.meters = metrics.meters("client", self.label)
        self.preamble = True  # the server's answer comes first
        self.moves = 0  # times the stream started again on a new session

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.connector is not None and not healthy(self.connector.tunnel):
            # The session picked a moment ago stopped taking streams (a reload, a Go Away).
            self.connector = route(self.router, self.service)
            self.tunnel = self.connector.tunnel if self.connector is not None else None
        super().connection_made(transport)
        if self.connector is not None:
            self._open()
        elif refusal(self.router):
            self._refuse_refused()
        else:
            # The link is down: hold the consumer (not reading) until it is back or we give up.
            assert self.transport is not None
            self.transport.pause_reading()
            self._wait = asyncio.get_running_loop().create_task(self._wait_for_tunnel())

    async def _wait_for_tunnel(self) -> None:
        timeout = self.router.config.link_wait_timeout
        connector = await wait_route(self.router, self.service, timeout)
        if self.closed:
            return
        if connector is None and refusal(self.router):
            self._refuse_refused()
            return
        if connector is None:
            throttled.warning(
                f"link_down:{self.label}",
                "connection to %r dropped: the tunnel has been down for %gs (%s)",
                self.label,
                timeout,
                self.router.last_error or "connecting",
            )
            metrics.refused("client", self.label, "link_down")
            self.closed = True
            if self.transport is not None:
                abort_with_reset(self.transport)
            return
        self.connector, self.tunnel = connector, connector.tunnel
        self._open()
        if self.transport is not None:
            self.transport.resume_reading()

    def _refuse_refused(self) -> None:
        """The server refused this client: the consumer is closed now, with the server's word
        (once per interval), not after --link-wait-timeout."""
        throttled.warning(
            f"tunnel_refused:{self.service}",
            "connection to %r refused: the tunnel is not up because %s",
            self.service, refusal(self.router),
        )  # fmt: skip
        metrics.refused("client", self.service, "tunnel_refused")
        self.closed = True
        if self.transport is not None:
            abort_with_reset(self.transport)

    def _open(self) -> None:
        tunnel, connector = self.tunnel, self.connector
        assert tunnel is not None and connector is not None
        if self.alternatives:
            self._choose()
        if not connector.offers(self.service):
            self._refuse_missing()
            return
        try:
            self.stream_id = tunnel.open_stream(self)
        except Exception as exc:  # the session stopped taking streams a moment ago
            log.warning("connection to %r dropped: %s", self.service, exc)
            self.closed = True
            if self.transport is not None:
                abort_with_reset(self.transport)
            return
        self.meters.opened += 1
        self.meters.open_now += 1
        connector.rotate_if_exhausted(tunnel)
        if connector.stream_header == HEADER_VERSION or self.transport is None:
            header = _header(self.service)
        else:  # the server wants the consumer's origin: a backend of its asks for it
            header = StreamHeader(self.service, socket_origin(self.transport)).encode()
        tunnel.send(self.stream_id, header)
        self.send_held()

    def _choose(self) -> None:
        catalog = self.connector.catalog if self.connector is not None else None
        if catalog is None:
            return
        chosen = choose_service(catalog, (self.service, *self.alternatives))
        self.alternatives = ()
        if chosen is not None and chosen != self.service:
            self.service = chosen
            self.meters = metrics.meters("client", chosen)

    def _refuse_missing(self) -> None:
        """The server's catalog lacks the service: reset the consumer now, since asking the
        server would only bring back its refusal one round trip later."""
        catalog = (self.connector.catalog if self.connector is not None else None) or ()
        throttled.warning(
            f"missing:{self.label}",
            "connection to %r refused: the server does not offer it (offered: %s)",
            self.label,
            ", ".join(service.name for service in catalog) or "nothing",
        )
        metrics.refused("client", self.label, Reason.UNKNOWN_SERVICE.label)
        self.closed = True
        if self.transport is not None:
            abort_with_reset(self.transport)

    def on_stream_data(self, data: bytes | bytearray) -> None:
        if self._answer is not None:
            try:
                answer, rest = self._answer.feed(data)
            except RemoteProtocolError as exc:
                self._answer = None
                self._fail(f"bad answer from the server: {exc}", "protocol_error")
                return
            self.credit_now(len(data) - len(rest))
            if answer is None:
                return
            self._answer = None
            if not answer.ok:
                throttled.warning(
                    f"refused:{self.label}:{answer.reason.label}",
                    "connection to %r refused by the server (%s): %s",
                    self.label,
                    answer.reason.label,
                    shown(answer.text),
                )
                metrics.refused("client", self.label, answer.reason.label)
                self.refused = True
                return  # the server's RST follows and resets the consumer
            self.preamble = False
            data = rest
            if not data:
                return
        self.deliver(data)

    def _fail(self, text: str, reason: str) -> None:
        log.warning("connection to %r failed: %s", self.service, text)
        metrics.refused("client", self.label, reason)
        if self.stream_id is not None and self.tunnel is not None:
            self.tunnel.reset(self.stream_id)
        self.on_reset(text)

    def on_reset(self, reason: str) -> None:
        if self._may_move():
            self._move()
        else:
            super().on_reset(reason)

    def _may_move(self) -> bool:
        """The session under this stream is gone, and nothing of the consumer's can have
        reached a backend (it has sent no byte, and the server has not answered): the stream
        may start again on the next session, unseen by the consumer. Any other is reset, so
        that the consumer, which alone knows whether its request may run twice, decides."""
        tunnel = self.tunnel
        return (
            not self.closed
            and not self.forwarded
            and not self.local_eof
            and self._answer is not None
            and self.moves < MAX_MOVES
            and tunnel is not None
            and not tunnel.is_open
            and self.transport is not None
        )

    def _move(self) -> None:
        assert self.transport is not None
        self.moves += 1
        self.meters.open_now -= 1
        self.stream_id = None
        self.tunnel = None
        self._answer = StreamAnswerParser()
        self.transport.pause_reading()
        log.debug("connection to %r waits for the next session: its session was lost before "
                  "it sent anything", self.service)  # fmt: skip
        self._wait = asyncio.get_running_loop().create_task(self._wait_for_tunnel())

    def on_closed(self, exc: BaseException | None) -> None:
        if self._wait is not None:
            self._wait.cancel()
        if self.stream_id is not None:
            self.meters.open_now -= 1
            if self._answer is not None and isinstance(exc, ConnectionResetError):
                # Reset before the server answered: the tunnel went away under the stream.
                throttled.warning(f"reset:{self.label}", "connection to %r reset: %s",
                                  self.service, exc)  # fmt: skip
                metrics.refused("client", self.label, "tunnel_lost")


def _note_portless(name: str) -> None:
    """The server offers ``name`` without a port (a unix socket linked by alias alone), so
    there is no port to listen on unless the expose list gives one."""
    throttled.warning(
        f"portless:{name}",
        "not exposing %r: the server announces it without a port; expose it with "
        "--expose LOCALPORT=%s or --expose unix:/PATH=%s",
        name,
        name,
        name,
    )


@dataclass(frozen=True, slots=True)
class Listening:
    spec: ExposeSpec
    service: str
    host: str  # for a unix socket, ``unix:PATH`` (and port 0)
    port: int

    @property
    def where(self) -> str:
        """Where consumers connect: ``host:port`` or ``unix:PATH``."""
        return self.host if self.spec.socket is not None else hostport(self.host, self.port)


class Listeners:
    """The local listening sockets, one per exposed service.

    :meth:`sync` makes the bound set match the expose list (or, without one, the catalog):
    it binds what is missing and closes what is no longer wanted. Closing a listener stops new
    connections only; connections already accepted carry on. A listener is keyed by the
    service its spec names first; the reference its streams ask for is the first of the
    spec's references the catalog offers, and can change without rebinding the port.
    """

    def __init__(
        self,
        connector: Router | TunnelListener,
        specs: tuple[ExposeSpec, ...],
        bind: str,
        pool: WorkerPool | None = None,
        access: SocketAccess | None = None,
    ) -> None:
        self.connector = connector
        self.specs = specs
        self.bind = bind
        self.access = access or SocketAccess()  # unix sockets' mode and owner
        # The socket files bound, removed when closed, with the mode and owner each has.
        self._files: dict[tuple[str, int, str], tuple[SocketFile, SocketAccess]] = {}
        self._servers: dict[tuple[str, int, str], tuple[Listening, asyncio.Server]] = {}
        # What each listener's new streams ask for, preferred first: one reference once the
        # catalog has chosen, all of the spec's while it is unknown.
        self._refs: dict[tuple[str, int, str], tuple[str, ...]] = {}
        self.pool = pool  # helper processes to share connections with
        self.missing: tuple[str, ...] = ()  # exposed services the server's catalog lacks

    def _protocol(self, key: tuple[str, int, str]) -> asyncio.BaseProtocol:
        """A new consumer connection's protocol: refused when --expose-allow does not list its
        source, else served here or by a helper less busy."""
        lists = self.connector.config.expose_allow
        allowlist = lists.get(key[2]) or lists.get(EVERY_EXPOSE)
        if allowlist is not None and allowlist.enabled:
            return SourceGate(
                allowlist,
                functools.partial(self._admitted, key),
                functools.partial(self._refused, key[2], allowlist),
            )
        return self._admitted(key)

    @staticmethod
    def _refused(service: str, allowlist: Allowlist, peername: object) -> None:
        host = peername[0] if isinstance(peername, tuple) and peername else "?"
        metrics.refused("client", service, "source_not_allowed")
        throttled.warning(
            f"source:{service}:{host}",
            "refused a connection to %r from %s: not in --expose-allow for it (%s); add its "
            "address there if it should connect",
            service, format_peer(peername), allowlist,
        )  # fmt: skip

    def _admitted(self, key: tuple[str, int, str]) -> asyncio.BaseProtocol:
        service, *others = self._refs.get(key, (key[2],))
        alternatives = tuple(others)
        connector: Router | HostLink
        label = service
        if isinstance(self.connector, TunnelListener):
            connector, service = self.connector.route(service)  # a host's, by its name
        else:
            connector = self.connector
        if self.pool is not None:
            helper = self.pool.least_busy()
            if helper is not None:
                here = functools.partial(ConsumerStream, connector, service, alternatives)
                return Handoff(self.pool, helper, service, here)
        return ConsumerStream(connector, service, alternatives, label)

    @property
    def bound(self) -> list[Listening]:
        return [listening for listening, _ in self._servers.values()]

    def wanted(
        self, catalog: tuple[ServiceInfo, ...] | None, specs: tuple[ExposeSpec, ...], bind: str
    ) -> tuple[dict[tuple[str, int, str], tuple[ExposeSpec, tuple[str, ...]]], list[str]]:
        """(host, requested port, service) -> (spec, references to ask for) for everything
        that should be listening, and the exposed services the catalog does not hold."""
        wanted: dict[tuple[str, int, str], tuple[ExposeSpec, tuple[str, ...]]] = {}
        missing: list[str] = []
        if not specs:
            for info in catalog or ():
                if info.transport != "tcp":
                    continue  # a UDP service: client.udp_expose binds those
                if info.port is None:
                    _note_portless(info.name)
                    continue
                ref = (
                    info.name
                    if find_service(catalog or (), info.name)
                    else f"{info.alias}:{info.port}"
                )
                wanted[(bind, info.port, ref)] = (ExposeSpec(None, info.port, ref), (ref,))
            return wanted, missing
        for spec in specs:
            if spec.transport != "tcp":
                continue  # client.udp_expose binds it
            port = spec.port
            refs = spec.refs
            found = None
            if catalog is not None:
                chosen = choose_service(catalog, refs)
                if chosen is None:
                    # Its listener (if it has a fixed port) stays: consumers are refused at
                    # once until the server offers it, and then it works without a restart.
                    missing.append(spec.service)
                else:
                    found, refs = find_service(catalog, chosen), (chosen,)
            if spec.socket is not None:
                wanted[(str(spec.socket), 0, spec.service)] = (spec, refs)
                continue
            if port is None:
                if found is None:
                    continue  # its port comes from the catalog: nothing to bind yet
                if found.port is None:
                    _note_portless(found.name)
                    continue
                port = found.port
            wanted[(spec.bind or bind, port, spec.service)] = (spec, refs)
        return wanted, missing

    async def sync(self, catalog: tuple[ServiceInfo, ...] | None) -> None:
        """Match the listeners to a new catalog; a port that cannot be bound is logged."""
        try:
            await self.reconfigure(self.specs, self.bind, catalog)
        except ConfigError as exc:
            log.error("%s", exc)

    async def reconfigure(
        self,
        specs: tuple[ExposeSpec, ...],
        bind: str,
        catalog: tuple[ServiceInfo, ...] | None,
        remind: bool = False,
        access: SocketAccess | None = None,
    ) -> None:
        """Take a new expose list: bind what is new first, and only when all of it is bound
        close what is no longer wanted. A port that cannot be bound raises ConfigError and
        leaves everything as it was. ``access``: the unix sockets' new mode and owner, given
        to those bound before as well."""
        previous = self.access
        self.access = access or previous
        try:
            await self._reconfigure(specs, bind, catalog, remind)
        except ConfigError:
            self.access = previous
            raise
        self._apply_access()

    async def _reconfigure(
        self,
        specs: tuple[ExposeSpec, ...],
        bind: str,
        catalog: tuple[ServiceInfo, ...] | None,
        remind: bool,
    ) -> None:
        wanted, missing = self.wanted(catalog, specs, bind)
        unwanted = [key for key in self._servers if key not in wanted]
        # A port moving to another service is freed first, or binding it again would fail.
        moving = {key[:2] for key in wanted if key not in self._servers}
        for key in [key for key in unwanted if key[:2] in moving]:
            self._stop(key)
        added: dict[tuple[str, int, str], tuple[Listening, asyncio.Server]] = {}
        try:
            for key, (spec, refs) in wanted.items():
                if key not in self._servers:
                    added[key] = await self._listen(spec, key, refs)
        except ConfigError:
            for key, (_, server) in added.items():
                server.close()
                self._remove_file(key)
            raise
        self.specs, self.bind = specs, bind
        for key in unwanted:
            if key in self._servers:
                self._stop(key)
        for key, (spec, refs) in wanted.items():
            self._choose_refs(key, spec, refs)
        for key, (listening, server) in added.items():
            self._servers[key] = listening, server
            self._log_exposing(listening, self._refs[key][1:])
        self._note_missing(missing, catalog or (), remind)

    def _choose_refs(
        self, key: tuple[str, int, str], spec: ExposeSpec, refs: tuple[str, ...]
    ) -> None:
        """Point a listener's new streams at ``refs``; say which reference a seed form's
        catalog lookup settled on."""
        if self._refs.get(key) == refs:
            return
        self._refs[key] = refs
        if spec.alternatives and len(refs) == 1:
            asked = ", then ".join(repr(ref) for ref in spec.refs)
            log.info("local port %d: asked the server for %s; it offers %r",
                     key[1], asked, refs[0])  # fmt: skip
        if key in self._servers:
            listening, server = self._servers[key]
            if listening.service != refs[0]:
                self._servers[key] = (replace(listening, service=refs[0]), server)

    @staticmethod
    def _log_exposing(listening: Listening, alternatives: tuple[str, ...]) -> None:
        where = listening.where
        if alternatives:
            others = ", or ".join(repr(ref) for ref in alternatives)
            log.info("exposing %r on %s (or %s: the first the server offers)",
                     listening.service, where, others)  # fmt: skip
        else:
            log.info("exposing %r on %s", listening.service, where)

    def _stop(self, key: tuple[str, int, str]) -> None:
        listening, server = self._servers.pop(key)
        self._refs.pop(key, None)
        server.close()
        self._remove_file(key)
        log.info("no longer exposing %r on %s", listening.service, listening.where)

    def _remove_file(self, key: tuple[str, int, str]) -> None:
        file, _ = self._files.pop(key, (None, None))
        if file is not None:
            file.remove()

    def _apply_access(self) -> None:
        """Give the socket files a changed mode and owner in place: consumers connecting
        from now on are checked against them, and no listener is closed for it. One line
        each; one that could not be changed keeps its old ones and is tried on the next
        reload."""
        for key, (file, had) in list(self._files.items()):
            if had == self.access:
                continue
            changed, problem = file.apply(self.access)
            if problem is None:
                self._files[key] = changed, self.access
                owner = f", owner {self.access.owner!r}" if self.access.owner else ""
                log.info("unix:%s now has mode %04o%s", file.path, self.access.mode, owner)
            else:
                self._files[key] = changed, had
                log.warning("%s", problem)

    def _note_missing(
        self, missing: list[str], catalog: tuple[ServiceInfo, ...], remind: bool
    ) -> None:
        """One warning when an exposed service goes missing (and on ``remind``), one line
        when it is back."""
        offered = ", ".join(service.name for service in catalog) or "nothing"
        identity = self.connector.identity
        who = f", identity {quoted(identity)}" if identity else ""
        for service in missing:
            if remind or service not in self.missing:
                if find_service(catalog, service, "udp") is not None:
                    log.warning("%s", other_transport(service, "udp"))
                    continue
                asked = " or ".join(
                    repr(ref) for spec in self.specs if spec.service == service for ref in spec.refs
                ) or repr(service)
                log.warning(
                    "the server does not offer %s to this client%s (offered: %s); connections "
                    "to it are refused until it does; fix --expose, or if the server should "
                    "offer it, check its --link and its access rules",
                    asked,
                    who,
                    offered,
                )
        for service in self.missing:
            if service not in missing and any(spec.service == service for spec in self.specs):
                log.info("the server now offers %r", service)
        self.missing = tuple(missing)

    async def _listen(
        self, spec: ExposeSpec, key: tuple[str, int, str], refs: tuple[str, ...]
    ) -> tuple[Listening, asyncio.Server]:
        host, port, _ = key
        if spec.socket is not None:
            server, file = await listen_unix(lambda: self._protocol(key), spec.socket.path,
                                             self.access)  # fmt: skip
            self._files[key] = file, self.access
            return Listening(spec, refs[0], host, 0), server
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(
                lambda: self._protocol(key),
                host,
                port,
                reuse_address=True,
                backlog=1024,
            )
        except OSError as exc:
            raise ConfigError(listen_error(hostport(host, port), exc)) from None
        return Listening(spec, refs[0], host, server.sockets[0].getsockname()[1]), server

    async def close(self) -> None:
        servers = [server for _, server in self._servers.values()]
        self._servers.clear()
        self._refs.clear()
        for server in servers:
            server.close()
        for key in list(self._files):
            self._remove_file(key)
        for server in servers:
            await server.wait_closed()
