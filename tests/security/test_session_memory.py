"""What one session's unread answers cost a real ambassador-server, and what they cannot stall.

The backend answers every connection with a few MiB at once (a big ``GET``); the client opens
many streams to it and never reads. The server reads those answers from the backend and queues
them for the client; ``--session-memory`` must bound that queue for the whole session, not per
stream, and the streams that are read must still move while it is full.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.reliability.loopthread import LoopThread
from tests.security import attack
from tests.security.attack import KIB, MIB
from tests.security.conftest import (
    LOOPBACK,
    Programs,
    RawTunnel,
    echo,
    pick_free_port,
    stream_header,
)
from tunnel.protocol.messages import Welcome
from tunnel.protocol.session import SEND_FLOOR

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

BLOCK = bytes(range(256)) * 1024  # 256 KiB, shared by every connection's writes


class Answer(asyncio.Protocol):
    """Writes ``size`` bytes to each connection as fast as it takes them, then waits."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.transport: asyncio.Transport | None = None
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._write()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._write()

    def _write(self) -> None:
        assert self.transport is not None
        while self.size > 0 and not self.paused and not self.transport.is_closing():
            block = BLOCK[: min(self.size, len(BLOCK))]
            self.size -= len(block)
            self.transport.write(block)


def answering_backend(size: int) -> Iterator[int]:
    """A backend on loopback that answers each connection with ``size`` bytes; its port."""
    thread = LoopThread("answering-backend")

    async def start() -> asyncio.Server:
        return await asyncio.get_running_loop().create_server(
            lambda: Answer(size), LOOPBACK, 0, backlog=1024
        )

    server = thread.call(start)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:

        async def stop() -> None:
            server.close()

        thread.call(stop)
        thread.stop()


@pytest.fixture
def two_mib_backend() -> Iterator[int]:
    yield from answering_backend(2 * MIB)


@pytest.fixture
def endless_backend() -> Iterator[int]:
    yield from answering_backend(1 << 40)


def peak_rss(pid: int, seconds: float) -> int:
    """The highest VmRSS of ``pid`` sampled over ``seconds``."""
    deadline = time.monotonic() + seconds
    peak = attack.rss(pid)
    while time.monotonic() < deadline:
        time.sleep(0.1)
        peak = max(peak, attack.rss(pid))
    return peak


# What a session may hold beyond --session-memory: the send floor (the server's own book-keeping
# for 400 streams and their backend connections is about 1.2 MiB more).
MARGIN = SEND_FLOOR


def test_unread_answers_of_400_streams_stay_within_the_session_memory(
    programs: Programs, two_mib_backend: int
) -> None:
    attack.raise_nofile(4096)
    server = programs.server("--link", f"big={LOOPBACK}:{two_mib_backend}", "--session-memory", "8")
    pid = server.program.pid
    sock = socket.socket()
    # The attacker reads nothing at all; a small receive buffer keeps what the kernel holds for
    # it small too, so what piles up piles up in the server.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KIB)
    sock.settimeout(5)
    sock.connect((LOOPBACK, server.port))
    raw = RawTunnel(sock)
    raw.hello()
    assert isinstance(raw.next_message(), Welcome)
    idle = attack.settled_rss(pid)
    for _ in range(400):
        stream_id = raw.session.open_stream()
        raw.session.send_data(stream_id, stream_header("big"))
    raw.flush()  # and never read again: no answer, no window update, no ping reply
    peak = peak_rss(pid, 4.0)
    sock.close()
    growth = peak - idle
    print(f"server RSS {idle / MIB:.1f} -> {peak / MIB:.1f} MiB (+{growth / MIB:.1f})")
    assert growth < 8 * MIB + MARGIN, (
        f"400 unread streams took {growth / MIB:.0f} MiB of the server with --session-memory 8"
    )


def read_exactly(sock: socket.socket, size: int, deadline: float) -> int:
    got = 0
    while got < size and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(min(256 * KIB, size - got))
        except TimeoutError:
            break
        if not data:
            break
        got += len(data)
    return got


# Unread streams on the session: enough that what they hold is more than its send budget.
UNREAD = 16


def test_streams_nobody_reads_do_not_stall_one_that_is_read(
    programs: Programs, endless_backend: int
) -> None:
    server = programs.server("--link", f"big={LOOPBACK}:{endless_backend}", "--session-memory", "8")
    client = programs.good_client(server, service="big")
    stalled = []
    try:
        # Consumers of the same session that stop reading: their answers back up into the
        # server, where they fill the session's queue as far as their streams let them.
        for _ in range(UNREAD):
            slow = socket.create_connection((LOOPBACK, client.port), timeout=5)
            slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KIB)
            stalled.append(slow)
            assert slow.recv(1)  # its stream is up and the answer flows
        time.sleep(1.0)  # every buffer on the way fills
        with socket.create_connection((LOOPBACK, client.port), timeout=5) as reader:
            start = time.monotonic()
            got = read_exactly(reader, 8 * MIB, start + 5.0)
            seconds = time.monotonic() - start
        print(f"read {got / MIB:.1f} MiB beside {UNREAD} unread streams in {seconds:.3f} s")
        assert got == 8 * MIB, f"only {got} bytes in {seconds:.1f} s beside {UNREAD} unread streams"
    finally:
        for slow in stalled:
            slow.close()


