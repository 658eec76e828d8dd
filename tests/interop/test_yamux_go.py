"""Our yamux session against hashicorp/yamux itself, over real loopback TCP.

The Go side is ``yamuxpeer`` (see ``yamuxpeer/main.go``), built from the yamux sources Debian
packages; the Python side is the project's own core, ``tunnel.protocol.session.Session`` driven by
``tunnel.aio.transport.TunnelConnection``. Every stream carries a deterministic pattern both ways
and is checked byte for byte on both ends. The wire taps (``TappedSession``) check what the two
implementations told each other: window deltas beyond the spec's 256 KiB, pings and their
answers, Go Away.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.interop.support import (
    KIB,
    MIB,
    GoPeer,
    PythonServer,
    SendingStream,
    TappedSession,
    connect,
    digest,
    go_peer,
    pattern,
    refuse_streams,
    run,
    tapped,
)
from tunnel.aio.transport import TunnelConnection
from tunnel.errors import LocalProtocolError
from tunnel.protocol.events import GoAwayReceived
from tunnel.protocol.frames import Flags, FrameType, GoAwayCode
from tunnel.protocol.limits import INITIAL_WINDOW, Limits
from tunnel.protocol.session import Role

pytestmark = pytest.mark.timeout(60)

STREAMS = 8
CLIENT_IDS = [2 * i + 1 for i in range(STREAMS)]  # the ids a client's first streams get
# MaxStreamWindowSize on the Go side: the library default (the spec's 256 KiB), or 1 MiB, whose
# window updates carry deltas beyond 256 KiB.
GO_WINDOWS = [pytest.param(0, id="go-window-256k"), pytest.param(MIB, id="go-window-1m")]
PYTHON_WINDOW = Limits().stream_window  # 1 MiB: announced as a 768 KiB delta on SYN/ACK
# Our FIN rides on a stream's last Data frame, which a Go reader may, rarely, take for EOF before
# that frame's payload is in (test_fin_travels_apart_from_data_as_hashicorp_yamux_sends_it). The
# other tests toward a Go reader send FIN apart, so that they test what they name.
FIN_APART = True


def go_window_size(go_window: int) -> int:
    return go_window or INITIAL_WINDOW


def assert_go_client_echoed(
    result: dict[str, Any], peer: GoPeer, size: int, ids: list[int]
) -> None:
    """The Go client got back, byte for byte, the pattern it sent on every stream."""
    assert result["ok"], peer.describe()
    assert [s["id"] for s in result["streams"]] == ids, peer.describe()
    for stream in result["streams"]:
        expected = digest(pattern(stream["id"], size))
        assert stream["sent_sha256"] == expected, "the Go and Python patterns differ"
        assert stream["received"] == size, peer.describe()
        assert stream["received_sha256"] == expected, peer.describe()
    assert result["peer_closed_all"], f"a stream never got our FIN{peer.describe()}"


def assert_python_echoed(server: PythonServer, size: int, ids: list[int]) -> None:
    """Our echo end received each stream's pattern intact and saw the FIN after it."""
    assert sorted(server.streams) == ids
    for stream_id, stream in server.streams.items():
        assert stream.received == size, f"stream {stream_id}"
        assert stream.hash.hexdigest() == digest(pattern(stream_id, size)), f"stream {stream_id}"
        assert stream.ended, f"stream {stream_id} never got the Go client's FIN"
        assert not stream.reset_reason, f"stream {stream_id}: {stream.reset_reason}"


async def go_client_against(
    server: PythonServer, yamuxpeer: Path, logs: Path, *args: str
) -> tuple[dict[str, Any], GoPeer]:
    """Run the Go client against ``server`` until it exits; its result and the peer."""
    port = await server.start()
    try:
        async with go_peer(
            yamuxpeer, logs, "-mode", "client", "-addr", f"127.0.0.1:{port}", *args
        ) as peer:
            return await peer.result(), peer
    finally:
        await server.close()


async def go_server_port(peer: GoPeer) -> int:
    listen = (await peer.line())["listen"]
    return int(listen.rpartition(":")[2])


def test_reference_peer_agrees_with_itself(yamuxpeer: Path, tmp_path: Path) -> None:
    """The Go client and the Go server pass the same checks with each other; so a failure of
    another test here is the Python side's, not the harness's."""

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], GoPeer]:
        async with go_peer(yamuxpeer, tmp_path, "-mode", "server") as server:
            port = await go_server_port(server)
            args = ["-addr", f"127.0.0.1:{port}", "-streams", "2", "-bytes", str(300 * KIB)]
            async with go_peer(yamuxpeer, tmp_path, "-mode", "client", *args) as client:
                result = await client.result()
            return result, await server.result(), client

    client_result, server_result, client = run(scenario())
    assert_go_client_echoed(client_result, client, 300 * KIB, [1, 3])
    assert server_result["ok"] and server_result["accepted"] == 2


