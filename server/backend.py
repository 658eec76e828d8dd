"""One stream on the server: read its header, dial the named backend, relay.

The stream names a service of the catalog and nothing else, so the tunnel is never an open
proxy: a name the catalog does not hold (or a ``host:port``) is refused with a reason. Bytes the
client sent behind the header wait, uncredited, until the backend is connected.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from tunnel import metrics
from tunnel.errors import ConfigError, Reason, RemoteProtocolError
from tunnel.links import Service
from tunnel.logonce import Throttled
from tunnel.messages import CONNECTED, StreamAnswer, StreamHeaderParser
from tunnel.relay import Relay
from tunnel.transport import TunnelConnection

if TYPE_CHECKING:
    from server.connection import ServerConnection

log = logging.getLogger("ambassador.server")
throttled = Throttled(log)


class BackendStream(Relay):
    def __init__(self, tunnel: TunnelConnection, stream_id: int, owner: ServerConnection) -> None:
        super().__init__(tunnel, stream_id)
        self.link = tunnel  # never None on the server, unlike Relay.tunnel
        self.owner = owner
        self.service: Service | None = None
        self._header: StreamHeaderParser | None = StreamHeaderParser()
        self._label = "-"
        self._finished = False
        self._expiry: asyncio.TimerHandle | None = None  # the dial's timeout
        self._timed_out: float | None = None  # the timeout, once it cut the dial short
        self.preamble = True  # the stream header comes first
        self.counted = False  # counts in its identity's streams and the process's descriptors

    def on_stream_data(self, data: bytes | bytearray) -> None:
        if self._header is not None:
            try:
                header, rest = self._header.feed(data)
            except RemoteProtocolError as exc:
                self._header = None
                self.refuse(Reason.BAD_HEADER, str(exc), "?")
                return
            self.credit_now(len(data) - len(rest))
            if header is None:
                return
            self._header = None
            self.owner.header_read(self)
            try:
                service = self.owner.catalog.resolve(header.service)
            except ConfigError as exc:
                self.refuse(Reason.UNKNOWN_SERVICE, str(exc), header.service)
                return
            if not self.owner.allows(service):
                self.refuse(
                    Reason.NOT_ALLOWED,
                    f"{self.owner.identity!r} may not reach {service.name!r}",
                    header.service,
                )
                return
            over = self.owner.server.stream_opened(self.owner.identity)
            if over is not None:
                self.refuse(Reason.LIMIT_EXCEEDED, over, header.service)
                return
            self.counted = True
            self.service = service
            self._label = service.name
            self.meters = metrics.meters("server", self._label)
            self.meters.opened += 1
            self.meters.open_now += 1
            self.preamble = False
            self.owner.start_dial(self)
            data = rest
            if not data:
                return
        if self.service is not None:
            self.deliver(data)

    def dial(self, timeout: float) -> asyncio.Task[object]:
        """Start connecting to the service's backend; the task ends when the attempt is over.

        A bare task with a timer and a done callback: a coroutine around them (with
        ``asyncio.timeout()`` or a semaphore) showed in profiles of one new connection per
        request.
        """
        assert self.service is not None  # dialed only once the header named it
        target = self.service.target
        loop = self.owner.loop
        attempt: asyncio.Task[object] = loop.create_task(
            loop.create_connection(self._protocol, target.host, target.port)
        )
        self._expiry = loop.call_later(timeout, self._expire, attempt, timeout)
        attempt.add_done_callback(self._dialed)
        return attempt

    def _protocol(self) -> BackendStream:
        return self

    def _expire(self, attempt: asyncio.Task[object], timeout: float) -> None:
        self._timed_out = timeout
        attempt.cancel()

    def _dialed(self, attempt: asyncio.Task[object]) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        assert self.service is not None  # dialed only once the header named it
        target = self.service.target
        if attempt.cancelled():
            if self._timed_out is not None:  # else the session is closing: nothing to say
                timeout = self._timed_out
                self.refuse(Reason.BACKEND_TIMEOUT, f"{target} did not answer within {timeout:g}s")
            return
        exc = attempt.exception()
        if exc is None:
            return
        if isinstance(exc, ConnectionRefusedError):
            self.refuse(Reason.BACKEND_REFUSED, f"{target} refused the connection")
        elif isinstance(exc, OSError):
            detail = exc.strerror or str(exc)
            self.refuse(Reason.BACKEND_UNREACHABLE, f"cannot reach {target}: {detail}")
        else:
            self.refuse(Reason.BACKEND_UNREACHABLE, f"cannot reach {target}: {exc!r}")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.closed:  # the client gave up while we were dialing
            transport.close()
            return
        assert self.stream_id is not None
        self.link.send(self.stream_id, CONNECTED)
        super().connection_made(transport)

    def refuse(self, reason: Reason, text: str, service: str | None = None) -> None:
        """Answer the stream with a reason, then reset it."""
        if self.closed:
            return
        self.closed = True
        name = service if service is not None else self._label
        throttled.warning(
            f"{self.owner.identity}:{name}:{reason.label}",
            "stream %s from %s as %s to %r refused (%s): %s",
            self.stream_id,
            self.owner.peer_name,
            self.owner.identity,
            name,
            reason.label,
            text,
        )
        metrics.STREAM_REFUSALS.labels("server", name if self.service else "-", reason.label).inc()
        assert self.stream_id is not None
        self.link.send(self.stream_id, StreamAnswer(reason, text).encode())
        self.link.reset(self.stream_id, after_data=True)
        self._done()

    def on_closed(self, exc: BaseException | None) -> None:
        self._done()

    def _done(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self.service is not None:
            self.meters.open_now -= 1
        if self.counted:
            self.owner.server.stream_closed(self.owner.identity)
        self.owner.stream_done(self)
