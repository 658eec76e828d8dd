"""With default settings, a frozen or black-holed server is found within about 2 s and new
consumers are served by the next --remote within 3 s (real servers, redis-server, redis-cli).

A consumer whose stream waited on the dead session without having sent a byte is moved to the
new session and served; one that had sent bytes is reset, never ended with a clean EOF.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.integration.support import AmbassadorServer, Redis, Started
from tests.reliability.faultproxy import FaultProxy
from tests.reliability.support import log_count, run, wait_for_log

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SERVED_WITHIN = 3.0  # seconds from the fault to the first consumer served by the other server
DEAD = r"tunnel to \S+ lost: peer did not answer a ping for 1\.0s, sent after"


@dataclass
class Failover:
    local: int
    first: AmbassadorServer
    second: AmbassadorServer
    client: Started


@pytest.fixture
def failover(
    redis_server: Redis,
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    free_port: Callable[..., int],
    make_proxy: Callable[..., FaultProxy],
) -> Iterator[Callable[[bool], tuple[Failover, FaultProxy | None]]]:
    """Two servers linking one redis-server; a client with --remote first, --remote second,
    every other setting at its default; optionally the first behind a fault proxy."""

    def make(through_proxy: bool) -> tuple[Failover, FaultProxy | None]:
        link = f"redis=127.0.0.1:{redis_server.port}"
        first, second = start_server(link), start_server(link)
        proxy = make_proxy(first.port) if through_proxy else None
        port = proxy.port if proxy is not None else first.port
        local = free_port()
        client = start_client(
            f"--remote=127.0.0.1:{port}",
            f"--remote=127.0.0.1:{second.port}",
            f"--expose=127.0.0.1:{local}=redis",
            listens=[("127.0.0.1", local)],
        )
        return Failover(local, first, second, client), proxy

    yield make


@dataclass
class Attempt:
    started: float  # seconds after the fault
    ended: float
    output: str


async def redis_ping(port: int, origin: float) -> Attempt:
    started = time.monotonic() - origin
    process = await asyncio.create_subprocess_exec(
        "redis-cli", "-p", str(port), "PING",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(process.communicate(), 10)
    except TimeoutError:
        process.kill()
        await process.wait()
        out = b"(no answer within 10 s)"
    return Attempt(started, time.monotonic() - origin, out.decode(errors="replace").strip())


async def consumers_after(fault: Callable[[], None], port: int) -> list[Attempt]:
    """A new redis-cli PING every 100 ms for 4 s, starting at the fault."""
    origin = time.monotonic()
    fault()
    tasks = []
    for _ in range(40):
        tasks.append(asyncio.ensure_future(redis_ping(port, origin)))
        await asyncio.sleep(0.1)
    return list(await asyncio.gather(*tasks))


def check_served(attempts: list[Attempt]) -> float:
    served = [a for a in attempts if a.output == "PONG"]
    assert served, attempts
    first = min(a.ended for a in served)
    for attempt in attempts:
        if attempt.output != "PONG":
            # Refused or reset, never an empty answer; and only before the failover.
            assert attempt.output, attempt
            assert attempt.started < first, (attempt, first)
    late = [a for a in attempts if a.started >= first]
    assert late and all(a.output == "PONG" for a in late), attempts
    return first


def test_a_frozen_server_is_replaced_by_the_second_within_3s(
    failover: Callable[[bool], tuple[Failover, FaultProxy | None]],
) -> None:
    pair, _ = failover(False)
    pid = pair.first.process.pid
    try:
        attempts = run(consumers_after(lambda: os.kill(pid, signal.SIGSTOP), pair.local))
    finally:
        os.kill(pid, signal.SIGCONT)
    first = check_served(attempts)
    print(f"frozen server: consumers served by the second after {first:.2f}s")
    assert first < SERVED_WITHIN, attempts
    assert log_count(pair.client, DEAD) == 1
    assert log_count(pair.client, rf"tunnel up to 127\.0\.0\.1:{pair.second.port}\b") == 1


def test_a_black_holed_server_is_replaced_by_the_second_within_3s(
    failover: Callable[[bool], tuple[Failover, FaultProxy | None]],
) -> None:
    pair, proxy = failover(True)
    assert proxy is not None
    attempts = run(consumers_after(lambda: proxy.blackhole(new_links=True), pair.local))
    first = check_served(attempts)
    print(f"black-holed server: consumers served by the second after {first:.2f}s")
    assert first < SERVED_WITHIN, attempts
    assert log_count(pair.client, DEAD) == 1


def test_a_silent_consumer_moves_to_the_new_session_and_a_talking_one_is_reset(
    failover: Callable[[bool], tuple[Failover, FaultProxy | None]],
) -> None:
    pair, _ = failover(False)
    pid = pair.first.process.pid

    async def scenario() -> tuple[bytes, BaseException | bytes]:
        os.kill(pid, signal.SIGSTOP)
        # Both connect at once: their streams open on the frozen server's session.
        silent = await asyncio.open_connection("127.0.0.1", pair.local)
        talking = await asyncio.open_connection("127.0.0.1", pair.local)
        talking[1].write(b"PING\r\n")
        await wait_for_log(pair.client, DEAD, 5)
        await wait_for_log(pair.client, rf"tunnel up to 127\.0\.0\.1:{pair.second.port}\b", 5)
        silent[1].write(b"PING\r\n")
        answer = await asyncio.wait_for(silent[0].readline(), 5)
        try:
            told: BaseException | bytes = await asyncio.wait_for(talking[0].read(), 5)
        except ConnectionResetError as exc:
            told = exc
        for _, writer in (silent, talking):
            writer.transport.abort()
        return answer, told

    try:
        answer, told = run(scenario())
    finally:
        os.kill(pid, signal.SIGCONT)
    assert answer == b"+PONG\r\n"
    assert isinstance(told, ConnectionResetError), told


def test_a_slow_answer_is_probed_and_the_session_kept(
    failover: Callable[[bool], tuple[Failover, FaultProxy | None]],
) -> None:
    """BLPOP waits 3 s for its answer: the silence is probed, answered, and nothing ends."""
    pair, _ = failover(False)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", pair.local), timeout=10) as sock:
        sock.sendall(b"BLPOP nothing-here 3\r\n")
        assert sock.recv(64) == b"*-1\r\n"
    assert time.monotonic() - started >= 2.9
    assert log_count(pair.client, "lost") == 0
    assert log_count(pair.client, "tunnel up to ") == 1
