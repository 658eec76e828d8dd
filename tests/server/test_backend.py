"""The server's side of a stream (server/backend.py) over real loopback sockets: what happens to
a backend connection and to the stream's window from the header to the end of the stream.

Both roles run in this process on one event loop, so the tests can look at the server's
session and streams while the bytes move.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from client.app import Client
from client.config import ClientConfig
from server import backend as backend_module
from server.app import Server
from server.backend import BackendStream
from server.config import ServerConfig
from tunnel.aio.relay import abort_with_reset
from tunnel.aio.transport import TunnelConnection
from tunnel.errors import Reason, RemoteProtocolError
from tunnel.operations import metrics
from tunnel.operations.logonce import Throttled
from tunnel.operations.metrics import REGISTRY
from tunnel.protocol.messages import (
    CONNECTED,
    StreamAnswer,
    StreamAnswerParser,
    StreamHeader,
    StreamHeaderParser,
)
from tunnel.security.access import parse_access
from tunnel.settings.links import Address, Catalog, ExposeSpec, parse_link


@contextlib.asynccontextmanager
async def tunnel_to(
    backend: tuple[str, int], dial_timeout: float = 5.0
) -> AsyncIterator[tuple[Server, int]]:
    """A server offering ``backend`` as 'svc' and a client exposing it; yields the server and
    the client's local port."""
    link = parse_link(f"svc={backend[0]}:{backend[1]}")
    server = Server(
        ServerConfig(
            listen=Address("127.0.0.1", 0), catalog=Catalog((link,)), dial_timeout=dial_timeout
        )
    )
    await server.start()
    client = Client(
        ClientConfig(
            remotes=(Address(*server.address),), expose=(ExposeSpec("127.0.0.1", 0, "svc"),)
        )
    )
    await client.start()
    try:
        yield server, client.listeners.bound[0].port
    finally:
        await client.stop()
        await server.stop()


def backend_streams(server: Server) -> list[BackendStream]:
    return [stream for connection in server.connections for stream in connection.streams]


async def wait_for(condition: object, what: str, timeout: float = 5.0) -> None:
    """Poll ``condition()`` until true; fail naming ``what`` did not happen."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():  # type: ignore[operator]
        if loop.time() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:g}s")
        await asyncio.sleep(0.01)


def test_backend_connection_that_completes_after_the_consumer_left_is_closed() -> None:
    # A backend whose accept queue is full drops our SYN; the kernel retries it a second
    # later. The consumer gives up in between. When the connection then completes, nobody
    # wants it: it must be closed at once, not kept open (a descriptor on both hosts) until
    # the backend times it out, if it ever does.
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        listener.setblocking(False)
        filler = socket.create_connection(listener.getsockname())  # the accept queue is full
        try:
            async with tunnel_to(listener.getsockname(), dial_timeout=10) as (server, port):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"PING\r\n")
                await wait_for(lambda: backend_streams(server), "the server's stream opening")
                (stream,) = backend_streams(server)
                abort_with_reset(writer.transport)  # type: ignore[arg-type]
                await wait_for(lambda: stream.closed, f"stream {stream.stream_id}'s reset")
                (await loop.sock_accept(listener))[0].close()  # room for the retried SYN
                late, _ = await asyncio.wait_for(loop.sock_accept(listener), 5)
                with late:
                    try:
                        data = await asyncio.wait_for(loop.sock_recv(late, 100), 3)
                    except TimeoutError:
                        pytest.fail(
                            f"stream {stream.stream_id}: the backend connection that completed "
                            "after the consumer left was kept open (a descriptor leak)"
                        )
                    assert data == b"", "the late backend connection was sent the request"
        finally:
            filler.close()
            listener.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_every_byte_of_a_stream_is_credited_back_header_included() -> None:
    # The window a stream's bytes use up comes back when they leave the server: to the
    # backend socket, or, for the stream header, into the header parser. A byte that is never
    # credited shrinks the stream's window for good; over a long stream's life with a small
    # window that is a stall.
    received = bytearray()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            received.extend(data)
        writer.close()

    async def scenario() -> None:
        backend = await asyncio.start_server(sink, "127.0.0.1", 0)
        async with tunnel_to(backend.sockets[0].getsockname()[:2]) as (server, port):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            for size in (1000, 100_000, 1):
                before = len(received)
                writer.write(b"x" * size)
                await wait_for(
                    lambda s=before + size: len(received) == s,  # type: ignore[misc]
                    f"the backend receiving {size} more bytes",
                )
                (stream,) = backend_streams(server)
                (connection,) = server.connections
                assert stream.stream_id is not None and stream.transport is not None
                window = connection.tunnel.session._streams[stream.stream_id].recv
                assert stream.transport.get_write_buffer_size() == 0
                # What the session still counts as received and not handed on must be exactly
                # what the relay wrote to the socket and has not credited yet.
                assert window.buffered == stream._uncredited, (
                    f"stream {stream.stream_id}: {window.buffered - stream._uncredited} bytes "
                    "received were never credited back"
                )
            writer.close()
        backend.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


class StreamEnd:
    """The client's end of a stream opened by hand: what the server sent on it, how it ended."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.reset: str | None = None

    def on_data(self, data: bytes | bytearray) -> None:
        self.data += data

    def on_end(self) -> None:
        pass

    def on_reset(self, reason: str) -> None:
        self.reset = reason

    def on_drained(self) -> None:
        pass

    def answer(self) -> tuple[StreamAnswer | None, bytes]:
        return StreamAnswerParser().feed(bytes(self.data))


