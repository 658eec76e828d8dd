"""The server's side of a stream (server/backend.py) over real loopback sockets: what happens to
a backend connection and to the stream's window from the header to the end of the stream.

Both roles run in this process on one event loop, so the tests can look at the server's
session and streams while the bytes move.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest

from client.app import Client
from client.config import ClientConfig
from server.app import Server
from server.backend import BackendStream
from server.config import ServerConfig
from tunnel.aio.relay import abort_with_reset
from tunnel.settings.links import Address, Catalog, ExposeSpec, parse_link


@contextlib.asynccontextmanager
async def tunnel_to(
    backend: tuple[str, int], dial_timeout: float = 5.0
) -> AsyncIterator[tuple[Server, int]]:
    """A server offering ``backend`` as 'svc' and a client exposing it; yields the server and
    the client's local port."""
    link = parse_link(f"svc={backend[0]}:{backend[1]}")
    server = Server(
        ServerConfig(
            listen=Address("127.0.0.1", 0), catalog=Catalog((link,)), dial_timeout=dial_timeout
        )
    )
    await server.start()
    client = Client(
        ClientConfig(
            remotes=(Address(*server.address),), expose=(ExposeSpec("127.0.0.1", 0, "svc"),)
        )
    )
    await client.start()
    try:
        yield server, client.listeners.bound[0].port
    finally:
        await client.stop()
        await server.stop()


def backend_streams(server: Server) -> list[BackendStream]:
    return [stream for connection in server.connections for stream in connection.streams]


async def wait_for(condition: object, what: str, timeout: float = 5.0) -> None:
    """Poll ``condition()`` until true; fail naming ``what`` did not happen."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():  # type: ignore[operator]
        if loop.time() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:g}s")
        await asyncio.sleep(0.01)


def test_backend_connection_that_completes_after_the_consumer_left_is_closed() -> None:
    # A backend whose accept queue is full drops our SYN; the kernel retries it a second
    # later. The consumer gives up in between. When the connection then completes, nobody
    # wants it: it must be closed at once, not kept open (a descriptor on both hosts) until
    # the backend times it out, if it ever does.
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        listener.setblocking(False)
        filler = socket.create_connection(listener.getsockname())  # the accept queue is full
        try:
            async with tunnel_to(listener.getsockname(), dial_timeout=10) as (server, port):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"PING\r\n")
                await wait_for(lambda: backend_streams(server), "the server's stream opening")
                (stream,) = backend_streams(server)
                abort_with_reset(writer.transport)  # type: ignore[arg-type]
                await wait_for(lambda: stream.closed, f"stream {stream.stream_id}'s reset")
                (await loop.sock_accept(listener))[0].close()  # room for the retried SYN
                late, _ = await asyncio.wait_for(loop.sock_accept(listener), 5)
                with late:
                    try:
                        data = await asyncio.wait_for(loop.sock_recv(late, 100), 3)
                    except TimeoutError:
                        pytest.fail(
                            f"stream {stream.stream_id}: the backend connection that completed "
                            "after the consumer left was kept open (a descriptor leak)"
                        )
                    assert data == b"", "the late backend connection was sent the request"
        finally:
            filler.close()
            listener.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_every_byte_of_a_stream_is_credited_back_header_included() -> None:
    # The window a stream's bytes use up comes back when they leave the server: to the
    # backend socket, or, for the stream header, into the header parser. A byte that is never
    # credited shrinks the stream's window for good; over a long stream's life with a small
    # window that is a stall.
    received = bytearray()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            received.extend(data)
        writer.close()

    async def scenario() -> None:
        backend = await asyncio.start_server(sink, "127.0.0.1", 0)
        async with tunnel_to(backend.sockets[0].getsockname()[:2]) as (server, port):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            for size in (1000, 100_000, 1):
                before = len(received)
                writer.write(b"x" * size)
                await wait_for(
                    lambda s=before + size: len(received) == s,  # type: ignore[misc]
                    f"the backend receiving {size} more bytes",
                )
                (stream,) = backend_streams(server)
                (connection,) = server.connections
                assert stream.stream_id is not None and stream.transport is not None
                window = connection.tunnel.session._streams[stream.stream_id].recv
                assert stream.transport.get_write_buffer_size() == 0
                # What the session still counts as received and not handed on must be exactly
                # what the relay wrote to the socket and has not credited yet.
                assert window.buffered == stream._uncredited, (
                    f"stream {stream.stream_id}: {window.buffered - stream._uncredited} bytes "
                    "received were never credited back"
                )
            writer.close()
        backend.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))
