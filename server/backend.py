"""One stream on the server: read its header, dial the named backend, relay.

The stream names a service of the catalog and nothing else, so the tunnel is never an open
proxy: a name the catalog does not hold (or a ``host:port``) is refused with a reason. Bytes the
client sent behind the header wait, uncredited, until the backend is connected.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Protocol, cast

from server.pool import NoTarget, Pool, Pools
from server.udp_backend import take_flow
from tunnel.aio.dial import connect
from tunnel.aio.relay import Relay
from tunnel.aio.transport import TunnelConnection
from tunnel.errors import ConfigError, Reason, RemoteProtocolError
from tunnel.operations import metrics
from tunnel.operations.logonce import Throttled
from tunnel.operations.oserrors import dial_error
from tunnel.protocol import proxyheader
from tunnel.protocol.messages import CONNECTED, StreamAnswer, StreamHeaderParser
from tunnel.protocol.origin import Origin
from tunnel.protocol.peertext import quoted, shown
from tunnel.settings.links import Catalog, Service

log = logging.getLogger("ambassador.server")
_MAX_OFFERED = 20  # catalog entries named in a refusal's text
throttled = Throttled(log)


class StreamOwner(Protocol):
    """The session a backend stream belongs to (a :class:`~server.connection.ServerConnection`):
    what the stream asks of it, and what it tells it."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def identity(self) -> str: ...

    @property
    def who(self) -> str: ...

    @property
    def peer_name(self) -> str: ...

    @property
    def catalog(self) -> Catalog:
        """All the server offers."""

    @property
    def reachable(self) -> Catalog:
        """What this session's client may reach."""

    @property
    def access_enabled(self) -> bool: ...

    @property
    def pools(self) -> Pools:
        """The pooled services: a stream to one of them dials through its pool."""

    @property
    def proxy_protocol(self) -> Mapping[Service, int]:
        """The links whose backend gets a PROXY protocol header first, and its version."""

    def header_read(self, stream: BackendStream) -> None:
        """``stream`` named its service: it no longer waits for its header."""

    def stream_opened(self) -> str | None:
        """Count one more backend stream of this identity; or why it may not have one."""

    def stream_closed(self) -> None:
        """A stream stream_opened counted has ended."""

    def start_dial(self, stream: BackendStream) -> None: ...

    def stream_done(self, stream: BackendStream) -> None: ...


