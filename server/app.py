"""The server role: listen on the tunnel port, serve each connection, stop cleanly."""

from __future__ import annotations

import asyncio
import logging
import signal

from server.config import ServerConfig
from server.connection import ServerConnection
from tunnel.errors import ConfigError
from tunnel.frames import GoAwayCode
from tunnel.oserrors import listen_error
from tunnel.transport import TunnelConnection

log = logging.getLogger("ambassador.server")


class Server:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.connections: set[ServerConnection] = set()
        self._listener: asyncio.Server | None = None

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
        log.info("listening on %s, offering %s", listen, names)

    def _new_connection(self) -> TunnelConnection:
        connection = ServerConnection(self)
        self.connections.add(connection)
        return connection.tunnel

    def connection_closed(self, connection: ServerConnection) -> None:
        self.connections.discard(connection)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
        for connection in list(self.connections):
            connection.tunnel.go_away(GoAwayCode.NORMAL)
            connection.tunnel.close("server shutting down")
        if self._listener is not None:
            await self._listener.wait_closed()


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
