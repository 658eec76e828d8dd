"""A pooled link over real sockets: failover past a dead target, ejection seen in /status and
/metrics, an immediate refusal when no target is left, a check that hangs, a name that stops
resolving, and a reload that changes the pool under open streams."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any

import pytest

from client.app import Client
from client.config import ClientConfig
from server.app import Server
from server.config import ServerConfig
from server.pool import Pool
from tests.conftest import pick_free_port
from tunnel.operations.metrics import REGISTRY
from tunnel.settings.links import Address, Catalog, ExposeSpec, parse_link
from tunnel.settings.pooling import HealthCheck, PoolSettings


@contextlib.asynccontextmanager
async def tunnel_to(
    link: str, settings: PoolSettings | None = None
) -> AsyncIterator[tuple[Server, int]]:
    """A server offering ``link`` (as a pool with ``settings``) and a client exposing it."""
    service = parse_link(link)
    pooling: Mapping[Any, PoolSettings] = {service: settings} if settings else {}
    config = ServerConfig(
        listen=Address("127.0.0.1", 0), catalog=Catalog((service,)), pooling=pooling
    )
    server = Server(config)
    await server.start()
    client = Client(
        ClientConfig(
            remotes=(Address(*server.address),),
            expose=(ExposeSpec("127.0.0.1", 0, service.full_name),),
        )
    )
    await client.start()
    try:
        yield server, client.listeners.bound[0].port
    finally:
        await client.stop()
        await server.stop()


async def tagged_backend(tag: bytes) -> tuple[asyncio.Server, int]:
    """A backend that answers every connection with its tag, then echoes."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(tag)
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()

    backend = await asyncio.start_server(serve, "127.0.0.1", 0)
    return backend, backend.sockets[0].getsockname()[1]


