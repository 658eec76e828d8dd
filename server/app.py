"""The server role: listen on the tunnel port, serve each connection, stop cleanly."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from server.admission import DESCRIPTOR_RESERVE, Admission, stranger_log
from server.config import ServerConfig, with_credentials
from server.connection import ServerConnection, throttled
from server.dialer import Dialer
from server.pool import Pools
from server.reauth import AdmissionPolicy
from server.tls_accept import accept_tls
from tunnel.aio.proxyaccept import Pending, ProxyAccept, reporter
from tunnel.aio.wslayer import WebSocketLayer
from tunnel.errors import ConfigError, Reason
from tunnel.operations import metrics
from tunnel.operations.metrics import LIMIT_HITS
from tunnel.operations.observe import service_stats
from tunnel.operations.oserrors import listen_error
from tunnel.operations.runner import Reload
from tunnel.operations.runner import serve as run_role
from tunnel.operations.runtime import give_back_heap
from tunnel.operations.workers.channel import HelperChannel
from tunnel.operations.workers.handoff import Handoff, serve_handed
from tunnel.operations.workers.pool import WorkerPool
from tunnel.operations.workers.report import helper_report
from tunnel.protocol.frames import GoAwayCode
from tunnel.security.auth import is_loopback, plaintext_warning
from tunnel.security.tls import ClientTls, ServerTls, not_after, warn_about_files, warn_if_expiring
from tunnel.settings.wording import counted

log = logging.getLogger("ambassador.server")


class Server:
    def __init__(
        self,
        config: ServerConfig,
        on_closed: Callable[[], None] | None = None,
        pool: WorkerPool | None = None,
    ) -> None:
        config = with_credentials(config)
        self.config = config
        self.connections: set[ServerConnection] = set()
        self.admission = Admission()  # connections not authenticated yet, by source
        self.streams_by_identity: Counter[str] = Counter()  # backend streams dialed or open
        self.stream_count = 0
        self.descriptor_limit, self._descriptors_base = descriptor_budget()
        self._trim: asyncio.TimerHandle | None = None
        self._listener: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = time.monotonic()
        # Connections still to send their PROXY header, bounded like those yet to say hello.
        self._awaiting_header = Pending(config.admission.unauthenticated)
        self.refused_early = reporter(stranger_log, throttled)
        self.pool = pool  # helper processes, in the main one of several
        self.pools = Pools()  # the pooled services' targets, checks and resolvers
        self.pools.reconfigure(config.catalog, config.pooling, config.resolve_interval)
        self.on_closed = on_closed  # in a helper, tells the main process a connection ended
        self.dialer: Dialer | None = None  # with --connect: dials instead of listening

    @property
    def address(self) -> tuple[str, int]:
        """Where the tunnel port is actually bound (useful when port 0 was asked)."""
        assert self._listener is not None
        sockname = self._listener.sockets[0].getsockname()
        return sockname[0], sockname[1]

    def _start_dialing(self) -> None:
        config = self.config
        self.dialer = Dialer(
            lambda: self.config.connect,
            lambda peer, tls: self.make_connection(peer, tls, dialed=True),
            lambda: (self.config.tls_context, self.config.dial_server_name),
            lambda: (self.config.dial_timeout, self.config.handshake_timeout),
        )
        self.dialer.start()
        names = ", ".join(service.full_name for service in config.catalog) or "nothing"
        targets = ", ".join(str(target) for target in config.connect)
        mode = "plaintext" if config.dial_tls is None else "TLS"
        if config.dial_tls is not None and config.dial_tls.cert is not None:
            mode = "TLS with a client certificate"
        log.info("dialing %s (%s), offering %s", targets, mode, names)
        warn_if_expiring(config.dial_tls)
        export_expiry(config.tls, config.dial_tls)
        warn_about_files(config.dial_tls, config.token_file, datetime.now(UTC))

    async def start(self) -> None:
        self.pools.start()  # health checks and resolvers, whoever dials the tunnel
        if self.config.connect:
            self._start_dialing()
            return
        loop = asyncio.get_running_loop()
        listen = self.config.listen
        try:
            self._listener = await loop.create_server(
                self._new_connection,
                listen.host,
                listen.port,
                reuse_address=True,
                reuse_port=self.config.reuse_port or None,
                backlog=1024,
            )
        except OSError as exc:
            raise ConfigError(listen_error(str(listen), exc)) from None
        names = ", ".join(service.full_name for service in self.config.catalog) or "nothing"
        mode = "plaintext"
        if self.config.tls is not None:
            mode = "TLS, client certificates required" if self.config.tls.ca else "TLS"
        if self.config.websocket_path is not None:
            mode += f", inside a WebSocket at {self.config.websocket_path}"
        log.info("listening on %s (%s), offering %s", listen, mode, names)
        warn_if_expiring(self.config.tls)
        export_expiry(self.config.tls, None)
        warn_about_files(self.config.tls, self.config.token_file, datetime.now(UTC))
        if self.config.tls is None and self.config.tokens is not None:
            warning = plaintext_warning([listen.host])
            if warning is not None:
                log.warning("%s", warning)
        tls = self.config.tls
        if self.config.tokens is None and not is_loopback(listen.host):
            if tls is None:
                log.warning(
                    "listening on %s in plaintext without a token: anyone who can reach this "
                    "port can use %s, and the traffic crosses the network unencrypted; add "
                    "--tls-cert/--tls-key (and --tls-ca) or --token-file",
                    listen, names,
                )  # fmt: skip
            elif tls.ca is None:
                # TLS alone hides the traffic but checks nobody: any client is let in.
                log.warning(
                    "listening on %s with TLS but without client certificates or a token: "
                    "anyone who can reach this port can use %s; add --tls-ca (to require "
                    "client certificates) or --token-file",
                    listen, names,
                )  # fmt: skip

    def _new_connection(self) -> asyncio.BaseProtocol:
        if self.pool is not None:
            helper = self.pool.least_held(len(self.connections))
            if helper is not None:
                return Handoff(self.pool, helper, "", self._serve_here)
        return self._serve_here()

    def _serve_here(self) -> asyncio.BaseProtocol:
        """An accepted connection's protocol: its PROXY header first (read with
        --accept-proxy-protocol, refused without), then TLS and the session."""
        config = self.config
        if not config.accept_proxy_protocol:
            return self._session_protocol()  # a header is noticed if it comes (UNEXPECTED)
        return ProxyAccept(
            self._session_protocol,
            accept=config.accept_proxy_protocol,
            trusted=config.accept_proxy_from,
            timeout=config.handshake_timeout,
            refuse=self.refused_early,  # made once: a connection's first step is hot
            pending=self._awaiting_header,
        )

    def _session_protocol(self) -> asyncio.BaseProtocol:
        config = self.config  # the context and its binding taken together, as one
        tls, path = config.tls_context is not None, config.websocket_path
        connection = self.make_connection(layered=tls or path is not None)
        timeout = config.handshake_timeout
        inner: asyncio.BufferedProtocol = connection.tunnel
        if path is not None:  # inside TLS, when there is TLS: wss
            inner = WebSocketLayer.server(
                inner, path, timeout, on_connect=None if tls else connection.admit,
                on_refused=connection.websocket_refused, on_upgraded=connection.upgraded,
            )  # fmt: skip
        if config.tls_context is not None:
            return accept_tls(connection, config.tls_context, config.tls_binding, timeout, inner)
        return inner

    def make_connection(
        self, peer: str = "", layered: bool = False, dialed: bool = False
    ) -> ServerConnection:
        """``layered``: TLS or a WebSocket comes first, whose layer admits the connection;
        ``dialed``: this server dialed it (--connect), and nothing admits it."""
        connection = ServerConnection(self.config, self, peer, layered, dialed)
        self.connections.add(connection)
        return connection

    def descriptors_left(self) -> int:
        """Descriptors still free: the limit, less those held at start, by tunnel connections
        and by backend streams (a stream's own socket, from its dial)."""
        used = self._descriptors_base + len(self.connections) + self.stream_count
        return self.descriptor_limit - used

    def stream_opened(self, identity: str) -> str | None:
        """Count a backend stream of ``identity``; or why it may not have one."""
        limit = self.config.max_streams_per_identity
        if self.streams_by_identity[identity] >= limit:
            LIMIT_HITS.labels("max_streams_per_identity").inc()
            return f"{identity!r} has {limit} streams open (--max-streams-per-identity)"
        if self.descriptors_left() <= DESCRIPTOR_RESERVE:
            LIMIT_HITS.labels("descriptors").inc()
            return (
                f"the server is out of file descriptors (its limit is {self.descriptor_limit}, "
                f"{DESCRIPTOR_RESERVE} kept for new sessions)"
            )
        self.streams_by_identity[identity] += 1
        self.stream_count += 1
        return None

    def stream_closed(self, identity: str) -> None:
        self.stream_count -= 1
        left = self.streams_by_identity[identity] - 1
        if left > 0:
            self.streams_by_identity[identity] = left
        else:
            del self.streams_by_identity[identity]

    def _give_back_heap(self) -> None:
        self._trim = None
        give_back_heap()

    def track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def connection_closed(self, connection: ServerConnection) -> None:
        self.connections.discard(connection)
        if not connection.welcomed and self._trim is None:
            # What strangers held goes back to the kernel, once a second at most.
            self._trim = asyncio.get_running_loop().call_later(1.0, self._give_back_heap)
        if self.on_closed is not None:
            self.on_closed()

    def take(self, sock: socket.socket) -> None:
        """Serve a connection the main process accepted and handed to this helper."""
        loop = asyncio.get_running_loop()
        self.track(loop.create_task(self._take(sock)))

    async def _take(self, sock: socket.socket) -> None:
        if not await serve_handed(sock, self._serve_here) and self.on_closed is not None:
            self.on_closed()

    def reload(self, new: ServerConfig) -> None:
        """Take a new configuration; raises ConfigError (keeping the old one) if it is broken.

        New handshakes use the new certificates and tokens. Every established session is judged
        again as if it connected now (:mod:`server.reauth`): one the new configuration would not
        admit is closed, with one line and a count saying why; the others carry on, are sent
        their new catalog, and are closed only if their access was withdrawn.
        """
        old = self.config
        if new.listen != old.listen:
            log.warning("--listen changed to %s; restart to move the listener", new.listen)
        if (new.tls is None) != (old.tls is None) or (new.dial_tls is None) != (
            old.dial_tls is None
        ):
            raise ConfigError("turning TLS on or off needs a restart")
        if bool(new.connect) != bool(old.connect):
            raise ConfigError("switching between --listen and --connect needs a restart")
        new = with_credentials(new)  # read by the CLI already; here only if it was not
        admission = AdmissionPolicy.of(new, new.tokens, datetime.now(UTC))
        if new.websocket_path != old.websocket_path:
            log.warning("--websocket-path changed; restart to serve the new one")
        self.config = replace(new, listen=old.listen, websocket_path=old.websocket_path)
        self.pools.reconfigure(new.catalog, new.pooling, new.resolve_interval)
        for connection in self.connections:
            connection.reconfigure(self.config)
        for connection in list(self.connections):
            refused = admission.refuses(connection)
            if refused is not None:
                connection.close_on_reload(refused)
            else:
                connection.update_catalog()
        names = ", ".join(service.full_name for service in new.catalog) or "nothing"
        log.info("configuration reloaded: offering %s to %s", names,
                 counted(len(self.connections), "session"))  # fmt: skip
        warn_if_expiring(new.tls)
        export_expiry(new.tls, new.dial_tls)
        warn_about_files(new.tls or new.dial_tls, new.token_file, datetime.now(UTC))

    async def drain(self, timeout: float, now: asyncio.Event | None = None) -> bool:
        """Stop taking new streams, let open ones finish for up to ``timeout`` seconds.

        Returns True when every stream finished in time. Setting ``now`` cuts the wait short.
        """
        if self._listener is not None:
            self._listener.close()
        if self.dialer is not None:
            self.dialer.stop()
        open_streams = sum(len(c.streams) for c in self.connections)
        log.info("draining: %s, %s, up to %gs", counted(len(self.connections), "session"),
                 counted(open_streams, "open stream"), timeout)  # fmt: skip
        for connection in list(self.connections):
            connection.go_away(Reason.SHUTTING_DOWN, "the server is shutting down")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(c.streams for c in self.connections) and loop.time() < deadline:
            if now is not None and now.is_set():
                break
            await asyncio.sleep(0.05)
        left = sum(len(c.streams) for c in self.connections)
        if left:
            log.warning("drain ended with %s still open; closing them", counted(left, "stream"))
        return left == 0

    @property
    def ready(self) -> bool:
        if self.dialer is not None:
            return self.dialer.connection is not None
        return self._listener is not None and self._listener.is_serving()

    def status(self) -> dict[str, Any]:
        """The live state, for /status and ``ambassador-server status``."""
        sessions = []
        for connection in sorted(self.connections, key=lambda c: c.tunnel.peer):
            stats = connection.tunnel.session.stats()
            sessions.append({
                "peer": f"{connection.tunnel.peer} ({connection.who})",
                "state": "up" if connection.welcomed else "hello",
                "rtt_ms": None if stats.rtt is None else stats.rtt * 1000,
                "streams": stats.open_streams,
                "bytes_in": stats.bytes_received,
                "bytes_out": stats.bytes_sent,
                "last_error": "",
                "last_error_at": None,
            })  # fmt: skip
        dialer = self.dialer
        if dialer is not None:
            up = {c.tunnel.peer for c in self.connections}
            for target in self.config.connect:
                if str(target) not in up:
                    sessions.append({"peer": str(target), "state": "down", "rtt_ms": None,
                                     "streams": 0, "bytes_in": 0, "bytes_out": 0,
                                     "last_error": dialer.errors.get(target, "")})  # fmt: skip
        services = []
        for service in self.config.catalog:
            row = service_stats("server", service.name)
            row["service"] = f"{service.full_name} -> {','.join(map(str, service.members))}"
            pool = self.pools.get(service)
            if pool is not None:
                row["targets"] = pool.rows()
            services.append(row)
        return {
            "role": "ambassador-server",
            "pid": os.getpid(),
            "name": self.config.name,
            "listen": "" if self.config.connect else str(self.config.listen),
            "connect": [str(target) for target in self.config.connect],
            "tls": self.config.tls is not None,
            "uptime": round(time.monotonic() - self._started, 1),
            "ready": self.ready,
            "sessions": sessions,
            "services": services,
        }

    async def stop(self) -> None:
        self.pools.stop()
        if self._listener is not None:
            self._listener.close()
        if self.dialer is not None:
            self.dialer.stop()
        for task in list(self._tasks):
            task.cancel()
        for connection in list(self.connections):
            connection.tunnel.go_away(GoAwayCode.NORMAL)
            connection.tunnel.close("server shutting down")
        if self._listener is not None:
            await self._listener.wait_closed()


def descriptor_budget() -> tuple[int, int]:
    """The process's descriptor limit (soft RLIMIT_NOFILE), and how many are open now."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        open_now = len(os.listdir("/proc/self/fd"))
    except OSError:  # pragma: no cover - no /proc
        open_now = 16
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    if soft < 4 * DESCRIPTOR_RESERVE:
        log.warning(
            "this process may open only %d files; sessions and streams will be refused early: "
            "raise the limit (ulimit -n, LimitNOFILE=)",
            soft,
        )
    return soft, open_now


class ServerRole:
    """The server's part in :func:`tunnel.operations.runner.serve`: the listener first (or,
    in a helper, the channel to its main process), a drain on the first signal."""

    log = log

    def __init__(
        self,
        config: ServerConfig,
        drain_timeout: float,
        channel: int | None,
        pool: WorkerPool | None = None,
    ) -> None:
        # A helper's connections end through the channel to its main process, once open.
        on_closed = None if channel is None else self._connection_ended
        self.server = Server(config, on_closed, pool)
        self.drain_timeout = drain_timeout
        self._channel = channel
        self._link: HelperChannel | None = None

    async def open(self, stop: Callable[[], None]) -> None:
        server = self.server
        if self._channel is None:
            await server.start()
            return

        def take(sock: socket.socket, _service: str) -> None:
            server.take(sock)

        server.pools.start()
        link = HelperChannel(self._channel, take, _report(server), stop, "server")
        self._link = link
        link.install()

    def _connection_ended(self) -> None:
        if self._link is not None:
            self._link.ended()

    async def start(self) -> None:
        pass  # the listener is serving since open()

    async def drain(self, now: asyncio.Event) -> None:
        await self.server.drain(self.drain_timeout, now)

    async def stop(self) -> None:
        await self.server.stop()

    def reload(self, new: ServerConfig) -> None:
        self.server.reload(new)

    def status(self) -> dict[str, Any]:
        return self.server.status()

    def ready(self) -> bool:
        return self.server.ready

    def unready_reason(self) -> str:
        return ""


async def serve(
    config: ServerConfig,
    reload: Callable[[ServerConfig], Reload[ServerConfig]] | None = None,
    drain_timeout: float = 30.0,
    metrics: tuple[str, int] | None = None,
    pool: WorkerPool | None = None,
    channel: int | None = None,
) -> None:
    """Run the server until SIGINT or SIGTERM, then drain; reload on SIGHUP and changed files.

    The first SIGTERM (or SIGINT) sends every client a Go Away and lets open streams finish
    for up to ``drain_timeout`` seconds; a second one closes at once.

    ``pool`` (its helper processes, not started yet) makes this the main process of
    several; ``channel`` makes this process a helper, serving what the main one hands it.
    """
    role = ServerRole(config, drain_timeout, channel, pool)
    await run_role(role, None if reload is None else reload(config), metrics, pool)


def _report(server: Server) -> Callable[[], dict[str, Any]]:
    return lambda: helper_report(server.status())


def export_expiry(tls: ServerTls | None, dial_tls: ClientTls | None) -> None:
    """This server's own certificate's expiry, for ambassador_certificate_expiry_days: the
    one it serves, or with --connect the client certificate it dials with."""
    own = tls.cert if tls is not None else dial_tls.cert if dial_tls is not None else None
    metrics.certificate_expires("server", "own", None if own is None else not_after(own))
