"""Dialing through an egress proxy over real loopback sockets: test-owned proxies that open
the way, refuse it, answer garbage, close mid-handshake or say nothing at all."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.integration.socks5server import Socks5Server
from tunnel.aio.proxydial import dial_through
from tunnel.errors import EgressFailed
from tunnel.protocol.socks5 import REPLIES
from tunnel.settings.proxy import Proxy

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serving(handler: Handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def http_answering(answer: bytes, then_close: bool = True) -> Handler:
    """A proxy that reads the CONNECT request's header, answers ``answer`` and closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        if then_close:
            writer.close()
        else:
            await asyncio.sleep(30)

    return handle


async def failure(proxy: Proxy, host: str = "127.0.0.1", port: int = 7000) -> EgressFailed:
    with pytest.raises(EgressFailed) as failed:
        await dial_through(proxy, host, port, 2.0)
    return failed.value


def in_loop(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test in a fresh event loop, bounded to 10 s."""

    @functools.wraps(test)
    def run(*args: object, **kwargs: object) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 10))

    return run


@contextlib.asynccontextmanager
async def greeting_target() -> AsyncIterator[int]:
    """A target that greets each connection with 'hello from target'."""

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello from target")
        await writer.drain()
        await reader.read()
        writer.close()

    server, port = await serving(greet)
    async with server:
        yield port


async def read_some(sock: socket.socket) -> bytes:
    return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 100), 2)


@in_loop
async def test_the_bytes_after_a_200_are_left_in_the_socket() -> None:
    server, port = await serving(
        http_answering(b"HTTP/1.1 200 Connection established\r\n\r\nfirst tunnel bytes", False)
    )
    async with server:
        sock = await dial_through(Proxy("http", "127.0.0.1", port), "tunnel.example", 7000, 2)
        with sock:
            assert await read_some(sock) == b"first tunnel bytes"


@in_loop
async def test_socks5_with_credentials_reaches_the_target_by_name() -> None:
    proxy = Socks5Server((b"alice", b"s3cret"))
    server, port = await serving(proxy.handle)
    async with server, greeting_target() as target:
        through = Proxy("socks5", "127.0.0.1", port, ("alice", "s3cret"))
        sock = await dial_through(through, "localhost", target, 2)
        with sock:
            assert await read_some(sock) == b"hello from target"
        assert proxy.requests == [(3, "localhost", target)]  # the name went, not an address


@in_loop
async def test_socks5_wrong_credentials_are_one_line_naming_the_file() -> None:
    server, port = await serving(Socks5Server((b"alice", b"s3cret")).handle)
    async with server:
        failed = await failure(Proxy("socks5", "127.0.0.1", port, ("alice", "wrong")))
    assert failed.label == "proxy_auth"
    assert str(failed) == (
        f"cannot reach 127.0.0.1:7000 through proxy socks5://127.0.0.1:{port}: the proxy "
        "refused the username and password (status 1); check the credentials file"
    )


@in_loop
async def test_socks5_without_credentials_where_they_are_needed_says_how_to_give_them() -> None:
    server, port = await serving(Socks5Server((b"alice", b"s3cret")).handle)
    async with server:
        failed = await failure(Proxy("socks5", "127.0.0.1", port))
    assert str(failed).endswith(
        "the proxy accepts no connection without authentication; put USER:PASSWORD in a file "
        "and give --proxy-credentials-file FILE"
    )


@in_loop
async def test_socks5_a_closed_target_port_is_the_proxys_connection_refused() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()[1]
    server, port = await serving(Socks5Server(None).handle)
    async with server:
        failed = await failure(Proxy("socks5", "127.0.0.1", port), port=dead)
    assert failed.label == "proxy_target"
    assert "the proxy refused it: connection refused (SOCKS5 reply 5); check that the server" in (
        str(failed)
    )


@pytest.mark.parametrize("code", sorted(REPLIES))
@in_loop
async def test_socks5_each_refusal_is_named(code: int) -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(3)
        writer.write(b"\x05\x00")
        await reader.readexactly(10)  # an IPv4 request
        writer.write(bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0]))
        await writer.drain()
        writer.close()

    server, port = await serving(refuse)
    async with server:
        failed = await failure(Proxy("socks5", "127.0.0.1", port))
    assert f"the proxy refused it: {REPLIES[code][0]} (SOCKS5 reply {code}); " in str(failed)


@pytest.mark.parametrize(
    ("answer", "label", "says"),
    [
        (
            b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n",
            "proxy_auth",
            "the proxy wants credentials (407 Proxy Authentication Required; it offers Basic); "
            "put USER:PASSWORD in a file and give --proxy-credentials-file FILE",
        ),
        (
            b"HTTP/1.1 403 Forbidden\r\n\r\n",
            "proxy_forbidden",
            "the proxy does not allow it (403 Forbidden); ask the proxy's administrator to allow "
            "this target and port",
        ),
        (
            b"HTTP/1.1 502 Bad Gateway\r\n\r\n",
            "proxy_target",
            "the proxy could not reach it (502 Bad Gateway); check that the server runs and that "
            "the proxy's network can reach it",
        ),
        (
            b"SSH-2.0-OpenSSH_9.2\r\n",
            "proxy_protocol",
            "the proxy answered 'SSH-2.0-OpenSSH_9.2\\r\\n', not HTTP; check the proxy URL's "
            "scheme (http:// or socks5://) and port",
        ),
        (
            b"HTTP/1.1 403 \x1b]0;owned\x07\r\n\r\n",
            "proxy_forbidden",
            "the proxy does not allow it (403 \\x1b]0;owned\\x07)",
        ),
    ],
)
@in_loop
async def test_each_http_answer_is_one_line_naming_the_fix(
    answer: bytes, label: str, says: str
) -> None:
    server, port = await serving(http_answering(answer))
    async with server:
        failed = await failure(Proxy("http", "127.0.0.1", port))
    assert failed.label == label
    assert str(failed).startswith(
        f"cannot reach 127.0.0.1:7000 through proxy http://127.0.0.1:{port}: {says}"
    )
    assert str(failed).isprintable()


@in_loop
async def test_wrong_credentials_are_named_as_such() -> None:
    server, port = await serving(http_answering(b"HTTP/1.1 407 Nope\r\n\r\n"))
    async with server:
        failed = await failure(Proxy("http", "127.0.0.1", port, ("alice", "wrong")))
    assert str(failed).endswith(
        "the proxy refused the credentials (407 Nope); check the credentials file"
    )


@in_loop
async def test_a_proxy_that_closes_mid_handshake_is_named() -> None:
    server, port = await serving(http_answering(b"HTTP/1.1 200 Conn"))
    async with server:
        failed = await failure(Proxy("http", "127.0.0.1", port))
    assert failed.label == "proxy_closed"
    assert "the proxy closed the connection during its handshake" in str(failed)


@in_loop
async def test_an_endless_header_is_cut_off_at_its_bound() -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n")
        try:
            for _ in range(10_000):  # bounded: far more than the 16 KiB header bound
                writer.write(b"X-Filler: " + b"y" * 100 + b"\r\n")
                await writer.drain()
        except OSError:
            pass

    server, port = await serving(endless)
    async with server:
        failed = await failure(Proxy("http", "127.0.0.1", port))
    assert failed.label == "proxy_protocol"
    assert "more than 64 header lines" in str(failed)


@pytest.mark.parametrize("scheme", ["http", "socks5"])
@in_loop
async def test_a_proxy_that_says_nothing_meets_the_deadline(scheme: str) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    server, port = await serving(silent)
    async with server:
        started = time.monotonic()
        with pytest.raises(EgressFailed) as failed:
            await dial_through(Proxy(scheme, "127.0.0.1", port), "127.0.0.1", 7000, 0.5)
        took = time.monotonic() - started
    assert 0.4 < took < 2.0
    assert failed.value.label == "proxy_timeout"
    assert str(failed.value).endswith(
        "the proxy did not finish its handshake within 0.5s; check the proxy URL's scheme "
        "(http:// or socks5://) and port, or raise --connect-timeout"
    )


@in_loop
async def test_a_proxy_that_is_not_there_is_named() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    failed = await failure(Proxy("http", "127.0.0.1", port))
    assert failed.label == "proxy_unreachable"
    assert str(failed).endswith(
        "the proxy refused the connection (is it running there, on that port?)"
    )
