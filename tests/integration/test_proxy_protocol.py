"""PROXY protocol with a real haproxy on either side of the pair.

* As a backend: haproxy with ``accept-proxy`` on its ``bind`` line, in TCP mode, logs the
  client address it read from the header the server wrote (``%ci:%cp``): it must be the
  consumer's own, for v1 and v2, IPv4 and IPv6 consumers.
* In front of the server: haproxy with ``send-proxy-v2`` forwards the client's tunnel
  connection; the server (``--accept-proxy-protocol``) must name the real client, and its
  ``--allow-from`` must judge that address. A client it refuses (the real program) refuses
  its consumer (redis-cli) at once and says why, instead of holding it for a tunnel that will
  not come.

The server runs in this process, and so does the client but for the refused one; haproxy,
that client and redis-cli are subprocesses stopped by their pids.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import urllib.request
from pathlib import Path

import pytest

from client.app import Client
from client.config import ClientConfig
from server.app import Server
from server.config import ServerConfig
from tests.conftest import pick_free_port, wait_until_accepting
from tests.environment import missing
from tests.integration.haproxy import haproxy
from tests.integration.support import (
    Processes,
    Redis,
    ambassador,
    redis_cli,
    require_programs,
)
from tests.integration.test_reverse import rejected, start_dialing_server, start_listening_client
from tunnel.operations.metrics import CONNECTIONS_REJECTED
from tunnel.security.allowlist import parse_networks
from tunnel.settings.links import Address, Catalog, ExposeSpec, parse_link
from tunnel.settings.proxyprotocol import parse_proxy_protocol


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("consumer_host", ["127.0.0.1", "::1"])
def test_haproxy_backend_logs_the_consumers_real_address(
    processes: Processes, tmp_path: Path, version: int, consumer_host: str
) -> None:
    if consumer_host == "::1" and not socket.has_ipv6:
        missing("no IPv6")
    sink = socket.socket()
    sink.bind(("127.0.0.1", 0))
    sink.listen()
    port = pick_free_port()
    process = haproxy(
        processes, tmp_path, f"bind 127.0.0.1:{port} accept-proxy",
        f"server s1 127.0.0.1:{sink.getsockname()[1]}",
    )  # fmt: skip
    wait_until_accepting("127.0.0.1", port)

    async def scenario() -> tuple[str, int]:
        catalog = Catalog((parse_link(f"svc=127.0.0.1:{port}"),))
        config = ServerConfig(
            listen=Address("127.0.0.1", 0),
            catalog=catalog,
            proxy_protocol=parse_proxy_protocol([f"svc=v{version}"], catalog),
        )
        server = Server(config)
        await server.start()
        client = Client(
            ClientConfig(
                remotes=(Address(*server.address),),
                expose=(ExposeSpec(consumer_host, 0, "svc"),),
            )
        )
        await client.start()
        try:
            await client.connector.wait_tunnel(5)
            local = client.listeners.bound[0].port
            _, writer = await asyncio.open_connection(consumer_host, local)
            writer.write(b"hello")
            await writer.drain()
            consumer = writer.get_extra_info("sockname")
            await asyncio.to_thread(
                process.wait_for_stderr, rf"src={re.escape(consumer[0])}:{consumer[1]}\b"
            )
            writer.close()
            return consumer[0], consumer[1]
        finally:
            await client.stop()
            await server.stop()

    try:
        host, source_port = asyncio.run(scenario())
    finally:
        sink.close()
    assert f"src={host}:{source_port}" in process.stderr()


@pytest.mark.parametrize(("allow", "admitted"), [("127.0.0.0/8", True), ("10.0.0.0/8", False)])
def test_haproxy_in_front_with_send_proxy_v2_shows_the_real_client_and_allow_from_judges_it(
    processes: Processes, tmp_path: Path, allow: str, admitted: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    import logging

    from server.connection import throttled

    # The once-per-source-per-10-s memory is process-wide: another test may have refused
    # 127.0.0.1 a moment ago, and this one must see its own refusal logged.
    throttled._keys.clear()
    front = pick_free_port()

    async def scenario() -> None:
        config = ServerConfig(
            listen=Address("127.0.0.2", 0),  # reachable from haproxy, named by its header
            catalog=Catalog((parse_link("svc=127.0.0.1:9"),)),
            accept_proxy_protocol=True,
            allow_from=parse_networks([allow], "--allow-from"),
        )
        server = Server(config)
        await server.start()
        haproxy(
            processes, tmp_path, f"bind 127.0.0.1:{front}",
            f"server s1 127.0.0.2:{server.address[1]} send-proxy-v2",
        )  # fmt: skip
        await asyncio.to_thread(wait_until_accepting, "127.0.0.1", front)
        try:
            if admitted:
                client = Client(ClientConfig(remotes=(Address("127.0.0.1", front),)))
                await client.start()
                try:
                    assert await client.connector.wait_tunnel(5) is not None
                    peers = [row["peer"] for row in server.status()["sessions"]]
                    assert peers and peers[0].startswith("127.0.0.1:")
                finally:
                    await client.stop()
            else:
                await refused_client_refuses_its_consumer_at_once(processes, front)
        finally:
            await server.stop()

    with caplog.at_level(logging.WARNING, "ambassador.server"):
        asyncio.run(scenario())
    refused = [r.getMessage() for r in caplog.records if "--allow-from" in r.getMessage()]
    assert bool(refused) is not admitted


async def refused_client_refuses_its_consumer_at_once(processes: Processes, front: int) -> None:
    """The full client behind haproxy, refused by --allow-from: redis-cli is closed within
    a few seconds (not after --link-wait-timeout, 10 s), and the client logs the reason."""
    require_programs("redis-cli")
    before = CONNECTIONS_REJECTED.labels("allow_from")._value.get()
    local = pick_free_port()
    client = processes.start(
        "ambassador-client",
        [*ambassador("client"), f"--remote=127.0.0.1:{front}", f"--expose=127.0.0.1:{local}=svc"],
    )
    await asyncio.to_thread(wait_until_accepting, "127.0.0.1", local)
    loop = asyncio.get_running_loop()
    began = loop.time()
    answer = await asyncio.to_thread(redis_cli, local, "PING")
    assert loop.time() - began < 5.0, "the consumer was held"
    assert "PONG" not in answer and ("reset" in answer or "closed" in answer), answer
    assert CONNECTIONS_REJECTED.labels("allow_from")._value.get() > before
    said = await asyncio.to_thread(client.wait_for_stderr, r"WARNING .*refused this client.*", 5)
    assert "its --allow-from lists, and it sees this client as 127.0.0.1" in said.group(0)
    said = await asyncio.to_thread(client.wait_for_stderr, r"connection to 'svc' refused.*", 5)
    assert "the tunnel is not up because" in said.group(0)


@pytest.mark.parametrize("send", ["send-proxy-v2", "send-proxy"])
@pytest.mark.parametrize(("allow", "admitted"), [("127.0.0.1", True), ("127.0.0.3", False)])
def test_haproxy_in_front_of_a_listening_client_names_the_real_dialing_server(
    processes: Processes, redis_server: Redis, tmp_path: Path, send: str, allow: str,
    admitted: bool,
) -> None:  # fmt: skip
    """Reverse mode behind a balancer: haproxy forwards the dialing server's connection to
    the client's --listen from 127.0.0.3, and says in its PROXY header that it came from
    127.0.0.1. The client names 127.0.0.1 in its log and status, and its --allow-from judges
    that address, never haproxy's: listing the balancer's own address admits nobody."""
    front, listen, local, metrics_port = (pick_free_port() for _ in range(4))
    client = start_listening_client(
        processes, listen, "--accept-proxy-protocol", f"--allow-from={allow}",
        f"--expose=127.0.0.1:{local}=redis", f"--metrics-listen=127.0.0.1:{metrics_port}",
    )  # fmt: skip
    haproxy(
        processes, tmp_path, f"bind 127.0.0.1:{front}",
        f"server s1 127.0.0.1:{listen} {send} source 127.0.0.3",
    )  # fmt: skip
    wait_until_accepting("127.0.0.1", front)
    server = start_dialing_server(processes, redis_server, f"--connect=127.0.0.1:{front}")
    if admitted:
        client.wait_for_stderr(r"tunnel up from 127\.0\.0\.1:\d+ as host 'anonymous'")
        assert redis_cli(local, "PING") == "PONG"
        url = f"http://127.0.0.1:{metrics_port}/status"
        with urllib.request.urlopen(url, timeout=5) as response:
            status = json.load(response)
        peers = [row["peer"] for row in status["remotes"]]
        assert peers and all(peer.startswith("127.0.0.1:") for peer in peers), peers
        assert "127.0.0.3" not in client.stderr()
        return
    client.wait_for_stderr(
        r"refused connection from 127\.0\.0\.1:\d+: not in --allow-from \(127\.0\.0\.3/32\)"
    )
    server.wait_for_stderr(r"refused this server: .* sees this server as 127\.0\.0\.1; retrying")
    assert rejected(metrics_port).get("allow_from", 0) >= 1
    assert "tunnel up" not in client.stderr()
