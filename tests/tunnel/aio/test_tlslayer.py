"""The TLS layer over a real loopback socket, fed ciphertext cut where we choose.

The peer is a bare ``ssl.SSLObject`` on a plain socket, so the test decides which TLS
records leave in one ``send`` and where a record is cut in two. Whatever the cuts, every
plaintext byte must reach the inner protocol as soon as its record is complete, and never
wait for a later socket read.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.pki import HOST, loopback_pki
from tunnel.aio.tlslayer import TlsLayer
from tunnel.security.tls import client_context, server_context

RECORD = 16 * 1024  # the largest plaintext of one TLS record


class Collector(asyncio.BufferedProtocol):
    """The inner protocol: keeps what the layer decrypts, and wakes whoever waits for it."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.calls = 0
        self.eof = False
        self._buffer = bytearray(256 * 1024)
        self.changed = asyncio.Event()

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self._buffer)

    def buffer_updated(self, nbytes: int) -> None:
        self.received += self._buffer[:nbytes]
        self.calls += 1
        self.changed.set()

    def eof_received(self) -> bool | None:
        self.eof = True
        self.changed.set()
        return None

    async def until(self, done: Callable[[], bool]) -> None:
        while not done():
            self.changed.clear()
            await self.changed.wait()


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """The server's and the client's contexts, as the roles build them."""
    server, client = loopback_pki(tmp_path_factory.mktemp("tls"))
    return server_context(server), client_context(client)


class Peer:
    """The client end: an SSLObject whose records the test sends by hand."""

    def __init__(self, context: ssl.SSLContext, sock: socket.socket) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=HOST)

    async def handshake(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                await loop.sock_sendall(self.sock, self.outgoing.read())
                self.incoming.write(await loop.sock_recv(self.sock, 65536))
                continue
            await loop.sock_sendall(self.sock, self.outgoing.read())
            return

    def encrypt(self, plaintext: bytes) -> bytes:
        """The ciphertext of one write: one record, or more beyond 16 KiB."""
        self.tls.write(plaintext)
        return self.outgoing.read()


@contextlib.asynccontextmanager
async def connected(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> AsyncIterator[tuple[Peer, Collector]]:
    """A TLS layer serving one connection from a :class:`Peer`, handshake done; all closed
    on the way out."""
    server_side, client_side = contexts
    loop = asyncio.get_running_loop()
    inner = Collector()
    layers: list[TlsLayer] = []

    def protocol() -> TlsLayer:
        layers.append(TlsLayer(server_side, inner, server_side=True))
        return layers[-1]

    server = await loop.create_server(protocol, HOST, 0)
    sock = socket.create_connection((HOST, server.sockets[0].getsockname()[1]))
    try:
        sock.setblocking(False)
        peer = Peer(client_side, sock)
        await peer.handshake()
        await asyncio.wait_for(layers[0].handshake_done, 10)
        yield peer, inner
    finally:
        for layer in layers:
            layer.close()
        sock.close()
        server.close()


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 10))  # type: ignore[arg-type]


# Where the ciphertext is cut: in one piece; the records of each write alone; inside a record
# header; one byte at a time through the first record.
CUTS = {
    "whole": lambda data, ends: [data],
    "per write": lambda data, ends: [data[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)],
    "inside a header": lambda data, ends: [data[:ends[0] + 2], data[ends[0] + 2:]],
    "byte by byte": lambda data, ends: [data[i:i + 1] for i in range(ends[0])] + [data[ends[0]:]],
}  # fmt: skip


@pytest.mark.parametrize("cut", list(CUTS))
def test_every_record_is_delivered_as_soon_as_it_is_complete(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext], cut: str
) -> None:
    # Small records of different sizes, then one of exactly 16 KiB and one that TLS splits.
    texts = [b"ping\r\n", b"a" * 100, bytes(range(256)) * 20, b"b" * RECORD, b"c" * (RECORD + 7)]

    async def main() -> None:
        async with connected(contexts) as (peer, inner):
            loop = asyncio.get_running_loop()
            pieces, ends = [], []
            for text in texts:
                pieces.append(peer.encrypt(text))
                ends.append(sum(map(len, pieces)))
            for chunk in CUTS[cut](b"".join(pieces), ends):
                await loop.sock_sendall(peer.sock, chunk)
                await asyncio.sleep(0.002)  # each piece its own socket read, as far as possible
            # Nothing more is sent: all of it must come out of what has arrived.
            expected = b"".join(texts)
            await inner.until(lambda: len(inner.received) >= len(expected))
            assert bytes(inner.received) == expected

    run(main())


def test_many_records_of_one_socket_read_are_handed_on_together(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    async def main() -> None:
        async with connected(contexts) as (peer, inner):
            loop = asyncio.get_running_loop()
            texts = [bytes([i]) * 1000 for i in range(40)]  # 40 records, 40,000 bytes
            await loop.sock_sendall(peer.sock, b"".join(peer.encrypt(t) for t in texts))
            await inner.until(lambda: len(inner.received) >= 40_000)
            assert bytes(inner.received) == b"".join(texts)
            # The records of a socket read are decrypted into the inner buffer and handed on in
            # one call, not one call per record.
            assert inner.calls < 10

    run(main())


def test_close_notify_after_data_delivers_the_data_then_eof(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    async def main() -> None:
        async with connected(contexts) as (peer, inner):
            loop = asyncio.get_running_loop()
            data = peer.encrypt(b"last words")
            with contextlib.suppress(ssl.SSLWantReadError):
                peer.tls.unwrap()  # queues our close_notify; the layer's answer is not awaited
            await loop.sock_sendall(peer.sock, data + peer.outgoing.read())
            await inner.until(lambda: inner.eof)
            assert bytes(inner.received) == b"last words"

    run(main())
