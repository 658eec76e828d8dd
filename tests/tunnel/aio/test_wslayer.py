"""The WebSocket layer over real loopback sockets, against a peer the test drives by hand.

The hand-driven peer is the ``websockets`` sans-IO codec (or raw bytes) on a plain socket, so
that the test sends exactly what a hostile or broken peer would: text frames, oversized
messages, no upgrade, an HTTP error, garbage, nothing at all, a close in the middle. Each ends
with one clause saying what happened, and the inner protocol learns it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from tunnel.aio.wslayer import WebSocketLayer
from tunnel.protocol.websocket import MAX_MESSAGE, SEND_MESSAGE, SUBPROTOCOL
from tunnel.settings.websocket import WebSocketAddress

HOST = "127.0.0.1"
PATH = "/ambassador"


class Collector(asyncio.BufferedProtocol):
    """The inner protocol: keeps what the layer delivers and how the connection ended."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.transport: asyncio.Transport | None = None
        self.lost: list[Exception | None] = []
        self._buffer = bytearray(64 * 1024)  # smaller than a message: delivery takes turns
        self.changed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self._buffer)

    def buffer_updated(self, nbytes: int) -> None:
        self.received += self._buffer[:nbytes]
        self.changed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)
        self.changed.set()

    async def until(self, done: Callable[[], bool]) -> None:
        while not done():
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 5)


class Peer:
    """A socket whose WebSocket side the test drives through the library's sans-IO codec."""

    def __init__(self, sock: socket.socket, codec: ClientProtocol | ServerProtocol) -> None:
        self.sock = sock
        self.codec = codec
        self.frames: list[Frame] = []
        self.responses: list[Response] = []

    async def send(self, data: bytes | None = None) -> None:
        loop = asyncio.get_running_loop()
        out = b"".join(self.codec.data_to_send()) if data is None else data
        await loop.sock_sendall(self.sock, out)

    async def read(self) -> bool:
        """Read once; False at EOF."""
        data = await asyncio.get_running_loop().sock_recv(self.sock, 1 << 20)
        if not data:
            self.codec.receive_eof()
            return False
        self.codec.receive_data(data)
        for event in self.codec.events_received():
            if isinstance(event, Frame):
                self.frames.append(event)
            elif isinstance(event, Response):
                self.responses.append(event)
        return True

    async def read_to_eof(self) -> bytes:
        loop = asyncio.get_running_loop()
        got = bytearray()
        while chunk := await asyncio.wait_for(loop.sock_recv(self.sock, 1 << 20), 5):
            got += chunk
        return bytes(got)

    async def close_code(self) -> int | None:
        while await asyncio.wait_for(self.read(), 5):
            pass
        return self.codec.close_rcvd.code if self.codec.close_rcvd is not None else None


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 15))  # type: ignore[arg-type]


def remote(port: int) -> WebSocketAddress:
    return WebSocketAddress(HOST, port, PATH)


@contextlib.asynccontextmanager
async def serving(
    timeout: float = 5.0,
) -> AsyncIterator[tuple[int, Collector, list[WebSocketLayer], list[str]]]:
    """A server-side layer for each connection to the yielded port; refusals are listed."""
    loop = asyncio.get_running_loop()
    inner = Collector()
    layers: list[WebSocketLayer] = []
    refused: list[str] = []

    def protocol() -> WebSocketLayer:
        layer = WebSocketLayer.server(
            inner, PATH, timeout, on_refused=lambda layer, why: why and refused.append(why)
        )
        layers.append(layer)
        return layer

    server = await loop.create_server(protocol, HOST, 0)
    try:
        yield server.sockets[0].getsockname()[1], inner, layers, refused
    finally:
        for layer in layers:
            layer.close()
        server.close()


async def client_peer(port: int, path: str = PATH, upgrade: bool = True) -> Peer:
    sock = socket.create_connection((HOST, port))
    sock.setblocking(False)
    uri = parse_uri(f"ws://{HOST}:{port}{path}")
    peer = Peer(sock, ClientProtocol(uri, subprotocols=[Subprotocol(SUBPROTOCOL)]))
    if upgrade:
        peer.codec.send_request(peer.codec.connect())  # type: ignore[union-attr]
        await peer.send()
        while not peer.responses:
            assert await asyncio.wait_for(peer.read(), 5)
    return peer


@contextlib.asynccontextmanager
async def answered_by(
    answer: Callable[[socket.socket], Awaitable[None]], timeout: float = 5.0
) -> AsyncIterator[tuple[WebSocketLayer, Collector]]:
    """A client-side layer dialing a raw server whose first (and only) move is ``answer``."""
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen()
    listener.setblocking(False)
    inner = Collector()
    layer = WebSocketLayer.client(inner, remote(listener.getsockname()[1]), timeout)
    await loop.create_connection(lambda: layer, HOST, listener.getsockname()[1])
    sock, _ = await loop.sock_accept(listener)
    sock.setblocking(False)
    task = asyncio.ensure_future(answer(sock))
    try:
        yield layer, inner
    finally:
        task.cancel()
        layer.close()
        sock.close()
        listener.close()


