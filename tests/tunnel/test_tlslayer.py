"""The TLS layer over a real loopback socket, fed ciphertext cut where we choose.

The peer is a bare ``ssl.SSLObject`` on a blocking socket, so the test decides which TLS
records leave in one ``send`` and where a record is cut in two. Whatever the cuts, every
plaintext byte must reach the inner protocol as soon as its record is complete, and never
wait for a later socket read.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Awaitable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tunnel.certs import issue_server_cert, make_ca
from tunnel.tlslayer import TlsLayer

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

    async def until(self, size: int) -> None:
        while len(self.received) < size:
            self.changed.clear()
            await self.changed.wait()


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    now = datetime.now(UTC)
    ca_key, ca_cert = make_ca("test CA", 2, now=now)
    key, cert = issue_server_cert(ca_key, ca_cert, "server", ["127.0.0.1"], 2, now=now)
    directory: Path = tmp_path_factory.mktemp("tls")
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cadata=ca_cert.public_bytes(serialization.Encoding.PEM).decode())
    return server, client


class Peer:
    """The client end: an SSLObject whose records the test sends by hand."""

    def __init__(self, context: ssl.SSLContext, sock: socket.socket) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="127.0.0.1")

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

    def records(self, *plaintexts: bytes) -> bytes:
        """The ciphertext of ``plaintexts``, one write (one or more records) each."""
        for text in plaintexts:
            self.tls.write(text)
        return self.outgoing.read()


async def connected(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> tuple[Peer, Collector, TlsLayer, asyncio.Server]:
    server_context, client_context = contexts
    loop = asyncio.get_running_loop()
    inner = Collector()
    layers: list[TlsLayer] = []

    def protocol() -> TlsLayer:
        layers.append(TlsLayer(server_context, inner, server_side=True))
        return layers[-1]

    server = await loop.create_server(protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    peer = Peer(client_context, sock)
    await peer.handshake()
    await asyncio.wait_for(layers[0].handshake_done, 10)
    return peer, inner, layers[0], server


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
        peer, inner, layer, server = await connected(contexts)
        loop = asyncio.get_running_loop()
        pieces, ends = [], []
        for text in texts:
            pieces.append(peer.records(text))
            ends.append(sum(map(len, pieces)))
        data = b"".join(pieces)
        for chunk in CUTS[cut](data, ends):
            await loop.sock_sendall(peer.sock, chunk)
            await asyncio.sleep(0.002)  # each piece its own socket read, as far as possible
        # Nothing more is sent: all of it must come out of what has arrived.
        await inner.until(sum(map(len, texts)))
        assert bytes(inner.received) == b"".join(texts)
        layer.close()
        peer.sock.close()
        server.close()

    run(main())


def test_many_records_of_one_socket_read_are_handed_on_together(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    async def main() -> None:
        peer, inner, layer, server = await connected(contexts)
        loop = asyncio.get_running_loop()
        texts = [bytes([i]) * 1000 for i in range(40)]  # 40 records, 40,000 bytes
        await loop.sock_sendall(peer.sock, b"".join(peer.records(t) for t in texts))
        await inner.until(40_000)
        assert bytes(inner.received) == b"".join(texts)
        # The records of a socket read are decrypted into the inner buffer and handed on in
        # one call, not one call per record.
        assert inner.calls < 10
        layer.close()
        peer.sock.close()
        server.close()

    run(main())


def test_close_notify_after_data_delivers_the_data_then_eof(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    async def main() -> None:
        peer, inner, layer, server = await connected(contexts)
        loop = asyncio.get_running_loop()
        data = peer.records(b"last words")
        with contextlib.suppress(ssl.SSLWantReadError):
            peer.tls.unwrap()  # queues our close_notify; the layer's answer is not awaited
        await loop.sock_sendall(peer.sock, data + peer.outgoing.read())
        while not inner.eof:
            inner.changed.clear()
            await inner.changed.wait()
        assert bytes(inner.received) == b"last words"
        layer.close()
        peer.sock.close()
        server.close()

    run(main())
