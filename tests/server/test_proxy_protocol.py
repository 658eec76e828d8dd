"""--proxy-protocol: a backend gets a PROXY header with the consumer's real endpoints first.

Both roles run in this process over real loopback sockets; the backend is a plain asyncio
server recording the bytes it gets, and the expected headers are written out by hand here from
the specification, not with the project's encoder.
"""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from client.app import Client
from client.config import ClientConfig
from server.app import Server
from server.config import ServerConfig
from server.forward import start_forwarding
from tests.environment import missing
from tunnel.errors import ConfigError
from tunnel.settings.links import Address, Catalog, ExposeSpec, parse_link
from tunnel.settings.proxyprotocol import parse_proxy_protocol

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


class Recorder:
    """A backend that records what each connection sends, and answers nothing."""

    def __init__(self) -> None:
        self.received: list[bytearray] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = bytearray()
        self.received.append(data)
        while chunk := await reader.read(65536):
            data += chunk
        writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def send_through(
    version: int | None, host: str = "127.0.0.1", tamper_client: bool = False
) -> tuple[bytes, tuple[str, int], int]:
    """Connect a consumer through a fresh pair, send PING, close; what the backend got, the
    consumer's address and the local port."""
    backend = Recorder()
    backend_port = await backend.start()
    catalog = Catalog((parse_link(f"svc=127.0.0.1:{backend_port}"),))
    proxy = parse_proxy_protocol([f"svc=v{version}"] if version else [], catalog)
    server = Server(
        ServerConfig(listen=Address("127.0.0.1", 0), catalog=catalog, proxy_protocol=proxy)
    )
    await server.start()
    client = Client(
        ClientConfig(remotes=(Address(*server.address),), expose=(ExposeSpec(host, 0, "svc"),))
    )
    await client.start()
    try:
        await client.connector.wait_tunnel(5)
        if tamper_client:
            client.connector.stream_header = 1  # as a client that predates the extension
        port = client.listeners.bound[0].port
        _, writer = await asyncio.open_connection(host, port)
        consumer = writer.get_extra_info("sockname")
        writer.write(b"PING\r\n")
        await writer.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while not (backend.received and backend.received[0].endswith(b"PING\r\n")):
            assert loop.time() < deadline, f"backend got {backend.received!r}"
            await asyncio.sleep(0.01)
        writer.close()
        return bytes(backend.received[0]), consumer[:2], port
    finally:
        await client.stop()
        await server.stop()
        await backend.stop()


def test_v1_backend_gets_the_consumers_ipv4_endpoints_first() -> None:
    received, (host, port), local = asyncio.run(send_through(1))
    assert received == f"PROXY TCP4 {host} 127.0.0.1 {port} {local}\r\n".encode() + b"PING\r\n"


def test_v2_backend_gets_the_consumers_ipv4_endpoints_first() -> None:
    received, (host, port), local = asyncio.run(send_through(2))
    block = socket.inet_aton(host) + socket.inet_aton("127.0.0.1") + struct.pack(">HH", port, local)
    assert received == V2_SIGNATURE + b"\x21\x11\x00\x0c" + block + b"PING\r\n"


def _ipv6() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        missing("no IPv6 loopback (::1)")


@pytest.mark.parametrize("version", [1, 2])
def test_an_ipv6_consumer_is_named_as_ipv6(version: int) -> None:
    _ipv6()
    received, (_, port), local = asyncio.run(send_through(version, "::1"))
    if version == 1:
        assert received == f"PROXY TCP6 ::1 ::1 {port} {local}\r\n".encode() + b"PING\r\n"
    else:
        loop6 = socket.inet_pton(socket.AF_INET6, "::1")
        block = loop6 + loop6 + struct.pack(">HH", port, local)
        assert received == V2_SIGNATURE + b"\x21\x21\x00\x24" + block + b"PING\r\n"


def test_without_proxy_protocol_the_backend_gets_the_consumers_bytes_alone() -> None:
    received, _, _ = asyncio.run(send_through(None))
    assert received == b"PING\r\n"


@pytest.mark.parametrize(
    ("version", "header"),
    [(1, b"PROXY UNKNOWN\r\n"), (2, V2_SIGNATURE + b"\x20\x00\x00\x00")],
)
def test_a_client_that_sends_no_origin_gets_local_or_unknown(version: int, header: bytes) -> None:
    # An older client sends a version 1 stream header: the backend is told to use the
    # connection's own addresses, never handed made-up ones.
    received, _, _ = asyncio.run(send_through(version, tamper_client=True))
    assert received == header + b"PING\r\n"


def test_proxy_protocol_option_errors_are_one_line_naming_the_form() -> None:
    catalog = Catalog((parse_link("redis=127.0.0.1:6379"),))
    for text, says in [
        ("redis", "use SERVICE=v1 or SERVICE=v2"),
        ("redis=v3", "use SERVICE=v1 or SERVICE=v2"),
        ("nosuch=v2", "no service 'nosuch'"),
    ]:
        with pytest.raises(ConfigError, match=says) as error:
            parse_proxy_protocol([text], catalog)
        assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="both v1 and v2"):
        parse_proxy_protocol(["redis=v1", "6379=v2"], catalog)
    assert parse_proxy_protocol(["redis=V2"], catalog) == {catalog.resolve("redis"): 2}


async def send_forwarded(version: int | None) -> tuple[bytes, tuple[str, int], int]:
    """The same through forward mode (--forward): the consumer's socket names it directly."""
    backend = Recorder()
    backend_port = await backend.start()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        local = probe.getsockname()[1]
    catalog = Catalog((parse_link(f"svc:{local}=127.0.0.1:{backend_port}"),))
    proxy = parse_proxy_protocol([f"svc=v{version}"] if version else [], catalog)
    servers = await start_forwarding(catalog, "127.0.0.1", 5.0, proxy)
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", local)
        consumer = writer.get_extra_info("sockname")
        writer.write(b"PING\r\n")
        await writer.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while not (backend.received and backend.received[0].endswith(b"PING\r\n")):
            assert loop.time() < deadline, f"backend got {backend.received!r}"
            await asyncio.sleep(0.01)
        writer.close()
        return bytes(backend.received[0]), consumer[:2], local
    finally:
        for server in servers:
            server.close()
        await backend.stop()


def test_forward_mode_sends_the_consumers_endpoints_v1() -> None:
    received, (host, port), local = asyncio.run(send_forwarded(1))
    assert received == f"PROXY TCP4 {host} 127.0.0.1 {port} {local}\r\n".encode() + b"PING\r\n"


def test_forward_mode_sends_the_consumers_endpoints_v2() -> None:
    received, (host, port), local = asyncio.run(send_forwarded(2))
    block = socket.inet_aton(host) + socket.inet_aton("127.0.0.1") + struct.pack(">HH", port, local)
    assert received == V2_SIGNATURE + b"\x21\x11\x00\x0c" + block + b"PING\r\n"


def test_forward_mode_without_proxy_protocol_sends_the_bytes_alone() -> None:
    received, _, _ = asyncio.run(send_forwarded(None))
    assert received == b"PING\r\n"
