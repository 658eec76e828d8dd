"""The counts behind /status and /metrics: kept as plain numbers, read directly by /status and
the status page, and exported to Prometheus under the names docs/operations.md gives.

A rename of a series, or /status reading numbers back through the Prometheus registry (one
whole collection per number), fails here. The roles run in this process on real loopback
sockets; each test names its services uniquely, since the counts are the process's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest
from prometheus_client import generate_latest

from client.app import Client
from client.config import ClientConfig
from server.app import Server
from server.config import ServerConfig
from server.forward import forward_status, start_forwarding
from tests.observability.support import Metrics
from tunnel.operations import metrics
from tunnel.operations.httpd import StatusServer
from tunnel.operations.observe import service_stats
from tunnel.settings.links import Address, Catalog, ExposeSpec, parse_link

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
ROW = re.compile(r"^\| `(ambassador_[a-z_]+)` \| (counter|gauge) \| ([^|]*) \|", re.MULTILINE)

# The series kept as plain counts, with the help text each has always had on /metrics.
PLAIN = {
    "ambassador_streams": "Streams opened",
    "ambassador_streams_open": "Streams currently open",
    "ambassador_bytes": "Bytes relayed, by direction (to_backend / to_consumer)",
    "ambassador_stream_refusals": "Streams refused or failed, by reason",
}


def documented() -> dict[str, tuple[str, set[str]]]:
    """docs/operations.md's metrics table: name -> (type, label names)."""
    return {
        name: (kind, set(re.findall(r"`([a-z_]+)`", labels)))
        for name, kind, labels in ROW.findall(OPERATIONS.read_text())
    }


def scraped() -> Metrics:
    return Metrics(generate_latest(metrics.REGISTRY).decode())


def test_each_plain_count_is_exported_under_its_documented_name() -> None:
    served = metrics.meters("server", "unit-doc")
    served.opened, served.open_now, served.read, served.written = 3, 1, 100, 7
    consumed = metrics.meters("client", "unit-doc")
    consumed.read, consumed.written = 11, 13
    metrics.refused("server", "unit-doc", "backend_refused")
    metrics.refused("server", "unit-doc", "backend_refused")
    metrics.refused("server", "unit-doc", "backend_timeout")

    page = scraped()
    docs = documented()
    for name, help_text in PLAIN.items():
        family = page.families[name]
        kind, labels = docs[name]
        assert (family.type, family.documentation) == (kind, help_text), name
        for sample in family.samples:
            if sample.name.endswith(("_total", "_open")) or sample.name == name:
                assert set(sample.labels) == labels, (name, sample)

    def value(name: str, **labels: str) -> float:
        (sample,) = page.find(name, service="unit-doc", **labels)
        return sample.value

    assert value("ambassador_streams_total", role="server") == 3
    assert value("ambassador_streams_open", role="server") == 1
    # A server reads from its backend what goes to the consumer; a client the reverse.
    assert value("ambassador_bytes_total", role="server", direction="to_backend") == 7
    assert value("ambassador_bytes_total", role="server", direction="to_consumer") == 100
    assert value("ambassador_bytes_total", role="client", direction="to_backend") == 11
    assert value("ambassador_bytes_total", role="client", direction="to_consumer") == 13
    refusals = "ambassador_stream_refusals_total"
    assert value(refusals, role="server", reason="backend_refused") == 2
    assert value(refusals, role="server", reason="backend_timeout") == 1
    # As prometheus_client's own counters do, each refusal series says when it began.
    (created,) = page.find(
        "ambassador_stream_refusals_created", service="unit-doc", reason="backend_timeout"
    )
    assert abs(created.value - time.time()) < 60

    assert service_stats("server", "unit-doc") == {
        "service": "unit-doc", "open_streams": 1, "streams_total": 3,
        "bytes_in": 7, "bytes_out": 100, "refused": 3,
    }  # fmt: skip


def test_every_documented_series_is_on_metrics_with_its_type() -> None:
    families = scraped().families
    for name, (kind, _) in documented().items():
        assert name in families, f"{name} is documented but not exported"
        assert families[name].type == kind, name


def test_reading_a_service_adds_no_series() -> None:
    assert service_stats("forward", "unit-never-used")["streams_total"] == 0
    assert not [
        sample for sample in scraped().samples if sample.labels.get("service") == "unit-never-used"
    ]


