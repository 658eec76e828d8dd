"""The server dies, hangs, or the path between the two goes dead or garbles a byte.

Consumers of the streams that were open must be told (a reset, never an EOF that looks like a
complete answer), and the client must come back on its own, without leaking sockets or tasks.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable

import pytest

from client.app import Client
from client.config import ClientConfig
from tests.integration.support import AmbassadorServer
from tests.reliability.conftest import EchoPair
from tests.reliability.faultproxy import UP, FaultProxy
from tests.reliability.support import (
    FAST_KEEPALIVE,
    MIB,
    Transfer,
    echo_transfer,
    fd_count,
    round_trip,
    run,
    settle,
    wait_for_log,
    wait_for_log_sync,
    wait_until,
)
from tunnel.protocol.limits import Limits
from tunnel.settings.links import Address, ExposeSpec

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

STREAMS = 5
FD_SLACK = 2
LOST = r"tunnel to \S+ lost"
KEEPALIVE_DEAD = r"tunnel to \S+ lost: peer did not answer a ping"
DETECT_WITHIN = 2.5  # keepalive 0.5 s + timeout 1.5 s, plus the poll


async def transfers_under_way(
    port: int, count: int, size: int, rate: float
) -> tuple[list[Transfer], list[asyncio.Future[Transfer]]]:
    """Start ``count`` paced echo transfers; return once each has had 1 MiB echoed back."""
    transfers = [Transfer(size, seed=seed) for seed in range(count)]
    tasks = [asyncio.ensure_future(echo_transfer(port, t, rate=rate)) for t in transfers]
    await wait_until(
        lambda: all(t.received >= MIB for t in transfers), 10, f"{count} transfers under way"
    )
    return transfers, tasks


async def transfer_under_way(port: int) -> tuple[Transfer, asyncio.Future[Transfer]]:
    """One paced transfer (64 MiB at 8 MiB/s), once 1 MiB of it came back."""
    transfers, tasks = await transfers_under_way(port, 1, 64 * MIB, 8 * MIB)
    return transfers[0], tasks[0]


def assert_told(transfers: list[Transfer]) -> None:
    """Every consumer saw its connection reset; none got a short answer and a clean EOF."""
    outcomes = [(t.outcome, t.received, t.size) for t in transfers]
    assert all(t.outcome == "reset" for t in transfers), outcomes
    assert all(t.received < t.size for t in transfers), outcomes


def test_server_sigkill_mid_transfer_resets_consumers_and_client_recovers_without_fd_leak(
    echo_pair: Callable[..., EchoPair], start_server: Callable[..., AmbassadorServer]
) -> None:
    pair = echo_pair()
    assert run(echo_transfer(pair.port, Transfer(MIB, seed=99))).exact
    client_pid = pair.client.pid
    fds_before = fd_count(client_pid)

    async def scenario() -> list[Transfer]:
        transfers, tasks = await transfers_under_way(pair.port, STREAMS, 64 * MIB, 8 * MIB)
        pair.server.process.kill()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        return transfers

    assert_told(run(scenario()))
    wait_for_log_sync(pair.client, LOST, 5)

    start_server(f"echo=127.0.0.1:{pair.backend_port}", port=pair.server.port)
    wait_for_log_sync(pair.client, "tunnel up to ", 15, count=2)
    after = run(echo_transfer(pair.port, Transfer(8 * MIB, seed=7)))
    assert after.exact, after

    fds_after = settle(lambda: fd_count(client_pid), fds_before + FD_SLACK)
    assert fds_after <= fds_before + FD_SLACK, (fds_before, fds_after)
    assert pair.client.alive()


def test_server_sigkill_leaves_no_task_or_socket_behind_in_an_in_process_client(
    start_backend: Callable[[str], int],
    start_server: Callable[..., AmbassadorServer],
    free_port: Callable[..., int],
) -> None:
    link = f"echo=127.0.0.1:{start_backend('echo')}"
    server = start_server(link)
    local = free_port()
    config = ClientConfig(
        remotes=(Address("127.0.0.1", server.port),),
        expose=(ExposeSpec("127.0.0.1", local, "echo"),),
        limits=Limits(keepalive_interval=0.5, keepalive_timeout=1.5),
    )

    async def scenario() -> dict[str, int]:
        client = Client(config)
        await asyncio.wait_for(client.start(), 10)
        try:
            assert (await echo_transfer(local, Transfer(MIB, seed=99))).exact
            await asyncio.sleep(0.1)
            tasks_before, fds_before = len(asyncio.all_tasks()), fd_count(os.getpid())
            transfers, tasks = await transfers_under_way(local, STREAMS, 64 * MIB, 8 * MIB)
            server.process.kill()
            await asyncio.wait_for(asyncio.gather(*tasks), 10)
            assert_told(transfers)
            await asyncio.to_thread(start_server, link, port=server.port)
            await wait_until(lambda: client.connector.sessions == 2, 15, "second session")
            assert (await echo_transfer(local, Transfer(8 * MIB, seed=7))).exact
            await wait_until(lambda: len(asyncio.all_tasks()) <= tasks_before, 5, "tasks")
            await wait_until(lambda: fd_count(os.getpid()) <= fds_before + FD_SLACK, 5, "fds")
            return {"tasks": len(asyncio.all_tasks()) - tasks_before}
        finally:
            await asyncio.wait_for(client.stop(), 5)

    assert run(scenario(), timeout=45)["tasks"] <= 0


def test_sigstopped_server_is_declared_dead_by_keepalive_and_rejoined_after_sigcont(
    echo_pair: Callable[..., EchoPair],
) -> None:
    pair = echo_pair(client_args=FAST_KEEPALIVE)
    pid = pair.server.process.pid

    async def scenario() -> tuple[float, Transfer]:
        transfer, task = await transfer_under_way(pair.port)
        os.kill(pid, signal.SIGSTOP)
        try:
            detected = await wait_for_log(pair.client, KEEPALIVE_DEAD, 5)
            await asyncio.wait_for(task, 5)
        finally:
            os.kill(pid, signal.SIGCONT)
        return detected, transfer

    detected, transfer = run(scenario())
    assert detected < DETECT_WITHIN, detected
    assert_told([transfer])
    wait_for_log_sync(pair.client, "tunnel up to ", 10, count=2)
    assert run(round_trip(pair.port, b"back again")) == b"back again"


def test_sigstopped_server_fails_over_to_the_second_remote(
    start_backend: Callable[[str], int],
    start_server: Callable[..., AmbassadorServer],
    echo_pair: Callable[..., EchoPair],
) -> None:
    backend = start_backend("echo")
    second = start_server(f"echo=127.0.0.1:{backend}")
    pair = echo_pair(
        client_args=(*FAST_KEEPALIVE, f"--remote=127.0.0.1:{second.port}"), backend_port=backend
    )
    pid = pair.server.process.pid

    async def scenario() -> tuple[float, float, Transfer]:
        transfer, task = await transfer_under_way(pair.port)
        os.kill(pid, signal.SIGSTOP)
        stopped = time.monotonic()
        detected = await wait_for_log(pair.client, KEEPALIVE_DEAD, 5)
        await wait_for_log(pair.client, rf"tunnel up to 127\.0\.0\.1:{second.port}\b", 10)
        failed_over = time.monotonic() - stopped
        assert await round_trip(pair.port, b"via the second") == b"via the second"
        await asyncio.wait_for(task, 5)
        return detected, failed_over, transfer

    try:
        detected, failed_over, transfer = run(scenario())
    finally:
        os.kill(pid, signal.SIGCONT)
    assert_told([transfer])
    assert detected < DETECT_WITHIN, detected
    # The first remote is tried again first; it accepts (the kernel does, for a stopped
    # process) but never answers, so the keepalive ends that attempt too.
    assert failed_over < DETECT_WITHIN + 3.0, failed_over


def test_black_holed_path_is_detected_on_both_sides_and_the_client_reconnects(
    echo_pair: Callable[..., EchoPair], make_proxy: Callable[..., FaultProxy]
) -> None:
    proxies: list[FaultProxy] = []

    def through_proxy(port: int) -> int:
        proxies.append(make_proxy(port))
        return proxies[0].port

    pair = echo_pair(server_args=FAST_KEEPALIVE, client_args=FAST_KEEPALIVE, remote=through_proxy)
    proxy = proxies[0]

    async def scenario() -> tuple[float, float, Transfer]:
        transfer, task = await transfer_under_way(pair.port)
        assert proxy.blackhole() == 1
        client_side, server_side = await asyncio.gather(
            wait_for_log(pair.client, KEEPALIVE_DEAD, 5),
            wait_for_log(pair.server.process, r"session with \S+ .*ended: peer did not answer", 5),
        )
        await asyncio.wait_for(task, 5)
        return client_side, server_side, transfer

    client_side, server_side, transfer = run(scenario())
    assert client_side < DETECT_WITHIN, client_side
    assert server_side < DETECT_WITHIN, server_side
    assert_told([transfer])
    wait_for_log_sync(pair.client, "tunnel up to ", 10, count=2)
    assert run(round_trip(pair.port, b"new path")) == b"new path"
    assert proxy.accepted == 2


def test_corrupted_frame_header_ends_the_session_and_the_client_reconnects(
    echo_pair: Callable[..., EchoPair], make_proxy: Callable[..., FaultProxy]
) -> None:
    proxies: list[FaultProxy] = []

    def through_proxy(port: int) -> int:
        proxies.append(make_proxy(port))
        return proxies[0].port

    pair = echo_pair(remote=through_proxy)
    proxy = proxies[0]
    assert run(round_trip(pair.port, b"clean")) == b"clean"
    (link,) = proxy.wait_quiet()
    # The session is idle, so the next byte the client sends starts a frame: its version.
    proxy.corrupt(UP, link.bytes_up)

    async def scenario() -> Transfer:
        return await echo_transfer(pair.port, Transfer(MIB, seed=3), timeout=5)

    transfer = run(scenario())
    assert transfer.outcome == "reset", transfer
    pair.server.process.wait_for_stderr(r"unsupported yamux version 255", 5)
    wait_for_log_sync(pair.client, LOST, 5)
    wait_for_log_sync(pair.client, "tunnel up to ", 10, count=2)
    assert run(echo_transfer(pair.port, Transfer(MIB, seed=4))).exact


def test_keepalive_after_an_answered_ping_declares_a_dead_peer_within_interval_plus_timeout(
    echo_pair: Callable[..., EchoPair], make_proxy: Callable[..., FaultProxy]
) -> None:
    """The path dies just after an idle-time ping was answered: the next ping is due one
    interval later, not at the answered ping's deadline (which would double the detection
    time to twice the timeout)."""
    proxies: list[FaultProxy] = []

    def through_proxy(port: int) -> int:
        proxies.append(make_proxy(port))
        return proxies[0].port

    pair = echo_pair(client_args=FAST_KEEPALIVE, remote=through_proxy)
    proxy = proxies[0]
    # The session is idle: the client pings it. Watch one ping (12 bytes up) and its answer
    # (12 bytes down) pass, let the answer reach the client, then kill the path.
    (before,) = proxy.wait_quiet(0.1)
    proxy.wait_for(lambda links: links[0].bytes_up > before.bytes_up, 3, "an idle ping")
    proxy.wait_for(lambda links: links[0].bytes_down > before.bytes_down, 1, "its answer")
    time.sleep(0.05)
    proxy.blackhole()
    detected = wait_for_log_sync(pair.client, KEEPALIVE_DEAD, 5)
    # interval 0.5 + timeout 1.5 = 2.0 s; a timer left at the answered ping's deadline would
    # make it 1.5 + 1.5 = 3.0 s.
    assert detected < DETECT_WITHIN, f"declared dead {detected:.2f}s after the path died"
