"""A session close to running out of stream ids is replaced before it does."""

from __future__ import annotations

import asyncio
import contextlib

from client.app import Client
from client.config import ClientConfig
from client.connector import ROTATE_BEFORE_EXHAUSTION
from server.app import Server
from server.config import ServerConfig
from tunnel.protocol.frames import MAX_STREAM_ID
from tunnel.settings.links import Address, Catalog, ExposeSpec, parse_link


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def round_trip(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    writer.write_eof()
    answer = await reader.read()
    writer.close()
    return answer


def test_session_is_rotated_before_stream_ids_run_out() -> None:
    async def scenario() -> None:
        backend = await asyncio.start_server(echo, "127.0.0.1", 0)
        link = parse_link(f"echo=127.0.0.1:{backend.sockets[0].getsockname()[1]}")
        server = Server(ServerConfig(listen=Address("127.0.0.1", 0), catalog=Catalog((link,))))
        await server.start()
        config = ClientConfig(
            remotes=(Address(*server.address),), expose=(ExposeSpec("127.0.0.1", 0, "echo"),)
        )
        client = Client(config)
        await client.start()
        port = client.listeners.bound[0].port
        first = client.connector.tunnel
        assert first is not None
        # Jump the session to just before the rotation point (2**31 opens would take hours).
        first.session._next_id = (
            MAX_STREAM_ID - 2 * ROTATE_BEFORE_EXHAUSTION + 4
        )  # odd: a client id
        # This stream is opened on the old session, which then starts to drain ...
        held_reader, held_writer = await asyncio.open_connection("127.0.0.1", port)
        held_writer.write(b"opened on the old session")
        assert await held_reader.readexactly(25) == b"opened on the old session"
        # ... and the next ones go to a fresh session, whose ids start again at the bottom.
        async with asyncio.timeout(10):
            while client.connector.tunnel in (None, first):
                await asyncio.sleep(0.02)
        second = client.connector.tunnel
        assert second is not None and second.session.streams_left > first.session.streams_left
        assert await round_trip(port, b"on the new session") == b"on the new session"
        # The stream of the old session is untouched by the rotation.
        held_writer.write(b"still there")
        assert await held_reader.readexactly(11) == b"still there"
        held_writer.close()
        await client.stop()
        await server.stop()
        backend.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))