# --------------------------------------------------------------- streams both ways


@pytest.mark.parametrize("go_window", GO_WINDOWS)
def test_go_client_streams_through_python_server(
    yamuxpeer: Path, tmp_path: Path, go_window: int
) -> None:
    """8 streams x 1 MiB each way from a yamux client, echoed by our session, byte-exact; the
    client's Ping is answered; window deltas beyond 256 KiB flow both ways."""
    server = PythonServer()
    args = ["-streams", str(STREAMS), "-bytes", str(MIB), "-window", str(go_window)]
    result, peer = run(go_client_against(server, yamuxpeer, tmp_path, *args))

    assert_go_client_echoed(result, peer, MIB, CLIENT_IDS)
    assert_python_echoed(server, MIB, CLIENT_IDS)
    session = tapped(server.connection)
    # Go's Ping() got its answer: every ping it sent came back with the same opaque value.
    assert "ping_error" not in result and result["ping_rtt_us"] > 0
    asked = {h.length for h in session.inbound.of(FrameType.PING, Flags.SYN)}
    answered = {h.length for h in session.outbound.of(FrameType.PING, Flags.ACK)}
    assert asked and asked <= answered
    # Go announced its window with the SYN (nothing beyond 256 KiB with the default config)...
    syns = session.inbound.of(FrameType.WINDOW_UPDATE, Flags.SYN)
    assert [h.length for h in syns] == [go_window_size(go_window) - INITIAL_WINDOW] * STREAMS
    if go_window:
        assert max(session.inbound.window_deltas()) > INITIAL_WINDOW
    # ...and ours went with the ACK: 1 MiB, a 768 KiB delta, which Go took as such.
    acks = session.outbound.of(FrameType.WINDOW_UPDATE, Flags.ACK)
    assert [h.length for h in acks] == [PYTHON_WINDOW - INITIAL_WINDOW] * STREAMS
    assert max(h.length for h in session.outbound.of(FrameType.DATA)) <= Limits().max_frame_size
    assert not session.inbound.broken and not session.outbound.broken


@pytest.mark.parametrize("go_window", GO_WINDOWS)
def test_python_client_streams_through_go_server(
    yamuxpeer: Path, tmp_path: Path, go_window: int
) -> None:
    """8 streams x 1 MiB each way from our client session through a yamux echo server,
    byte-exact, half-closed by FIN while the echo still flows; our ping gets an RTT."""

    async def scenario() -> tuple[list[bytes], float, dict[str, Any], Any, GoPeer]:
        args = ["-window", str(go_window)]
        async with go_peer(yamuxpeer, tmp_path, "-mode", "server", *args) as peer:
            connection = await connect(await go_server_port(peer))
            streams = [
                SendingStream(connection, pattern(i, MIB), separate_fin=FIN_APART)
                for i in CLIENT_IDS
            ]
            assert [s.stream_id for s in streams] == CLIENT_IDS
            echoes = await asyncio.wait_for(asyncio.gather(*(s.done for s in streams)), 20)
            rtt = await asyncio.wait_for(connection.ping(), 5)
            connection.close("test over")
            return list(echoes), rtt, await peer.result(), connection, peer

    echoes, rtt, result, connection, peer = run(scenario())

    for stream_id, echo in zip(CLIENT_IDS, echoes, strict=True):
        assert len(echo) == MIB, f"stream {stream_id}"
        assert echo == pattern(stream_id, MIB), f"stream {stream_id} came back altered"
    assert rtt > 0
    assert result["ok"] and result["accepted"] == STREAMS, peer.describe()
    for stream in result["streams"]:
        assert stream["received"] == MIB, peer.describe()
        assert stream["received_sha256"] == digest(pattern(stream["id"], MIB)), peer.describe()
    session = tapped(connection)
    syns = session.outbound.of(FrameType.WINDOW_UPDATE, Flags.SYN)
    assert [h.length for h in syns] == [PYTHON_WINDOW - INITIAL_WINDOW] * STREAMS
    acks = session.inbound.of(FrameType.WINDOW_UPDATE, Flags.ACK)
    assert [h.length for h in acks] == [go_window_size(go_window) - INITIAL_WINDOW] * STREAMS
    assert not session.inbound.broken and not session.outbound.broken