@contextlib.asynccontextmanager
async def session(
    links: tuple[str, ...], access: tuple[str, ...] = (), **settings: object
) -> AsyncIterator[tuple[Server, TunnelConnection]]:
    """A server offering ``links`` (under ``access`` rules) and a client's session with it;
    yields the server and the client's tunnel, on which a test opens streams by hand."""
    catalog = Catalog(tuple(parse_link(link) for link in links))
    config = ServerConfig(
        listen=Address("127.0.0.1", 0), catalog=catalog, access=parse_access(access), **settings
    )  # type: ignore[arg-type]
    server = Server(config)
    await server.start()
    # One listener on a port of its own: exposing the whole catalog would bind its ports.
    expose = (ExposeSpec("127.0.0.1", 0, links[0].partition("=")[0]),)
    client = Client(ClientConfig(remotes=(Address(*server.address),), expose=expose))
    await client.start()
    try:
        tunnel = await client.connector.wait_tunnel(5)
        assert tunnel is not None, "the client's session did not come up"
        yield server, tunnel
    finally:
        await client.stop()
        await server.stop()


async def ask(tunnel: TunnelConnection, data: bytes) -> tuple[int, StreamEnd]:
    """Open a stream, send ``data`` on it, and wait for the server to reset it."""
    end = StreamEnd()
    stream_id = tunnel.open_stream(end)
    tunnel.send(stream_id, data)
    await wait_for(lambda: end.reset is not None, f"the server's reset of stream {stream_id}")
    return stream_id, end


@pytest.fixture
def refusals(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[], list[str]]]:
    """The server's refusal lines logged so far in the test (its throttle starts empty)."""
    monkeypatch.setattr(backend_module, "throttled", Throttled(backend_module.log))
    with caplog.at_level(logging.WARNING, "ambassador.server"):
        yield lambda: [r.getMessage() for r in caplog.records if " refused (" in r.getMessage()]


def refused_count(service: str, reason: Reason) -> float:
    labels = {"role": "server", "service": service, "reason": reason.label}
    return REGISTRY.get_sample_value("ambassador_stream_refusals_total", labels) or 0.0


def peer_of(server: Server) -> str:
    (connection,) = server.connections
    return connection.tunnel.peer


Refusals = Callable[[], list[str]]


def test_a_name_the_catalog_lacks_is_answered_and_logged_with_the_reason(
    refusals: Refusals,
) -> None:
    async def scenario() -> None:
        before = refused_count("-", Reason.UNKNOWN_SERVICE)
        async with session(("svc=127.0.0.1:9",)) as (server, tunnel):
            stream_id, end = await ask(tunnel, StreamHeader("nosuch").encode() + b"PING\r\n")
            text = "no service 'nosuch'; offered: svc:9"
            assert end.answer() == (StreamAnswer(Reason.UNKNOWN_SERVICE, text), b"")
            assert refusals() == [
                f"stream {stream_id} from {peer_of(server)} as anonymous to 'nosuch' refused "
                f"(unknown_service): {text}"
            ]
            assert refused_count("-", Reason.UNKNOWN_SERVICE) == before + 1
            assert backend_streams(server) == [], "the refused stream was kept"
            assert (server.streams_by_identity["anonymous"], server.stream_count) == (0, 0)

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_a_hidden_service_is_answered_as_unknown_and_logged_as_not_allowed(
    refusals: Refusals,
) -> None:
    # The client cannot tell a service the access rules hide from one that does not exist;
    # the operator's log says which it was, once for each hidden service (the log's throttle
    # tells them apart).
    async def scenario() -> None:
        before = refused_count("-", Reason.NOT_ALLOWED)
        links = ("svc=127.0.0.1:9", "hidden=127.0.0.1:10", "other=127.0.0.1:11")
        async with session(links, access=("anonymous=svc",)) as (server, tunnel):
            peer, ids = peer_of(server), []
            for asked in ("hidden", "other", "nosuch"):
                stream_id, end = await ask(tunnel, StreamHeader(asked).encode())
                ids.append(stream_id)
                told = (
                    f"the server does not offer '{asked}' to this client (identity "
                    "'anonymous'; offered to it: svc:9); if it should, check the server's "
                    "access rules"
                )
                assert end.answer() == (StreamAnswer(Reason.UNKNOWN_SERVICE, told), b"")
            hidden = [
                f"stream {stream_id} from {peer} as anonymous to '{name}' refused (not_allowed): "
                f"'anonymous' may not reach '{name}': the access rules hide it (the client is "
                "told the server does not offer it)"
                for stream_id, name in zip(ids, ("hidden", "other"), strict=False)
            ]
            assert refusals() == [
                *hidden,
                f"stream {ids[2]} from {peer} as anonymous to 'nosuch' refused "
                "(unknown_service): no service 'nosuch'; offered: svc:9",
            ]
            assert refused_count("-", Reason.NOT_ALLOWED) == before + 2

    asyncio.run(asyncio.wait_for(scenario(), 10))


