"""A hostile peer against a real ambassador server, while a real client is being served.

Each test runs, in-process on 127.0.0.1, an echo backend, a ``server.app.Server`` whose
catalog links it as ``echo``, and a ``client.app.Client`` exposing ``echo`` on a local port.
The hostile peer is a plain TCP connection to the tunnel port that writes frames built by hand
(``struct`` ``>BBHII``, independent of ``tunnel.protocol.frames``). For every violation the server
must answer with one Go Away carrying code 1 (protocol error), close the connection within a
second, and log the violation; the real client's echo keeps working on its one session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from client.app import Client
from client.config import ClientConfig
from server.admission import AdmissionLimits
from server.app import Server
from server.config import ServerConfig
from tests.interop.support import run
from tunnel.settings.links import Address, Catalog, ExposeSpec, Service

pytestmark = pytest.mark.timeout(60)

HEADER = struct.Struct(">BBHII")
DATA, WINDOW_UPDATE, PING, GO_AWAY = 0, 1, 2, 3
SYN, ACK, FIN, RST = 0x1, 0x2, 0x4, 0x8
PROTOCOL_ERROR = 1
MIB = 1024 * 1024
SERVER_WINDOW = MIB  # the server's default --stream-window
CLOSE_WITHIN = 1.0
GARBAGE = b"GET / HTTP/1.1\r\nHost: tunnel\r\n\r\n"


def frame(type_: int, flags: int, stream_id: int, length: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(0, type_, flags, stream_id, length) + payload


def open_stream(stream_id: int) -> bytes:
    """A Window Update with SYN and no delta: how a client opens a stream."""
    return frame(WINDOW_UPDATE, SYN, stream_id, 0)


def parse_frames(data: bytes) -> list[tuple[int, int, int, int]]:
    """(type, flags, stream id, length) of each frame in ``data``; Data payloads skipped."""
    frames, offset = [], 0
    while offset < len(data):
        assert len(data) - offset >= HEADER.size, f"{len(data) - offset} stray bytes at the end"
        version, type_, flags, stream_id, length = HEADER.unpack_from(data, offset)
        assert version == 0, f"the server sent a frame of version {version}"
        offset += HEADER.size + (length if type_ == DATA else 0)
        assert offset <= len(data), "the server's last Data frame is cut short"
        frames.append((type_, flags, stream_id, length))
    return frames


# ------------------------------------------------------------------- the real pair


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


@dataclass
class Pair:
    server: Server
    client: Client
    echo_port: int  # the client's local port for the echo service

    @property
    def tunnel_address(self) -> tuple[str, int]:
        return self.server.address

    async def echo_round_trip(self, payload: bytes = b"are you there?\n") -> float:
        """Seconds for ``payload`` to go through client, tunnel, server, backend and back."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        async with asyncio.timeout(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", self.echo_port)
            try:
                writer.write(payload)
                assert await reader.readexactly(len(payload)) == payload
            finally:
                writer.close()
        return loop.time() - start

    def assert_client_unharmed(self) -> None:
        """The real client still has its first session, and the server holds no other."""
        connector = self.client.connector
        assert connector.sessions == 1, "the real client had to reconnect"
        assert connector.tunnel is not None and connector.tunnel.accepts_streams
        assert len(self.server.connections) == 1, "the server kept a closed connection"


@contextlib.asynccontextmanager
async def running_pair(
    echo_port: int, handshake_timeout: float = 10.0, admission: AdmissionLimits | None = None
) -> AsyncIterator[Pair]:
    """Backend, server and client, up and serving; the client exposes echo on ``echo_port``."""
    loop = asyncio.get_running_loop()
    async with contextlib.AsyncExitStack() as stack:
        backend = await loop.create_server(Echo, "127.0.0.1", 0)
        stack.callback(backend.close)
        backend_port = backend.sockets[0].getsockname()[1]
        catalog = Catalog((Service("echo", backend_port, Address("127.0.0.1", backend_port)),))
        server = Server(
            ServerConfig(
                listen=Address("127.0.0.1", 0),
                catalog=catalog,
                handshake_timeout=handshake_timeout,
                admission=admission or AdmissionLimits(),
            )
        )
        await server.start()
        stack.push_async_callback(lambda: asyncio.wait_for(server.stop(), 5))
        host, port = server.address
        expose = ExposeSpec("127.0.0.1", echo_port, "echo")
        client = Client(ClientConfig(remotes=(Address(host, port),), expose=(expose,)))
        stack.push_async_callback(lambda: asyncio.wait_for(client.stop(), 5))
        async with asyncio.timeout(5):
            await client.start()
            await client.connector.wait_catalog()
        pair = Pair(server, client, echo_port)
        await pair.echo_round_trip()
        yield pair


