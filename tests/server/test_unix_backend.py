"""A link to a unix socket: the server dials the path, and says plainly why it could not."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from client.app import Client
from client.config import ClientConfig
from server.app import Server
from server.config import ServerConfig
from tunnel.settings.links import Address, Catalog, ExposeSpec, parse_link


@contextlib.asynccontextmanager
async def tunnel_to(link: str) -> AsyncIterator[tuple[Server, int]]:
    """A server offering ``link`` and a client exposing its alias on a TCP port; yields the
    server and the client's local port."""
    service = parse_link(link)
    server = Server(ServerConfig(listen=Address("127.0.0.1", 0), catalog=Catalog((service,))))
    await server.start()
    client = Client(
        ClientConfig(
            remotes=(Address(*server.address),),
            expose=(ExposeSpec("127.0.0.1", 0, service.full_name),),
        )
    )
    await client.start()
    try:
        yield server, client.listeners.bound[0].port
    finally:
        await client.stop()
        await server.stop()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


def test_a_tcp_consumer_reaches_a_unix_backend(tmp_path: Path) -> None:
    path = tmp_path / "echo.sock"

    async def scenario() -> None:
        backend = await asyncio.start_unix_server(echo, os.fspath(path))
        try:
            async with tunnel_to(f"echo=unix:{path}") as (server, port):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                payload = os.urandom(1 << 20)
                writer.write(payload)
                got = await asyncio.wait_for(reader.readexactly(len(payload)), 10)
                assert got == payload
                writer.close()
                [row] = server.status()["services"]
                assert row["service"] == f"echo -> unix:{path}"
        finally:
            backend.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (lambda path: None, "no such socket; start the backend, or fix the link's path"),
        (lambda path: path.mkdir(), "it is a directory, not a socket; fix the link's path"),
        (lambda path: path.write_text("x"), "it is a regular file, not a socket"),
    ],
    ids=["missing", "directory", "file"],
)
def test_a_unix_backend_that_cannot_be_reached_is_refused_in_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, make: object, said: str
) -> None:
    path = tmp_path / "backend.sock"
    make(path)  # type: ignore[operator]
    # One alias per case: the server logs each (identity, service, reason) once a while.
    alias = f"pg{len(said)}"

    async def scenario() -> None:
        async with tunnel_to(f"{alias}=unix:{path}") as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"hello")
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(reader.read(100), 10) == b""
            writer.close()

    with caplog.at_level(logging.WARNING, logger="ambassador"):
        asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records if r.name == "ambassador.server"]
    assert any(f"cannot reach unix:{path}: {said}" in line for line in lines), lines