@pytest.mark.parametrize(
    ("services", "offered"),
    [
        (20, ", ".join(f"s{n}:{n}" for n in range(1, 21))),
        (22, ", ".join(f"s{n}:{n}" for n in range(1, 21)) + " and 2 more"),
    ],
)
def test_a_refused_client_is_told_at_most_twenty_of_the_services_it_may_reach(
    services: int, offered: str
) -> None:
    async def scenario() -> None:
        links = ("other=127.0.0.1:100", *(f"s{n}=127.0.0.1:{n}" for n in range(1, services + 1)))
        rules = tuple(f"anonymous=s{n}" for n in range(1, services + 1))
        async with session(links, access=rules) as (_, tunnel):
            _, end = await ask(tunnel, StreamHeader("other").encode())
            answer, _ = end.answer()
            assert answer is not None
            assert f"(identity 'anonymous'; offered to it: {offered}); if" in answer.text

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_a_malformed_stream_header_is_answered_and_logged(refusals: Refusals) -> None:
    async def scenario() -> None:
        async with session(("svc=127.0.0.1:9",)) as (server, tunnel):
            header = bytes((1, 0))  # a name of no bytes
            with pytest.raises(RemoteProtocolError) as raised:
                StreamHeaderParser().feed(header)
            text = str(raised.value)
            stream_id, end = await ask(tunnel, header + b"rest")
            assert end.answer() == (StreamAnswer(Reason.BAD_HEADER, text), b"")
            assert refusals() == [
                f"stream {stream_id} from {peer_of(server)} as anonymous to '?' refused "
                f"(bad_header): {text}"
            ]

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_a_stream_over_the_identity_limit_is_refused_and_not_counted(
    refusals: Refusals,
) -> None:
    async def scenario() -> None:
        async with session(("svc=127.0.0.1:9",), max_streams_per_identity=0) as (server, tunnel):
            stream_id, end = await ask(tunnel, StreamHeader("svc").encode())
            text = "'anonymous' has 0 streams open (--max-streams-per-identity)"
            assert end.answer() == (StreamAnswer(Reason.LIMIT_EXCEEDED, text), b"")
            assert refusals() == [
                f"stream {stream_id} from {peer_of(server)} as anonymous to 'svc' refused "
                f"(limit_exceeded): {text}"
            ]
            # Never counted, so never uncounted: the count stays at 0, not -1.
            assert (server.streams_by_identity["anonymous"], server.stream_count) == (0, 0)

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_a_backend_that_refuses_the_dial_is_answered_logged_and_counted(
    refusals: Refusals,
) -> None:
    async def scenario() -> None:
        closed = [socket.socket(), socket.socket()]  # bound, not listening: dials are refused
        for sock in closed:
            sock.bind(("127.0.0.1", 0))
        port, port2 = (sock.getsockname()[1] for sock in closed)
        meters = metrics.meters("server", "svc")
        opened, before = meters.opened, refused_count("svc", Reason.BACKEND_REFUSED)
        links = (f"svc=127.0.0.1:{port}", f"svc2=127.0.0.1:{port2}")
        async with session(links) as (server, tunnel):
            stream_id, end = await ask(tunnel, StreamHeader("svc").encode() + b"PING\r\n")
            text = f"127.0.0.1:{port} refused the connection"
            assert end.answer() == (StreamAnswer(Reason.BACKEND_REFUSED, text), b"")
            assert refused_count("svc", Reason.BACKEND_REFUSED) == before + 1
            assert (meters.opened, meters.open_now) == (opened + 1, 0)
            assert server.streams_by_identity["anonymous"] == 0
            assert backend_streams(server) == []
            # Another service's failure is logged too: the throttle keeps them apart.
            stream_id2, _ = await ask(tunnel, StreamHeader("svc2").encode())
            peer = peer_of(server)
            assert refusals() == [
                f"stream {stream_id} from {peer} as anonymous to 'svc' refused "
                f"(backend_refused): {text}",
                f"stream {stream_id2} from {peer} as anonymous to 'svc2' refused "
                f"(backend_refused): 127.0.0.1:{port2} refused the connection",
            ]
        for sock in closed:
            sock.close()

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_a_backend_that_does_not_answer_is_given_up_after_the_dial_timeout(
    refusals: Refusals,
) -> None:
    async def scenario() -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler = socket.create_connection(listener.getsockname())  # SYNs beyond it are dropped
        port = listener.getsockname()[1]
        try:
            async with session((f"svc=127.0.0.1:{port}",), dial_timeout=0.2) as (server, tunnel):
                loop = asyncio.get_running_loop()
                start = loop.time()
                stream_id, end = await ask(tunnel, StreamHeader("svc").encode())
                assert loop.time() - start < 1.5
                text = f"127.0.0.1:{port} did not answer within 0.2s"
                assert end.answer() == (StreamAnswer(Reason.BACKEND_TIMEOUT, text), b"")
                assert refusals() == [
                    f"stream {stream_id} from {peer_of(server)} as anonymous to 'svc' refused "
                    f"(backend_timeout): {text}"
                ]
        finally:
            filler.close()
            listener.close()

    asyncio.run(asyncio.wait_for(scenario(), 10))


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
    writer.write_eof()
    writer.close()


