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

from client.connector import Connector
from tunnel import metrics
from tunnel.errors import ConfigError, RemoteProtocolError
from tunnel.links import ExposeSpec
from tunnel.logonce import Throttled
from tunnel.messages import ServiceInfo, StreamAnswerParser, StreamHeader
from tunnel.oserrors import listen_error
from tunnel.peertext import quoted, shown
from tunnel.relay import Relay, abort_with_reset
from tunnel.workers import Handoff, WorkerPool

log = logging.getLogger("ambassador.client")
throttled = Throttled(log)


def find_service(catalog: tuple[ServiceInfo, ...], ref: str) -> ServiceInfo | None:
    """The catalog entry ``ref`` names (alias, port or alias:port), if exactly one does."""
    alias, _, port_text = ref.lower().rpartition(":")
    if not alias:
        alias, port_text = (ref.lower(), "") if not ref.isdigit() else ("", ref)
    port = int(port_text) if port_text.isdigit() else None
    found = [
        s for s in catalog if (not alias or s.alias == alias) and (port is None or s.port == port)
    ]
    if port is not None and not alias:
        found = [s for s in found if s.alias is None] or found
    return found[0] if len(found) == 1 else None


def choose_service(catalog: tuple[ServiceInfo, ...], refs: tuple[str, ...]) -> str | None:
    """The first of ``refs`` (in order of preference) that names one catalog entry."""
    for ref in refs:
        if find_service(catalog, ref) is not None:
            return ref
    return None


@functools.lru_cache(maxsize=256)
def _header(service: str) -> bytes:
    """The stream header naming ``service``, encoded once per service, not once per stream."""
    return StreamHeader(service).encode()


class ConsumerStream(Relay):
    """One consumer connection and its stream."""

    def __init__(
        self, connector: Connector, service: str, alternatives: tuple[str, ...] = ()
    ) -> None:
        super().__init__(connector.tunnel)
        self.connector = connector
        self.service = service
        # Set only while the catalog is unknown: the stream opens with the first of
        # (service, *alternatives) that the catalog offers once it is in.
        self.alternatives = alternatives
        self._answer: StreamAnswerParser | None = StreamAnswerParser()
        self._wait: asyncio.Task[None] | None = None
        self.refused = False
        self.meters = metrics.meters("client", service)
        self.preamble = True  # the server's answer comes first

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        tunnel = self.tunnel
        if tunnel is not None and tunnel.accepts_streams:
            self._open()
        else:
            # The link is down: hold the consumer (not reading) until it is back or we give up.
            assert self.transport is not None
            self.transport.pause_reading()
            self._wait = asyncio.get_running_loop().create_task(self._wait_for_tunnel())

    async def _wait_for_tunnel(self) -> None:
        timeout = self.connector.config.link_wait_timeout
        tunnel = await self.connector.wait_tunnel(timeout)
        if self.closed:
            return
        if tunnel is None:
            throttled.warning(
                f"link_down:{self.service}",
                "connection to %r dropped: the tunnel has been down for %gs (%s)",
                self.service,
                timeout,
                self.connector.last_error or "connecting",
            )
            metrics.STREAM_REFUSALS.labels("client", self.service, "link_down").inc()
            self.closed = True
            if self.transport is not None:
                abort_with_reset(self.transport)
            return
        self.tunnel = tunnel
        self._open()
        if self.transport is not None:
            self.transport.resume_reading()

    def _choose(self) -> None:
        catalog = self.connector.catalog
        if catalog is None:
            return
        chosen = choose_service(catalog, (self.service, *self.alternatives))
        self.alternatives = ()
        if chosen is not None and chosen != self.service:
            self.service = chosen
            self.meters = metrics.meters("client", chosen)

    def _open(self) -> None:
        tunnel = self.tunnel
        assert tunnel is not None
        if self.alternatives:
            self._choose()
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
        self.connector.rotate_if_exhausted(tunnel)
        tunnel.send(self.stream_id, _header(self.service))
        self.send_held()

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
                    f"refused:{self.service}:{answer.reason.label}",
                    "connection to %r refused by the server (%s): %s",
                    self.service,
                    answer.reason.label,
                    shown(answer.text),
                )
                metrics.STREAM_REFUSALS.labels("client", self.service, answer.reason.label).inc()
                self.refused = True
                return  # the server's RST follows and resets the consumer
            self.preamble = False
            data = rest
            if not data:
                return
        self.deliver(data)

    def _fail(self, text: str, reason: str) -> None:
        log.warning("connection to %r failed: %s", self.service, text)
        metrics.STREAM_REFUSALS.labels("client", self.service, reason).inc()
        if self.stream_id is not None and self.tunnel is not None:
            self.tunnel.reset(self.stream_id)
        self.on_reset(text)

    def on_closed(self, exc: BaseException | None) -> None:
        if self._wait is not None:
            self._wait.cancel()
        if self.stream_id is not None:
            self.meters.open_now -= 1
            if self._answer is not None and isinstance(exc, ConnectionResetError):
                # Reset before the server answered: the tunnel went away under the stream.
                throttled.warning(f"reset:{self.service}", "connection to %r reset: %s",
                                  self.service, exc)  # fmt: skip
                metrics.STREAM_REFUSALS.labels("client", self.service, "tunnel_lost").inc()


