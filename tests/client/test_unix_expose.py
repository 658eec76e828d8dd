"""An expose on a unix socket (``--expose unix:/run/ambassador/redis.sock=redis``): consumers
connect to the path, the socket has the mode asked for, and it is gone after a clean stop."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from pathlib import Path

import pytest

from client.app import Client
from client.config import ClientConfig
from server.app import Server
from server.config import ServerConfig
from tunnel.settings.links import Address, Catalog, parse_expose, parse_link
from tunnel.settings.unixpath import SocketAccess


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


def test_a_unix_consumer_reaches_a_tcp_backend(tmp_path: Path) -> None:
    path = tmp_path / "echo.sock"

    async def scenario() -> None:
        backend = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = backend.sockets[0].getsockname()[1]
        server = Server(
            ServerConfig(
                listen=Address("127.0.0.1", 0),
                catalog=Catalog((parse_link(f"echo=127.0.0.1:{port}"),)),
            )
        )
        await server.start()
        client = Client(
            ClientConfig(
                remotes=(Address(*server.address),),
                expose=(parse_expose(f"unix:{path}=echo"),),
                sockets=SocketAccess(mode=0o660),
            )
        )
        await client.start()
        try:
            assert stat.S_IMODE(os.lstat(path).st_mode) == 0o660
            reader, writer = await asyncio.open_unix_connection(os.fspath(path))
            payload = os.urandom(1 << 20)
            writer.write(payload)
            assert await asyncio.wait_for(reader.readexactly(len(payload)), 10) == payload
            writer.close()
            [row] = client.status()["services"]
            assert row["service"] == f"echo on unix:{path}"
        finally:
            await client.stop()
            await server.stop()
            backend.close()
        assert not path.exists()  # removed on a clean stop

    asyncio.run(scenario())


def test_an_expose_into_a_missing_directory_stops_the_start_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "absent" / "echo.sock"

    async def scenario() -> str:
        client = Client(
            ClientConfig(
                remotes=(Address("127.0.0.1", 9),), expose=(parse_expose(f"unix:{path}=1"),)
            )
        )
        try:
            await client.start()
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            await client.stop()
        return "started"

    assert asyncio.run(scenario()) == (
        f"ConfigError: cannot listen on unix:{path}: the directory {tmp_path}/absent does not "
        "exist; create it (owned by the client's user) or choose another path"
    )


def test_a_service_without_a_port_is_not_exposed_on_one_and_says_how(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # With no --expose the client listens on each service's own port; a socket linked by
    # alias alone has none, so the client says how to expose it instead of guessing one.
    async def scenario() -> list[int]:
        server = Server(
            ServerConfig(
                listen=Address("127.0.0.1", 0),
                catalog=Catalog((parse_link(f"portless=unix:{tmp_path}/pg.sock"),)),
            )
        )
        await server.start()
        client = Client(ClientConfig(remotes=(Address(*server.address),)))
        await client.start()
        try:
            return [listening.port for listening in client.listeners.bound]
        finally:
            await client.stop()
            await server.stop()

    with caplog.at_level(logging.WARNING, logger="ambassador.client"):
        assert asyncio.run(scenario()) == []
    assert (
        "not exposing 'portless': the server announces it without a port; expose it with "
        "--expose LOCALPORT=portless or --expose unix:/PATH=portless"
    ) in caplog.messages