async def failure(layer: WebSocketLayer) -> str:
    with pytest.raises((ConnectionError, TimeoutError)) as caught:
        await asyncio.wait_for(layer.handshake_done, 5)
    return str(caught.value)


# ------------------------------------------------------------------------ carrying bytes


def test_bytes_cross_both_ways_in_binary_messages_of_bounded_size() -> None:
    big = bytes(range(256)) * (3 * SEND_MESSAGE // 256 + 5)  # more than three messages

    async def main() -> None:
        async with serving() as (port, server_inner, _, _):
            client_inner = Collector()
            layer = WebSocketLayer.client(client_inner, remote(port), 5.0)
            await asyncio.get_running_loop().create_connection(lambda: layer, HOST, port)
            await asyncio.wait_for(layer.handshake_done, 5)
            await server_inner.until(lambda: server_inner.transport is not None)
            layer.writelines([b"PING", b"\r\n"])
            await server_inner.until(lambda: server_inner.received == b"PING\r\n")
            assert server_inner.transport is not None
            server_inner.transport.write(big)
            await client_inner.until(lambda: len(client_inner.received) == len(big))
            assert client_inner.received == big
            layer.close()
            await server_inner.until(lambda: bool(server_inner.lost))
            assert str(server_inner.lost[0]) == "the peer closed the WebSocket"

    run(main())


def test_a_big_write_is_cut_into_messages_no_bigger_than_the_bound() -> None:
    async def main() -> None:
        async with serving() as (port, inner, _, _):
            peer = await client_peer(port)
            await inner.until(lambda: inner.transport is not None)
            assert inner.transport is not None
            inner.transport.write(b"x" * (2 * SEND_MESSAGE + 1))
            while sum(len(f.data) for f in peer.frames) < 2 * SEND_MESSAGE + 1:
                assert await asyncio.wait_for(peer.read(), 5)
            assert [len(f.data) for f in peer.frames] == [SEND_MESSAGE, SEND_MESSAGE, 1]
            assert {f.opcode for f in peer.frames} == {Opcode.BINARY}

    run(main())


def test_a_ping_is_answered_and_fragments_are_joined() -> None:
    async def main() -> None:
        async with serving() as (port, inner, _, _):
            peer = await client_peer(port)
            codec = peer.codec
            codec.send_ping(b"are you there")
            codec.send_binary(b"one ", fin=False)
            codec.send_continuation(b"message", fin=True)
            await peer.send()
            await inner.until(lambda: inner.received == b"one message")
            while not any(f.opcode is Opcode.PONG for f in peer.frames):
                assert await asyncio.wait_for(peer.read(), 5)
            assert inner.lost == []

    run(main())


# -------------------------------------------------------------- hostile input, server side


def test_a_text_message_closes_with_1003_and_one_line() -> None:
    async def main() -> None:
        async with serving() as (port, inner, _, _):
            peer = await client_peer(port)
            peer.codec.send_text(b"hello")
            await peer.send()
            assert await peer.close_code() == 1003
            await inner.until(lambda: bool(inner.lost))
            assert str(inner.lost[0]) == (
                "the peer sent a text message; the tunnel takes binary messages only "
                "(closed with 1003)"
            )

    run(main())


def test_an_oversized_message_closes_with_1009_before_it_is_buffered() -> None:
    async def main() -> None:
        async with serving() as (port, inner, _, _):
            peer = await client_peer(port)
            # Only the header of a message one byte over the bound: refused on its length.
            frame = Frame(Opcode.BINARY, b"x" * (MAX_MESSAGE + 1)).serialize(mask=True)
            await peer.send(frame[:14])
            assert await peer.close_code() == 1009
            await inner.until(lambda: bool(inner.lost))
            assert str(inner.lost[0]) == (
                f"the peer sent a WebSocket message over {MAX_MESSAGE} bytes (closed with 1009)"
            )
            assert inner.received == b""

    run(main())


def test_an_upgrade_to_another_path_is_answered_404() -> None:
    async def main() -> None:
        async with serving() as (port, inner, _, refused):
            peer = await client_peer(port, path="/other")
            assert peer.responses[0].status_code == 404
            assert refused == [
                "a WebSocket upgrade asked for '/other', but this listener's --websocket-path "
                "is /ambassador"
            ]
            assert inner.transport is None

    run(main())


@pytest.mark.parametrize(
    ("sent", "answer", "why"),
    [
        (b"GET /ambassador HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 426",
         "an HTTP request without a WebSocket upgrade (missing Connection header); if a "
         "proxy is in front, it must pass the Upgrade and Connection headers"),
        (b"\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00\x00", b"",
         "not an HTTP request; this listener takes WebSocket upgrades only "
         "(--websocket-path), so the client must use --remote ws://HOST:PORT/PATH (or wss://)"),
        (b"\x16\x03\x01\x02\x00", b"",
         "the connection starts with a TLS handshake, but this listener takes a plaintext "
         "WebSocket; give the server --tls-cert and --tls-key for wss://"),
        (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n", b"HTTP/1.1 431",
         "not a WebSocket upgrade request (expected no more than 128 headers)"),
    ],
    ids=["plain HTTP", "a plain tunnel client", "TLS", "too many headers"],
)  # fmt: skip
def test_what_is_not_an_upgrade_is_refused_in_one_line(
    sent: bytes, answer: bytes, why: str
) -> None:
    async def main() -> None:
        async with serving() as (port, inner, _, refused):
            peer = await client_peer(port, upgrade=False)
            await peer.send(sent)
            got = await peer.read_to_eof()
            assert got.startswith(answer)
            assert refused == [why]
            assert inner.transport is None

    run(main())


def test_a_slow_upgrade_is_refused_at_the_deadline() -> None:
    async def main() -> None:
        async with serving(timeout=0.3) as (port, inner, _, refused):
            peer = await client_peer(port, upgrade=False)
            await peer.send(b"GET /ambassador HTTP/1.1\r\n")  # and then nothing
            assert await peer.read_to_eof() == b""
            assert refused == ["no WebSocket upgrade within 0.3s"]
            assert inner.transport is None

    run(main())


def test_a_probe_that_says_nothing_is_not_worth_a_line() -> None:
    async def main() -> None:
        async with serving() as (port, _, layers, refused):
            sock = socket.create_connection((HOST, port))
            sock.close()
            while not layers or layers[0].transport is None or not layers[0].is_closing():
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            assert refused == []

    run(main())


# -------------------------------------------------------------- hostile input, client side


async def _answer(sock: socket.socket, text: bytes) -> None:
    loop = asyncio.get_running_loop()
    await loop.sock_recv(sock, 65536)
    await loop.sock_sendall(sock, text)
    sock.shutdown(socket.SHUT_WR)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
         "answered HTTP 404 Not Found instead of upgrading to WebSocket: nothing serves "
         "WebSockets at this path: check it against the ingress's routes and the server's "
         "--websocket-path"),
        (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
         "answered HTTP 403 Forbidden instead of upgrading to WebSocket: an ingress, proxy "
         "or the server forbids this path"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
         "answered HTTP 200 OK instead of upgrading to WebSocket: a plain web server answers "
         "there, not an ambassador-server with --websocket-path"),
        (b"HTTP/1.1 502 " + b"B" * 100 + b"\r\nContent-Length: 0\r\n\r\n",
         "answered HTTP 502 " + "B" * 60 + "...(+40 chars) instead of upgrading to WebSocket: "
         "the ingress could not reach the server"),
        (b"\x00\x00\x00\x00garbage\r\n\r\n",
         "did not answer the upgrade with HTTP: is it an ambassador-server with "
         "--websocket-path (and with TLS, if so use wss://)?"),
        (b"",
         "the peer closed the connection during the WebSocket upgrade"),
    ],
    ids=["404", "403", "plain HTTP", "502, its phrase bounded", "garbage", "closed"],
)  # fmt: skip
def test_an_answer_that_is_not_an_upgrade_fails_in_one_line(text: bytes, why: str) -> None:
    async def main() -> None:
        async with answered_by(lambda sock: _answer(sock, text)) as (layer, inner):
            assert await failure(layer) == why
            assert inner.transport is None

    run(main())


