"""The client role: keep the tunnel, expose its services on local ports, stop cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from client.config import ClientConfig
from client.connector import Connector
from client.listeners import Listeners

log = logging.getLogger("ambassador.client")


class Client:
    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.connector = Connector(config)
        self.listeners = Listeners(self.connector, config.expose, config.bind)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Bind the fixed ports, start connecting, and bind the rest once the catalog is in."""
        await self.listeners.bind_fixed()
        self._task = asyncio.get_running_loop().create_task(self.connector.run())
        if any(spec.port is None for spec in self.config.expose) or not self.config.expose:
            catalog = await self._first_catalog()
            await self.listeners.bind_from_catalog(catalog)

    async def _first_catalog(self) -> tuple:  # type: ignore[type-arg]
        assert self._task is not None
        catalog = asyncio.ensure_future(self.connector.wait_catalog())
        done, _ = await asyncio.wait((catalog, self._task), return_when=asyncio.FIRST_COMPLETED)
        if catalog not in done:
            catalog.cancel()
            self._task.result()  # raises what stopped the connector
        return catalog.result()

    async def stop(self) -> None:
        await self.listeners.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        tunnel = self.connector.tunnel
        if tunnel is not None:
            tunnel.close("client shutting down")


async def serve(config: ClientConfig) -> None:
    """Run the client until SIGINT or SIGTERM."""
    client = Client(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        starting = asyncio.ensure_future(client.start())
        stopping = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
        if starting in done:
            starting.result()
            await stop.wait()
        else:
            starting.cancel()
    finally:
        stopping.cancel()
        log.info("stopping")
        await client.stop()
