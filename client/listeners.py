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
from dataclasses import dataclass

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


@functools.lru_cache(maxsize=256)
def _header(service: str) -> bytes:
    """The stream header naming ``service``, encoded once per service, not once per stream."""
    return StreamHeader(service).encode()


class ConsumerStream(Relay):
    """One consumer connection and its stream."""

    def __init__(self, connector: Connector, service: str) -> None:
        super().__init__(connector.tunnel)
        self.connector = connector
        self.service = service
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

    def _open(self) -> None:
        tunnel = self.tunnel
        assert tunnel is not None
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
    connections only; connections already accepted carry on.
    """

    def __init__(self, connector: Connector, specs: tuple[ExposeSpec, ...], bind: str) -> None:
        self.connector = connector
        self.specs = specs
        self.bind = bind
        self._servers: dict[tuple[str, int, str], tuple[Listening, asyncio.Server]] = {}
        self.pool: WorkerPool | None = None  # helper processes to share connections with

    def _protocol(self, service: str) -> asyncio.BaseProtocol:
        """A new consumer connection's protocol: served here, or by a helper less busy."""
        connector = self.connector
        if self.pool is not None:
            helper = self.pool.least_busy()
            if helper is not None:
                here = functools.partial(ConsumerStream, connector, service)
                return Handoff(self.pool, helper, service, here)
        return ConsumerStream(connector, service)

    @property
    def bound(self) -> list[Listening]:
        return [listening for listening, _ in self._servers.values()]

    def wanted(
        self, catalog: tuple[ServiceInfo, ...] | None, strict: bool = True
    ) -> dict[tuple[str, int, str], ExposeSpec]:
        """(host, requested port, service) -> spec for everything that should be listening."""
        wanted: dict[tuple[str, int, str], ExposeSpec] = {}
        if not self.specs:
            for info in catalog or ():
                ref = (
                    info.name
                    if find_service(catalog or (), info.name)
                    else f"{info.alias}:{info.port}"
                )
                wanted[(self.bind, info.port, ref)] = ExposeSpec(None, info.port, ref)
            return wanted
        for spec in self.specs:
            port = spec.port
            found = None if catalog is None else find_service(catalog, spec.service)
            if catalog is not None and found is None:
                if strict:
                    offered = ", ".join(s.name for s in catalog) or "nothing"
                    identity = self.connector.identity
                    who = f", identity {quoted(identity)}" if identity else ""
                    raise ConfigError(
                        f"cannot expose {spec.service!r}: the server does not offer it to this "
                        f"client{who} (offered: {offered}); fix --expose, or if the server "
                        "should offer it, check its --link and its access rules"
                    )
                log.warning("the server does not offer %r (any more)", spec.service)
            if port is None:
                if found is None:
                    continue  # its port comes from the catalog: nothing to bind yet
                port = found.port
            wanted[(spec.bind or self.bind, port, spec.service)] = spec
        return wanted

    async def sync(self, catalog: tuple[ServiceInfo, ...] | None, strict: bool = True) -> None:
        wanted = self.wanted(catalog, strict)
        for key in [key for key in self._servers if key not in wanted]:
            listening, server = self._servers.pop(key)
            server.close()
            log.info("no longer exposing %r on %s:%d", listening.service, listening.host,
                     listening.port)  # fmt: skip
        for key, spec in wanted.items():
            if key not in self._servers:
                host, port, service = key
                self._servers[key] = await self._listen(spec, host, port, service)

    async def _listen(
        self, spec: ExposeSpec, host: str, port: int, service: str
    ) -> tuple[Listening, asyncio.Server]:
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(
                lambda: self._protocol(service),
                host,
                port,
                reuse_address=True,
                backlog=1024,
            )
        except OSError as exc:
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise ConfigError(listen_error(where, exc)) from None
        listening = Listening(spec, service, host, server.sockets[0].getsockname()[1])
        log.info("exposing %r on %s:%d", service, host, listening.port)
        return listening, server

    async def close(self) -> None:
        servers = [server for _, server in self._servers.values()]
        self._servers.clear()
        for server in servers:
            server.close()
        for server in servers:
            await server.wait_closed()
