"""What one authenticated identity can take: streams, descriptors, and time with no header.

A real ambassador-server; the client is :class:`RawTunnel` (the sans-IO core over a socket), so
the test decides exactly which streams are opened and what they carry. The backend is a socket
that listens and never accepts: every dial completes in the kernel's queue, so each stream holds
one descriptor of the server, and none of this process.
"""

from __future__ import annotations

import resource
import socket
from collections.abc import Iterator

import pytest

from tests.security.conftest import LOOPBACK, Programs, RawTunnel, Server, stream_header
from tunnel.errors import Reason
from tunnel.protocol.messages import Welcome


@pytest.fixture
def silent_backend() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen(4096)
        yield listener.getsockname()[1]


def session(server: Server) -> RawTunnel:
    raw = RawTunnel(socket.create_connection((LOOPBACK, server.port), timeout=5))
    raw.hello()
    assert isinstance(raw.next_message(), Welcome)
    return raw


def answers(raw: RawTunnel, count: int, service: str = "held") -> list[Reason | None]:
    ids = [raw.open(stream_header(service)) for _ in range(count)]
    found = []
    for stream_id in ids:
        answer, _ = raw.answer(stream_id, timeout=5)
        found.append(None if answer is None else answer.reason)
    return found


def test_an_identity_holds_at_most_its_streams(programs: Programs, silent_backend: int) -> None:
    server = programs.server(
        "--link", f"held={LOOPBACK}:{silent_backend}", "--max-streams-per-identity", "5"
    )
    first, second = session(server), session(server)
    assert answers(first, 4) == [Reason.OK] * 4
    # The same identity (anonymous) on another session shares the count.
    assert answers(second, 3) == [Reason.OK, Reason.LIMIT_EXCEEDED, Reason.LIMIT_EXCEEDED]
    server.program.wait_for(r"has 5 streams open \(--max-streams-per-identity\)")
    first.sock.close()
    second.sock.close()
    third = session(server)
    assert answers(third, 5) == [Reason.OK] * 5  # the closed sessions' streams were given back


def test_a_new_session_is_answered_when_streams_took_every_descriptor(
    programs: Programs, silent_backend: int
) -> None:
    # The server may open 300 files: one session asks for 400 streams. Some are refused with
    # a reason, and a second session is still let in (and the first one still served).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (300, hard))
    try:
        server = programs.server("--link", f"held={LOOPBACK}:{silent_backend}")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    greedy = session(server)
    got = answers(greedy, 400)
    assert got.count(Reason.LIMIT_EXCEEDED) >= 100 and None not in got
    server.program.wait_for(r"out of file descriptors")
    other = session(server)
    assert answers(other, 1) == [Reason.LIMIT_EXCEEDED]  # refused with a reason, not ignored
    greedy.sock.close()


def test_a_stream_that_never_names_its_service_is_refused_in_time(
    programs: Programs, silent_backend: int
) -> None:
    server = programs.server(
        "--link", f"held={LOOPBACK}:{silent_backend}", "--handshake-timeout", "1"
    )
    raw = session(server)
    stream_id = raw.open(b"")  # a SYN, and nothing after it
    answer, _ = raw.answer(stream_id, timeout=4)
    assert answer is not None and answer.reason is Reason.BAD_HEADER
    assert "no stream header within 1s" in answer.text