class Deaf(asyncio.Protocol):
    """A backend connection that never reads."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.ReadTransport)
        transport.pause_reading()


@pytest.fixture
def deaf_backend() -> Iterator[int]:
    """A backend on loopback that accepts connections and reads nothing from them, with a small
    receive buffer: what is sent to it piles up in the server."""
    thread = LoopThread("deaf-backend")
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * KIB)  # accepted ones inherit it
    listener.bind((LOOPBACK, 0))
    listener.listen(1024)

    async def start() -> asyncio.Server:
        return await asyncio.get_running_loop().create_server(Deaf, sock=listener)

    server = thread.call(start)
    try:
        yield listener.getsockname()[1]
    finally:

        async def stop() -> None:
            server.close()

        thread.call(stop)
        thread.stop()


def push(sock: socket.socket, data: bytes, deadline: float) -> int:
    """Send what the peer takes of ``data`` until ``deadline``; how much it took."""
    view, sent = memoryview(data), 0
    while sent < len(data) and time.monotonic() < deadline:
        sock.settimeout(max(0.01, min(0.2, deadline - time.monotonic())))
        try:
            sent += sock.send(view[sent:])
        except TimeoutError:
            continue
    return sent


STREAMS = 400


def test_first_windows_of_400_streams_to_a_backend_that_never_reads_stay_within_the_session_memory(
    programs: Programs, deaf_backend: int, echo_port: int
) -> None:
    # yamux lets the peer send each stream's first 256 KiB without asking. 400 streams of it to
    # a backend that reads nothing used to pile up 100 MiB in the server whatever
    # --session-memory said; now the server stops reading the session past it.
    attack.raise_nofile(4096)
    server = programs.server(
        "--link", f"sink={LOOPBACK}:{deaf_backend}", "--link", f"echo={LOOPBACK}:{echo_port}",
        "--session-memory", "8",
    )  # fmt: skip
    pid = server.program.pid
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * KIB)
    sock.settimeout(5)
    sock.connect((LOOPBACK, server.port))
    raw = RawTunnel(sock)
    raw.hello()
    assert isinstance(raw.next_message(), Welcome)
    idle = attack.settled_rss(pid)
    header = stream_header("sink")
    for _ in range(STREAMS):
        stream_id = raw.session.open_stream()
        raw.session.send_data(stream_id, header + bytes(256 * KIB - len(header)))
    wire = raw.session.data_to_send(limit=1 << 30)
    assert len(wire) > STREAMS * 256 * KIB
    start = time.monotonic()
    sent = push(sock, wire, start + 6.0)  # as far as the server reads, and no further
    peak = max(peak_rss(pid, 2.0), attack.rss(pid))
    # Another session is served meanwhile.
    client = programs.good_client(server, service="echo")
    assert echo(client.port) == b"still serving\n"
    sock.close()
    growth = peak - idle
    print(
        f"sent {sent / MIB:.1f} of {len(wire) / MIB:.1f} MiB on {STREAMS} streams; "
        f"server RSS {idle / MIB:.1f} -> {peak / MIB:.1f} MiB (+{growth / MIB:.1f})"
    )
    assert growth < 8 * MIB + MARGIN, (
        f"{STREAMS} streams' first windows took {growth / MIB:.0f} MiB of the server "
        "with --session-memory 8"
    )


# --------------------------------------------------- a client whose consumers stop reading

CONSUMERS = 8
ANSWER = 4 * MIB  # BLOCK repeated: each consumer must get exactly this
UNREAD_FOR = 3.0  # longer than --probe-after's 1 s: a paused session must not be taken for dead


@pytest.fixture
def four_mib_backend() -> Iterator[int]:
    yield from answering_backend(ANSWER)


def drain(sock: socket.socket, deadline: float) -> tuple[int, str]:
    """Read ``ANSWER`` bytes of ``sock`` (fewer at its end or ``deadline``): how many, and their
    SHA-256."""
    digest, got = hashlib.sha256(), 0
    while got < ANSWER and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(min(256 * KIB, ANSWER - got))
        except TimeoutError:
            break
        if not data:
            break
        digest.update(data)
        got += len(data)
    return got, digest.hexdigest()


def limit_hits(metrics_port: int, limit: str) -> float:
    url = f"http://{LOOPBACK}:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as answer:
        text = answer.read().decode()
    found = re.search(rf'^ambassador_limit_hits_total\{{limit="{limit}"\}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_client_whose_consumers_stop_reading_pauses_its_session_then_delivers_every_byte(
    programs: Programs, four_mib_backend: int
) -> None:
    # On loopback the kernel's buffers would take the answers whole; consumers that shrink their
    # own receive buffer leave the stream bytes in the client, where the session counts them.
    server = programs.server("--link", f"big={LOOPBACK}:{four_mib_backend}")
    metrics_port = pick_free_port()
    client = programs.good_client(
        server, "--session-memory", "1", "--metrics-listen", f"{LOOPBACK}:{metrics_port}",
        service="big",
    )  # fmt: skip
    consumers = []
    try:
        for _ in range(CONSUMERS):
            consumer = socket.socket()
            consumer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * KIB)
            consumer.settimeout(5)
            consumer.connect((LOOPBACK, client.port))
            consumers.append(consumer)
        client.program.wait_for(r"pausing reads from ")
        time.sleep(UNREAD_FOR)  # and nobody reads meanwhile
        assert limit_hits(metrics_port, "session_memory") >= 1
        deadline = time.monotonic() + 30.0
        with ThreadPoolExecutor(CONSUMERS) as pool:
            results = list(pool.map(lambda sock: drain(sock, deadline), consumers))
    finally:
        for consumer in consumers:
            consumer.close()
    expected = hashlib.sha256(BLOCK * (ANSWER // len(BLOCK))).hexdigest()
    assert results == [(ANSWER, expected)] * CONSUMERS, "reading did not resume, or bytes differ"
    client_log, server_log = client.program.text(), server.program.text()
    assert client_log.count("pausing reads from ") == 1, client_log
    for log in (client_log, server_log):
        assert "did not answer a ping" not in log, log
    assert client.program.alive() and server.program.alive()
