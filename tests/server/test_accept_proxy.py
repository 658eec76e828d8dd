"""--accept-proxy-protocol: the tunnel listener reads a load balancer's PROXY header, strictly.

The server runs in this process on real loopback sockets; raw sockets play the load balancer
(and its mistakes). What the server makes of a connection is read from its /status rows, its
log lines and its rejection counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from client.app import Client
from client.config import ClientConfig
from server.app import Server
from server.config import ServerConfig
from tunnel.operations.metrics import CONNECTIONS_REJECTED
from tunnel.protocol.origin import Family, Origin
from tunnel.protocol.proxyheader import encode_v1, encode_v2
from tunnel.security.allowlist import parse_networks
from tunnel.settings.links import Address, Catalog, ExposeSpec, parse_link

FAKE_V4 = Origin(Family.INET, "203.0.113.9", "10.0.0.1", 4242, 7700)
FAKE_V6 = Origin(Family.INET6, "2001:db8::9", "2001:db8::1", 4243, 7700)


def rejected(reason: str) -> float:
    return float(CONNECTIONS_REJECTED.labels(reason)._value.get())


@contextlib.asynccontextmanager
async def server(
    accept: bool, timeout: float = 5.0, trusted: list[str] | None = None
) -> AsyncIterator[Server]:
    config = ServerConfig(
        listen=Address("127.0.0.1", 0),
        catalog=Catalog((parse_link("svc=127.0.0.1:9"),)),
        accept_proxy_protocol=accept,
        handshake_timeout=timeout,
    )
    if trusted is not None:
        config = replace(config, accept_proxy_from=parse_networks(trusted, "--accept-proxy-from"))
    running = Server(config)
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


async def send_raw(address: tuple[str, int], data: bytes, close: bool = False) -> socket.socket:
    sock = socket.create_connection(address)
    sock.sendall(data)
    if close:
        sock.shutdown(socket.SHUT_WR)
    return sock


async def until(condition: object, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():  # type: ignore[operator]
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closes the connection (after what it may have written first: a
    session that had started pings at once)."""
    sock.settimeout(5)
    try:
        return any(sock.recv(1024) == b"" for _ in range(100))
    except ConnectionResetError:
        return True
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("header", "shown"),
    [(encode_v1(FAKE_V4), "203.0.113.9:4242"), (encode_v2(FAKE_V6), "[2001:db8::9]:4243")],
)
def test_the_server_names_the_real_client_from_the_header(header: bytes, shown: str) -> None:
    async def scenario() -> None:
        async with server(accept=True) as running:
            sock = await send_raw(running.address, header)
            await until(lambda: running.status()["sessions"])
            assert running.status()["sessions"][0]["peer"].startswith(shown)
            sock.close()

    asyncio.run(scenario())


def test_a_whole_client_session_runs_behind_a_proxy_header() -> None:
    async def scenario() -> None:
        async with server(accept=True) as running:
            lb = await asyncio.start_server(
                lambda r, w: relay_with_header(r, w, running.address), "127.0.0.1", 0
            )
            port = lb.sockets[0].getsockname()[1]
            client = Client(
                ClientConfig(
                    remotes=(Address("127.0.0.1", port),), expose=(ExposeSpec(None, 0, "svc"),)
                )
            )
            await client.start()
            try:
                assert await client.connector.wait_tunnel(5) is not None
                peers = [row["peer"] for row in running.status()["sessions"]]
                assert peers and peers[0].startswith("203.0.113.9:4242")
            finally:
                await client.stop()
                lb.close()

    asyncio.run(scenario())


