"""A closed tunnel connection gives its memory back at once, without the cycle collector.

The server runs in this process (on the loop the roles use) so that its objects can be watched
with weak references; the peers are real sockets on loopback. With ``gc`` disabled, anything
still alive after the connection closed is held by a reference cycle, and would stay until a
collection that a busy server may run rarely: that is how closed connections used to keep
their 256 KiB (and more) receive buffers.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from server.app import Server
from server.config import ServerConfig
from tests.pki import loopback_pki
from tunnel.operations.runtime import loop_factory
from tunnel.settings.links import Address, Catalog, parse_link

HUGE_HEADER = bytes((0, 0, 0, 1, 0, 0, 0, 1, 0x08, 0, 0, 0))  # SYN, stream 1, 128 MiB of data


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def wait_until(done: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not done():
            await asyncio.sleep(0.01)


def run(main: Callable[[], object]) -> None:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(main())  # type: ignore[arg-type]


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
@pytest.mark.parametrize(
    "what", [b"", b"\x00\x00", HUGE_HEADER + bytes(1000)], ids=["silent", "partial", "huge"]
)
def test_a_closed_connection_is_freed_without_the_cycle_collector(
    no_gc: None, tmp_path: Path, tls: bool, what: bytes
) -> None:
    server_tls = loopback_pki(tmp_path)[0] if tls else None
    config = ServerConfig(
        listen=Address("127.0.0.1", 0),
        catalog=Catalog((parse_link("echo=127.0.0.1:9"),)),
        tls=server_tls,
    )

    async def main() -> None:
        server = Server(config)
        await server.start()
        try:
            loop = asyncio.get_running_loop()
            sock = socket.create_connection(server.address)
            sock.setblocking(False)
            await wait_until(lambda: bool(server.connections))
            (connection,) = server.connections
            watched = [weakref.ref(connection), weakref.ref(connection.tunnel)]
            watched.append(weakref.ref(connection.tunnel.session))
            if what:
                await loop.sock_sendall(sock, what)
                await asyncio.sleep(0.05)
            del connection
            sock.close()
            await wait_until(lambda: not server.connections)
            await asyncio.sleep(0.05)  # the transport's own callbacks
            alive = [ref() for ref in watched if ref() is not None]
            assert not alive, f"still alive after close: {[type(o).__name__ for o in alive]}"
        finally:
            await server.stop()

    run(main)
