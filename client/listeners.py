"""The client's local ports: one listener per exposed service, one stream per connection.

A consumer's connection becomes a stream at once: the stream header and the consumer's first
bytes leave together, without waiting for the server (no round trip to open). The server's
first bytes on the stream are its answer; a refusal is logged with its reason and the consumer's
connection is reset, so it sees an error rather than an accepted-then-silently-closed socket.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from client.connector import Connector
from tunnel import metrics
from tunnel.errors import ConfigError, RemoteProtocolError
from tunnel.links import ExposeSpec
from tunnel.messages import ServiceInfo, StreamAnswerParser, StreamHeader
from tunnel.oserrors import listen_error
from tunnel.relay import Relay, abort_with_reset

log = logging.getLogger("ambassador.client")


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


class ConsumerStream(Relay):
    """One consumer connection and its stream."""

    def __init__(self, connector: Connector, service: str) -> None:
        super().__init__(connector.tunnel)
        self.connector = connector
        self.service = service
        self._answer: StreamAnswerParser | None = StreamAnswerParser()
        self._wait: asyncio.Task[None] | None = None
        self.refused = False

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
            log.warning(
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
        metrics.STREAMS.labels("client", self.service).inc()
        metrics.STREAMS_OPEN.labels("client", self.service).inc()
        tunnel.send(self.stream_id, StreamHeader(self.service).encode())
        self.send_held()

    def on_stream_data(self, data: bytes) -> None:
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
                log.warning(
                    "connection to %r refused by the server (%s): %s",
                    self.service,
                    answer.reason.label,
                    answer.text,
                )
                metrics.STREAM_REFUSALS.labels("client", self.service, answer.reason.label).inc()
                self.refused = True
                return  # the server's RST follows and resets the consumer
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
            metrics.STREAMS_OPEN.labels("client", self.service).dec()
            if self._answer is not None and isinstance(exc, ConnectionResetError):
                # Reset before the server answered: the tunnel went away under the stream.
                log.warning("connection to %r reset: %s", self.service, exc)
                metrics.STREAM_REFUSALS.labels("client", self.service, "tunnel_lost").inc()


@dataclass(frozen=True, slots=True)
class Listening:
    spec: ExposeSpec
    service: str
    host: str
    port: int


class Listeners:
    """The local listening sockets, one per exposed service."""

    def __init__(self, connector: Connector, specs: tuple[ExposeSpec, ...], bind: str) -> None:
        self.connector = connector
        self.specs = specs
        self.bind = bind
        self.bound: list[Listening] = []
        self._servers: list[asyncio.Server] = []

    async def bind_fixed(self) -> None:
        """Bind every entry whose local port is known before the catalog arrives."""
        for spec in self.specs:
            if spec.port is not None:
                await self._listen(spec, spec.service, spec.port)

    async def bind_from_catalog(self, catalog: tuple[ServiceInfo, ...]) -> None:
        """Bind the entries that need the catalog: named services, or the whole catalog."""
        if not self.specs:
            for info in catalog:
                ref = info.name if find_service(catalog, info.name) else f"{info.alias}:{info.port}"
                await self._listen(ExposeSpec(None, info.port, ref), ref, info.port)
            return
        for spec in self.specs:
            if spec.port is not None:
                continue
            found = find_service(catalog, spec.service)
            if found is None:
                offered = ", ".join(s.name for s in catalog) or "nothing"
                raise ConfigError(
                    f"cannot expose {spec.service!r}: the server does not offer it "
                    f"(offered: {offered}); fix --expose or the server's --link"
                )
            await self._listen(spec, spec.service, found.port)

    async def _listen(self, spec: ExposeSpec, service: str, port: int) -> None:
        host = spec.bind or self.bind
        loop = asyncio.get_running_loop()
        connector = self.connector
        try:
            server = await loop.create_server(
                lambda: ConsumerStream(connector, service),
                host,
                port,
                reuse_address=True,
                backlog=1024,
            )
        except OSError as exc:
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise ConfigError(listen_error(where, exc)) from None
        actual = server.sockets[0].getsockname()[1]
        self._servers.append(server)
        self.bound.append(Listening(spec, service, host, actual))
        log.info("exposing %r on %s:%d", service, host, actual)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
