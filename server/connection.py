"""One client's tunnel on the server: the hello on the control stream, then backend streams.

The first stream a client opens is the control stream. Until its :class:`Hello` has been
answered with a :class:`Welcome`, no other stream is accepted; a connection that says nothing
within the handshake timeout is closed, so idle or garbage connections cannot pile up.

The client's identity is its certificate's name (mutual TLS), else its token's name once the
token exchange succeeded (:mod:`tunnel.security.auth`), else ``anonymous``. The catalog in the
welcome lists only what the access rules let that identity reach.

The name a client gives itself in its hello is only a remark: it is never its identity, never
part of how logs and metrics name the peer (its address, and its identity once proven), and is
shown only escaped and bounded (:mod:`tunnel.protocol.peertext`). Before the hello is answered a
peer can make this module log a bounded number of lines: streams it opens too early are reset, and
only the first is logged, throttled across all connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from typing import Protocol

from server.admission import DESCRIPTOR_RESERVE, Admission, address_key, stranger_log
from server.backend import BackendStream
from server.config import ServerConfig
from server.pool import Pools
from tunnel.aio.allowfrom import refuse_unlisted
from tunnel.aio.proxyaccept import UNEXPECTED, UNEXPECTED_TEXT
from tunnel.aio.transport import StreamHandler, TunnelConnection, clock, format_peer
from tunnel.aio.wslayer import WebSocketLayer
from tunnel.errors import Reason, RemoteProtocolError
from tunnel.operations import metrics
from tunnel.operations.logonce import Throttled
from tunnel.protocol.frames import GoAwayCode
from tunnel.protocol.handshake import (
    Deadline,
    Refused,
    ServerHandshake,
    TokenAttempt,
    TurnedAway,
    Violation,
    Welcomed,
)
from tunnel.protocol.messages import (
    EXTENDED_HEADER_VERSION,
    HEADER_VERSION,
    CatalogChanged,
    GoingAway,
    Message,
    MessageReader,
    ServiceInfo,
    encode_message,
)
from tunnel.protocol.peertext import NAME_LIMIT, quoted, shown
from tunnel.protocol.session import Role, Session
from tunnel.security import auth
from tunnel.security.access import ANONYMOUS
from tunnel.security.trust import Untrusted
from tunnel.settings.links import Catalog, Service

log = logging.getLogger("ambassador.server")
throttled = Throttled(log)

CLIENT_MESSAGE = 16 * 1024  # the largest control message a client sends (hello, auth)
# Seconds the connection stays open after the server has said why it ends (a Refusal of the
# hello, a GoingAway while running) and queued a Go Away: time for both to be written and read,
# so that the client logs the server's reason rather than a dropped connection (a client that
# read them closes first). The connection is closed then whatever the client does, so a client
# that never reads cannot hold it. No measurement chose either value.
REFUSAL_GRACE = 1.0
GOING_AWAY_GRACE = 0.5


def catalog_info(catalog: Catalog) -> tuple[ServiceInfo, ...]:
    return tuple(ServiceInfo(service.alias, service.port, service.transport) for service in catalog)


class ConnectionHost(Protocol):
    """What the process serving the connections (a :class:`~server.app.Server`) counts across
    all of them, and is told when one ends."""

    @property
    def admission(self) -> Admission:
        """The connections not authenticated yet, by source."""

    @property
    def descriptor_limit(self) -> int: ...

    @property
    def pools(self) -> Pools:
        """The pooled services, shared by every connection."""

    def descriptors_left(self) -> int: ...

    def stream_opened(self, identity: str) -> str | None:
        """Count a backend stream of ``identity``; or why it may not have one."""

    def stream_closed(self, identity: str) -> None: ...

    def connection_closed(self, connection: ServerConnection) -> None: ...

    def refused_early(self, peer: object, reason: str, text: str) -> None:
        """A connection closed before its session began: counted, and said in one line."""


class ServerConnection:
    """Everything the server knows about one tunnel connection."""

    def __init__(
        self,
        config: ServerConfig,
        host: ConnectionHost,
        peer: str = "",
        layered: bool = False,
        dialed: bool = False,
    ) -> None:
        self.config = config  # the server's, with its tokens; a reload pushes the new one
        self.host = host
        self.loop = loop = asyncio.get_running_loop()
        self.dialed = dialed  # this server dialed the client (server/dialer.py): no stranger
        self.tunnel = TunnelConnection(
            Session(Role.SERVER, config.limits, clock(), guarded=True),
            self._accept,
            peer,
            # A layer in front (TLS, a WebSocket) asks; a connection this server dialed is
            # not admitted.
            on_connect=None if layered or dialed else self.admit,
        )
        self.in_front = layered  # a layer in front is still handshaking, under its deadline
        self._admitted: str | None = None  # the source it counts against while unauthenticated
        # A layer in front (TLS, a WebSocket) carries the socket: no raw bytes before its handshake.
        self._tls = layered
        self._headerless: dict[BackendStream, float] = {}  # streams yet to name a service
        self._sweep: asyncio.TimerHandle | None = None  # refuses those past the timeout
        self.cert_name: str | None = None  # the client certificate's name, under mutual TLS
        self.peer_cert: bytes | None = None  # its DER, to check against a reloaded CRL
        self.token_name: str | None = None  # set once the token exchange succeeded
        self.token_fingerprint = b""  # of the secret it proved (auth.fingerprint), for reloads
        self.control_id: int | None = None
        self.client_name = ""  # what the hello called the client: a remark, never an identity
        self._early_streams = 0  # streams opened before the hello was answered (all reset)
        self.handshake: ServerHandshake | None = None  # made when the control stream opens
        self.refused = False  # the hello was refused (and logged as such)
        # Dialed: the listening client refused this server before any hello, and why.
        self.turned_away: TurnedAway | None = None
        self.closing = False  # close_with was called: said once, counted once
        self.broken = False  # the peer broke the protocol: nothing more it says is heard
        self.tls_done = False  # a TLS handshake completed on this connection
        self.upgraded_done = False  # a WebSocket upgrade completed on this connection
        self.channel_binding = b""  # its tunnel.security.binding, which token proofs cover
        self.streams: set[BackendStream] = set()
        self.tasks: set[asyncio.Task[object]] = set()  # backend dials under way
        self._dials = 0  # how many: at most max_pending_dials
        # Streams waiting for a dial slot, oldest first, each with the timer that gives up.
        self._waiting: dict[BackendStream, asyncio.TimerHandle] = {}
        self.shown: tuple[ServiceInfo, ...] = ()
        self._told_header = self.stream_header  # the stream header version the client was told
        self._reachable = Catalog()
        self._reachable_for: object = None  # the configuration _reachable was computed from
        self._rtt_label = ""  # the peer label of this session's ambassador_rtt_seconds
        self.up: asyncio.Future[None] = loop.create_future()  # done at the welcome
        self._deadline = Deadline(config.handshake_timeout, loop.time())
        self._hello_timer = loop.call_at(self._deadline.at, self._hello_timeout)
        self.tunnel.closed.add_done_callback(self._closed)

    def reconfigure(self, config: ServerConfig) -> None:
        """The server's new configuration, for all this connection does from now on."""
        self.config = config

    @property
    def proxy_protocol(self) -> Mapping[Service, int]:
        return self.config.proxy_protocol

    @property
    def stream_header(self) -> int:
        """The stream header version to ask of the client: 2, carrying each consumer's
        origin, when a backend wants a PROXY protocol header (--proxy-protocol)."""
        return EXTENDED_HEADER_VERSION if self.config.proxy_protocol else HEADER_VERSION

    @property
    def identity(self) -> str:
        return self.cert_name or self.token_name or ANONYMOUS

    @property
    def welcomed(self) -> bool:
        return self.handshake is not None and self.handshake.welcomed

    @property
    def catalog(self) -> Catalog:
        return self.config.catalog

    @property
    def pools(self) -> Pools:
        return self.host.pools

    @property
    def who(self) -> str:
        """The identity, escaped and bounded for logs, labels and /status."""
        return shown(self.identity, NAME_LIMIT)

    @property
    def peer_name(self) -> str:
        """How logs and metrics name this peer: its address, and its identity once proven."""
        proven = self.cert_name or self.token_name
        return f"{self.tunnel.peer} ({self.who})" if proven else self.tunnel.peer

    @property
    def calls_itself(self) -> str:
        """The hello's name, as a remark for a log line: escaped, bounded, never an identity."""
        return f"calls itself {quoted(self.client_name)}" if self.client_name else ""

    def admit(self, transport: asyncio.BaseTransport) -> bool:
        """Count the new socket as unauthenticated, or refuse it (closing this connection)
        when a bound is reached."""
        peername = transport.get_extra_info("peername")
        key = address_key(peername)
        if refuse_unlisted(self.tunnel, transport, self.config.allow_from, throttled,
                           role="server", plaintext=not self._tls):  # fmt: skip
            self.refused = True
            return False
        admission = self.config.admission
        bound = self.host.admission.admit(key, admission)
        if bound is None and self.host.descriptors_left() < DESCRIPTOR_RESERVE // 2:
            self.host.admission.release(key)
            bound = "descriptors"
        if bound is None:
            self._admitted = key
            return True
        self.refused = True  # said here: the close needs no line of its own
        metrics.CONNECTIONS_REJECTED.labels(bound).inc()
        if bound == "descriptors":
            stranger_log.warning(
                "refused connection from %s: this process is out of file descriptors (its "
                "limit is %d); raise it (ulimit -n, LimitNOFILE=)",
                format_peer(peername), self.host.descriptor_limit,
            )  # fmt: skip
        else:
            limit = (
                admission.unauthenticated
                if bound == "max_unauthenticated"
                else admission.unauthenticated_per_address
            )
            stranger_log.warning(
                "refused connection from %s: %d connections that have not authenticated yet "
                "(--%s); raise it if clients wait for this",
                format_peer(peername), limit, bound.replace("_", "-"),
            )  # fmt: skip
        self.tunnel.close(bound)
        return False

    def tls_established(self, cert_name: str | None, cert: bytes | None, binding: bytes) -> None:
        """The TLS handshake completed (:func:`server.tls_accept.accept_tls`)."""
        self.tls_done = True
        self.in_front = self.config.websocket_path is not None  # then the upgrade follows
        self.cert_name = cert_name
        self.peer_cert = cert
        self.channel_binding = binding

    def tls_refused(self, peer: str, why: str, rejected: str | None = None) -> None:
        """The TLS handshake failed: one line, one count, and the connection closes."""
        if rejected is not None:
            self.host.refused_early(peer, rejected, why)
        else:
            stranger_log.warning("refused connection from %s: %s", peer, why)
            metrics.SESSION_ENDS.labels("server", "tls_handshake").inc()
        self.refused = True
        self.tunnel.close(why)

    def upgraded(self) -> None:
        """The WebSocket upgrade completed: the hello's deadline is the session's own now."""
        self.upgraded_done = True
        self.in_front = False

    def websocket_refused(self, layer: WebSocketLayer, why: str | None) -> None:
        """The WebSocket upgrade failed: one line (unless ``why`` is None: said already, or a
        probe that sent nothing), one count, and the connection closes."""
        if why is not None and not self.refused:
            peer = format_peer(layer.get_extra_info("peername"))
            self.refused = True
            if layer.proxy_header:
                self.host.refused_early(peer, UNEXPECTED, UNEXPECTED_TEXT)
            else:
                stranger_log.warning("refused connection from %s: %s", peer, why)
                metrics.SESSION_ENDS.labels("server", "websocket_upgrade").inc()
        self.tunnel.close(why or "closed before the WebSocket upgrade")

    def _authenticated(self) -> None:
        if self._admitted is not None:
            self.host.admission.release(self._admitted)
            self._admitted = None

    @property
    def access_enabled(self) -> bool:
        return self.config.access.enabled

    def stream_opened(self) -> str | None:
        """Count a backend stream against this identity and the process; or why it may not."""
        return self.host.stream_opened(self.identity)

    def stream_closed(self) -> None:
        self.host.stream_closed(self.identity)

    def allows(self, service: Service) -> bool:
        return self.config.access.allows(self.identity, service)

    @property
    def reachable(self) -> Catalog:
        """What this client may reach: all it is shown, and all its streams may name.

        Computed once per configuration (a reload brings a new one), not once per stream.
        """
        config = self.config
        if self._reachable_for is not config:
            access = config.access
            catalog = config.catalog
            self._reachable = access.visible(self.identity, catalog) if access.enabled else catalog
            self._reachable_for = config
        return self._reachable

    def _accept(self, tunnel: TunnelConnection, stream_id: int) -> StreamHandler | None:
        if self.control_id is None:
            self.control_id = stream_id
            self._start_handshake()
            return ControlChannel(self, stream_id)
        if not self.welcomed:
            self._early_streams += 1
            if self._early_streams == 1:
                stranger_log.warning(
                    "%s opened stream %d before its hello was answered; it is reset, and "
                    "further ones on this connection are not logged",
                    self.peer_name, stream_id,
                )  # fmt: skip
            return None
        stream = BackendStream(tunnel, stream_id, self)
        self.streams.add(stream)
        # Until it names its service, a stream holds what the client sent behind it: it has
        # the handshake timeout to do so.
        self._headerless[stream] = self.loop.time()
        if self._sweep is None:
            timeout = self.config.handshake_timeout
            self._sweep = self.loop.call_later(timeout, self._sweep_headerless)
        return stream

    def header_read(self, stream: BackendStream) -> None:
        self._headerless.pop(stream, None)

    def _sweep_headerless(self) -> None:
        self._sweep = None
        timeout = self.config.handshake_timeout
        now = self.loop.time()
        for stream, opened in list(self._headerless.items()):
            if now - opened >= timeout:
                del self._headerless[stream]
                stream.refuse(Reason.BAD_HEADER, f"no stream header within {timeout:g}s", "-")
        if self._headerless and self.tunnel.is_open:
            oldest = min(self._headerless.values())
            self._sweep = self.loop.call_later(oldest + timeout - now, self._sweep_headerless)

    def start_dial(self, stream: BackendStream) -> None:
        """Dial the stream's backend now, or once a dial slot is free.

        At most max_pending_dials dials run at once; a burst of new streams waits its turn
        (within the dial timeout) instead of flooding the backend's accept queue.
        """
        config = self.config
        if self._dials < config.max_pending_dials:
            self._dials += 1
            attempt = stream.dial(config.dial_timeout)
            self.tasks.add(attempt)
            attempt.add_done_callback(self._dial_finished)
            return
        expiry = self.loop.call_later(config.dial_timeout, self._slot_wait_expired, stream)
        self._waiting[stream] = expiry

    def _dial_finished(self, attempt: asyncio.Task[object]) -> None:
        self.tasks.discard(attempt)
        self._dials -= 1
        while self._waiting and self.tunnel.is_open:
            stream, expiry = next(iter(self._waiting.items()))
            del self._waiting[stream]
            expiry.cancel()
            if not stream.closed:
                self.start_dial(stream)
                return

    def _slot_wait_expired(self, stream: BackendStream) -> None:
        del self._waiting[stream]
        if stream.closed:  # the client gave up on it first: no limit was hit
            return
        config = self.config
        metrics.LIMIT_HITS.labels("max_pending_dials").inc()
        stream.refuse(
            Reason.LIMIT_EXCEEDED,
            f"waited {config.dial_timeout:g}s for one of {config.max_pending_dials} backend "
            "dial slots",
        )

    def stream_done(self, stream: BackendStream) -> None:
        self.streams.discard(stream)
        self._headerless.pop(stream, None)

    # ------------------------------------------------------------ the hello

    def _start_handshake(self) -> None:
        """The handshake machine, made when the control stream opens: by then TLS (if any)
        is done, so the certificate's name and the channel binding are known."""
        self.handshake = ServerHandshake(
            server_name=self.config.name,
            nonce=os.urandom(auth.NONCE_SIZE),
            identity=self.identity,
            certified=self.cert_name is not None,
            tokens=self.config.tokens is not None,
            bound=self.tls_done,
            verify=self._verify,
            offer=self._offer,
            stream_header=self.stream_header,
            dialed=self.dialed,
            own_token=next(iter(self.config.tokens or ()), None),
        )

    def on_message(self, message: Message) -> None:
        """A message on the control stream: the handshake says what to answer."""
        assert self.handshake is not None
        step = self.handshake.receive(message)
        if self.handshake.hello is not None:
            self.client_name = self.handshake.hello.name
        event = step.event
        if isinstance(event, Violation):
            self.protocol_error(event.text)
        elif isinstance(event, Refused):
            self._refusing(event)
        elif isinstance(event, Welcomed):
            self._welcomed(event)
        elif isinstance(event, TurnedAway):
            # Said by the dialer, once per target and reason (server/dialer.py).
            self.turned_away = event
            self.refused = True
            self.tunnel.close("refused by the client")
        for answer in step.send:
            self._send(answer)
        if isinstance(event, Refused):  # after the Refusal: the Go Away follows it
            self._go_away_after_flush()
            self.loop.call_later(REFUSAL_GRACE, self.tunnel.close, event.reason.label)

    def _verify(self, attempt: TokenAttempt) -> bytes | None:
        """The server's proof if the client proved its token, else None."""
        tokens = self.config.tokens
        secret = None if tokens is None else tokens.get(attempt.name)
        name, binding = attempt.name, self.channel_binding
        args = (name, attempt.client_nonce, attempt.server_nonce)
        expected = auth.client_proof(secret or b"?", *args, version=attempt.version,
                                     binding=binding)  # fmt: skip
        if secret is None or not auth.proofs_match(expected, attempt.proof):
            return None
        self.token_name = name
        self.token_fingerprint = auth.fingerprint(secret)
        return auth.server_proof(secret, *args, version=attempt.version, binding=binding)

    def _offer(self, identity: str) -> tuple[ServiceInfo, ...] | None:
        access = self.config.access
        visible = access.visible(identity, self.catalog)
        if access.enabled and not visible:
            return None
        return catalog_info(visible)

    def _welcomed(self, event: Welcomed) -> None:
        self._hello_timer.cancel()
        if not self.up.done():
            self.up.set_result(None)
        self._reachable_for = None  # the identity is settled now
        self.tunnel.session.unguard()
        self._authenticated()
        self.shown = event.welcome.catalog
        self._told_header = event.welcome.stream_header
        metrics.SESSIONS.labels("server").inc()
        metrics.SESSIONS_OPEN.labels("server").inc()
        # This client's round trip, one series per session, removed when the session ends.
        self._rtt_label = self.peer_name
        rtt = metrics.RTT.labels(self._rtt_label)
        self.tunnel.on_rtt = rtt.set
        if self.tunnel.session.rtt is not None:
            rtt.set(self.tunnel.session.rtt)
        calls = f", {self.calls_itself}" if self.client_name else ""
        log.info(
            "session up with %s as %s, protocol %d, %d of %d services offered%s",
            self.peer_name, self.who, event.welcome.version, len(self.shown), len(self.catalog),
            calls,
        )  # fmt: skip

    def _refusing(self, event: Refused) -> None:
        calls = f" ({self.calls_itself})" if self.client_name else ""
        log.warning("refused %s%s: %s", self.peer_name, calls, shown(event.text))
        self.refused = True
        metrics.SESSION_ENDS.labels("server", event.reason.label).inc()

    # ------------------------------------------------------- while running

    def update_catalog(self) -> None:
        """After a reload: send the new catalog, or end a session that lost all access."""
        if not self.welcomed or not self.tunnel.is_open:
            return
        visible = self.config.access.visible(self.identity, self.catalog)
        if self.config.access.enabled and not visible:
            self.close_with(Reason.NOT_ALLOWED, f"access for {quoted(self.identity)} was withdrawn")
            return
        shown = catalog_info(visible)
        if shown != self.shown or self.stream_header != self._told_header:
            self.shown = shown
            self._told_header = self.stream_header
            self._send(CatalogChanged(shown, stream_header=self.stream_header))

    def close_on_reload(self, why: Untrusted) -> None:
        """End a session the reloaded configuration would not admit; one line says why."""
        if self.closing or self.refused:
            return
        metrics.RELOAD_CLOSES.labels(why.label).inc()
        text = f"the reloaded configuration would not admit it: {why.text}"
        if self.welcomed and self.tunnel.is_open:
            self.close_with(Reason.NOT_ALLOWED, text)
            return
        log.warning("closing connection from %s: %s", self.peer_name, shown(text))
        self.refused = True  # logged: the close needs no second line
        metrics.SESSION_ENDS.labels("server", Reason.NOT_ALLOWED.label).inc()
        self.tunnel.close(text)

    def close_with(self, reason: Reason, text: str) -> None:
        if self.closing:
            return
        self.closing = True
        log.warning("closing session with %s: %s", self.peer_name, shown(text))
        metrics.SESSION_ENDS.labels("server", reason.label).inc()
        self._send(GoingAway(reason, text))
        self._go_away_after_flush()
        asyncio.get_running_loop().call_later(GOING_AWAY_GRACE, self.tunnel.close, text)

    def go_away(self, reason: Reason, text: str) -> None:
        """Take no new streams (they get an RST); open ones carry on."""
        if self.welcomed and self.tunnel.is_open:
            self._send(GoingAway(reason, text))
        self._go_away_after_flush()

    def protocol_error(self, text: str) -> None:
        if self.broken:  # one line per connection, however many bad messages one frame holds
            return
        self.broken = True
        text = shown(text)  # it may quote what the peer sent
        log.warning("closing session with %s: %s", self.peer_name, text)
        metrics.SESSION_ENDS.labels("server", "protocol_error").inc()
        self.tunnel.go_away(GoAwayCode.PROTOCOL_ERROR, text)

    def _go_away_after_flush(self) -> None:
        # Control frames leave before stream data; queue the Go Away one loop turn later, so
        # the notice just sent on the control stream reaches the peer first.
        asyncio.get_running_loop().call_soon(self.tunnel.go_away, GoAwayCode.NORMAL)

    def _send(self, message: Message) -> None:
        assert self.control_id is not None
        self.tunnel.send(self.control_id, encode_message(message))

    def _hello_timeout(self) -> None:
        if self.in_front:
            return  # the layer in front keeps its own deadline, and says why it closes
        if not self.welcomed and self.tunnel.is_open:
            reason = self._deadline.no_hello()
            if not self.dialed:  # the dialer says why, once per target and reason
                stranger_log.warning("closing connection from %s: %s", self.tunnel.peer, reason)
            self.refused = True  # logged: the close needs no second line
            metrics.SESSION_ENDS.labels("server", "handshake_timeout").inc()
            self.tunnel.close(reason)

    def _closed(self, future: asyncio.Future[str]) -> None:
        self._hello_timer.cancel()
        if self._sweep is not None:
            self._sweep.cancel()
        self._headerless.clear()
        self._authenticated()  # or never will: either way it no longer counts
        for task in list(self.tasks):
            task.cancel()
        for expiry in self._waiting.values():
            expiry.cancel()
        self._waiting.clear()
        self.host.connection_closed(self)
        if self.welcomed:
            with contextlib.suppress(KeyError):
                metrics.RTT.remove(self._rtt_label)
            metrics.SESSIONS_OPEN.labels("server").dec()
            metrics.SESSION_ENDS.labels("server", "closed").inc()
            log.info("session with %s ended: %s", self.peer_name, future.result())
        elif self.tunnel.session.proxy_header and not self.dialed:
            self.host.refused_early(self.tunnel.peer, UNEXPECTED, UNEXPECTED_TEXT)
        elif not self.refused and not self.dialed:  # the dialer says why, once per target
            # A connection that closes without a byte is a port probe (a load balancer's
            # health check, a port scanner): not worth a warning. Anything else is.
            said_something = (
                self.tls_done
                or self.upgraded_done
                or self.tunnel.session.stats().bytes_received > 0
            )
            stranger_log.log(
                logging.WARNING if said_something else logging.DEBUG,
                "connection from %s ended before its hello: %s",
                self.tunnel.peer, future.result(),
            )  # fmt: skip


class ControlChannel:
    """The control stream's handler on the server."""

    def __init__(self, owner: ServerConnection, stream_id: int) -> None:
        self.owner = owner
        self.stream_id = stream_id
        # A client sends a hello and perhaps an auth message, each a few hundred bytes.
        self.reader = MessageReader(max_message=CLIENT_MESSAGE)

    def on_data(self, data: bytes | bytearray) -> None:
        self.owner.tunnel.consumed(self.stream_id, len(data))
        try:
            messages = self.reader.feed(data)
        except RemoteProtocolError as exc:
            self.owner.protocol_error(str(exc))
            return
        for message in messages:
            if self.owner.broken:
                return
            self.owner.on_message(message)

    def on_end(self) -> None:
        self.owner.tunnel.end(self.stream_id)

    def on_reset(self, reason: str) -> None:
        if self.owner.tunnel.is_open:
            self.owner.tunnel.close("control stream reset")

    def on_drained(self) -> None:
        pass
