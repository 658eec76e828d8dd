"""Floods and flow-control abuse from a hand-driven peer, against a server that also serves a
real client: each ends in a Go Away with code 1 (protocol error) and a log line that says which
limit was broken, and the real client's session carries on.

Malformed frames and junk connections are covered by ``tests/interop/test_evil_peer.py``; these
are well-formed frames, sent too often or too much.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.integration.support import AmbassadorServer, Started
from tests.reliability.rawpeer import (
    ACK,
    DATA,
    GO_AWAY,
    GO_AWAY_PROTOCOL_ERROR,
    INITIAL_WINDOW,
    PING,
    RST,
    SYN,
    WINDOW_UPDATE,
    RawPeer,
    data,
    frame,
    go_aways,
    hello,
    open_stream,
)
from tests.reliability.support import round_trip, run

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

RESETS_PER_SECOND = 500
PINGS_PER_SECOND = 50
EMPTY_FRAMES_PER_SECOND = 1000  # the built-in budget; it has no flag
CLOSE_WITHIN = 2.0


@dataclass
class Target:
    server: AmbassadorServer
    client: Started
    port: int  # the real client's local echo port


@pytest.fixture
def sink() -> Iterator[int]:
    """A port that accepts connections (the kernel does) but whose owner never reads them."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


@pytest.fixture
def target(
    start_backend: Callable[[str], int],
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    free_port: Callable[..., int],
    sink: int,
) -> Target:
    server = start_server(
        f"echo=127.0.0.1:{start_backend('echo')}",
        f"sink=127.0.0.1:{sink}",
        args=(
            "--resets-per-second",
            str(RESETS_PER_SECOND),
            "--pings-per-second",
            str(PINGS_PER_SECOND),
        ),
    )
    local = free_port()
    client = start_client(
        f"--remote=127.0.0.1:{server.port}",
        f"--expose=127.0.0.1:{local}=echo",
        listens=[("127.0.0.1", local)],
    )
    return Target(server, client, local)


def assert_cut_off(target: Target, peer: RawPeer, reason: str) -> None:
    """One Go Away, protocol error, last; the server says why; the real client is unharmed."""
    codes = go_aways(peer.frames)
    assert codes == [GO_AWAY_PROTOCOL_ERROR], peer.frames[-5:]
    assert peer.frames[-1].type == GO_AWAY, "the server sent more after its Go Away"
    pattern = rf"session with {re.escape(peer.local)} .*ended: {reason}"
    target.server.process.wait_for_stderr(pattern, 5)
    assert run(round_trip(target.port, b"still here")) == b"still here"
    assert target.client.stderr().count("tunnel up to ") == 1


async def welcomed(target: Target) -> RawPeer:
    peer = await RawPeer.connect("127.0.0.1", target.server.port)
    answer = await peer.say_hello(hello([1], name="flooder"))
    assert answer["type"] == "welcome", answer
    return peer


def test_rapid_reset_flood_is_cut_off_with_a_protocol_error(target: Target) -> None:
    async def scenario() -> RawPeer:
        peer = await welcomed(target)
        flood = b"".join(
            frame(WINDOW_UPDATE, SYN, stream_id, 0) + frame(WINDOW_UPDATE, RST, stream_id, 0)
            for stream_id in range(3, 3 + 2 * 2000, 2)
        )
        peer.send(flood)
        await peer.read_until_closed(CLOSE_WITHIN)
        return peer

    peer = run(scenario())
    assert_cut_off(target, peer, rf"more than {RESETS_PER_SECOND} stream resets a second")
    target.server.process.wait_for_stderr(
        rf"closing the session with {re.escape(peer.local)}: more than {RESETS_PER_SECOND} "
        r"stream resets a second \(a rapid-reset flood\)",
        2,
    )


def test_ping_flood_is_cut_off_with_a_protocol_error(target: Target) -> None:
    async def scenario() -> RawPeer:
        peer = await welcomed(target)
        peer.send(b"".join(frame(PING, SYN, 0, n) for n in range(4 * PINGS_PER_SECOND)))
        await peer.read_until_closed(CLOSE_WITHIN)
        return peer

    peer = run(scenario())
    answered = [f for f in peer.frames if f.type == PING and f.flags & ACK]
    assert len(answered) <= PINGS_PER_SECOND, len(answered)  # the budget's burst, no more
    assert_cut_off(target, peer, rf"more than {PINGS_PER_SECOND} pings a second \(a ping flood\)")


def test_empty_frame_flood_is_cut_off_with_a_protocol_error(target: Target) -> None:
    async def scenario() -> RawPeer:
        peer = await welcomed(target)
        peer.send(frame(DATA, 0, 1, 0) * (2 * EMPTY_FRAMES_PER_SECOND))
        await peer.read_until_closed(CLOSE_WITHIN)
        return peer

    peer = run(scenario())
    assert_cut_off(target, peer, rf"more than {EMPTY_FRAMES_PER_SECOND} empty frames a second")


def test_data_past_the_credited_window_is_a_protocol_error(target: Target) -> None:
    """Fill a stream whose backend never reads, spending exactly the credit the server grants
    (its Window Updates are counted), until the credit stops; then send one byte more."""
    stream_id = 3
    header = bytes((1, 4)) + b"sink"

    def granted(peer: RawPeer) -> int:
        return INITIAL_WINDOW + sum(
            f.length
            for f in peer.frames
            if f.type == WINDOW_UPDATE and f.stream_id == stream_id and not f.flags & RST
        )

    async def scenario() -> tuple[RawPeer, int]:
        peer = await welcomed(target)
        peer.send(open_stream(stream_id) + data(stream_id, header))
        used = len(header)
        quiet = 0
        for _ in range(400):  # bounded: the sink's buffers hold a few MiB at most
            await peer.read_for(0.05)
            left = granted(peer) - used
            if left:
                sizes = [64 * 1024] * (left // (64 * 1024)) + [left % (64 * 1024)]
                peer.send(b"".join(data(stream_id, bytes(size)) for size in sizes if size))
                used += left
                quiet = 0
                continue
            quiet += 1
            if quiet == 10:  # half a second without new credit: the backend is full
                break
        else:
            pytest.fail(f"the server kept crediting: {used} bytes taken")
        assert not peer.closed
        peer.send(data(stream_id, b"!"))
        await peer.read_until_closed(CLOSE_WITHIN)
        return peer, used

    peer, used = run(scenario(), timeout=30)
    print(f"{used} bytes taken before the credit stopped")
    assert used > INITIAL_WINDOW  # credit did come back while the backend took bytes
    assert_cut_off(target, peer, rf"stream {stream_id} received 1 bytes with only 0 bytes")
