"""One client's tunnel on the server: the hello on the control stream, then backend streams.

The first stream a client opens is the control stream. Until its :class:`Hello` has been
answered with a :class:`Welcome`, no other stream is accepted; a connection that says nothing
within the handshake timeout is closed, so idle or garbage connections cannot pile up.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from server.backend import BackendStream
from tunnel import metrics
from tunnel.errors import Reason, RemoteProtocolError
from tunnel.frames import GoAwayCode
from tunnel.links import Catalog, Service
from tunnel.messages import (
    SUPPORTED_VERSIONS,
    Hello,
    Message,
    MessageReader,
    Refusal,
    ServiceInfo,
    Welcome,
    encode_message,
    negotiate_version,
)
from tunnel.session import Role, Session
from tunnel.transport import StreamHandler, TunnelConnection

if TYPE_CHECKING:
    from server.app import Server

log = logging.getLogger("ambassador.server")


def catalog_info(catalog: Catalog) -> tuple[ServiceInfo, ...]:
    return tuple(ServiceInfo(service.alias, service.port) for service in catalog)


class ServerConnection:
    """Everything the server knows about one tunnel connection."""

    def __init__(self, server: Server, peer: str = "") -> None:
        self.server = server
        self.tunnel = TunnelConnection(
            Session(Role.SERVER, server.config.limits), self._accept, peer
        )
        self.identity: str | None = None  # the client certificate's name, under mutual TLS
        self.control_id: int | None = None
        self.client_name = ""
        self.welcomed = False
        self.streams: set[BackendStream] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        self._hello_timer = loop.call_later(server.config.handshake_timeout, self._hello_timeout)
        self.tunnel.closed.add_done_callback(self._closed)

    @property
    def catalog(self) -> Catalog:
        return self.server.config.catalog

    @property
    def peer_name(self) -> str:
        name = f" ({self.client_name})" if self.client_name else ""
        return f"{self.tunnel.peer}{name}"

    def _accept(self, tunnel: TunnelConnection, stream_id: int) -> StreamHandler | None:
        if self.control_id is None:
            self.control_id = stream_id
            return ControlChannel(self, stream_id)
        if not self.welcomed:
            log.warning(
                "%s opened stream %d before its hello was answered", self.peer_name, stream_id
            )
            return None
        stream = BackendStream(tunnel, stream_id, self)
        self.streams.add(stream)
        return stream

    def start_dial(self, stream: BackendStream, service: Service) -> None:
        task = asyncio.get_running_loop().create_task(
            stream.dial(service, self.server.config.dial_timeout)
        )
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def stream_done(self, stream: BackendStream) -> None:
        self.streams.discard(stream)

    def on_hello(self, hello: Hello) -> None:
        version = negotiate_version(hello.versions)
        self.client_name = hello.name
        assert self.control_id is not None
        if version is None:
            text = (
                f"no common protocol version: client speaks {list(hello.versions)}, "
                f"server speaks {list(SUPPORTED_VERSIONS)}; upgrade the older side"
            )
            log.warning("refusing %s: %s", self.peer_name, text)
            self.tunnel.send(
                self.control_id, encode_message(Refusal(Reason.VERSION_MISMATCH, text))
            )
            self.tunnel.go_away(GoAwayCode.NORMAL)
            asyncio.get_running_loop().call_later(1.0, self.tunnel.close, "version mismatch")
            return
        self._hello_timer.cancel()
        self.welcomed = True
        welcome = Welcome(version, self.server.config.name, catalog_info(self.catalog))
        self.tunnel.send(self.control_id, encode_message(welcome))
        metrics.SESSIONS.labels("server").inc()
        metrics.SESSIONS_OPEN.labels("server").inc()
        log.info(
            "session up with %s, protocol %d, %d services offered",
            self.peer_name,
            version,
            len(self.catalog),
        )

    def protocol_error(self, text: str) -> None:
        log.warning("closing session with %s: %s", self.peer_name, text)
        self.tunnel.go_away(GoAwayCode.PROTOCOL_ERROR, text)

    def _hello_timeout(self) -> None:
        if not self.welcomed and self.tunnel.is_open:
            reason = f"no hello within {self.server.config.handshake_timeout:g}s"
            log.warning("closing connection from %s: %s", self.tunnel.peer, reason)
            metrics.SESSION_ENDS.labels("server", "handshake_timeout").inc()
            self.tunnel.close(reason)

    def _closed(self, future: asyncio.Future[str]) -> None:
        self._hello_timer.cancel()
        for task in list(self.tasks):
            task.cancel()
        self.server.connection_closed(self)
        if self.welcomed:
            metrics.SESSIONS_OPEN.labels("server").dec()
            metrics.SESSION_ENDS.labels("server", "closed").inc()
            log.info("session with %s ended: %s", self.peer_name, future.result())


class ControlChannel:
    """The control stream's handler on the server."""

    def __init__(self, owner: ServerConnection, stream_id: int) -> None:
        self.owner = owner
        self.stream_id = stream_id
        self.reader = MessageReader()

    def on_data(self, data: bytes) -> None:
        self.owner.tunnel.consumed(self.stream_id, len(data))
        try:
            messages = self.reader.feed(data)
        except RemoteProtocolError as exc:
            self.owner.protocol_error(str(exc))
            return
        for message in messages:
            self._handle(message)

    def _handle(self, message: Message) -> None:
        if isinstance(message, Hello) and not self.owner.welcomed:
            self.owner.on_hello(message)
        elif isinstance(message, Hello):
            self.owner.protocol_error("second hello on the control stream")
        # Messages this version does not act on are ignored (forward compatibility).

    def on_end(self) -> None:
        self.owner.tunnel.end(self.stream_id)

    def on_reset(self, reason: str) -> None:
        if self.owner.tunnel.is_open:
            self.owner.tunnel.close("control stream reset")

    def on_drained(self) -> None:
        pass