# ---------------------------------------------------------------------- go away


def test_go_server_go_away_stops_new_streams_but_not_open_ones(
    yamuxpeer: Path, tmp_path: Path
) -> None:
    """yamux's GoAway() reaches our session as GoAwayReceived: open_stream is refused with
    LocalProtocolError while the 8 streams already open complete byte-exact; then the Go
    server's Close() ends our connection."""

    async def scenario() -> dict[str, Any]:
        args = ["-goaway-after", str(STREAMS), "-close-when-done"]
        async with go_peer(yamuxpeer, tmp_path, "-mode", "server", *args) as peer:
            connection = await connect(await go_server_port(peer))
            went_away = asyncio.Event()
            connection.on_go_away = went_away.set
            streams = [
                SendingStream(connection, pattern(i, MIB), separate_fin=FIN_APART)
                for i in CLIENT_IDS
            ]
            # Go sent its Go Away before any echo on the last stream it accepted.
            await asyncio.wait_for(streams[-1].first_data, 10)
            assert went_away.is_set() and connection.session.goaway_received
            assert not connection.accepts_streams
            with pytest.raises(LocalProtocolError):
                SendingStream(connection, b"one stream too many")
            unfinished = sum(not s.done.done() for s in streams)
            echoes = await asyncio.wait_for(asyncio.gather(*(s.done for s in streams)), 20)
            closed = await asyncio.wait_for(connection.closed, 5)
            return {
                "echoes": echoes,
                "unfinished": unfinished,
                "closed": closed,
                "events": tapped(connection).events,
                "first_data": tapped(connection).first_data,
                "result": await peer.result(),
                "peer": peer,
            }

    out = run(scenario())
    assert out["unfinished"] >= 1, "every stream had finished before the Go Away: no overlap"
    for stream_id, echo in zip(CLIENT_IDS, out["echoes"], strict=True):
        assert echo == pattern(stream_id, MIB), f"stream {stream_id} came back altered"
    goaways = [i for i, e in enumerate(out["events"]) if isinstance(e, GoAwayReceived)]
    assert len(goaways) == 1 and out["events"][goaways[0]].code is GoAwayCode.NORMAL
    assert goaways[0] < out["first_data"][CLIENT_IDS[-1]]
    assert "closed" in out["closed"]  # "the peer closed the connection"
    result = out["result"]
    assert result["ok"] and result["goaway_sent"] and result["closed_by_us"], out["peer"].describe()
    assert result["accepted"] == STREAMS


def test_python_go_away_refuses_go_clients_new_stream(yamuxpeer: Path, tmp_path: Path) -> None:
    """Our go_away() makes yamux's OpenStream fail with ErrRemoteGoAway while the streams
    already open finish byte-exact; none of them is reset."""
    server = PythonServer(go_away_after=STREAMS)
    args = ["-streams", str(STREAMS), "-bytes", str(MIB), "-expect-goaway"]
    result, peer = run(go_client_against(server, yamuxpeer, tmp_path, *args))

    assert result["goaway_error"] == "remote end is not accepting connections", peer.describe()
    assert result["goaway_is_err_remote_go_away"], peer.describe()
    assert result["streams_done_at_goaway"] < STREAMS
    assert_go_client_echoed(result, peer, MIB, CLIENT_IDS)
    assert_python_echoed(server, MIB, CLIENT_IDS)
    session = tapped(server.connection)
    assert [h.length for h in session.outbound.of(FrameType.GO_AWAY)] == [GoAwayCode.NORMAL]
    assert session.outbound.of(FrameType.WINDOW_UPDATE, Flags.RST) == []
    assert session.outbound.of(FrameType.DATA, Flags.RST) == []


# ------------------------------------------------------------------ flow control


def test_slow_go_reader_backpressures_python_echo(yamuxpeer: Path, tmp_path: Path) -> None:
    """The Go client writes 2 MiB per stream but reads nothing for 0.5 s: our echo stops at
    Go's window, stops crediting Go, and the streams still complete byte-exact."""
    server = PythonServer()
    args = ["-streams", "2", "-bytes", str(2 * MIB), "-read-delay", "500ms"]
    result, peer = run(go_client_against(server, yamuxpeer, tmp_path, *args))

    assert_go_client_echoed(result, peer, 2 * MIB, [1, 3])
    assert_python_echoed(server, 2 * MIB, [1, 3])
    for stream in server.streams.values():
        assert stream.pauses >= 1, "the echo never filled Go's window: nothing was tested"


