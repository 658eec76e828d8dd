"""Peers of other versions, by hand-written hellos: a client from the future is refused with a
message naming both sides' versions, an older or newer client of version 1 is welcomed
whatever optional or unknown fields its hello carries (docs/protocol.md, "Compatible
changes"), and a client listing several is welcomed with the highest both speak."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.support import AmbassadorServer
from tests.reliability.rawpeer import (
    ACK,
    DATA,
    GO_AWAY,
    GO_AWAY_NORMAL,
    PING,
    SYN,
    RawPeer,
    frame,
    go_aways,
    hello,
)
from tests.reliability.support import run

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

VERSION_MISMATCH = 11


@pytest.fixture
def server(start_server: Callable[..., AmbassadorServer]) -> AmbassadorServer:
    return start_server("redis=127.0.0.1:6379", "6380=127.0.0.1:6380")


async def greet(server: AmbassadorServer, obj: dict[str, Any]) -> tuple[RawPeer, dict[str, Any]]:
    peer = await RawPeer.connect("127.0.0.1", server.port)
    return peer, await peer.say_hello(obj)


def test_client_speaking_only_a_future_version_is_refused_naming_both(
    server: AmbassadorServer,
) -> None:
    async def scenario() -> tuple[RawPeer, dict[str, Any]]:
        peer, answer = await greet(server, hello([99], name="from-the-future"))
        await peer.read_until_closed(3.0)
        return peer, answer

    peer, answer = run(scenario())
    assert answer["type"] == "refusal", answer
    assert answer["reason"] == VERSION_MISMATCH
    assert "[99]" in answer["text"] and "[1, 2]" in answer["text"], answer["text"]
    assert go_aways(peer.frames) == [GO_AWAY_NORMAL]
    assert peer.closed
    server.process.wait_for_stderr(
        r"refused 127\.0\.0\.1:\d+ \(calls itself 'from-the-future'\): no common", 2
    )


def test_refusal_reaches_the_peer_before_the_go_away(server: AmbassadorServer) -> None:
    async def scenario() -> RawPeer:
        peer, _ = await greet(server, hello([99]))
        await peer.read_until_closed(3.0)
        return peer

    peer = run(scenario())
    kinds = [f.type for f in peer.frames if f.type == GO_AWAY or f.stream_id == 1]
    assert kinds.index(GO_AWAY) > kinds.index(DATA), peer.frames


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param({"type": "hello", "versions": [1], "name": "old"}, id="no-optional-fields"),
        pytest.param(
            hello(
                [1],
                name="newer",
                software="ambassador/9.0",
                compression=["zstd"],
                features={"resume": True, "labels": ["a", "b"]},
                priority=3,
            ),
            id="unknown-fields",
        ),
    ],
)
def test_compatible_hello_is_welcomed_with_version_one(
    server: AmbassadorServer, obj: dict[str, Any]
) -> None:
    async def scenario() -> tuple[RawPeer, dict[str, Any]]:
        peer, answer = await greet(server, obj)
        peer.send(frame(PING, SYN, 0, 4242))  # the session is up: it answers a ping
        await peer.read_for(0.3)
        peer.close()
        return peer, answer

    peer, answer = run(scenario())
    assert answer["type"] == "welcome", answer
    assert answer["version"] == 1
    assert {(entry["alias"], entry["port"]) for entry in answer["catalog"]} == {
        ("redis", 6379),
        (None, 6380),
    }
    assert any(f.type == PING and f.flags & ACK and f.length == 4242 for f in peer.frames)
    assert go_aways(peer.frames) == []


def test_several_versions_are_answered_with_the_highest_both_speak(
    server: AmbassadorServer,
) -> None:
    async def scenario() -> dict[str, Any]:
        peer, answer = await greet(server, hello([2, 1, 3], name="multi"))
        peer.close()
        return answer

    answer = run(scenario())
    assert answer["type"] == "welcome", answer
    assert answer["version"] == 2