def test_an_upgrade_never_answered_fails_at_the_deadline() -> None:
    async def silent(sock: socket.socket) -> None:
        await asyncio.sleep(10)

    async def main() -> None:
        async with answered_by(silent, timeout=0.3) as (layer, _):
            assert await failure(layer) == "no WebSocket upgrade within 0.3s"

    run(main())


async def _upgrade_then(sock: socket.socket, then: Callable[[Peer], Awaitable[None]]) -> None:
    peer = Peer(sock, ServerProtocol(subprotocols=[Subprotocol(SUBPROTOCOL)]))
    codec = peer.codec
    while True:
        data = await asyncio.get_running_loop().sock_recv(sock, 65536)
        codec.receive_data(data)
        requests = codec.events_received()
        if requests:
            break
    codec.send_response(codec.accept(requests[0]))  # type: ignore[union-attr, arg-type]
    await peer.send()
    await then(peer)


@pytest.mark.parametrize(
    ("end", "why"),
    [
        ("going away", "the peer closed the WebSocket with 1001 going away (the peer or a "
         "proxy between is shutting down): bye"),
        ("cut", "the connection ended without a WebSocket close"),
    ],
)  # fmt: skip
def test_a_close_mid_stream_reaches_the_tunnel_in_one_line(end: str, why: str) -> None:
    async def then(peer: Peer) -> None:
        peer.codec.send_binary(b"some bytes")
        await peer.send()
        await asyncio.sleep(0.05)
        if end == "going away":
            peer.codec.send_close(1001, "bye")
            await peer.send()
        else:
            peer.sock.shutdown(socket.SHUT_WR)
        await asyncio.sleep(10)

    async def main() -> None:
        async with answered_by(lambda sock: _upgrade_then(sock, then)) as (layer, inner):
            await asyncio.wait_for(layer.handshake_done, 5)
            await inner.until(lambda: bool(inner.lost))
            assert inner.received == b"some bytes"
            assert [str(exc) for exc in inner.lost] == [why]

    run(main())
