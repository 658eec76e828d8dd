"""The tunnel connection over a real loopback socket: when its frames are written, and how
they reach their stream's handler.

A message that finds the socket idle and nothing queued is written at once, in the call that
sent it; whatever else is sent in the same loop turn is gathered into one write at its end. A
read that brings one whole Data frame goes to the stream's handler without an event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import pytest

from tunnel.aio.transport import TunnelConnection
from tunnel.operations.runtime import loop_factory
from tunnel.protocol.events import DataReceived, Event
from tunnel.protocol.session import Role, Session

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": loop_factory() or asyncio.new_event_loop}


class Collect:
    """A stream handler that keeps what arrives."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.arrived = asyncio.Event()

    def on_data(self, data: bytes | bytearray) -> None:
        self.data += data
        self.arrived.set()

    def on_end(self) -> None:
        pass

    def on_reset(self, reason: str) -> None:
        pass

    def on_drained(self) -> None:
        pass

    async def wait_for(self, size: int) -> bytes:
        while len(self.data) < size:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), 5)
        return bytes(self.data)


class CountingLayer(asyncio.BufferedProtocol):
    """Sits between the socket's transport and the tunnel connection, as the TLS layer does,
    and counts the tunnel's write calls."""

    def __init__(self, inner: TunnelConnection) -> None:
        self.inner = inner
        self.writes = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.inner.connection_made(cast(asyncio.Transport, self))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.inner.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.inner.buffer_updated(nbytes)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes += 1
        assert self.transport is not None
        self.transport.write(data)

    def writelines(self, chunks: list[bytes | bytearray | memoryview]) -> None:
        self.writes += 1
        assert self.transport is not None
        self.transport.writelines(chunks)

    def __getattr__(self, name: str) -> Any:  # the rest of the transport, as it is
        return getattr(self.transport, name)


class Recording(Session):
    """A session that keeps every event its reads returned to the driver."""

    def __init__(self, role: Role) -> None:
        super().__init__(role)
        self.returned: list[Event] = []

    def buffer_updated(self, nbytes: int, now: float) -> list[Event]:
        events = super().buffer_updated(nbytes, now)
        self.returned += events
        return events


async def connected(
    streams: int,
    servers: list[TunnelConnection] | None = None,
    answers: dict[int, Collect] | None = None,
) -> tuple[TunnelConnection, CountingLayer, list[int], dict[int, Collect]]:
    """A client tunnel connection to a server one, with ``streams`` streams open and accepted;
    the server's connection (its session a :class:`Recording`) is added to ``servers``, the
    client's handlers to ``answers``."""
    loop = asyncio.get_running_loop()
    handlers: dict[int, Collect] = {}

    def accept(tunnel: TunnelConnection, stream_id: int) -> Collect:
        handlers[stream_id] = Collect()
        return handlers[stream_id]

    def serve() -> TunnelConnection:
        tunnel = TunnelConnection(Recording(Role.SERVER), accept)
        if servers is not None:
            servers.append(tunnel)
        return tunnel

    server = await loop.create_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = TunnelConnection(Session(Role.CLIENT), lambda tunnel, stream_id: None)
    layer = CountingLayer(client)
    await loop.create_connection(lambda: layer, "127.0.0.1", port)
    answers = {} if answers is None else answers
    for _ in range(streams):
        handler = Collect()
        answers[client.open_stream(handler)] = handler
    ids = list(answers)
    for _ in range(500):  # until the server has every stream and the client its answers
        if len(handlers) == streams and not client.session.has_output:
            break
        await asyncio.sleep(0.01)
    await client.ping()  # every SYN answered: nothing is left queued on either side
    return client, layer, ids, handlers


@pytest.mark.parametrize("new_loop", LOOPS.values(), ids=LOOPS.keys())
def test_a_lone_message_is_written_at_once(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    async def scenario() -> None:
        client, layer, (stream_id,), handlers = await connected(1)
        before = layer.writes
        assert client.send(stream_id, b"PING\r\n") is False
        assert layer.writes == before + 1  # in the call itself, not at the end of the turn
        assert await handlers[stream_id].wait_for(6) == b"PING\r\n"
        client.close()

    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(asyncio.wait_for(scenario(), 30))


@pytest.mark.parametrize("new_loop", LOOPS.values(), ids=LOOPS.keys())
def test_messages_sent_in_one_turn_still_leave_in_one_gathered_write(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    async def scenario() -> None:
        client, layer, ids, handlers = await connected(4)
        before = layer.writes
        for round_ in range(25):  # 100 small messages in one turn, over 4 streams
            for stream_id in ids:
                client.send(stream_id, b"%d;" % round_)
        await asyncio.sleep(0)  # the end of the turn
        await asyncio.sleep(0)
        # The first went out at once, the other 99 together: two writes, not a hundred.
        assert layer.writes - before == 2
        expected = b"".join(b"%d;" % round_ for round_ in range(25))
        for stream_id in ids:
            assert await handlers[stream_id].wait_for(len(expected)) == expected
        client.close()

    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(asyncio.wait_for(scenario(), 30))


@pytest.mark.parametrize("new_loop", LOOPS.values(), ids=LOOPS.keys())
def test_a_lone_data_frame_reaches_its_handler_without_an_event(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    async def scenario() -> None:
        servers: list[TunnelConnection] = []
        client, _, (stream_id,), handlers = await connected(1, servers)
        expected = b""
        for n in range(20):  # one at a time, each answered before the next: a read each
            message = b"PING %d\r\n" % n
            expected += message
            client.send(stream_id, message)
            assert await handlers[stream_id].wait_for(len(expected)) == expected
        returned = cast(Recording, servers[0].session).returned
        assert not [e for e in returned if isinstance(e, DataReceived)]
        client.close()

    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(asyncio.wait_for(scenario(), 30))


@pytest.mark.parametrize("new_loop", LOOPS.values(), ids=LOOPS.keys())
def test_a_stream_handed_over_takes_its_data_to_the_new_handler(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    async def scenario() -> None:
        servers: list[TunnelConnection] = []
        client, _, (stream_id,), handlers = await connected(1, servers)
        client.send(stream_id, b"first")
        first = handlers[stream_id]
        assert await first.wait_for(5) == b"first"
        successor = Collect()
        servers[0].hand_over(stream_id, successor)
        client.send(stream_id, b"second")
        assert await successor.wait_for(6) == b"second"
        assert bytes(first.data) == b"first"
        client.close()

    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(asyncio.wait_for(scenario(), 30))


@pytest.mark.parametrize("new_loop", LOOPS.values(), ids=LOOPS.keys())
def test_requests_one_after_another_keep_the_armed_timer(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    async def scenario() -> None:
        servers: list[TunnelConnection] = []
        answers: dict[int, Collect] = {}
        client, _, (stream_id,), handlers = await connected(1, servers, answers)
        request = answer = b""
        for n in range(20):
            request += b"GET %d;" % n
            client.send(stream_id, request[-7:])
            await handlers[stream_id].wait_for(len(request))
            if n == 0:
                # The first request started the liveness clock: the timer was armed for it.
                await asyncio.sleep(0)
                timer = client._timer
                assert timer is not None and client.session.liveness.waiting_since is not None
            answer += b"OK %d;" % n
            servers[0].send(stream_id, answer[-6:])
            await answers[stream_id].wait_for(len(answer))
        # Each later request started the clock again, a little later: the timer armed for the
        # first one fires sooner than any of theirs, and was not cancelled and made again.
        await asyncio.sleep(0)
        assert client._timer is timer
        client.close()

    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(asyncio.wait_for(scenario(), 30))
