"""``ambassador-client demo``: the pair on one machine, against a built-in echo service.

It starts a real ``ambassador-server`` and ``ambassador-client`` (as separate processes, the way
they run on two hosts), an echo backend inside this process, and then pushes data through the
tunnel on several connections at once, checking every byte that comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class Transfer:
    sent_sha256: str
    received_sha256: str
    size: int
    seconds: float

    @property
    def exact(self) -> bool:
        return self.sent_sha256 == self.received_sha256


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    writer.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _wait_port(
    port: int, process: subprocess.Popen[bytes], name: str, timeout: float = 15.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with status {process.returncode}")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"port {port} did not open within {timeout:g}s")


async def _transfer(port: int, size: int, seed: int) -> Transfer:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent, received = hashlib.sha256(), hashlib.sha256()
    block = hashlib.shake_256(seed.to_bytes(4, "big")).digest(CHUNK)
    start = time.perf_counter()

    async def send() -> None:
        left = size
        while left:
            piece = block[: min(left, CHUNK)]
            sent.update(piece)
            writer.write(piece)
            await writer.drain()
            left -= len(piece)
        writer.write_eof()

    async def receive() -> int:
        total = 0
        while data := await reader.read(CHUNK):
            received.update(data)
            total += len(data)
        return total

    _, total = await asyncio.gather(send(), receive())
    writer.close()
    elapsed = time.perf_counter() - start
    return Transfer(sent.hexdigest(), received.hexdigest(), total, elapsed)


async def _round_trips(port: int, count: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.perf_counter()
    for _ in range(count):
        writer.write(b"PING\r\n")
        await reader.readexactly(6)
    elapsed = time.perf_counter() - start
    writer.close()
    return elapsed / count


async def run_demo(streams: int, megabytes: int) -> int:
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    echo_port = echo.sockets[0].getsockname()[1]
    tunnel_port, local_port = _free_port(), _free_port()
    python = sys.executable
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    level = os.environ.get("DEMO_LOG", "warning")
    server = subprocess.Popen(
        [python, "-m", "server", "--listen", f"127.0.0.1:{tunnel_port}",
         "--link", f"echo=127.0.0.1:{echo_port}", "--log-level", level],
        env=env,
    )  # fmt: skip
    client: subprocess.Popen[bytes] | None = None
    try:
        # The client once the server listens: started together, it would warn that it cannot
        # reach the server yet.
        await _wait_port(tunnel_port, server, "ambassador-server")
        client = subprocess.Popen(
            [python, "-m", "client", "--remote", f"127.0.0.1:{tunnel_port}",
             "--expose", f"127.0.0.1:{local_port}=echo", "--log-level", level],
            env=env,
        )  # fmt: skip
        await _wait_port(local_port, client, "ambassador-client")
        print(f"echo backend      127.0.0.1:{echo_port}")
        print(f"ambassador-server 127.0.0.1:{tunnel_port}  (pid {server.pid})  --link echo=...")
        print(f"ambassador-client 127.0.0.1:{local_port}  (pid {client.pid})  --expose ...=echo")
        rtt = await _round_trips(local_port, 2000)
        print(
            f"\nround trip through the tunnel: {rtt * 1e6:.0f} us (2000 requests, one connection)"
        )
        size = megabytes * 1024 * 1024
        print(f"\n{streams} connections at once, each sending {megabytes} MiB and reading it back:")
        start = time.perf_counter()
        results = await asyncio.gather(
            *(_transfer(local_port, size, seed) for seed in range(streams))
        )
        elapsed = time.perf_counter() - start
        for number, result in enumerate(results, 1):
            mark = "ok" if result.exact else "MISMATCH"
            mib = result.size / 2**20
            print(f"  #{number:<3} sent {result.sent_sha256[:16]}  "
                  f"back {result.received_sha256[:16]}  {mib:.0f} MiB  {mark}")  # fmt: skip
        moved = 2 * size * streams
        rate = moved * 8 / elapsed / 1e9
        print(f"\n{moved / 2**20:.0f} MiB crossed the tunnel in {elapsed:.2f}s: "
              f"{rate:.2f} Gbit/s over one multiplexed connection")  # fmt: skip
        ok = all(result.exact for result in results)
        print("all bytes came back exactly" if ok else "SOME BYTES DID NOT COME BACK")
        return 0 if ok else 1
    except RuntimeError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        # The client first: a server stopping under it would make it warn of a lost tunnel.
        for process in (client, server):
            if process is None:
                continue
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        echo.close()