@dataclass(frozen=True, slots=True)
class Listening:
    spec: ExposeSpec
    service: str
    host: str
    port: int


class Listeners:
    """The local listening sockets, one per exposed service.

    :meth:`sync` makes the bound set match the expose list (or, without one, the catalog):
    it binds what is missing and closes what is no longer wanted. Closing a listener stops new
    connections only; connections already accepted carry on. A listener is keyed by the
    service its spec names first; the reference its streams ask for is the first of the
    spec's references the catalog offers, and can change without rebinding the port.
    """

    def __init__(self, connector: Connector, specs: tuple[ExposeSpec, ...], bind: str) -> None:
        self.connector = connector
        self.specs = specs
        self.bind = bind
        self._servers: dict[tuple[str, int, str], tuple[Listening, asyncio.Server]] = {}
        # What each listener's new streams ask for, preferred first: one reference once the
        # catalog has chosen, all of the spec's while it is unknown.
        self._refs: dict[tuple[str, int, str], tuple[str, ...]] = {}
        self.pool: WorkerPool | None = None  # helper processes to share connections with

    def _protocol(self, key: tuple[str, int, str]) -> asyncio.BaseProtocol:
        """A new consumer connection's protocol: served here, or by a helper less busy."""
        service, *alternatives = self._refs.get(key, (key[2],))
        connector = self.connector
        if self.pool is not None:
            helper = self.pool.least_busy()
            if helper is not None:
                here = functools.partial(ConsumerStream, connector, service)
                return Handoff(self.pool, helper, service, here)
        return ConsumerStream(connector, service, tuple(alternatives))

    @property
    def bound(self) -> list[Listening]:
        return [listening for listening, _ in self._servers.values()]

    def wanted(
        self, catalog: tuple[ServiceInfo, ...] | None, strict: bool = True
    ) -> dict[tuple[str, int, str], tuple[ExposeSpec, tuple[str, ...]]]:
        """(host, requested port, service) -> (spec, references to ask for) for everything
        that should be listening."""
        wanted: dict[tuple[str, int, str], tuple[ExposeSpec, tuple[str, ...]]] = {}
        if not self.specs:
            for info in catalog or ():
                ref = (
                    info.name
                    if find_service(catalog or (), info.name)
                    else f"{info.alias}:{info.port}"
                )
                wanted[(self.bind, info.port, ref)] = (ExposeSpec(None, info.port, ref), (ref,))
            return wanted
        for spec in self.specs:
            port = spec.port
            refs = spec.refs
            found = None
            if catalog is not None:
                chosen = choose_service(catalog, refs)
                if chosen is not None:
                    found, refs = find_service(catalog, chosen), (chosen,)
            if catalog is not None and found is None:
                asked = " or ".join(repr(ref) for ref in spec.refs)
                if strict:
                    offered = ", ".join(s.name for s in catalog) or "nothing"
                    identity = self.connector.identity
                    who = f", identity {quoted(identity)}" if identity else ""
                    raise ConfigError(
                        f"cannot expose {asked}: the server does not offer it to this "
                        f"client{who} (offered: {offered}); fix --expose, or if the server "
                        "should offer it, check its --link and its access rules"
                    )
                log.warning("the server does not offer %s (any more)", asked)
            if port is None:
                if found is None:
                    continue  # its port comes from the catalog: nothing to bind yet
                port = found.port
            wanted[(spec.bind or self.bind, port, spec.service)] = (spec, refs)
        return wanted

    async def sync(self, catalog: tuple[ServiceInfo, ...] | None, strict: bool = True) -> None:
        wanted = self.wanted(catalog, strict)
        for key in [key for key in self._servers if key not in wanted]:
            listening, server = self._servers.pop(key)
            self._refs.pop(key, None)
            server.close()
            log.info("no longer exposing %r on %s:%d", listening.service, listening.host,
                     listening.port)  # fmt: skip
        for key, (spec, refs) in wanted.items():
            if self._refs.get(key) != refs:
                self._refs[key] = refs
                if spec.alternatives and len(refs) == 1:
                    asked = ", then ".join(repr(ref) for ref in spec.refs)
                    log.info("local port %d: asked the server for %s; it offers %r",
                             key[1], asked, refs[0])  # fmt: skip
            if key not in self._servers:
                self._servers[key] = await self._listen(spec, key)
            else:
                listening, server = self._servers[key]
                if listening.service != refs[0]:
                    self._servers[key] = (replace(listening, service=refs[0]), server)

    async def _listen(
        self, spec: ExposeSpec, key: tuple[str, int, str]
    ) -> tuple[Listening, asyncio.Server]:
        host, port, _ = key
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
            self._refs.pop(key, None)
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise ConfigError(listen_error(where, exc)) from None
        service, *alternatives = self._refs[key]
        listening = Listening(spec, service, host, server.sockets[0].getsockname()[1])
        if alternatives:
            others = ", or ".join(repr(ref) for ref in alternatives)
            log.info("exposing %r on %s:%d (or %s: the first the server offers)", service, host,
                     listening.port, others)  # fmt: skip
        else:
            log.info("exposing %r on %s:%d", service, host, listening.port)
        return listening, server

    async def close(self) -> None:
        servers = [server for _, server in self._servers.values()]
        self._servers.clear()
        self._refs.clear()
        for server in servers:
            server.close()
        for server in servers:
            await server.wait_closed()
