"""Forward mode opens a TCP listener per TCP link only: a UDP link is skipped with one line
(before, it got a TCP listener on its port that could never carry its datagrams)."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from server.forward import start_forwarding
from tests.conftest import pick_free_port
from tunnel.settings.links import Catalog, parse_link


def test_a_udp_link_gets_no_tcp_listener_and_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    tcp, udp = pick_free_port(), pick_free_port()
    catalog = Catalog(
        (parse_link(f"web:{tcp}=127.0.0.1:9"), parse_link(f"dns:{udp}=udp:127.0.0.1:53"))
    )

    async def scenario() -> list[int]:
        servers = await start_forwarding(catalog, "127.0.0.1", 1.0)
        try:
            return [s.sockets[0].getsockname()[1] for s in servers]
        finally:
            for server in servers:
                server.close()

    with caplog.at_level(logging.WARNING, logger="ambassador"):
        assert asyncio.run(scenario()) == [tcp]
    with socket.socket() as probe:  # the UDP service's port was left alone for TCP too
        probe.bind(("127.0.0.1", udp))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f"not forwarding dns:{udp}: it is a UDP service, and forward mode carries TCP only; "
        "reach it directly, or through the tunnel"
    ]


def test_a_pool_is_forwarded_to_its_first_target_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = pick_free_port()
    catalog = Catalog((parse_link(f"redis:{port}=127.0.0.1:7001,127.0.0.1:7002"),))

    async def scenario() -> None:
        for server in await start_forwarding(catalog, "127.0.0.1", 1.0):
            server.close()

    with caplog.at_level(logging.WARNING, logger="ambassador"):
        asyncio.run(scenario())
    assert [r.getMessage() for r in caplog.records] == [
        f"forwarding redis:{port} to its first target 127.0.0.1:7001 only: forward mode does "
        "not pool; use the tunnel for a pool"
    ]
