"""One UDP flow on the server: a connected UDP socket toward the backend, per flow.

A stream whose first byte is the flow header (``tunnel.protocol.datagrams``) is handed here by
:class:`server.backend.BackendStream`. The header names a UDP service of the catalog this
client may reach, and nothing else: a TCP service, or a name the catalog lacks, is refused with
a reason and an RST, like any stream. Once named, the flow opens one UDP socket connected to the
service's target (so only that target's answers come back on it) and relays datagrams both ways
until the client ends the flow (it expires idle flows) or the session ends.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

from tunnel.aio.flowstream import FlowStream
from tunnel.aio.transport import TunnelConnection
from tunnel.errors import ConfigError, Reason, RemoteProtocolError
from tunnel.operations import metrics
from tunnel.operations.datagram_meters import FlowMeters, flow_meters
from tunnel.operations.logonce import Throttled
from tunnel.operations.oserrors import dial_error
from tunnel.protocol.datagrams import FlowHeaderParser, is_flow
from tunnel.protocol.messages import CONNECTED, StreamAnswer
from tunnel.protocol.peertext import quoted, shown
from tunnel.settings.links import Address, Service

if TYPE_CHECKING:
    from server.backend import BackendStream, StreamOwner

log = logging.getLogger("ambassador.server")
throttled = Throttled(log)

# Bytes of datagrams held while the backend socket opens (a millisecond or so): as much as a
# stream may queue, so a burst that the stream carried is not lost at its end.
HELD_BEFORE_OPEN = 256 * 1024
# Bytes the backend socket may hold unsent before datagrams to it are dropped.
SOCKET_HIGH_WATER = 256 * 1024
_UNNAMED = FlowMeters("server", "-")  # until the header names a service; never collected


def unsent(sock: asyncio.DatagramTransport) -> int:
    """Bytes a UDP socket's transport holds unsent (asyncio's and uvloop's both count them;
    typeshed does not declare it for datagram transports)."""
    size: int = getattr(sock, "get_write_buffer_size", lambda: 0)()
    return size


def take_flow(stream: BackendStream, data: bytes | bytearray) -> bool:
    """Hand ``stream`` to a UDP flow if its first bytes are a flow header; True if so."""
    if not is_flow(data) or stream.stream_id is None:
        return False
    owner = stream.owner
    owner.header_read(stream)
    owner.stream_done(stream)  # it is no longer a byte stream of this session
    flow = BackendFlow(owner, stream.link, stream.stream_id)
    stream.link.hand_over(stream.stream_id, flow)
    flow.on_data(data)
    return True


class BackendFlow(FlowStream, asyncio.DatagramProtocol):
    def __init__(self, owner: StreamOwner, tunnel: TunnelConnection, stream_id: int) -> None:
        super().__init__(tunnel, _UNNAMED, "server")
        self.owner = owner
        self.stream_id = stream_id
        self.header: FlowHeaderParser | None = FlowHeaderParser()
        self.service: Service | None = None
        self.socket: asyncio.DatagramTransport | None = None
        self.held: list[bytes] = []
        self.held_bytes = 0
        self.counted = False
        self.opening: asyncio.Task[object] | None = None

    # ------------------------------------------------------------- from the client

    def on_preamble(self, data: bytes | bytearray) -> bytes | bytearray:
        assert self.header is not None
        try:
            asked, rest = self.header.feed(data)
        except RemoteProtocolError as exc:
            self.refuse(Reason.BAD_HEADER, str(exc), "?")
            return b""
        if asked is None:
            return b""
        self.header = None
        try:
            service = self.owner.reachable.resolve(asked, "udp")
        except ConfigError as exc:
            self.refuse(Reason.UNKNOWN_SERVICE, str(exc), asked)
            return b""
        over = self.owner.stream_opened()
        if over is not None:
            self.refuse(Reason.LIMIT_EXCEEDED, over, asked)
            return b""
        self.counted = True
        self.service = service
        self.meters = flow_meters("server", service.name)
        self.meters.flows_opened += 1
        self.meters.flows_open += 1
        self.preamble = False
        self._open(service)
        return rest

    def _open(self, service: Service) -> None:
        loop = self.owner.loop
        target = service.target
        assert isinstance(target, Address)  # a UDP service's target is HOST:PORT (Service checks)
        self.opening = loop.create_task(
            loop.create_datagram_endpoint(lambda: self, remote_addr=(target.host, target.port))
        )
        self.opening.add_done_callback(self._opened)

    def _opened(self, attempt: asyncio.Task[object]) -> None:
        self.opening = None
        if attempt.cancelled():
            return
        exc = attempt.exception()
        if exc is not None and self.service is not None:
            self.refuse(*dial_error(str(self.service.target), exc, 0.0))

    def on_datagram(self, payload: bytes) -> None:
        sock = self.socket
        if sock is None:
            if self.held_bytes + len(payload) <= HELD_BEFORE_OPEN:
                self.held.append(payload)
                self.held_bytes += len(payload)
            else:
                self.dropped("not_ready", "the backend socket is still opening")
            return
        if unsent(sock) > SOCKET_HIGH_WATER:
            self.dropped("socket_full", "the backend socket's send buffer is full")
            return
        sock.sendto(payload)
        self.meters.datagrams_to_backend += 1

    # ------------------------------------------------------------ from the backend

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport is not a subclass of asyncio's, but has its methods.
        transport = cast(asyncio.DatagramTransport, transport)
        if self.closed:
            transport.close()
            return
        self.socket = transport
        assert self.stream_id is not None
        self.tunnel.send(self.stream_id, CONNECTED)
        held, self.held = self.held, []
        for payload in held:
            self.on_datagram(payload)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        if self.send_datagram(data):
            self.meters.datagrams_to_consumer += 1

    def error_received(self, exc: Exception) -> None:
        # A connected UDP socket hears of ICMP errors (port unreachable: nothing listens at
        # the backend) on a later call; the flow carries on, as UDP does, and it is counted.
        assert self.service is not None
        self.dropped("backend_error", f"backend {self.service.target}: {exc.strerror or exc}"
                     if isinstance(exc, OSError) else str(exc))  # fmt: skip

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            if self.stream_id is not None:
                self.tunnel.reset(self.stream_id)
            self.close()

    # ---------------------------------------------------------------- ending

    def refuse(self, reason: Reason, text: str, asked: str | None = None) -> None:
        """Answer the flow with a reason, then reset it; the log is throttled per reason."""
        if self.closed:
            return
        name = asked if asked is not None else (self.service.name if self.service else "-")
        throttled.warning(
            f"{self.owner.who}:udp:{reason.label}",
            "UDP flow %s from %s as %s to %s refused (%s): %s",
            self.stream_id,
            self.owner.peer_name,
            self.owner.who,
            quoted(name),
            reason.label,
            shown(text),
        )
        metrics.refused("server", self.service.name if self.service else "-", reason.label)
        assert self.stream_id is not None
        self.tunnel.send(self.stream_id, StreamAnswer(reason, text).encode())
        self.tunnel.reset(self.stream_id, after_data=True)
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.opening is not None:
            self.opening.cancel()
        if self.socket is not None:
            self.socket.close()
        self.held.clear()
        if self.service is not None:
            self.meters.flows_open -= 1
        if self.counted:
            self.owner.stream_closed()