async def relay_with_header(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: tuple[str, int]
) -> None:
    """A load balancer: the header first, then both ways until either side ends."""
    up_reader, up_writer = await asyncio.open_connection(*target)
    up_writer.write(encode_v2(FAKE_V4))

    async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.close()

    await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.mark.parametrize(
    ("data", "close", "reason", "says"),
    [
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", False, "proxy_header_invalid", "leading zeros"),
        (b"PROXY TCP4 " + b"9" * 120, False, "proxy_header_invalid", "longer than 107 bytes"),
        (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff", False, "proxy_header_invalid", "at most"),
        (b"PROXY TCP4 1.2.3.4", True, "proxy_header_invalid", "ended inside its PROXY header"),
        (b"\x00\x00\x00\x00", False, "proxy_header_invalid", "not a PROXY protocol header"),
    ],
)
def test_a_bad_header_closes_the_connection_with_one_line_naming_the_fix(
    data: bytes, close: bool, reason: str, says: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        before = rejected(reason)
        async with server(accept=True) as running:
            sock = await send_raw(running.address, data, close)
            await until(lambda: rejected(reason) == before + 1)
            assert await asyncio.to_thread(closed_by_server, sock)
            assert not running.connections

    with caplog.at_level(logging.WARNING, "ambassador.server"):
        asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records if "refused connection" in r.getMessage()]
    assert len(lines) == 1, lines
    assert says in lines[0] and "send-proxy" in lines[0]


def test_no_header_within_the_deadline_closes_the_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        before = rejected("proxy_header_timeout")
        async with server(accept=True, timeout=0.3) as running:
            sock = await send_raw(running.address, b"PROXY TCP4 ")
            await until(lambda: rejected("proxy_header_timeout") == before + 1)
            assert await asyncio.to_thread(closed_by_server, sock)

    with caplog.at_level(logging.WARNING, "ambassador.server"):
        asyncio.run(scenario())
    assert any("no complete PROXY protocol header within 0.3s" in r.getMessage()
               for r in caplog.records)  # fmt: skip


@pytest.mark.parametrize("header", [encode_v1(FAKE_V4), encode_v2(FAKE_V4)])
def test_a_header_sent_when_not_enabled_is_refused_with_one_line(
    header: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        before = rejected("proxy_header_unexpected")
        async with server(accept=False) as running:
            sock = await send_raw(running.address, header)
            await until(lambda: rejected("proxy_header_unexpected") == before + 1)
            assert await asyncio.to_thread(closed_by_server, sock)
            await until(lambda: not running.connections)

    with caplog.at_level(logging.INFO, "ambassador"):
        asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1, lines
    assert "does not accept one; add --accept-proxy-protocol" in lines[0]


def connect_from(source: str, address: tuple[str, int], data: bytes = b"") -> socket.socket:
    """A connection whose socket peer is ``source`` (another loopback address)."""
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(address)
    if data:
        sock.sendall(data)
    return sock


def test_a_header_from_outside_accept_proxy_from_is_refused_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        before = rejected("proxy_header_untrusted")
        async with server(accept=True, trusted=["127.0.0.1/32"]) as running:
            for _ in range(3):
                sock = connect_from("127.0.0.2", running.address, encode_v2(FAKE_V4))
                assert await asyncio.to_thread(closed_by_server, sock)
            await until(lambda: rejected("proxy_header_untrusted") == before + 3)
            await until(lambda: not running.connections)
            assert not running.status()["sessions"]

    with caplog.at_level(logging.WARNING, "ambassador.server"):
        asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1, lines
    assert lines[0].startswith("refused connection from 127.0.0.2:")
    assert "not in --accept-proxy-from (127.0.0.1/32); add the load balancer's" in lines[0]


def test_outside_accept_proxy_from_a_connection_is_judged_by_its_own_address() -> None:
    """No header from an untrusted peer: served as a direct client, named by its socket."""

    async def scenario() -> None:
        async with server(accept=True, trusted=["127.0.0.1/32"]) as running:
            sock = connect_from("127.0.0.2", running.address)
            await until(lambda: running.status()["sessions"])
            assert running.status()["sessions"][0]["peer"].startswith("127.0.0.2:")
            sock.close()

    asyncio.run(scenario())


def test_inside_accept_proxy_from_the_header_names_the_client() -> None:
    async def scenario() -> None:
        async with server(accept=True, trusted=["127.0.0.2/32"]) as running:
            sock = connect_from("127.0.0.2", running.address, encode_v1(FAKE_V4))
            await until(lambda: running.status()["sessions"])
            assert running.status()["sessions"][0]["peer"].startswith("203.0.113.9:4242")
            sock.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("layers", ["tls", "websocket", "tls+websocket"])
@pytest.mark.parametrize("header", [encode_v1(FAKE_V4), encode_v2(FAKE_V4)], ids=["v1", "v2"])
def test_a_header_sent_when_not_enabled_is_named_behind_tls_and_websocket_too(
    header: bytes, layers: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No gate stands in front of a listener without --accept-proxy-protocol: what first reads
    the connection (TLS, the WebSocket upgrade) notices the header, and the line is the same,
    not a TLS or HTTP error."""
    from tests.pki import loopback_pki

    tls, _ = loopback_pki(tmp_path)

    async def scenario() -> None:
        before = rejected("proxy_header_unexpected")
        config = ServerConfig(
            listen=Address("127.0.0.1", 0),
            catalog=Catalog((parse_link("svc=127.0.0.1:9"),)),
            tls=tls if "tls" in layers else None,
            websocket_path="/tunnel" if "websocket" in layers else None,
        )
        running = Server(config)
        await running.start()
        try:
            sock = await send_raw(running.address, header)
            await until(lambda: rejected("proxy_header_unexpected") == before + 1)
            assert await asyncio.to_thread(closed_by_server, sock)
            await until(lambda: not running.connections)
        finally:
            await running.stop()

    with caplog.at_level(logging.INFO, "ambassador"):
        asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    lines = [line for line in lines if "certificate" not in line]  # the test PKI's own notes
    assert len(lines) == 1, lines
    assert "does not accept one; add --accept-proxy-protocol" in lines[0]


def test_without_the_flag_no_gate_stands_in_front_of_a_connection() -> None:
    """The gate cost every new session CPU time (tests/bench/sessionrate.py): without
    --accept-proxy-protocol the connection's first protocol is the session's own, on both
    roles' tunnel listeners."""
    from client.tunnel_listener import TunnelListener
    from tunnel.aio.proxyaccept import ProxyAccept

    async def scenario() -> None:
        for accept in (False, True):
            running = Server(replace(server_config(), accept_proxy_protocol=accept))
            listener = TunnelListener(
                ClientConfig(remotes=(), listen=Address("127.0.0.1", 0),
                             accept_proxy_protocol=accept)
            )  # fmt: skip
            assert isinstance(running._serve_here(), ProxyAccept) is accept
            assert isinstance(listener._new_connection(), ProxyAccept) is accept

    asyncio.run(scenario())


def server_config() -> ServerConfig:
    return ServerConfig(
        listen=Address("127.0.0.1", 0), catalog=Catalog((parse_link("svc=127.0.0.1:9"),))
    )