# --------------------------------------------------------------------- the attacks


@dataclass(frozen=True)
class Answer:
    frames: list[tuple[int, int, int, int]]
    seconds: float  # from the last byte written to the server's EOF
    peer: str  # our end of the connection, as the server names it in its log


async def attack(address: tuple[str, int], data: bytes) -> Answer:
    """Send ``data``, then read until the server closes; fails if that takes over 1 s."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), 5)
    host, port = writer.get_extra_info("sockname")[:2]
    try:
        writer.write(data)
        await asyncio.wait_for(writer.drain(), 5)
        sent = loop.time()
        received = bytearray()
        try:
            async with asyncio.timeout(CLOSE_WITHIN):
                while chunk := await reader.read(65536):
                    received += chunk
        except TimeoutError:
            frames = parse_frames(bytes(received))
            pytest.fail(f"the server had not closed the connection after {CLOSE_WITHIN}s: {frames}")
        return Answer(parse_frames(bytes(received)), loop.time() - sent, f"{host}:{port}")
    finally:
        writer.close()


CASES = [
    pytest.param(HEADER.pack(1, DATA, 0, 0, 0), "unsupported yamux version 1", id="bad-version"),
    pytest.param(frame(4, 0, 0, 0), "unknown frame type 0x4", id="unknown-type"),
    # Before its hello is answered a peer may send Data frames of 16 KiB at most: refused at the
    # header, long before the window (tests/tunnel/protocol/test_session.py checks windows after
    # it).
    pytest.param(open_stream(1) + frame(DATA, 0, 1, SERVER_WINDOW + 1, bytes(100)),
                 f"data frame of {SERVER_WINDOW + 1} bytes on stream 1 exceeds the 16384 byte",
                 id="data-beyond-hello-limit"),
    pytest.param(frame(DATA, 0, 3, 5, b"hello"), "stream 3, which was never opened",
                 id="data-on-unopened-stream"),
    pytest.param(open_stream(2), "opened stream 2 with our parity", id="syn-with-server-parity"),
    pytest.param(open_stream(1) + open_stream(1), "reused stream id 1", id="reused-stream-id"),
    pytest.param(open_stream(3) + open_stream(1), "reused stream id 1", id="stream-id-goes-down"),
    pytest.param(frame(PING, SYN, 1, 7), "PING frame on stream 1", id="ping-on-stream"),
    pytest.param(frame(GO_AWAY, 0, 1, 0), "GO_AWAY frame on stream 1", id="go-away-on-stream"),
    pytest.param(frame(WINDOW_UPDATE, 0, 0, 1024), "WINDOW_UPDATE frame on stream 0",
                 id="window-update-on-stream-0"),
    pytest.param(open_stream(1) + frame(WINDOW_UPDATE, FIN, 1, 0) + frame(DATA, 0, 1, 1, b"x"),
                 "after the peer's FIN", id="data-after-fin"),
    pytest.param(frame(WINDOW_UPDATE, SYN, 1, 0xFFFF_FFFF), "grew past 2**32-1",
                 id="window-overflow"),
    pytest.param(GARBAGE, "unsupported yamux version 71", id="garbage"),
    pytest.param(bytes.fromhex("160301020001") + bytes(506), "TLS handshake", id="tls-hello"),
    pytest.param(open_stream(1) + frame(DATA, 0, 1, 1 << 30), "1073741824 bytes on stream 1",
                 id="1gib-data-header"),
    # Floods of frames that cost work and move no data (the budgets in tunnel/protocol/limits.py).
    pytest.param(b"".join(frame(PING, SYN, 0, i) for i in range(1, 202)), "a ping flood",
                 id="ping-flood"),
    pytest.param(open_stream(1) + frame(WINDOW_UPDATE, 0, 1, 0) * 1200, "empty frames a second",
                 id="empty-frame-flood"),
    pytest.param(open_stream(1) + b"".join(frame(WINDOW_UPDATE, SYN | RST, i, 0)
                                           for i in range(3, 2403, 2)),
                 "rapid-reset flood", id="rapid-reset-flood"),
]  # fmt: skip


@pytest.mark.parametrize(("attack_bytes", "violation"), CASES)
def test_violation_gets_go_away_protocol_error_and_close(
    attack_bytes: bytes,
    violation: str,
    caplog: pytest.LogCaptureFixture,
    free_port: Callable[[], int],
) -> None:
    """The server answers the violation with Go Away(protocol error), closes within 1 s and
    logs what was wrong; the real client is served before and after, on its one session."""
    caplog.set_level(logging.DEBUG, logger="ambassador.tunnel")

    async def scenario() -> tuple[Answer, list[float]]:
        async with running_pair(free_port()) as pair:
            before = await pair.echo_round_trip()
            answer = await attack(pair.tunnel_address, attack_bytes)
            after = await pair.echo_round_trip()
            pair.assert_client_unharmed()
            return answer, [before, after]

    answer, round_trips = run(scenario())

    go_aways = [f for f in answer.frames if f[0] == GO_AWAY]
    assert go_aways == [(GO_AWAY, 0, 0, PROTOCOL_ERROR)], answer.frames
    assert answer.frames[-1] == go_aways[0], "the server sent more after its Go Away"
    assert answer.seconds < CLOSE_WITHIN
    ended = [
        r.getMessage()
        for r in caplog.records
        if f"session with {answer.peer} ended" in r.getMessage()
    ]
    assert len(ended) == 1 and violation in ended[0], ended
    assert max(round_trips) < 1.0


def test_junk_connections_do_not_starve_a_real_client(free_port: Callable[[], int]) -> None:
    """200 connections that say nothing and 200 that send garbage: the garbage ones get a
    protocol-error Go Away and are closed within a second, the silent ones are closed by the
    1 s handshake timeout within 2 s, and meanwhile the real client's echo takes under 1 s."""
    silent_count = junk_count = 200

    async def scenario() -> dict[str, list[float]]:
        loop = asyncio.get_running_loop()
        # Room for all 400 at once: the bounds on them are tests/security/test_attack_budget.py's.
        many = AdmissionLimits(unauthenticated=1000, unauthenticated_per_address=1000)
        async with running_pair(free_port(), handshake_timeout=1.0, admission=many) as pair:
            address = pair.tunnel_address
            opened = loop.time()
            connections = await asyncio.wait_for(
                asyncio.gather(
                    *(asyncio.open_connection(*address) for _ in range(silent_count + junk_count))
                ),
                10,
            )
            silent, junk = connections[:silent_count], connections[silent_count:]
            for _, writer in junk:
                writer.write(GARBAGE)
            written = loop.time()

            async def closed_after(reader: asyncio.StreamReader, since: float, junk: bool) -> float:
                received = bytearray()
                while chunk := await reader.read(65536):
                    received += chunk
                go_aways = [f for f in parse_frames(bytes(received)) if f[0] == GO_AWAY]
                # The silent ones are closed without a word about the protocol.
                assert go_aways == ([(GO_AWAY, 0, 0, PROTOCOL_ERROR)] if junk else []), go_aways
                return loop.time() - since

            watching = [
                asyncio.ensure_future(closed_after(reader, written, junk=True))
                for reader, _ in junk
            ] + [
                asyncio.ensure_future(closed_after(reader, opened, junk=False))
                for reader, _ in silent
            ]
            try:
                round_trips = [await pair.echo_round_trip() for _ in range(5)]
                async with asyncio.timeout(3):
                    closes = await asyncio.gather(*watching)
                round_trips.append(await pair.echo_round_trip())
                pair.assert_client_unharmed()
            finally:
                for task in watching:
                    task.cancel()
                for _, writer in connections:
                    writer.close()
            return {
                "round_trips": round_trips,
                "junk_closes": closes[:junk_count],
                "silent_closes": closes[junk_count:],
                "connect_seconds": [written - opened],
            }

    out = run(scenario())
    assert max(out["round_trips"]) < 1.0, out["round_trips"]
    assert max(out["junk_closes"]) < CLOSE_WITHIN, max(out["junk_closes"])
    # Closed by the handshake timeout: not before it, and all of them within ~2 s.
    assert min(out["silent_closes"]) >= 0.9, min(out["silent_closes"])
    assert max(out["silent_closes"]) < 2.0, max(out["silent_closes"])