@pytest.mark.parametrize("go_window", GO_WINDOWS)
def test_python_sender_stops_at_go_servers_window(
    yamuxpeer: Path, tmp_path: Path, go_window: int
) -> None:
    """While the Go server sleeps before reading, our session sends exactly Go's window on the
    stream and not a byte more; once Go reads, the 2 MiB complete byte-exact."""
    window = go_window_size(go_window)

    async def scenario() -> tuple[int, int, bytes, dict[str, Any], GoPeer]:
        args = ["-window", str(go_window), "-read-delay", "700ms"]
        async with go_peer(yamuxpeer, tmp_path, "-mode", "server", *args) as peer:
            connection = await connect(await go_server_port(peer))
            stream = SendingStream(connection, pattern(1, 2 * MIB), separate_fin=FIN_APART)
            async with asyncio.timeout(0.5):
                while stream.sent_on_wire < window:
                    await asyncio.sleep(0.005)
            await asyncio.sleep(0.2)
            sent, framed = stream.sent_on_wire, tapped(connection).outbound.data_bytes(1)
            echo = await asyncio.wait_for(stream.done, 15)
            connection.close("test over")
            return sent, framed, echo, await peer.result(), peer

    sent, framed, echo, result, peer = run(scenario())
    assert sent == window and framed == window
    assert echo == pattern(1, 2 * MIB)
    assert result["ok"], peer.describe()


def test_go_writer_stops_at_python_window(yamuxpeer: Path, tmp_path: Path) -> None:
    """While our end credits nothing, the Go client sends exactly the 1 MiB window we announced
    (256 KiB + our 768 KiB delta); once we credit, 3 MiB complete byte-exact."""
    server = PythonServer(hold_credit=True)

    async def scenario() -> tuple[int, int, dict[str, Any], GoPeer]:
        port = await server.start()
        try:
            args = ["-addr", f"127.0.0.1:{port}", "-streams", "1", "-bytes", str(3 * MIB)]
            async with go_peer(yamuxpeer, tmp_path, "-mode", "client", *args) as peer:
                async with asyncio.timeout(2):
                    while 1 not in server.streams or server.streams[1].received < PYTHON_WINDOW:
                        await asyncio.sleep(0.005)
                await asyncio.sleep(0.2)
                held = server.streams[1].received
                framed = tapped(server.connection).inbound.data_bytes(1)
                server.release_credit()
                return held, framed, await peer.result(), peer
        finally:
            await server.close()

    held, framed, result, peer = run(scenario())
    assert held == PYTHON_WINDOW and framed == PYTHON_WINDOW
    assert_go_client_echoed(result, peer, 3 * MIB, [1])
    assert_python_echoed(server, 3 * MIB, [1])


# --------------------------------------------------------------------- keepalive


def test_go_keepalive_pings_are_answered(yamuxpeer: Path, tmp_path: Path) -> None:
    """yamux's keepalive pings every 100 ms and gives up after 1 s without an answer; over
    1.2 s of idleness our session answers every one and the session stays up."""
    server = PythonServer()
    args = ["-streams", "2", "-bytes", str(300 * KIB), "-keepalive", "100ms"]
    args += ["-write-timeout", "1s", "-idle", "1200ms"]
    result, peer = run(go_client_against(server, yamuxpeer, tmp_path, *args))

    assert_go_client_echoed(result, peer, 300 * KIB, [1, 3])
    assert result["alive_after_idle"], peer.describe()
    session = tapped(server.connection)
    asked = [h.length for h in session.inbound.of(FrameType.PING, Flags.SYN)]
    answered = {h.length for h in session.outbound.of(FrameType.PING, Flags.ACK)}
    assert len(asked) >= 8, f"only {len(asked)} pings: keepalive was not exercised"
    assert set(asked) <= answered


def idle_pings(server: PythonServer) -> tuple[set[int], set[int]]:
    """Opaque values of the pings our end sent once nothing but pings came in, and of the
    answers it got."""
    session = tapped(server.connection)
    idle_since = session.inbound.last_not_ping()
    asked = {h.length for h in session.outbound.of(FrameType.PING, Flags.SYN) if h.at > idle_since}
    answered = {h.length for h in session.inbound.of(FrameType.PING, Flags.ACK)}
    return asked, answered


