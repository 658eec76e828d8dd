"""Streams through the pair: many at once byte-exact, half-closed ones, refused ones."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import time
from collections.abc import Callable

import pytest

from tests.bounded import drain, read_to_eof, recv_to_eof
from tests.integration.support import Pair, Processes, require_programs, run_program

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
STREAMS = 100
STREAM_BYTES = 8 * MIB
CHUNK = 256 * 1024
# Stream i sends the shared random block from offset i * STRIDE: every stream carries different
# bytes, so bytes delivered to the wrong stream or out of order change the digest.
STRIDE = 4099
LOAD_DEADLINE = 75.0
STUCK = 20.0  # seconds one stream may go without moving a byte while 99 others share the link


async def echo_one(port: int, data: memoryview) -> tuple[int, str]:
    """Send ``data`` and EOF on one connection while reading the echo; (count, sha256) read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=4 * CHUNK)
    stream = f"echo stream from local port {writer.get_extra_info('sockname')[1]}"

    async def send() -> None:
        for offset in range(0, len(data), CHUNK):
            writer.write(data[offset : offset + CHUNK])
            # A stuck stream fails naming itself, not at the whole test's deadline.
            await drain(writer, stream, offset, idle=STUCK)
        writer.write_eof()

    async def receive() -> tuple[int, str]:
        echoed = await read_to_eof(reader, stream, expected=len(data), idle=STUCK)
        return len(echoed), hashlib.sha256(echoed).hexdigest()

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(send())
            received = group.create_task(receive())
    finally:
        writer.close()
    return received.result()


async def echo_many(port: int, payloads: list[memoryview]) -> list[tuple[int, str]]:
    async with asyncio.timeout(LOAD_DEADLINE):
        return await asyncio.gather(*(echo_one(port, data) for data in payloads))


@pytest.mark.timeout(LOAD_DEADLINE + 30)
def test_hundred_concurrent_streams_are_byte_exact_both_ways(
    start_backend: Callable[[str], int],
    start_pair: Callable[..., Pair],
    capsys: pytest.CaptureFixture[str],
) -> None:
    echo = start_backend("echo")
    pair = start_pair(f"echo=127.0.0.1:{echo}")
    block = memoryview(os.urandom(STREAM_BYTES + STREAMS * STRIDE))
    payloads = [block[i * STRIDE : i * STRIDE + STREAM_BYTES] for i in range(STREAMS)]
    expected = [(STREAM_BYTES, hashlib.sha256(data).hexdigest()) for data in payloads]

    started = time.monotonic()
    results = asyncio.run(echo_many(pair.port, payloads))
    elapsed = time.monotonic() - started

    wrong = [i for i, (got, want) in enumerate(zip(results, expected, strict=True)) if got != want]
    assert not wrong, f"streams {wrong} came back different, e.g. {results[wrong[0]]}"
    total = 2 * STREAMS * STREAM_BYTES / MIB
    with capsys.disabled():
        print(
            f"\n{STREAMS} streams x {STREAM_BYTES // MIB} MiB each way through the pair: "
            f"{elapsed:.1f} s, {total / elapsed:.0f} MiB/s both directions together"
        )
    assert pair.client.alive() and pair.server.process.alive()
    for program in (pair.client, pair.server.process):
        assert " WARNING " not in program.stderr(), f"{program.name} warned under load"


@pytest.mark.parametrize("size", [0, 1, 3 * MIB], ids=["empty", "one-byte", "3MiB"])
def test_half_closed_stream_still_receives_its_answer(
    size: int, start_backend: Callable[[str], int], start_pair: Callable[..., Pair]
) -> None:
    # The backend answers only after the request's EOF: the consumer's FIN must reach it while
    # the other direction stays open for the answer, which must then end in a clean EOF.
    digest = start_backend("digest")
    pair = start_pair(f"digest=127.0.0.1:{digest}")
    request = os.urandom(size)
    with socket.create_connection(("127.0.0.1", pair.port), timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        # The backend answers once the consumer's FIN has reached it.
        answer = recv_to_eof(sock, f"digest stream with a {size}-byte request, half-closed")
    assert answer == f"{size} {hashlib.sha256(request).hexdigest()}\n".encode()


def test_refused_backend_resets_the_consumer_promptly(
    free_port: Callable[..., int],
    start_backend: Callable[[str], int],
    start_pair: Callable[..., Pair],
) -> None:
    closed = free_port()  # nothing listens there: the server's dial is refused
    echo = start_backend("echo")
    pair = start_pair(f"dead=127.0.0.1:{closed}", f"echo=127.0.0.1:{echo}")

    # What the consumer sees: a connection reset (not an accepted-then-silently-closed socket,
    # not a hang), within 2 s of connecting.
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", pair.ports["dead"]), timeout=2) as sock:
        try:
            sock.sendall(b"PING\r\n")
            outcome = sock.recv(1024)
        except ConnectionResetError:
            outcome = "reset"
        except TimeoutError:
            outcome = "nothing within 2 s"
    elapsed = time.monotonic() - started
    assert outcome == "reset", f"the consumer saw {outcome!r} instead of a reset"
    assert elapsed < 2.0

    # Both logs say why, with the reason code, once.
    line = pair.client.wait_for_stderr(r".*backend_refused.*", timeout=2).group(0)
    assert "'dead'" in line and f"127.0.0.1:{closed}" in line
    pair.server.process.wait_for_stderr(r"backend_refused", timeout=2)
    assert pair.client.stderr().count("backend_refused") == 1

    # The refusal touched that stream only: the tunnel still carries the next one.
    with socket.create_connection(("127.0.0.1", pair.ports["echo"]), timeout=5) as sock:
        sock.sendall(b"still here")
        sock.shutdown(socket.SHUT_WR)
        assert recv_to_eof(sock, "echo stream beside the refused one") == b"still here"


def test_iperf3_through_the_pair(
    processes: Processes,
    free_port: Callable[..., int],
    wait_for_port: Callable[..., None],
    start_pair: Callable[..., Pair],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # iperf3's control connection and its four data connections are five streams of one tunnel.
    require_programs("iperf3")
    port = free_port()
    # Not one-off (-1): the readiness probe below counts as a client of its own.
    iperf = processes.start("iperf3-server", ["iperf3", "-s", "-B", "127.0.0.1", "-p", str(port)])
    wait_for_port("127.0.0.1", port, alive=iperf.alive)
    pair = start_pair(f"iperf=127.0.0.1:{port}")
    argv = ["iperf3", "-c", "127.0.0.1", "-p", str(pair.port), "-t", "2", "-P", "4", "--json"]
    result = run_program(argv, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    received = json.loads(result.stdout)["end"]["sum_received"]
    assert received["bytes"] > 10 * MIB
    with capsys.disabled():
        print(
            f"\niperf3, 4 streams through the pair: {received['bits_per_second'] / 1e9:.2f} Gbit/s"
        )
