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
from tests.bounded import drain, read_to_eof
from tunnel.aio.relay import Relay
from tunnel.operations.runtime import loop_factory
from tunnel.settings.links import Address, Catalog, ExposeSpec, parse_link

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

    stream = f"echo stream from local port {writer.get_extra_info('sockname')[1]}"

    async def send() -> None:
        left = size
        while left:
            piece = block[: min(left, len(block))]
            sent.update(piece)
            writer.write(piece)
            await drain(writer, stream, size - left)
            left -= len(piece)
        writer.write_eof()

    async def receive() -> None:
        back.update(await read_to_eof(reader, stream, expected=size))

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
            # The backend answers once the consumer's FIN has reached it.
            answer = await read_to_eof(reader, "digest stream (answer after the consumer's FIN)")
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


def test_unknown_backend_port_refusal_resets_consumer_promptly(
    free_port: Callable[..., int],
) -> None:
    async def scenario() -> None:
        # Below the ephemeral range: a port let go after binding port 0 may be handed to an
        # outgoing connection (the tunnel's own) before the backend is dialed.
        closed_port = free_port()
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


async def digest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A backend that answers only once the consumer has half-closed: with the request's hash."""
    data = await reader.read()  # until the consumer's FIN
    writer.write(hashlib.sha256(data).hexdigest().encode())
    writer.write_eof()
    writer.close()


LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": loop_factory() or asyncio.new_event_loop}


@pytest.mark.parametrize("request_", [b"", b"sent during the outage " * 1000], ids=["empty", "23k"])
@pytest.mark.parametrize("new_loop", LOOPS.values(), ids=LOOPS.keys())
def test_half_close_sent_while_the_tunnel_is_down_reaches_the_backend(
    free_port: Callable[..., int],
    new_loop: Callable[[], asyncio.AbstractEventLoop],
    request_: bytes,
) -> None:
    # A consumer that connects during an outage, sends its request (or nothing) and
    # half-closes (as a one-shot `nc -N` does) is held until the tunnel is up; its EOF must
    # then follow the request, or the backend waits for the rest of it for ever. uvloop reads
    # the EOF of an otherwise empty connection even while reading is paused, so the EOF is
    # taken before the stream exists and must be sent when it is opened.
    async def scenario() -> None:
        backend = await asyncio.start_server(digest, "127.0.0.1", 0)
        link = parse_link(f"digest=127.0.0.1:{backend.sockets[0].getsockname()[1]}")
        tunnel_port, local_port = free_port(), free_port()
        client = Client(
            ClientConfig(
                remotes=(Address("127.0.0.1", tunnel_port),),
                expose=(ExposeSpec("127.0.0.1", local_port, "digest"),),
                backoff_max=0.2,
            )
        )
        starting = asyncio.get_running_loop().create_task(client.start())
        server = None
        try:
            while not client.listeners.bound:  # the fixed port is bound before connecting
                await asyncio.sleep(0.01)
            # Request and EOF are in the socket before the client even accepts it: a blocking
            # connect, send and shutdown, without giving the loop a turn.
            request = request_
            consumer = socket.create_connection(("127.0.0.1", local_port))
            consumer.sendall(request)
            consumer.shutdown(socket.SHUT_WR)
            reader, writer = await asyncio.open_connection(sock=consumer)
            await asyncio.sleep(0.3)  # the client has taken the connection, not the tunnel
            server = Server(
                ServerConfig(listen=Address("127.0.0.1", tunnel_port), catalog=Catalog((link,)))
            )
            await server.start()
            await asyncio.wait_for(starting, 10)
            answer = await read_to_eof(
                reader, "digest stream opened after the outage (answer after the consumer's FIN)"
            )
            assert answer == hashlib.sha256(request).hexdigest().encode()
            writer.close()
        finally:
            starting.cancel()
            await client.stop()
            if server is not None:
                await server.stop()
            backend.close()

    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(asyncio.wait_for(scenario(), 30))


class Recorder:
    """Stands in for the tunnel where only the calls a relay makes matter."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def send(self, stream_id: int, data: bytes) -> bool:
        self.calls.append(("send", stream_id, bytes(data)))
        return False

    def end(self, stream_id: int) -> None:
        self.calls.append(("FIN", stream_id))


@pytest.mark.parametrize("held", [[], [b"GET / HTTP/1.0\r\n\r\n"]], ids=["nothing", "request"])
def test_eof_taken_before_the_stream_existed_is_sent_after_what_was_held(
    held: list[bytes],
) -> None:
    # Whether a loop hands over the EOF of a paused socket (uvloop does, for a connection that
    # sent nothing else) or only after reading resumes (asyncio) is the loop's business: once
    # taken, the EOF must reach the stream, after the bytes held with it. End to end above
    # uvloop also delivers the EOF again on resume, which hides a lost one: hence this check.
    relay = Relay(None)
    for data in held:
        relay.data_received(data)
    relay.eof_received()
    tunnel = Recorder()
    relay.tunnel, relay.stream_id = tunnel, 7  # type: ignore[assignment]
    relay.send_held()
    assert tunnel.calls == [*(("send", 7, data) for data in held), ("FIN", 7)], (
        "stream 7: the consumer's EOF, taken while the tunnel was down, was not sent as a FIN"
    )