def status_pages(status: Callable[[], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """/status by service (its name before the port), after checking that the page renders."""
    endpoint = StatusServer(status, lambda: True)
    code, _, body = endpoint.respond("GET", "/status")
    assert code == "200 OK", body
    page = endpoint.respond("GET", "/")
    assert page[0] == "200 OK" and b"<table" in page[2]
    return {re.split("[: ]", row["service"])[0]: row for row in json.loads(body)["services"]}


def agree(rows: dict[str, dict[str, Any]], role: str, page: Metrics) -> None:
    """Each /status row says what /metrics says of the same service."""
    for service, row in rows.items():
        labels = {"role": role, "service": service}
        assert row["refused"] == page.value("ambassador_stream_refusals_total", **labels)
        assert row["streams_total"] == page.value("ambassador_streams_total", **labels)
        for key, direction in (("bytes_in", "to_backend"), ("bytes_out", "to_consumer")):
            assert row[key] == page.value(
                "ambassador_bytes_total", direction=direction, **labels
            ), (role, service, key)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def exchange(port: int, payload: bytes) -> bytes:
    """Send ``payload`` as a consumer and read until the other end closes (bounded)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        got = b""
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(5):
                while len(got) < len(payload) and (chunk := await reader.read(65536)):
                    got += chunk
        return got
    finally:
        writer.close()


async def refused(port: int) -> bool:
    """Connect as a consumer and report whether the pair ended it without an answer."""
    with contextlib.suppress(ConnectionError):
        return await exchange(port, b"x") == b""
    return True


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def echo_backend() -> AsyncIterator[int]:
    backend = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield backend.sockets[0].getsockname()[1]
    finally:
        backend.close()


async def wait_until(what: str, done: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not done():
            await asyncio.sleep(0.02)
    assert done(), what


def test_tunnel_status_reads_the_counts_not_the_registry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    payload = bytes(range(256)) * 40

    async def scenario() -> None:
        async with echo_backend() as backend:
            links = (
                parse_link(f"unit-echo=127.0.0.1:{backend}"),
                parse_link(f"unit-dead=127.0.0.1:{closed_port()}"),
            )
            server = Server(ServerConfig(listen=Address("127.0.0.1", 0), catalog=Catalog(links)))
            await server.start()
            expose = tuple(ExposeSpec("127.0.0.1", 0, name) for name in ("unit-echo", "unit-dead"))
            client = Client(ClientConfig(remotes=(Address(*server.address),), expose=expose))
            try:
                await client.start()
                await client.connector.wait_tunnel(5)
                ports = {bound.service: bound.port for bound in client.listeners.bound}
                assert await exchange(ports["unit-echo"], payload) == payload
                assert await refused(ports["unit-dead"])
                # The client counts the refusal when the server's answer arrives.
                await wait_until(
                    "the client to count the refusal",
                    lambda: any(
                        row["refused"] == 1
                        for row in client.status()["services"]
                        if row["service"].startswith("unit-dead ")
                    ),
                )
                await wait_until(
                    "the echo stream to end on both sides",
                    lambda: (
                        service_stats("server", "unit-echo")["open_streams"]
                        == service_stats("client", "unit-echo")["open_streams"]
                        == 0
                    ),
                )
                with monkeypatch.context() as patched:
                    patched.setattr(metrics.REGISTRY, "get_sample_value", registry_read)
                    patched.setattr(metrics.REGISTRY, "collect", registry_read)
                    sides = {"server": status_pages(server.status),
                             "client": status_pages(client.status)}  # fmt: skip
            finally:
                await client.stop()
                await server.stop()
        for role, rows in sides.items():
            assert rows["unit-dead"]["refused"] == 1, role
            assert rows["unit-echo"]["refused"] == 0, role
            assert rows["unit-echo"]["streams_total"] == 1, role
            assert rows["unit-echo"]["bytes_in"] == rows["unit-echo"]["bytes_out"] == len(payload)
            agree(rows, role, scraped())

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_forward_status_reads_the_counts_not_the_registry(
    monkeypatch: pytest.MonkeyPatch, free_port: Callable[..., int]
) -> None:
    payload = b"forwarded" * 100

    async def scenario() -> None:
        async with echo_backend() as backend:
            links = (
                parse_link(f"unit-fwd:{free_port()}=127.0.0.1:{backend}"),
                parse_link(f"unit-fwd-dead:{free_port()}=127.0.0.1:{closed_port()}"),
            )
            config = ServerConfig(catalog=Catalog(links), dial_timeout=2.0)
            servers = await start_forwarding(config.catalog, "127.0.0.1", config.dial_timeout)
            try:
                assert await exchange(links[0].port, payload) == payload
                assert await refused(links[1].port)
                await wait_until(
                    "the forwarded stream to end",
                    lambda: service_stats("forward", "unit-fwd")["open_streams"] == 0,
                )
                with monkeypatch.context() as patched:
                    patched.setattr(metrics.REGISTRY, "get_sample_value", registry_read)
                    patched.setattr(metrics.REGISTRY, "collect", registry_read)
                    rows = status_pages(lambda: forward_status(config, time.monotonic()))
            finally:
                for server in servers:
                    server.close()
        assert rows["unit-fwd-dead"]["refused"] == 1
        assert rows["unit-fwd"]["bytes_in"] == rows["unit-fwd"]["bytes_out"] == len(payload)
        agree(rows, "forward", scraped())

    asyncio.run(asyncio.wait_for(scenario(), 30))


def registry_read(*args: object, **kwargs: object) -> NoReturn:
    raise AssertionError("/status read the Prometheus registry")
