"""asyncssh at both ends of a link, with local port forwards: the pick of a Python user.

    python asyncssh_pair.py server PORT HOST_KEY AUTHORIZED_KEYS
    python asyncssh_pair.py client PORT CLIENT_KEY LPORT=HOST:PORT [LPORT=HOST:PORT ...]

Both ends listen on 127.0.0.1 only and run until SIGTERM. The event loop is asyncio's own, as a
user of asyncssh would run it by default.
"""

from __future__ import annotations

import asyncio
import getpass
import signal
import sys

import asyncssh


class _Forwarding(asyncssh.SSHServer):
    """Allows direct-tcpip channels: the client's local forwards."""

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> bool:
        return True


async def _until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


async def server(port: int, host_key: str, authorized_keys: str) -> None:
    acceptor = await asyncssh.listen(
        "127.0.0.1",
        port,
        server_factory=_Forwarding,
        server_host_keys=[host_key],
        authorized_client_keys=authorized_keys,
    )
    await _until_stopped()
    acceptor.close()


async def client(port: int, key: str, forwards: list[str]) -> None:
    async with asyncssh.connect(
        "127.0.0.1", port, client_keys=[key], known_hosts=None, username=getpass.getuser()
    ) as conn:
        for spec in forwards:
            local, _, target = spec.partition("=")
            host, _, target_port = target.rpartition(":")
            await conn.forward_local_port("127.0.0.1", int(local), host, int(target_port))
        await _until_stopped()


def main(argv: list[str]) -> None:
    role, port, key, *rest = argv
    if role == "server":
        asyncio.run(server(int(port), key, rest[0]))
    else:
        asyncio.run(client(int(port), key, rest))


if __name__ == "__main__":
    main(sys.argv[1:])
