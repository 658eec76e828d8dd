"""--allow-from (the server's tunnel listener) and --expose-allow (the client's ports), over real
loopback sockets: a source not listed is closed at once, counted by reason, logged once per
source per interval; behind a PROXY header the list applies to the real client."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from client.app import Client
from client.config import ClientConfig
from server.app import Server
from server.config import ServerConfig
from tunnel.operations import metrics
from tunnel.operations.metrics import CONNECTIONS_REJECTED
from tunnel.protocol.origin import Family, Origin
from tunnel.protocol.proxyheader import encode_v2
from tunnel.security.allowlist import parse_expose_allow, parse_networks
from tunnel.settings.links import Address, Catalog, ExposeSpec, parse_link


def rejected() -> float:
    return float(CONNECTIONS_REJECTED.labels("allow_from")._value.get())


def refused_here(service: str) -> int:
    return metrics._REFUSALS.counts.get(("client", service, "source_not_allowed"), 0)


def server_config(allow: list[str], accept: bool = False) -> ServerConfig:
    return ServerConfig(
        listen=Address("127.0.0.1", 0),
        catalog=Catalog((parse_link("svc=127.0.0.1:9"),)),
        allow_from=parse_networks(allow, "--allow-from"),
        accept_proxy_protocol=accept,
    )


@pytest.fixture(autouse=True)
def fresh_throttle() -> None:
    """Each test sees its first refusal logged: the once-per-source-per-10-s memory is
    process-wide, and another test may have refused 127.0.0.1 a moment ago."""
    from client.listeners import throttled as client_throttled
    from server.connection import throttled as server_throttled

    server_throttled._keys.clear()
    client_throttled._keys.clear()


def closed_at_once(address: tuple[str, int], first: bytes = b"") -> bool:
    """Whether the peer closes the connection without waiting for anything (after what it
    may say first: the server's refusal). The refusal may reset the connection before
    connect() itself has returned on loopback."""
    try:
        with socket.create_connection(address, timeout=5) as sock:
            if first:
                sock.sendall(first)
            return any(sock.recv(4096) == b"" for _ in range(10))
    except (ConnectionResetError, BrokenPipeError):
        return True


def test_a_source_outside_allow_from_is_closed_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        before = rejected()
        server = Server(server_config(["10.0.0.0/8", "2001:db8::/32"]))
        await server.start()
        try:
            for _ in range(3):
                assert await asyncio.to_thread(closed_at_once, server.address)
            assert rejected() == before + 3
            assert not server.connections
        finally:
            await server.stop()

    with caplog.at_level(logging.WARNING, "ambassador.server"):
        asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records if "allow-from" in r.getMessage()]
    assert (
        lines == [lines[0]]
        and "not in --allow-from (10.0.0.0/8, 2001:db8::/32); add its address" in lines[0]
    )


def test_a_listed_source_gets_its_session() -> None:
    async def scenario() -> None:
        server = Server(server_config(["127.0.0.0/8"]))
        await server.start()
        client = Client(ClientConfig(remotes=(Address(*server.address),)))
        await client.start()
        try:
            assert await client.connector.wait_tunnel(5) is not None
        finally:
            await client.stop()
            await server.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize(("real", "allowed"), [("10.9.8.7", True), ("192.0.2.1", False)])
def test_behind_a_proxy_header_allow_from_judges_the_real_client(real: str, allowed: bool) -> None:
    async def scenario() -> None:
        before = rejected()
        server = Server(server_config(["10.0.0.0/8"], accept=True))
        await server.start()
        header = encode_v2(Origin(Family.INET, real, "10.0.0.1", 5555, 7700))
        try:
            sock = socket.create_connection(server.address)
            sock.sendall(header)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5
            while not (server.connections if allowed else rejected() > before):
                assert loop.time() < deadline
                await asyncio.sleep(0.01)
            if allowed:  # the loopback peer alone would have been refused
                assert server.status()["sessions"][0]["peer"].startswith(f"{real}:5555")
            sock.close()
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_expose_allow_closes_a_consumer_outside_the_list_before_any_stream(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        server = Server(server_config([]))
        await server.start()
        client = Client(
            ClientConfig(
                remotes=(Address(*server.address),),
                expose=(ExposeSpec("127.0.0.1", 0, "svc"), ExposeSpec("127.0.0.1", 0, "9")),
                expose_allow=parse_expose_allow(["svc=10.0.0.0/8"]),
            )
        )
        await client.start()
        try:
            await client.connector.wait_tunnel(5)
            ports = {listening.service: listening.port for listening in client.listeners.bound}
            before = refused_here("svc")
            for _ in range(2):
                assert await asyncio.to_thread(closed_at_once, ("127.0.0.1", ports["svc"]))
            assert refused_here("svc") == before + 2
            opened = sum(len(c.streams) for c in server.connections)
            assert opened == 0
        finally:
            await client.stop()
            await server.stop()

    with caplog.at_level(logging.WARNING, "ambassador.client"):
        asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records if "expose-allow" in r.getMessage()]
    assert len(lines) == 1 and "not in --expose-allow for it (10.0.0.0/8)" in lines[0]


def test_a_client_refused_by_allow_from_closes_its_consumers_at_once_saying_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The server says why before closing, so the client refuses its consumers now rather
    than holding them for --link-wait-timeout (10 s) for a tunnel that will not come."""

    async def scenario() -> None:
        server = Server(server_config(["10.0.0.0/8"]))
        await server.start()
        with socket.socket() as probe:  # a fixed port: bound before the tunnel is up
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        client = Client(
            ClientConfig(
                remotes=(Address(*server.address),),
                expose=(ExposeSpec("127.0.0.1", port, "svc"),),
                link_wait_timeout=30.0,
            )
        )
        starting = asyncio.ensure_future(client.start())  # waits for a catalog that never comes
        try:
            for _ in range(500):  # the fixed port is bound first, before the tunnel is tried
                if client.listeners.bound:
                    break
                await asyncio.sleep(0.01)
            before = metrics._REFUSALS.counts.get(("client", "svc", "tunnel_refused"), 0)
            loop = asyncio.get_running_loop()
            for _ in range(2):  # the first may come before the refusal, and is held till it
                began = loop.time()
                assert await asyncio.to_thread(closed_at_once, ("127.0.0.1", port), b"PING\r\n")
                assert loop.time() - began < 3.0
            after = metrics._REFUSALS.counts.get(("client", "svc", "tunnel_refused"), 0)
            assert after == before + 2
            assert "--allow-from" in client.connector.refusal
        finally:
            starting.cancel()
            await client.stop()
            await server.stop()

    with caplog.at_level(logging.WARNING, "ambassador.client"):
        asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records if r.name == "ambassador.client"]
    assert any(
        "refused this client: this server takes tunnel connections only from the addresses "
        "its --allow-from lists, and it sees this client as 127.0.0.1; retrying" in line
        for line in lines
    ), lines
    consumer = [line for line in lines if line.startswith("connection to 'svc' refused")]
    assert len(consumer) == 1 and "the tunnel is not up because" in consumer[0], lines
