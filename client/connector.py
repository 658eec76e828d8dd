"""Keeps the client's tunnel up: connect, hello, catalog; on loss, reconnect with backoff.

Reconnecting uses exponential backoff with full jitter (a random delay between zero and a bound
that doubles per failure up to a cap), so that many clients cut off by the same fault do not all
come back at the same instant. Names are resolved on every attempt, so a server that moved is
found. A failure is logged once per remote when it starts (and again only when that remote's
reason changes), and counted every time; with several remotes tried in turn, each keeps its
own last error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import ssl
import time
from collections.abc import Callable
from functools import partial

from client.config import ClientConfig, with_context
from tunnel import __version__
from tunnel.aio.proxydial import dial_through
from tunnel.aio.tlslayer import TlsLayer
from tunnel.aio.transport import StreamHandler, TunnelConnection, clock
from tunnel.aio.wslayer import WebSocketLayer
from tunnel.errors import EgressFailed, Reason, RemoteProtocolError
from tunnel.operations import metrics
from tunnel.operations.oserrors import connect_error
from tunnel.protocol.handshake import (
    ClientHandshake,
    Deadline,
    Failed,
    Notice,
    Step,
    TokenProofs,
    Welcomed,
)
from tunnel.protocol.messages import (
    HEADER_VERSION,
    MAX_CATALOG,
    CatalogChanged,
    GoingAway,
    Message,
    MessageReader,
    ServiceInfo,
    Welcome,
    encode_message,
)
from tunnel.protocol.peertext import NAME_LIMIT, shown
from tunnel.protocol.session import Role, Session
from tunnel.security import auth
from tunnel.security.binding import UNBOUND, server_end_point
from tunnel.security.tls import (
    not_after_der,
    peer_certificate,
    spki_pin_of_der,
)
from tunnel.security.tlserrors import describe_tls_error
from tunnel.settings.links import Address
from tunnel.settings.websocket import WebSocketAddress

log = logging.getLogger("ambassador.client")

ROTATE_BEFORE_EXHAUSTION = 10_000  # stream ids left when a session is replaced
STABLE_SESSION = 10.0  # seconds a session must last for the backoff to start over


class ConnectFailed(Exception):
    """One attempt to bring the tunnel up failed; the message says why in one line."""

    def __init__(self, text: str, reason: str, refused: bool = False) -> None:
        super().__init__(text)
        self.reason = reason  # short label for metrics
        self.refused = refused  # the server refused this client: the next try gets the same


class ControlClient:
    """The client's end of the control stream.

    Each message goes to the handshake machine as it arrives, and what it answers (the proof)
    is sent at once. Until the welcome, its steps queue up for the connector, which waits for
    them; after it, notices (catalog changes, going away) go to ``on_message``.
    """

    def __init__(self, handshake: ClientHandshake, on_message: Callable[[Message], None]) -> None:
        self.tunnel: TunnelConnection | None = None
        self.stream_id = 0
        self.reader = MessageReader()
        self.handshake = handshake
        self.steps: asyncio.Queue[Step | ConnectFailed] = asyncio.Queue()
        self._on_message = on_message

    def on_data(self, data: bytes | bytearray) -> None:
        assert self.tunnel is not None
        self.tunnel.consumed(self.stream_id, len(data))
        try:
            messages = self.reader.feed(data)
        except RemoteProtocolError as exc:
            self.tunnel.close(f"bad control message: {shown(str(exc))}")
            return
        for message in messages:
            step = self.handshake.receive(message)
            for answer in step.send:
                self.tunnel.send(self.stream_id, encode_message(answer))
            if isinstance(step.event, Notice):
                self._on_message(step.event.message)
            elif not self.handshake.welcomed or isinstance(step.event, Welcomed):
                self.steps.put_nowait(step)

    def on_end(self) -> None:
        pass

    def on_reset(self, reason: str) -> None:
        if not self.handshake.welcomed:
            reason = reason.removeprefix("tunnel closed: ")
            self.steps.put_nowait(ConnectFailed(reason, "handshake_closed"))
        elif self.tunnel is not None and self.tunnel.is_open:
            self.tunnel.close(f"control stream {reason}")

    def on_drained(self) -> None:
        pass


def find_service(
    catalog: tuple[ServiceInfo, ...], ref: str, transport: str = "tcp"
) -> ServiceInfo | None:
    """The catalog entry of ``transport`` that ``ref`` names (alias, port or alias:port), if
    exactly one does."""
    alias, _, port_text = ref.lower().rpartition(":")
    if not alias:
        alias, port_text = (ref.lower(), "") if not ref.isdigit() else ("", ref)
    port = int(port_text) if port_text.isdigit() else None
    found = [
        s
        for s in catalog
        if (not alias or s.alias == alias)
        and (port is None or s.port == port)
        and s.transport == transport
    ]
    if port is not None and not alias:
        found = [s for s in found if s.alias is None] or found
    return found[0] if len(found) == 1 else None


def _proofs(
    token: tuple[str, bytes], nonce: bytes, binding: bytes, version: int, server_nonce: bytes
) -> TokenProofs:
    """The client's proof of ``token`` for one challenge, and the server's it expects."""
    name, secret = token
    args = (secret, name, nonce, server_nonce)
    return TokenProofs(
        auth.client_proof(*args, version=version, binding=binding),
        auth.server_proof(*args, version=version, binding=binding),
    )


def _refuse_server_stream(tunnel: TunnelConnection, stream_id: int) -> StreamHandler | None:
    return None  # the server never opens streams towards the client in this protocol version


class Connector:
    """Owns the current tunnel session, if any, and the catalog it announced."""

    def __init__(
        self,
        config: ClientConfig,
        on_catalog: Callable[[tuple[ServiceInfo, ...]], None] | None = None,
    ) -> None:
        self.config = config
        self.tunnel: TunnelConnection | None = None
        self.catalog: tuple[ServiceInfo, ...] | None = None
        self.remote: Address | None = None
        self.last_error = ""  # the latest, whichever remote it came from
        self.errors: dict[Address, str] = {}  # each remote's last error, until it is up
        self.error_times: dict[Address, float] = {}  # when it came (time.time()), for /status
        self.identity = ""  # the identity the server says it gave this client, if it says
        # The highest stream header version the server reads: 2 carries the consumer's origin.
        self.stream_header = HEADER_VERSION
        self.on_catalog = on_catalog
        self._up = asyncio.Event()
        # While the server's latest answer was a refusal of this client (its access rules,
        # its --allow-from, the token): what it said. Consumers are then refused at once
        # rather than held for a tunnel that will not come; any other outcome clears it.
        self.refusal = ""
        self._refused = asyncio.Event()
        self.sessions = 0
        self.draining: set[TunnelConnection] = set()  # old sessions finishing their streams
        # (service, transport) -> in the catalog; cleared when it changes
        self._offered: dict[tuple[str, str], bool] = {}
        self._failing: dict[Address, str] = {}  # remote -> reason last logged for it
        self._going_away: GoingAway | None = None  # the server's last word on this session
        self.tls_context = with_context(config).tls_context

    def offers(self, service: str, transport: str = "tcp") -> bool:
        """Whether the last catalog holds ``service`` over ``transport`` (True before any
        catalog came): asked once per consumer connection or UDP flow, so the answer is kept
        until the catalog changes."""
        key = (service, transport)
        known = self._offered.get(key)
        if known is None:
            catalog = self.catalog
            known = catalog is None or find_service(catalog, service, transport) is not None
            self._offered[key] = known
        return known

    def rotate_if_exhausted(self, tunnel: TunnelConnection) -> None:
        """Move to a fresh session well before this one runs out of stream ids (2**31 of
        them): it drains like after a Go Away, and new streams go to the new session."""
        if tunnel.session.streams_left < ROTATE_BEFORE_EXHAUSTION and tunnel is self.tunnel:
            log.info("session to %s is running out of stream ids; opening a new one", self.remote)
            metrics.LIMIT_HITS.labels("stream_ids").inc()
            if tunnel.on_go_away is not None:
                tunnel.on_go_away()

    def reconfigure(self, config: ClientConfig) -> None:
        """New remotes, TLS material and timeouts, for the next connection on."""
        context = with_context(config).tls_context  # read by the CLI already, usually
        self.config = config
        self.tls_context = context
        tunnel = self.tunnel
        if self.remote is not None and self.remote not in config.remotes and tunnel:
            log.info("%s is no longer a remote; new streams move to the new ones", self.remote)
            if tunnel.on_go_away is not None:
                tunnel.on_go_away()  # drain it like a server's Go Away: open streams finish

    async def wait_tunnel(self, timeout: float) -> TunnelConnection | None:
        """The tunnel once it is up, or None if it is not up within ``timeout`` seconds."""
        tunnel = self.tunnel
        if tunnel is not None and tunnel.accepts_streams and not tunnel.suspect:
            return tunnel
        if self.refusal:
            return None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    up = asyncio.ensure_future(self._up.wait())
                    refused = asyncio.ensure_future(self._refused.wait())
                    try:
                        await asyncio.wait((up, refused), return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        up.cancel()
                        refused.cancel()
                    if self.refusal:
                        return None
                    tunnel = self.tunnel
                    # A session being probed may be dead: wait for its answer or the next one.
                    if tunnel is not None and tunnel.accepts_streams and not tunnel.suspect:
                        return tunnel
                    await asyncio.sleep(0.01)
        except TimeoutError:
            return None

    async def wait_catalog(self) -> tuple[ServiceInfo, ...]:
        await self._up.wait()
        assert self.catalog is not None
        return self.catalog

    async def run(self) -> None:
        """Keep a session up until cancelled."""
        failures = 0
        index = 0
        while True:
            remotes = self.config.remotes  # read each time: a reload may change them
            remote = remotes[index % len(remotes)]
            if failures or self.sessions:
                metrics.RECONNECTS.labels(str(remote)).inc()
            try:
                tunnel, welcome = await self._connect(remote)
            except ConnectFailed as exc:
                metrics.CONNECT_FAILURES.labels(str(remote), exc.reason).inc()
                # One line per remote and kind of failure, not per attempt: the wording of the
                # same fault can vary from one attempt to the next (reset, closed, ...), and
                # the remotes are tried in turn.
                if self._failing.get(remote) != exc.reason:
                    log.warning("%s; retrying", exc)
                self._failing[remote] = exc.reason
                self.last_error = self.errors[remote] = str(exc)
                self.error_times[remote] = time.time()
                self._set_refusal(str(exc) if exc.refused else "")
                failures += 1
                index += 1
                bound = min(self.config.backoff_max, self.config.backoff_min * 2**failures)
                await asyncio.sleep(random.uniform(0, bound))
                continue
            self._failing.pop(remote, None)
            self.sessions += 1
            up_since = asyncio.get_running_loop().time()
            self._session_up(remote, tunnel, welcome)
            going_away = asyncio.Event()
            tunnel.on_go_away = going_away.set
            waiter = asyncio.ensure_future(going_away.wait())
            await asyncio.wait((tunnel.closed, waiter), return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if tunnel.closed.done():
                self._session_down(remote, self._server_reason() or tunnel.closed.result())
                # After a loss, try the remotes in order again: the first is preferred. Not
                # after a peer that stopped answering: a frozen server's kernel still accepts
                # connections, and the hello would wait out its whole timeout there.
                index = index + 1 if tunnel.session.unresponsive else 0
                # A session that lasted counts as health: reconnect at once. One that was lost
                # soon after it came up (a server or balancer that drops every session) counts
                # as a failure, so the backoff grows instead of reconnecting in a tight loop.
                if asyncio.get_running_loop().time() - up_since >= STABLE_SESSION:
                    failures = 0
                else:
                    failures += 1
                    bound = min(self.config.backoff_max, self.config.backoff_min * 2**failures)
                    await asyncio.sleep(random.uniform(0, bound))
            else:
                # The server drains: its open streams finish on this session, new ones go to
                # a new session, with the next remote first.
                self.draining.add(tunnel)
                tunnel.closed.add_done_callback(partial(self._drained, tunnel))
                why = self._server_reason()
                if why is None:
                    self._session_down(remote, "the server is draining", level=logging.INFO)
                else:
                    self._session_down(remote, why)
                index += 1

    def _set_refusal(self, text: str) -> None:
        self.refusal = text
        if text:
            self._refused.set()
        else:
            self._refused.clear()

    def _server_reason(self) -> str | None:
        """Why the server ended the session, from its going-away notice (taken once); None
        when it did not say, or only said it is shutting down."""
        notice, self._going_away = self._going_away, None
        if notice is None or notice.reason is Reason.SHUTTING_DOWN:
            return None
        return f"the server ended it: {shown(notice.text) or notice.reason.label}"

    def _drained(self, tunnel: TunnelConnection, _: asyncio.Future[str]) -> None:
        self.draining.discard(tunnel)

    def _session_up(self, remote: Address, tunnel: TunnelConnection, welcome: Welcome) -> None:
        self.remote = remote
        self.tunnel = tunnel
        self.catalog = welcome.catalog
        self.identity = welcome.identity
        self.stream_header = welcome.stream_header
        self._offered.clear()
        self.last_error = ""
        self._set_refusal("")
        self.errors.pop(remote, None)
        self.error_times.pop(remote, None)
        names = ", ".join(service.name for service in welcome.catalog) or "nothing"
        log.info(
            "tunnel up to %s (%s), protocol %d, offering %s",
            remote,
            shown(welcome.server, NAME_LIMIT),
            welcome.version,
            names,
        )
        self._warn_skipped(remote, welcome.catalog, welcome.skipped)
        metrics.SESSIONS.labels("client").inc()
        metrics.SESSIONS_OPEN.labels("client").inc()
        if self.on_catalog is not None:
            self.on_catalog(welcome.catalog)
        self._up.set()

    def _session_down(self, remote: Address, reason: str, level: int = logging.WARNING) -> None:
        self._up.clear()
        self.tunnel = None
        metrics.SESSIONS_OPEN.labels("client").dec()
        metrics.SESSION_ENDS.labels("client", "draining" if level == logging.INFO else "lost").inc()
        self.last_error = self.errors[remote] = f"tunnel to {remote} lost: {reason}"
        self.error_times[remote] = time.time()
        log.log(level, "%s; reconnecting", self.last_error)

    def _warn_skipped(
        self, remote: Address | None, catalog: tuple[ServiceInfo, ...], skipped: int
    ) -> None:
        if skipped:
            log.warning(
                "skipped %d of %d catalog entries from %s: each must be a port 1..65535 with, "
                "if any, an alias of a letter, then letters, digits, '-' or '_' (at most 63), "
                "and at most %d entries are taken; using the rest",
                skipped, skipped + len(catalog), remote, MAX_CATALOG,
            )  # fmt: skip

    def _on_message(self, message: Message) -> None:
        if isinstance(message, CatalogChanged):
            self._warn_skipped(self.remote, message.catalog, message.skipped)
            self.catalog = message.catalog
            self.stream_header = message.stream_header
            self._offered.clear()
            if self.on_catalog is not None:
                self.on_catalog(message.catalog)
        elif isinstance(message, GoingAway):
            self._going_away = message

    async def _tls_handshake(
        self, remote: Address, layer: TlsLayer, tunnel: TunnelConnection
    ) -> None:
        tls = self.config.tls
        assert tls is not None
        try:
            async with asyncio.timeout(self.config.handshake_timeout):
                await layer.handshake_done
        except TimeoutError:
            layer.abort()
            raise ConnectFailed(
                f"TLS with {remote} failed: no handshake within {self.config.handshake_timeout:g}s",
                "tls",
            ) from None
        except (ssl.SSLError, ssl.CertificateError) as exc:
            raise ConnectFailed(
                f"TLS with {remote} failed: {describe_tls_error(exc)}", "tls"
            ) from None
        except ConnectionError:
            raise ConnectFailed(
                f"TLS with {remote} failed: the server closed the connection during the "
                "handshake (is it running without TLS?)",
                "tls",
            ) from None
        # The server's certificate as this client was shown it: its expiry is exported, so an
        # alert on the client side warns of a server certificate about to lapse.
        metrics.certificate_expires(
            "client", "peer", not_after_der(peer_certificate(layer.ssl_object))
        )
        if tls.pins:
            der = peer_certificate(layer.ssl_object)
            pin = spki_pin_of_der(der) if der else "none"
            if pin not in tls.pins:
                tunnel.close("pin mismatch")
                layer.close()
                raise ConnectFailed(
                    f"{remote} presented public key {pin}, which matches no --pin; if the "
                    "server's key changed on purpose, update --pin",
                    "pin_mismatch",
                )

    async def _connect(self, remote: Address) -> tuple[TunnelConnection, Welcome]:
        loop = asyncio.get_running_loop()
        limits = self.config.limits
        tls = self.config.tls
        session = Session(Role.CLIENT, limits, clock())
        tunnel = TunnelConnection(session, _refuse_server_stream)
        protocol: asyncio.BufferedProtocol = tunnel
        websocket: WebSocketLayer | None = None
        if isinstance(remote, WebSocketAddress):  # inside TLS, when wss://
            websocket = WebSocketLayer.client(tunnel, remote, self.config.handshake_timeout)
            protocol = websocket
        layer: TlsLayer | None = None
        if tls is not None and self.tls_context is not None:
            server_name = tls.server_name or remote.host
            layer = TlsLayer(self.tls_context, protocol, server_side=False,
                             server_hostname=server_name)  # fmt: skip
            protocol = layer
        token = self.config.token
        nonce = os.urandom(auth.NONCE_SIZE) if token else b""
        binding = [UNBOUND]  # the server's certificate, once TLS has shown it

        def prove(version: int, server_nonce: bytes) -> TokenProofs:
            assert token is not None
            return _proofs(token, nonce, binding[0], version, server_nonce)

        handshake = ClientHandshake(
            name=self.config.name,
            software=f"ambassador/{__version__}",
            token_name=token[0] if token else None,
            nonce=nonce,
            bound=layer is not None,
            prove=prove if token else None,
        )
        control = ControlClient(handshake, self._on_message)
        control.tunnel = tunnel
        # The control stream is opened before the connection exists, so that its SYN is the
        # first frame out and an answer the server writes at once (a refusal of this address,
        # sent before it reads a byte) finds the stream open, whenever the loop reads it.
        control.stream_id = tunnel.open_stream(control)
        route = self.config.proxy
        proxy = route.for_target(remote.host) if route is not None else None
        try:
            if proxy is not None:  # TLS, if any, then runs inside the proxy's tunnel
                sock = await dial_through(
                    proxy, remote.host, remote.port, self.config.connect_timeout
                )
                try:
                    await loop.create_connection(lambda: protocol, sock=sock)
                except BaseException:
                    sock.close()  # the transport never took it
                    raise
            else:
                async with asyncio.timeout(self.config.connect_timeout):
                    await loop.create_connection(lambda: protocol, remote.host, remote.port)
        except EgressFailed as exc:
            raise ConnectFailed(str(exc), exc.label) from None
        except (OSError, TimeoutError) as exc:
            text, reason = connect_error(str(remote), exc, self.config.connect_timeout)
            raise ConnectFailed(text, reason) from None
        if layer is not None:
            await self._tls_handshake(remote, layer, tunnel)
            binding[0] = server_end_point(peer_certificate(layer.ssl_object))
        if websocket is not None:
            await _upgraded(remote, websocket)
        tunnel.on_rtt = metrics.RTT.labels(str(remote)).set
        if control.steps.empty() and not tunnel.closed.done():
            tunnel.send(control.stream_id, encode_message(handshake.hello))
        while True:  # each message the server owes gets the handshake timeout
            event = (await self._next(remote, control, tunnel)).event
            if isinstance(event, Welcomed):
                return tunnel, event.welcome
            if isinstance(event, Failed):
                tunnel.close(event.close_reason)
                raise ConnectFailed(f"{remote} {event.text}", event.label, event.refused)

    async def _next(
        self, remote: Address, control: ControlClient, tunnel: TunnelConnection
    ) -> Step:
        """The handshake's next step, or ConnectFailed saying why there is none."""
        tls = self.config.tls
        if not control.steps.empty():  # answered already (a refusal written at once)
            return self._checked(remote, control.steps.get_nowait(), tunnel)
        deadline = Deadline(self.config.handshake_timeout, asyncio.get_running_loop().time())
        getting = asyncio.ensure_future(control.steps.get())
        try:
            async with asyncio.timeout_at(deadline.at):
                done, _ = await asyncio.wait(
                    (getting, tunnel.closed), return_when=asyncio.FIRST_COMPLETED
                )
        except TimeoutError:
            getting.cancel()
            failed = deadline.no_answer()
            tunnel.close(failed.close_reason)
            raise ConnectFailed(f"{remote} {failed.text}", failed.label) from None
        if getting not in done:
            getting.cancel()
            reason = tunnel.closed.result()
            hint = "is it an ambassador-server of a compatible version?"
            if tls is None:
                hint = "is it an ambassador-server, and does it expect TLS (then give --tls-ca)?"
            raise ConnectFailed(
                f"{remote} closed the connection during the hello ({reason}); {hint}",
                "handshake_closed",
            )
        return self._checked(remote, getting.result(), tunnel)

    def _checked(
        self, remote: Address, item: Step | ConnectFailed, tunnel: TunnelConnection
    ) -> Step:
        if isinstance(item, ConnectFailed):
            tunnel.close("control stream reset")
            hint = "" if self.config.tls is not None else " (if it expects TLS, give --tls-ca)"
            raise ConnectFailed(
                f"{remote} ended the session during the hello: {item}{hint}", item.reason
            )
        return item


async def _upgraded(remote: Address, layer: WebSocketLayer) -> None:
    """Wait for the WebSocket upgrade (the layer keeps its deadline); ConnectFailed if none."""
    try:
        await layer.handshake_done
    except (ConnectionError, TimeoutError) as exc:
        raise ConnectFailed(f"WebSocket upgrade with {remote} failed: {exc}", "websocket") from None
