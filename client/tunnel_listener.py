"""The client's tunnel listener (``--listen``): servers dial in and offer their services.

Each accepted connection runs the same handshake as a client that dialed
(:mod:`tunnel.protocol.handshake`): this side is still the yamux client (odd stream ids) and
speaks first, with a hello that says it listens. Under TLS this side is the TLS server: it
presents ``--tls-cert`` (a server certificate) and, given ``--tls-ca``, requires the dialing
host's certificate (mutual TLS); its token proofs are bound to its own certificate. Tokens come
from ``--token-file``, one ``NAME:SECRET`` line per host: the dialing server names the one it
holds in its challenge.

The port is open to the network, so a connection is a stranger until its handshake ends, and
strangers are bounded as on the server (:mod:`tunnel.operations.admission`): in all, per source
address, and in time (``--handshake-timeout`` for TLS and the hello together), with their log
lines within one budget. Before any of that, ``--allow-from`` may refuse the source outright,
as on the server (:mod:`tunnel.aio.allowfrom`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Callable
from functools import partial
from typing import Any

from client.config import ClientConfig
from client.connector import ConnectFailed, ControlClient
from client.hosts import HostLink, combined_catalog, split_service
from tunnel import __version__
from tunnel.aio.allowfrom import refuse_unlisted
from tunnel.aio.proxyaccept import UNEXPECTED, UNEXPECTED_TEXT, Pending, ProxyAccept, reporter
from tunnel.aio.tlslayer import TlsLayer
from tunnel.aio.transport import StreamHandler, TunnelConnection, clock, format_peer
from tunnel.errors import ConfigError
from tunnel.operations import metrics
from tunnel.operations.admission import Admission, StrangerGate
from tunnel.operations.loglimit import LogBudget
from tunnel.operations.logonce import Throttled
from tunnel.operations.oserrors import listen_error
from tunnel.protocol.handshake import ClientHandshake, Failed, TokenProofs, Welcomed
from tunnel.protocol.messages import Message, ServiceInfo, encode_message
from tunnel.protocol.peertext import NAME_LIMIT, shown
from tunnel.protocol.session import Role, Session
from tunnel.security import auth
from tunnel.security.tls import peer_common_name
from tunnel.security.tlserrors import describe_tls_error

log = logging.getLogger("ambassador.client")
# Every line a stranger on the tunnel port can cause comes out of this budget, as on the server.
stranger_log = LogBudget(log)
# A source --allow-from refuses: one line per source per interval.
throttled = Throttled(log)


def _named_proofs(
    tokens: dict[str, bytes], nonce: bytes, binding: bytes, name: str, version: int,
    server_nonce: bytes,
) -> TokenProofs | None:  # fmt: skip
    secret = tokens.get(name)
    if secret is None:
        return None
    args = (secret, name, nonce, server_nonce)
    return TokenProofs(
        auth.client_proof(*args, version=version, binding=binding),
        auth.server_proof(*args, version=version, binding=binding),
    )


def _no_server_streams(tunnel: TunnelConnection, stream_id: int) -> StreamHandler | None:
    return None  # the server never opens streams towards the client, whoever dialed


class DialedIn:
    """One connection a server dialed, until its handshake ends (then its host owns it)."""

    def __init__(self, listener: TunnelListener) -> None:
        self.listener = listener
        config = listener.config
        tls = config.listen_context is not None
        self.tunnel = TunnelConnection(
            Session(Role.CLIENT, config.limits, clock()), _no_server_streams, "",
            on_connect=None if tls else self.admit,
        )  # fmt: skip
        self.gate = StrangerGate(listener.admission, stranger_log)
        self.cert_name: str | None = None
        self.task: asyncio.Task[None] | None = None
        self.protocol: asyncio.BaseProtocol = self.tunnel
        if config.listen_context is not None:
            self.protocol = TlsLayer(
                config.listen_context, self.tunnel, server_side=True,
                on_handshake=self._tls_done, on_connect=self.admit,
            )  # fmt: skip
        self.tunnel.closed.add_done_callback(self._closed)

    def _closed(self, _: object) -> None:
        self.gate.release()
        if self.tunnel.session.proxy_header:  # it may end before the hello has even begun
            self.listener.refused_early(self.tunnel.peer, UNEXPECTED, UNEXPECTED_TEXT)

    def admit(self, transport: asyncio.BaseTransport) -> bool:
        peername = transport.get_extra_info("peername")
        self.tunnel.peer = format_peer(peername)
        config = self.listener.config
        if refuse_unlisted(self.tunnel, transport, config.allow_from, throttled, role="client",
                           plaintext=config.listen_context is None):  # fmt: skip
            return False
        refused = self.gate.admit(peername, config.admission)
        if refused is not None:
            self.tunnel.close(refused)
            return False
        self._deadline = asyncio.get_running_loop().call_later(
            config.handshake_timeout, self._expired
        )
        self.tunnel.closed.add_done_callback(lambda _: self._deadline.cancel())
        if config.listen_context is None:
            self._start(b"", bound=False)
        return True

    def _expired(self) -> None:
        if self.tunnel.is_open and self.gate.counted:
            timeout = self.listener.config.handshake_timeout
            self.gate.say("closing connection from %s: no handshake within %gs",
                          self.tunnel.peer, timeout)  # fmt: skip
            metrics.SESSION_ENDS.labels("client", "handshake_timeout").inc()
            self.tunnel.close("handshake timeout")

    def _tls_done(self, layer: TlsLayer, exc: BaseException | None) -> None:
        if exc is not None:
            if self.tunnel.is_open and layer.proxy_header:
                self.listener.refused_early(self.tunnel.peer, UNEXPECTED, UNEXPECTED_TEXT)
                self.tunnel.close(UNEXPECTED)
            elif self.tunnel.is_open:
                why = describe_tls_error(exc, server_side=True)
                if isinstance(exc, ConnectionError) and not isinstance(exc, ssl.SSLError):
                    why = "the peer closed the connection during the TLS handshake"
                self.gate.say("refused connection from %s: %s", self.tunnel.peer, why)
                metrics.SESSION_ENDS.labels("client", "tls_handshake").inc()
                self.tunnel.close(why)
            return
        self.cert_name = peer_common_name(layer.ssl_object)
        self._start(self.listener.config.listen_binding, bound=True)

    def _start(self, binding: bytes, bound: bool) -> None:
        loop = asyncio.get_running_loop()
        self.task = loop.create_task(self._hello(binding, bound))
        self.listener.track(self.task)

    async def _hello(self, binding: bytes, bound: bool) -> None:
        if not self.tunnel.is_open:
            return  # ended in the loop turn it was admitted in, and said why as it closed
        config = self.listener.config
        tokens = dict(config.tokens or {})
        nonce = os.urandom(auth.NONCE_SIZE) if tokens else b""
        handshake = ClientHandshake(
            name=config.name, software=f"ambassador/{__version__}", nonce=nonce, bound=bound,
            listening=True,
            prove_named=partial(_named_proofs, tokens, nonce, binding) if tokens else None,
        )  # fmt: skip
        link: list[HostLink] = []
        control = ControlClient(handshake, lambda message: _forward(link, message))
        control.tunnel = self.tunnel
        control.stream_id = self.tunnel.open_stream(control)
        self.tunnel.send(control.stream_id, encode_message(handshake.hello))
        while True:
            getting = asyncio.ensure_future(control.steps.get())
            done, _ = await asyncio.wait(
                (getting, self.tunnel.closed), return_when=asyncio.FIRST_COMPLETED
            )
            if getting not in done:
                getting.cancel()
                # Else refused, timed out or a PROXY header, and said so.
                if self.gate.counted and not self.tunnel.session.proxy_header:
                    self.gate.say("connection from %s ended during the hello: %s",
                                  self.tunnel.peer, self.tunnel.closed.result())  # fmt: skip
                return
            item = getting.result()
            if isinstance(item, ConnectFailed):
                if not self.tunnel.session.proxy_header:  # else said as it closed
                    self.gate.say("connection from %s ended during the hello: %s",
                                  self.tunnel.peer, item)  # fmt: skip
                self.tunnel.close("control stream reset")
                return
            event = item.event
            if isinstance(event, Failed):
                self.gate.say("refused host at %s: it %s", self.tunnel.peer, shown(event.text))
                metrics.CONNECT_FAILURES.labels("listen", event.label).inc()
                self.tunnel.close(event.close_reason)
                return
            if isinstance(event, Welcomed):
                self.gate.release()
                identity = self.cert_name or event.token_name or "anonymous"
                link.append(self.listener.host_up(self.tunnel, identity, event.welcome))
                return


def _forward(link: list[HostLink], message: Message) -> None:
    if link:
        link[0].on_message(message)


class TunnelListener:
    """Accepts the servers that dial this client, and keeps their hosts by identity."""

    def __init__(
        self,
        config: ClientConfig,
        on_catalog: Callable[[tuple[ServiceInfo, ...] | None], None] | None = None,
    ) -> None:
        self.config = config
        self.on_catalog = on_catalog
        self.admission = Admission()
        # Connections still to send their PROXY header, bounded like those yet to say hello.
        self._awaiting_header = Pending(config.admission.unauthenticated)
        self.refused_early = reporter(stranger_log, throttled)
        self.hosts: dict[str, HostLink] = {}
        self.catalog: tuple[ServiceInfo, ...] | None = None
        self.identity = ""  # what Listeners names in its warnings: no one identity here
        self.last_error = ""
        self._server: asyncio.Server | None = None
        self._bound = asyncio.Event()
        self._closing = False  # shutting down: its hosts' sessions end, none is awaited again
        self._tasks: set[asyncio.Task[None]] = set()

    def track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        sockname = self._server.sockets[0].getsockname()
        return sockname[0], sockname[1]

    @property
    def tunnel(self) -> TunnelConnection | None:
        """A session up, if any (for readiness: the client is ready with one host up)."""
        for link in self.hosts.values():
            if link.tunnel is not None:
                return link.tunnel
        return None

    def route(self, service: str) -> tuple[HostLink, str]:
        """The host a consumer of ``service`` reaches, and the service's name there."""
        host, name = split_service(service)
        if host is not None:
            link = self.hosts.get(host)
            return (link or HostLink(host, self.config)), name
        up = [link for link in self.hosts.values() if link.tunnel is not None]
        if len(up) == 1:
            return up[0], name
        hosts = ", ".join(link.who for link in up)
        why = (
            f"no host is connected to serve {service!r}"
            if not up
            else f"several hosts are connected ({hosts}): name one, as HOST/{name}"
        )
        return HostLink("", self.config, why), name

    def _new_connection(self) -> asyncio.BaseProtocol:
        """An accepted connection's protocol: its PROXY header first (read with
        --accept-proxy-protocol, refused without), then TLS and the handshake."""
        config = self.config
        if not config.accept_proxy_protocol:
            return DialedIn(self).protocol  # a header is noticed if it comes (UNEXPECTED)
        return ProxyAccept(
            lambda: DialedIn(self).protocol,
            accept=config.accept_proxy_protocol,
            trusted=config.accept_proxy_from,
            timeout=config.handshake_timeout,
            refuse=self.refused_early,
            pending=self._awaiting_header,
        )

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        listen = self.config.listen
        assert listen is not None
        try:
            self._server = await loop.create_server(
                self._new_connection, listen.host, listen.port,
                reuse_address=True, backlog=1024,
            )  # fmt: skip
        except OSError as exc:
            raise ConfigError(listen_error(str(listen), exc)) from None
        mode = "plaintext"
        if self.config.listen_context is not None:
            tls = self.config.tls
            mode = "TLS, host certificates required" if tls and tls.ca else "TLS"
        log.info("listening for hosts on %s (%s)", listen, mode)
        self._bound.set()
        try:
            await asyncio.Event().wait()
        finally:
            self._closing = True
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            for link in self.hosts.values():
                if link.tunnel is not None:
                    link.tunnel.close("client shutting down")

    async def wait_catalog(self) -> tuple[ServiceInfo, ...] | None:
        """None while no host has connected: no service is missing yet, only not offered."""
        await self._bound.wait()
        return self.catalog

    def reconfigure(self, config: ClientConfig) -> None:
        self.config = config
        for link in self.hosts.values():
            link.config = HostLink(link.identity, config).config

    def host_up(self, tunnel: TunnelConnection, identity: str, welcome: Any) -> HostLink:
        link = self.hosts.get(identity)
        if link is None:
            link = self.hosts[identity] = HostLink(identity, self.config, on_change=self._changed)
        link.take(tunnel, tunnel.peer, welcome.catalog, welcome.stream_header)
        names = ", ".join(service.name for service in welcome.catalog) or "nothing"
        log.info("tunnel up from %s as host %s (%s), protocol %d, offering %s",
                 tunnel.peer, link.who, shown(welcome.server, NAME_LIMIT), welcome.version,
                 names)  # fmt: skip
        metrics.SESSIONS.labels("client").inc()
        metrics.SESSIONS_OPEN.labels("client").inc()
        rtt = metrics.RTT.labels(link.who)
        tunnel.on_rtt = rtt.set
        tunnel.closed.add_done_callback(partial(self._host_down, link, tunnel))
        self._changed()
        return link

    def _host_down(self, link: HostLink, tunnel: TunnelConnection, closed: Any) -> None:
        metrics.SESSIONS_OPEN.labels("client").dec()
        metrics.SESSION_ENDS.labels("client", "lost").inc()
        if link.lost(tunnel, closed.result()) and not self._closing:
            log.warning("%s; waiting for it to dial again", link.last_error)
            self._changed()

    def _changed(self) -> None:
        links = list(self.hosts.values())
        up = any(link.tunnel is not None for link in links)
        self.catalog = combined_catalog(links) if up else None
        if self.on_catalog is not None:
            self.on_catalog(self.catalog)

    def status_rows(self) -> list[dict[str, Any]]:
        rows = []
        for identity in sorted(self.hosts):
            link = self.hosts[identity]
            row: dict[str, Any] = {
                "peer": f"{link.peer or '-'} ({link.who})", "state": "down", "rtt_ms": None,
                "streams": 0, "bytes_in": 0, "bytes_out": 0, "last_error": link.last_error,
                "last_error_at": link.error_at,
            }  # fmt: skip
            if link.tunnel is not None:
                stats = link.tunnel.session.stats()
                row.update(state="up", streams=stats.open_streams, last_error="",
                           last_error_at=None, bytes_in=stats.bytes_received,
                           bytes_out=stats.bytes_sent,
                           rtt_ms=None if stats.rtt is None else stats.rtt * 1000)  # fmt: skip
            rows.append(row)
        return rows