async def ask(port: int) -> bytes:
    """Which backend a new consumer connection reaches (b"" when refused)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        with contextlib.suppress(ConnectionError):
            return await asyncio.wait_for(reader.read(1), 10)
        return b""
    finally:
        writer.close()


def targets(server: Server) -> list[dict[str, Any]]:
    [row] = server.status()["services"]
    rows: list[dict[str, Any]] = row["targets"]
    return rows


def test_failover_skips_a_dead_target_and_ejects_it() -> None:
    dead = pick_free_port()

    async def scenario() -> None:
        backend, port = await tagged_backend(b"B")
        link = f"echo=127.0.0.1:{dead},127.0.0.1:{port}"
        async with tunnel_to(link) as (server, local):
            assert [await ask(local) for _ in range(5)] == [b"B"] * 5
            first, second = targets(server)
            assert first["state"] == "ejected"
            assert f"127.0.0.1:{dead} refused the connection" in first["last_error"]
            assert (second["state"], second["opened"]) == ("healthy", 5)
            scraped = _scrape()
            series = "ambassador_backend_target"
            assert f'{series}_healthy{{service="echo",target="127.0.0.1:{dead}"}} 0.0' in scraped
            assert (
                f'{series}_streams_total{{service="echo",target="127.0.0.1:{port}"}} 5.0' in scraped
            )
        backend.close()

    asyncio.run(scenario())


def _scrape() -> str:
    from prometheus_client import generate_latest

    return generate_latest(REGISTRY).decode()


def test_round_robin_spreads_over_every_target() -> None:
    async def scenario() -> None:
        backends = [await tagged_backend(tag) for tag in (b"A", b"B", b"C")]
        link = "echo=" + ",".join(f"127.0.0.1:{port}" for _, port in backends)
        async with tunnel_to(link, PoolSettings("round-robin")) as (server, local):
            got = [await ask(local) for _ in range(30)]
            assert {tag: got.count(tag) for tag in set(got)} == {b"A": 10, b"B": 10, b"C": 10}
            for _ in range(100):  # the streams end a little after their consumers close
                if all(row["open"] == 0 for row in targets(server)):
                    break
                await asyncio.sleep(0.05)
            assert [row["open"] for row in targets(server)] == [0, 0, 0]
        for backend, _ in backends:
            backend.close()

    asyncio.run(scenario())


def test_no_target_left_is_refused_at_once_with_the_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = [pick_free_port(), pick_free_port()]

    async def scenario() -> None:
        link = "nothing=" + ",".join(f"127.0.0.1:{port}" for port in dead)
        async with tunnel_to(link) as (server, local):
            assert await ask(local) == b""
            loop = asyncio.get_running_loop()
            started = loop.time()
            assert await ask(local) == b""  # both ejected now: no dial at all
            assert loop.time() - started < 1.0
            assert {row["state"] for row in targets(server)} == {"ejected"}

    with caplog.at_level(logging.WARNING, logger="ambassador"):
        asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records if r.name == "ambassador.server"]
    assert any(
        "refused (backend_unreachable): no target of nothing is available" in line
        and f"127.0.0.1:{dead[0]} refused the connection; 127.0.0.1:{dead[1]} refused" in line
        for line in lines
    ), lines


def test_a_check_that_hangs_takes_its_target_down_at_its_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        silent = socket.create_server(("127.0.0.1", 0))  # accepts (backlog), never answers
        good, port = await tagged_backend(b"+PONG\r\n")
        hang = silent.getsockname()[1]
        check = HealthCheck(0.2, 0.1, 1, 2, b"PING\r\n", b"+PONG")
        link = f"echo=127.0.0.1:{hang},127.0.0.1:{port}"
        async with tunnel_to(link, PoolSettings(check=check)) as (server, local):
            await asyncio.sleep(0.8)
            first, second = targets(server)
            assert (first["state"], second["state"]) == ("down", "healthy")
            assert first["last_error"] == "health check timed out after 0.1s"
            assert await ask(local) == b"+"  # straight to the good one: no dial to the other
            assert first["opened"] == 0
        good.close()
        silent.close()

    with caplog.at_level(logging.INFO, logger="ambassador"):
        asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records]
    assert any("is down: health check timed out after 0.1s" in line for line in lines), lines


def test_a_name_that_stops_resolving_keeps_its_last_addresses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    answers: list[list[str] | OSError] = [
        ["127.0.0.2", "127.0.0.3"],
        socket.gaierror(-2, "Name or service not known"),
        socket.gaierror(-2, "Name or service not known"),
        ["127.0.0.3"],
    ]

    async def resolve(host: str, port: int, **_: object) -> list[Any]:
        answer = answers.pop(0)
        if isinstance(answer, OSError):
            raise answer
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answer]

    async def scenario() -> None:
        service = parse_link("redis=dns:redis.internal:6379")
        pool = Pool(service, PoolSettings(), 30.0, resolve)
        keys = lambda: [str(t.key) for t in pool.balancer.targets]  # noqa: E731
        assert keys() == ["redis.internal:6379"]  # dialed by name until resolved
        member = service.pool[0]
        loop = asyncio.get_running_loop()
        await pool._resolve(loop, member)
        assert keys() == ["127.0.0.2:6379", "127.0.0.3:6379"]
        await pool._resolve(loop, member)
        await pool._resolve(loop, member)
        assert keys() == ["127.0.0.2:6379", "127.0.0.3:6379"]
        await pool._resolve(loop, member)
        assert keys() == ["127.0.0.3:6379"]

    with caplog.at_level(logging.INFO, logger="ambassador"):
        asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records if r.name == "ambassador.server"]
    warned = [line for line in lines if "no longer resolves" in line]
    assert warned == [
        "redis: dns:redis.internal:6379 no longer resolves ([Errno -2] Name or service not "
        "known); keeping its last addresses 127.0.0.2:6379, 127.0.0.3:6379"
    ]
    assert "redis: dns:redis.internal:6379 resolves again" in lines


def test_a_reload_changes_the_pool_without_dropping_open_streams() -> None:
    async def scenario() -> None:
        (one, p1), (two, p2) = await tagged_backend(b"1"), await tagged_backend(b"2")
        async with tunnel_to(f"echo:7000=127.0.0.1:{p1},127.0.0.1:{pick_free_port()}") as (
            server,
            local,
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", local)
            assert await reader.readexactly(1) == b"1"
            new = parse_link(f"echo:7000=127.0.0.1:{p2},127.0.0.1:{p1}")
            server.reload(replace(server.config, catalog=Catalog((new,))))
            writer.write(b"still here")
            assert await asyncio.wait_for(reader.readexactly(10), 10) == b"still here"
            assert await ask(local) == b"2"  # new streams: the new pool, in its order
            assert [row["target"] for row in targets(server)] == [
                f"127.0.0.1:{p2}",
                f"127.0.0.1:{p1}",
            ]
            writer.close()
        one.close()
        two.close()

    asyncio.run(scenario())