def test_python_keepalive_is_answered_by_go(yamuxpeer: Path, tmp_path: Path) -> None:
    """Our keepalive pings the idle Go client, which answers; our session measures an RTT
    from the answers and stays up."""
    server = PythonServer(Limits(keepalive_interval=0.2, keepalive_timeout=1.0))
    args = ["-streams", "2", "-bytes", str(300 * KIB), "-idle", "1200ms"]
    result, peer = run(go_client_against(server, yamuxpeer, tmp_path, *args))

    assert_go_client_echoed(result, peer, 300 * KIB, [1, 3])
    assert result["alive_after_idle"], peer.describe()
    asked, answered = idle_pings(server)
    assert asked, "no keepalive ping in 1.2 s of idleness"
    assert asked <= answered
    assert tapped(server.connection).rtt is not None
    assert "ping" not in server.connection.close_reason  # not ended by an unanswered ping


def test_python_keepalive_pings_every_interval_when_idle(yamuxpeer: Path, tmp_path: Path) -> None:
    """docs/protocol.md: after keepalive_interval seconds without receiving anything, we ping.
    With a 0.2 s interval and a 1 s timeout, 1.2 s of idleness holds at least 4 pings (one per
    0.2 s + RTT); one per timeout would be 1."""
    server = PythonServer(Limits(keepalive_interval=0.2, keepalive_timeout=1.0))
    args = ["-streams", "1", "-bytes", str(64 * KIB), "-idle", "1200ms"]
    result, peer = run(go_client_against(server, yamuxpeer, tmp_path, *args))

    assert result["ok"] and result["alive_after_idle"], peer.describe()
    asked, _ = idle_pings(server)
    assert len(asked) >= 4, f"{len(asked)} keepalive pings in 1.2 s of idleness"


# ------------------------------------------------------------ known interop problems


def test_fin_travels_apart_from_data_as_hashicorp_yamux_sends_it(
    yamuxpeer: Path, tmp_path: Path
) -> None:
    """Streams half-closed while their data is still queued: the echo comes back whole, and
    every FIN we send is a Window Update of its own, never a flag on a Data frame."""

    ids = CLIENT_IDS[:4]

    async def scenario() -> tuple[list[bytes], Any, GoPeer]:
        async with go_peer(yamuxpeer, tmp_path, "-mode", "server") as peer:
            connection = await connect(await go_server_port(peer))
            streams = [SendingStream(connection, pattern(i, 256 * KIB)) for i in ids]
            echoes = await asyncio.wait_for(asyncio.gather(*(s.done for s in streams)), 20)
            connection.close("test over")
            await peer.result()
            return list(echoes), connection, peer

    echoes, connection, peer = run(scenario())
    for stream_id, echo in zip(ids, echoes, strict=True):
        assert echo == pattern(stream_id, 256 * KIB), f"stream {stream_id}{peer.describe()}"
    wire = tapped(connection).outbound
    assert wire.of(FrameType.DATA, Flags.FIN) == []
    assert len(wire.of(FrameType.WINDOW_UPDATE, Flags.FIN)) == 4


def test_python_client_that_listens_streams_through_a_go_server_that_dialed(
    yamuxpeer: Path, tmp_path: Path
) -> None:
    """Reverse mode's transport: the yamux server dials, our client session accepts the TCP
    connection and still opens the odd-numbered streams; the echoes come back byte-exact."""

    async def scenario() -> tuple[list[bytes], dict[str, Any], GoPeer]:
        loop = asyncio.get_running_loop()
        accepted: asyncio.Future[TunnelConnection] = loop.create_future()

        def protocol() -> TunnelConnection:
            connection = TunnelConnection(TappedSession(Role.CLIENT, None), refuse_streams)
            if not accepted.done():
                accepted.set_result(connection)
            return connection

        listener = await loop.create_server(protocol, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        args = ["-mode", "server", "-dial", "-addr", f"127.0.0.1:{port}"]
        try:
            async with go_peer(yamuxpeer, tmp_path, *args) as peer:
                connection = await asyncio.wait_for(accepted, 10)
                streams = [SendingStream(connection, pattern(i, MIB), separate_fin=FIN_APART)
                           for i in CLIENT_IDS[:4]]  # fmt: skip
                assert [s.stream_id for s in streams] == CLIENT_IDS[:4]
                echoes = await asyncio.wait_for(asyncio.gather(*(s.done for s in streams)), 20)
                connection.close("test over")
                return list(echoes), await peer.result(), peer
        finally:
            listener.close()

    echoes, result, peer = run(scenario())
    for stream_id, echo in zip(CLIENT_IDS, echoes, strict=False):
        assert echo == pattern(stream_id, MIB), f"stream {stream_id} came back altered"
    assert result["ok"] and result["accepted"] == 4, peer.describe()