def test_a_stream_is_counted_metered_and_credited_from_its_header_to_its_end() -> None:
    async def scenario() -> None:
        # On 127.0.0.2: a dial that lost the link's host would still reach 127.0.0.1.
        backend = await asyncio.start_server(echo, "127.0.0.2", 0)
        port = backend.sockets[0].getsockname()[1]
        meters = metrics.meters("server", "counted")
        opened, read, written = meters.opened, meters.read, meters.written
        links = (f"counted=127.0.0.2:{port}",)
        async with session(links, handshake_timeout=0.2) as (server, tunnel):
            end = StreamEnd()
            stream_id = tunnel.open_stream(end)
            # The header and the first bytes in one frame: the header's part is credited at
            # once, the rest once the backend socket has it.
            tunnel.send(stream_id, StreamHeader("counted").encode() + b"hello")
            await wait_for(lambda: end.data == CONNECTED + b"hello", "the echo of 'hello'")
            (stream,) = backend_streams(server)
            (connection,) = server.connections
            window = connection.tunnel.session._streams[stream_id].recv
            assert window.buffered == stream._uncredited == 5
            assert (meters.opened, meters.open_now) == (opened + 1, 1)
            assert server.streams_by_identity["anonymous"] == 1
            assert stream._expiry is not None and stream._expiry.cancelled(), (
                "the dial's timer outlived the dial"
            )
            # Past the header timeout: a stream that named its service is not swept.
            await asyncio.sleep(0.35)
            tunnel.send(stream_id, b" again")
            await wait_for(lambda: end.data.endswith(b" again"), "the echo of ' again'")
            assert (meters.read - read, meters.written - written) == (11, 11)
            second = StreamEnd()
            second_id = tunnel.open_stream(second)
            tunnel.send(second_id, StreamHeader("counted").encode())
            await wait_for(lambda: second.data == CONNECTED, "the second stream's answer")
            assert (meters.opened, meters.open_now) == (opened + 2, 2)
            assert (server.streams_by_identity["anonymous"], server.stream_count) == (2, 2)
            tunnel.end(stream_id)
            tunnel.end(second_id)
            await wait_for(lambda: not backend_streams(server), "the end of the streams")
            assert end.reset is None, f"stream {stream_id} was reset: {end.reset}"
            assert meters.open_now == 0
            assert (server.streams_by_identity["anonymous"], server.stream_count) == (0, 0)
        backend.close()

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_a_dial_cut_short_by_the_session_closing_is_not_a_refusal(
    refusals: Refusals, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler = socket.create_connection(listener.getsockname())  # SYNs beyond it are dropped
        port = listener.getsockname()[1]
        try:
            async with session((f"svc=127.0.0.1:{port}",)) as (server, tunnel):
                tunnel.send(tunnel.open_stream(StreamEnd()), StreamHeader("svc").encode())
                await wait_for(lambda: any(c.tasks for c in server.connections), "the backend dial")
            await asyncio.sleep(0.05)
            assert refusals() == []
            assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
        finally:
            filler.close()
            listener.close()

    asyncio.run(asyncio.wait_for(scenario(), 10))
