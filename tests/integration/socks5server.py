"""A small, strict SOCKS5 proxy (RFC 1928 CONNECT, RFC 1929 username/password) for the tests.

    python socks5server.py [--credentials FILE]

It binds 127.0.0.1 on a port the kernel picks, prints that port on one line of stdout, and
serves until terminated. With ``--credentials`` (a USER:PASSWORD line) it takes only the
username/password method and only those credentials; without, only "no authentication". It
is strict where the RFCs are: a wrong version, a method not offered, a command other than
CONNECT or a non-zero reserved byte ends the connection with the RFC's answer. It logs one
line per request on stderr (``request ATYP HOST PORT``), so a test can see whether the name
or an address came, and resolves names itself, as the proxy that does the remote DNS.
Dante checks usernames against the system's users (PAM or passwd), which a test should not
add to; this stands in for the username method, with dante's own tests covering "none".
"""

from __future__ import annotations

import asyncio
import ipaddress
import signal
import sys
from typing import NoReturn


class Refused(Exception):
    """The client broke the protocol or failed authentication: the connection ends."""


class Socks5Server:
    def __init__(self, credentials: tuple[bytes, bytes] | None) -> None:
        self.credentials = credentials
        self.requests: list[tuple[int, str, int]] = []  # (atyp, host, port) of each CONNECT

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream = await self._negotiate(reader, writer)
        except (Refused, asyncio.IncompleteReadError, OSError):
            writer.close()
            return
        up_reader, up_writer = upstream
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    async def _negotiate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        version, count = await reader.readexactly(2)
        methods = await reader.readexactly(count)
        if version != 5 or count == 0:
            raise Refused
        wanted = 0x02 if self.credentials is not None else 0x00
        if wanted not in methods:
            writer.write(b"\x05\xff")
            await writer.drain()
            raise Refused
        writer.write(bytes([5, wanted]))
        if self.credentials is not None:
            subversion, length = await reader.readexactly(2)
            user = await reader.readexactly(length)
            password = await reader.readexactly((await reader.readexactly(1))[0])
            ok = subversion == 1 and (user, password) == self.credentials
            writer.write(b"\x01\x00" if ok else b"\x01\x01")
            if not ok:
                await writer.drain()
                raise Refused
        version, command, reserved, atyp = await reader.readexactly(4)
        if atyp == 1:
            host = str(ipaddress.IPv4Address(await reader.readexactly(4)))
        elif atyp == 4:
            host = str(ipaddress.IPv6Address(await reader.readexactly(16)))
        elif atyp == 3:
            host = (await reader.readexactly((await reader.readexactly(1))[0])).decode()
        else:
            return await self._refuse(writer, 8)
        port = int.from_bytes(await reader.readexactly(2), "big")
        if version != 5 or reserved != 0:
            raise Refused
        if command != 1:
            return await self._refuse(writer, 7)
        self.requests.append((atyp, host, port))
        print(f"request {atyp} {host} {port}", file=sys.stderr, flush=True)
        try:
            upstream = await asyncio.open_connection(host, port)
        except ConnectionRefusedError:
            return await self._refuse(writer, 5)
        except OSError:
            return await self._refuse(writer, 4)
        writer.write(b"\x05\x00\x00\x01\x7f\x00\x00\x01\x00\x00")
        return upstream

    async def _refuse(self, writer: asyncio.StreamWriter, code: int) -> NoReturn:
        writer.write(bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0]))
        await writer.drain()
        raise Refused


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    except OSError:
        writer.close()


def read_credentials(path: str) -> tuple[bytes, bytes]:
    with open(path) as file:
        user, _, password = file.read().strip().partition(":")
    return user.encode(), password.encode()


async def main(argv: list[str]) -> None:
    credentials = read_credentials(argv[1]) if argv[:1] == ["--credentials"] else None
    proxy = Socks5Server(credentials)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
