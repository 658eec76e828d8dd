"""The server role: listen on the tunnel port, serve each connection, stop cleanly."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import ssl

from server.config import ServerConfig
from server.connection import ServerConnection
from server.tls_accept import accept_tls
from tunnel.auth import load_tokens
from tunnel.errors import ConfigError
from tunnel.frames import GoAwayCode
from tunnel.oserrors import listen_error
from tunnel.tls import server_context

log = logging.getLogger("ambassador.server")


class Server:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.connections: set[ServerConnection] = set()
        self._listener: asyncio.Server | None = None
        self.tls_context: ssl.SSLContext | None = (
            server_context(config.tls) if config.tls is not None else None
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self.tokens: dict[str, bytes] | None = None
        if config.token_file is not None:
            self.tokens, warning = load_tokens(config.token_file)
            if warning:
                log.warning("%s", warning)

    @property
    def address(self) -> tuple[str, int]:
        """Where the tunnel port is actually bound (useful when port 0 was asked)."""
        assert self._listener is not None
        sockname = self._listener.sockets[0].getsockname()
        return sockname[0], sockname[1]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        listen = self.config.listen
        try:
            self._listener = await loop.create_server(
                self._new_connection, listen.host, listen.port, reuse_address=True, backlog=1024
            )
        except OSError as exc:
            raise ConfigError(listen_error(str(listen), exc)) from None
        names = ", ".join(service.full_name for service in self.config.catalog) or "nothing"
        mode = "plaintext"
        if self.config.tls is not None:
            mode = "TLS, client certificates required" if self.config.tls.ca else "TLS"
        log.info("listening on %s (%s), offering %s", listen, mode, names)
        if self.config.tls is None and self.tokens is None and not is_loopback(listen.host):
            log.warning(
                "listening on %s in plaintext without a token: anyone who can reach this port "
                "can use %s, and the traffic crosses the network unencrypted; add "
                "--tls-cert/--tls-key (and --tls-ca) or --token-file",
                listen, names,
            )  # fmt: skip

    def _new_connection(self) -> asyncio.Protocol:
        if self.tls_context is not None:
            return accept_tls(self, self.tls_context)
        return self.make_connection().tunnel

    def make_connection(self, peer: str = "") -> ServerConnection:
        connection = ServerConnection(self, peer)
        self.connections.add(connection)
        return connection

    def track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def connection_closed(self, connection: ServerConnection) -> None:
        self.connections.discard(connection)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
        for task in list(self._tasks):
            task.cancel()
        for connection in list(self.connections):
            connection.tunnel.go_away(GoAwayCode.NORMAL)
            connection.tunnel.close("server shutting down")
        if self._listener is not None:
            await self._listener.wait_closed()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def serve(config: ServerConfig) -> None:
    """Run the server until SIGINT or SIGTERM."""
    server = Server(config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        await server.stop()