class BackendStream(Relay):
    def __init__(self, tunnel: TunnelConnection, stream_id: int, owner: StreamOwner) -> None:
        super().__init__(tunnel, stream_id)
        self.link = tunnel  # never None on the server, unlike Relay.tunnel
        self.owner = owner
        self.service: Service | None = None
        self.origin: Origin | None = None  # the consumer's endpoints, when the client sent them
        self._header: StreamHeaderParser | None = StreamHeaderParser()
        self._first = True  # no byte of the stream seen yet
        self._label = "-"
        self._finished = False
        self._expiry: asyncio.TimerHandle | None = None  # the dial's timeout
        self._timed_out: float | None = None  # the timeout, once it cut the dial short
        self.preamble = True  # the stream header comes first
        self.counted = False  # counts in its identity's streams and the process's descriptors
        self.pool: Pool | None = None  # the pool dialed through, when the service is pooled
        self.target: object = None  # what it dials or is connected to, for the pool and the log
        self.pooled = False  # counted among its target's open streams

    def on_stream_data(self, data: bytes | bytearray) -> None:
        if self._header is not None:
            if self._first and data:
                self._first = False
                if take_flow(self, data):  # a UDP flow: server.udp_backend takes the stream
                    self._header = None
                    return
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
                service = self.owner.reachable.resolve(header.service)
            except ConfigError as exc:
                self._unreachable(header.service, str(exc))
                return
            over = self.owner.stream_opened()
            if over is not None:
                self.refuse(Reason.LIMIT_EXCEEDED, over, header.service)
                return
            self.counted = True
            self.service = service
            self.origin = header.origin
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

    def _unreachable(self, asked: str, text: str) -> None:
        """Refuse a name this client may not reach, telling it only what it may reach.

        A service the access rules hide gets the same answer as a name that does not exist,
        so a client cannot probe for services beyond its own; the answer says which identity
        the server saw and points at the access rules. The server's own log says plainly
        which it was.
        """
        owner = self.owner
        if not owner.access_enabled:
            self.refuse(Reason.UNKNOWN_SERVICE, text, asked)
            return
        names = [service.full_name for service in owner.reachable]
        offered = ", ".join(names[:_MAX_OFFERED]) or "nothing"
        if len(names) > _MAX_OFFERED:
            offered += f" and {len(names) - _MAX_OFFERED} more"
        told = StreamAnswer(
            Reason.UNKNOWN_SERVICE,
            f"the server does not offer {quoted(asked)} to this client (identity "
            f"{quoted(owner.identity)}; offered to it: {offered}); if it should, check the "
            "server's access rules",
        )
        try:
            hidden = owner.catalog.resolve(asked)
        except ConfigError:
            self.refuse(Reason.UNKNOWN_SERVICE, text, asked, told=told)
            return
        self.refuse(
            Reason.NOT_ALLOWED,
            f"{quoted(owner.identity)} may not reach {hidden.name!r}: the access rules hide it "
            "(the client is told the server does not offer it)",
            asked,
            hidden,
            told=told,
        )

    def dial(self, timeout: float) -> asyncio.Task[object]:
        """Start connecting to the service's backend; the task ends when the attempt is over.

        A bare task with a timer and a done callback: a coroutine around them (with
        ``asyncio.timeout()`` or a semaphore) showed in profiles of one new connection per
        request.
        """
        assert self.service is not None  # dialed only once the header named it
        self.target = target = self.service.target
        loop = self.owner.loop
        self.pool = pool = self.owner.pools.get(self.service)
        if pool is not None:
            dialing = pool.connect(loop, self._protocol, timeout, self._dialing)
            attempt: asyncio.Task[object] = loop.create_task(dialing)
        else:
            attempt = loop.create_task(connect(loop, self._protocol, target))
        self._expiry = loop.call_later(timeout, self._expire, attempt, timeout)
        attempt.add_done_callback(self._dialed)
        return attempt

    def _protocol(self) -> BackendStream:
        return self

    def _dialing(self, target: object) -> None:
        self.target = target

    def _expire(self, attempt: asyncio.Task[object], timeout: float) -> None:
        self._timed_out = timeout
        attempt.cancel()

    def _dialed(self, attempt: asyncio.Task[object]) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        target = self.target
        if attempt.cancelled():
            if self._timed_out is not None:  # else the session is closing: nothing to say
                self.refuse(*dial_error(target, TimeoutError(), self._timed_out))
            return
        exc = attempt.exception()
        if isinstance(exc, NoTarget):
            self.refuse(exc.reason, str(exc))
        elif exc is not None:
            self.refuse(*dial_error(target, exc, self._timed_out or 0.0))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.closed:  # the client gave up while we were dialing
            transport.close()
            return
        assert self.stream_id is not None
        if self.pool is not None:
            self.pool.opened(self.target)  # type: ignore[arg-type]
            self.pooled = True
        self.link.send(self.stream_id, CONNECTED)
        assert self.service is not None  # dialed only once the header named it
        version = self.owner.proxy_protocol.get(self.service)
        if version is not None:
            # Before any of the consumer's bytes: the backend reads the header first. Without
            # an origin (an older client) v2 says LOCAL and v1 UNKNOWN: "use the connection's
            # own addresses", which are the server's.
            header = proxyheader.encode(version, self.origin)
            cast(asyncio.Transport, transport).write(header)  # uvloop's is not a subclass
        super().connection_made(transport)

    def refuse(
        self,
        reason: Reason,
        text: str,
        asked: str | None = None,
        known: Service | None = None,
        told: StreamAnswer | None = None,
    ) -> None:
        """Answer the stream with a reason (or with ``told``, when the client is to be told
        less than the log says), then reset it.

        ``asked`` is the name the stream header gave (the client's, shown escaped), ``known``
        the catalog entry it named, if any. The log is throttled per identity, reason and
        known service (every unknown name counts as one), never per name a client makes up.
        """
        if self.closed:
            return
        self.closed = True
        name = asked if asked is not None else self._label
        if known is None and self.service is not None:
            known = self.service
        throttled.warning(
            f"{self.owner.who}:{known.name if known else 'unknown'}:{reason.label}",
            "stream %s from %s as %s to %s refused (%s): %s",
            self.stream_id,
            self.owner.peer_name,
            self.owner.who,
            quoted(name),
            reason.label,
            shown(text),
        )
        metrics.refused("server", name if self.service else "-", reason.label)
        assert self.stream_id is not None
        self.link.send(self.stream_id, (told or StreamAnswer(reason, text)).encode())
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
        if self.pool is not None and self.pooled:
            self.pool.closed(self.target)  # type: ignore[arg-type]
        if self.counted:
            self.owner.stream_closed()
        self.owner.stream_done(self)
