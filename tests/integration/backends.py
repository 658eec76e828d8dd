"""Small TCP backends the end-to-end tests put behind the tunnel, run as their own process.

    python backends.py echo   [HOST]   every byte read is written back; EOF is answered with EOF
    python backends.py digest [HOST]   reads until EOF, then answers "<count> <sha256 hex>\\n"

Each binds HOST (127.0.0.1 by default) on a port the kernel picks, prints that port on one
line of stdout, and serves until terminated. Both keep TCP's flow control: a peer that stops
reading stops the echo's reading too, so memory stays bounded.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import sys


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()

    def eof_received(self) -> bool:
        # False: the transport closes, after writing out what is still buffered.
        return False


class Digest(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.hash = hashlib.sha256()
        self.count = 0

    def data_received(self, data: bytes) -> None:
        self.hash.update(data)
        self.count += len(data)

    def eof_received(self) -> bool:
        self.transport.write(f"{self.count} {self.hash.hexdigest()}\n".encode())
        return False


async def serve(mode: str, host: str) -> None:
    protocol = {"echo": Echo, "digest": Digest}[mode]
    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol, host, 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"))
