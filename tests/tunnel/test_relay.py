"""The asyncio layer over real loopback sockets: relay, backpressure, close semantics.

Both roles run in this process on one event loop; the backends are small asyncio servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from client.app import Client
from client.config import ClientConfig
from server.app import Server
from server.config import ServerConfig
from tunnel.links import Address, Catalog, ExposeSpec, parse_link

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    writer.close()


class Source:
    """A backend that writes as fast as its socket lets it, and counts what it wrote."""

    def __init__(self) -> None:
        self.written = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        block = b"x" * 65536
        with contextlib.suppress(ConnectionError):
            while True:
                writer.write(block)
                await writer.drain()
                self.written += len(block)


@contextlib.asynccontextmanager
async def pair(backends: dict[str, Handler]) -> AsyncIterator[dict[str, int]]:
    """Backends, a server offering them, a client exposing them; yields service -> local port."""
    servers = []
    links = []
    for name, handler in backends.items():
        backend = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(backend)
        links.append(parse_link(f"{name}=127.0.0.1:{backend.sockets[0].getsockname()[1]}"))
    server = Server(ServerConfig(listen=Address("127.0.0.1", 0), catalog=Catalog(tuple(links))))
    await server.start()
    host, port = server.address
    expose = tuple(ExposeSpec("127.0.0.1", 0, name) for name in backends)
    client = Client(ClientConfig(remotes=(Address(host, port),), expose=expose))
    await client.start()
    await client.connector.wait_tunnel(5)
    try:
        yield {bound.service: bound.port for bound in client.listeners.bound}
    finally:
        await client.stop()
        await server.stop()
        for backend in servers:
            backend.close()


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))  # type: ignore[arg-type]


async def echo_transfer(port: int, size: int) -> tuple[str, str, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    block = hashlib.sha256(str(port).encode()).digest() * 2048
    sent, back = hashlib.sha256(), hashlib.sha256()
    start = time.perf_counter()

    async def send() -> None:
        left = size
        while left:
            piece = block[: min(left, len(block))]
            sent.update(piece)
            writer.write(piece)
            await writer.drain()
            left -= len(piece)
        writer.write_eof()

    async def receive() -> None:
        while data := await reader.read(65536):
            back.update(data)

    await asyncio.gather(send(), receive())
    writer.close()
    return sent.hexdigest(), back.hexdigest(), time.perf_counter() - start


def test_slow_consumer_holds_back_only_its_own_stream() -> None:
    source = Source()

    async def scenario() -> None:
        async with pair({"source": source, "echo": echo}) as ports:
            # A consumer that connects and never reads.
            _, stalled = await asyncio.open_connection("127.0.0.1", ports["source"])
            await asyncio.sleep(0.5)
            # Meanwhile another stream on the same tunnel moves 32 MiB each way.
            sent, back, seconds = await echo_transfer(ports["echo"], 32 * 2**20)
            assert sent == back
            assert seconds < 20
            written_then = source.written
            await asyncio.sleep(0.5)
            # The stalled stream is bounded by its window plus the sockets' buffers: the
            # backend cannot keep writing into the tunnel's memory.
            assert source.written - written_then < 1 * 2**20
            assert source.written < 64 * 2**20
            stalled.close()

    run(scenario())


def test_half_close_carries_the_answer_back() -> None:
    async def digest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # until the consumer's FIN
        writer.write(hashlib.sha256(data).hexdigest().encode())
        writer.write_eof()
        writer.close()

    async def scenario() -> None:
        async with pair({"digest": digest}) as ports:
            reader, writer = await asyncio.open_connection("127.0.0.1", ports["digest"])
            payload = b"half-closed " * 100000
            writer.write(payload)
            writer.write_eof()
            answer = await reader.read()
            assert answer == hashlib.sha256(payload).hexdigest().encode()
            writer.close()

    run(scenario())


def test_backend_reset_resets_the_consumer() -> None:
    async def resetter(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(5)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()

    async def scenario() -> None:
        async with pair({"reset": resetter}) as ports:
            reader, writer = await asyncio.open_connection("127.0.0.1", ports["reset"])
            writer.write(b"hello")
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(), 5)
            writer.close()

    run(scenario())


def test_unknown_backend_port_refusal_resets_consumer_promptly() -> None:
    async def scenario() -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            closed_port = sock.getsockname()[1]
        link = parse_link(f"gone=127.0.0.1:{closed_port}")
        server = Server(ServerConfig(listen=Address("127.0.0.1", 0), catalog=Catalog((link,))))
        await server.start()
        expose = (ExposeSpec("127.0.0.1", 0, "gone"),)
        client = Client(ClientConfig(remotes=(Address(*server.address),), expose=expose))
        await client.start()
        await client.connector.wait_tunnel(5)
        port = client.listeners.bound[0].port
        start = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"PING\r\n")
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(), 5)
        assert time.perf_counter() - start < 2
        writer.close()
        await client.stop()
        await server.stop()

    run(scenario())


def test_many_streams_share_one_connection() -> None:
    async def scenario() -> None:
        async with pair({"echo": echo}) as ports:
            results = await asyncio.gather(
                *(echo_transfer(ports["echo"], 256 * 1024) for _ in range(50))
            )
            assert all(sent == back for sent, back, _ in results)

    run(scenario())
