"""What the reliability tests share: consumers that check every byte, and process gauges.

A consumer pushes a deterministic pseudo-random stream (seeded, generated chunk by chunk)
through an echo service and hashes what it sends and what comes back; a transfer counts as
done only when the full length came back with the same SHA-256. Anything else is recorded as
what the consumer saw: a reset, an EOF before the full length, a refusal or a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import re
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from tests.integration.support import Started

T = TypeVar("T")

KIB = 1024
MIB = 1024 * KIB
CHUNK = 256 * KIB
FAST_KEEPALIVE = ("--keepalive-interval", "0.5", "--keepalive-timeout", "1.5")
_LINGER_ZERO = struct.pack("ii", 1, 0)


def run(coroutine: Awaitable[T], timeout: float = 60.0) -> T:
    """Run one async scenario to completion on a fresh loop, bounded in time."""

    async def bounded() -> T:
        return await asyncio.wait_for(coroutine, timeout)

    return asyncio.run(bounded())


# ------------------------------------------------------------------- consumers


def chunks(seed: int, size: int, chunk: int = CHUNK) -> Iterator[bytes]:
    """``size`` pseudo-random bytes, the same for the same seed, ``chunk`` at a time."""
    rng = random.Random(seed)
    left = size
    while left:
        n = min(chunk, left)
        yield rng.randbytes(n)
        left -= n


def digest(seed: int, size: int, prefix: int | None = None) -> str:
    """SHA-256 of the stream of ``size`` bytes for ``seed``, or of its first ``prefix`` bytes.

    The stream is generated exactly as the consumer sent it (a shorter stream is not a prefix
    of a longer one: the last chunk draws its bytes differently)."""
    sha = hashlib.sha256()
    left = size if prefix is None else prefix
    for data in chunks(seed, size):
        if left <= 0:
            break
        sha.update(data[:left])
        left -= len(data)
    return sha.hexdigest()


@dataclass
class Transfer:
    """One consumer connection through an echo service, updated while it runs."""

    size: int
    seed: int
    sent: int = 0
    received: int = 0
    outcome: str = "running"  # complete | reset | eof | refused | timeout
    error: str = ""
    sent_digest: str = ""
    received_digest: str = ""
    seconds: float = 0.0

    @property
    def exact(self) -> bool:
        """The whole stream came back, byte for byte."""
        return (
            self.outcome == "complete"
            and self.received == self.size
            and self.received_digest == self.sent_digest
        )

    @property
    def failed_cleanly(self) -> bool:
        """The consumer was told: a reset or refusal, never a silent short read."""
        return self.outcome in ("reset", "refused")


async def echo_transfer(
    port: int,
    transfer: Transfer,
    host: str = "127.0.0.1",
    rate: float | None = None,
    timeout: float = 60.0,
) -> Transfer:
    """Send ``transfer.size`` bytes (at most ``rate`` bytes/s) to an echo service through
    ``port`` while reading the echo; fills in ``transfer`` as it goes and returns it."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    sent_hash, received_hash = hashlib.sha256(), hashlib.sha256()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    except OSError as exc:
        # A reset can beat the connect's completion to this loop: the connection was accepted
        # and then reset (a refusal travels fast on loopback).
        reset = isinstance(exc, ConnectionResetError)
        transfer.outcome, transfer.error = "reset" if reset else "refused", repr(exc)
        transfer.sent_digest = transfer.received_digest = sent_hash.hexdigest()
        return transfer

    async def send() -> None:
        for data in chunks(transfer.seed, transfer.size):
            writer.write(data)
            sent_hash.update(data)
            transfer.sent += len(data)
            await writer.drain()
            if rate is not None:
                ahead = started + transfer.sent / rate - loop.time()
                if ahead > 0:
                    await asyncio.sleep(ahead)
        writer.write_eof()

    async def receive() -> None:
        while data := await reader.read(CHUNK):
            received_hash.update(data)
            transfer.received += len(data)

    sender = asyncio.ensure_future(send())
    try:
        async with asyncio.timeout(timeout):
            await receive()
            if transfer.received == transfer.size:
                await sender
    except TimeoutError:
        transfer.outcome = "timeout"
    except OSError as exc:
        transfer.outcome, transfer.error = "reset", repr(exc)
    finally:
        if not sender.done():
            sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await sender
        sent_error = sender.exception() if not sender.cancelled() else None
        if transfer.outcome == "running":
            if isinstance(sent_error, OSError):
                transfer.outcome, transfer.error = "reset", repr(sent_error)
            else:
                transfer.outcome = "complete" if transfer.received == transfer.size else "eof"
        if transfer.outcome == "complete":
            writer.close()
        else:
            writer.transport.abort()
    transfer.sent_digest = sent_hash.hexdigest()
    transfer.received_digest = received_hash.hexdigest()
    transfer.seconds = loop.time() - started
    return transfer


async def round_trip(port: int, payload: bytes, host: str = "127.0.0.1") -> bytes:
    """Send ``payload`` and read as many bytes back (bounded to 5 s); what came back."""
    async with asyncio.timeout(5):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(payload)
            return await reader.readexactly(len(payload))
        finally:
            writer.close()


def reset_close(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (``SO_LINGER`` 0), as a crashed consumer's kernel would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    writer.transport.abort()


async def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` every 10 ms; seconds it took, AssertionError after ``timeout``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not condition():
        if loop.time() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        await asyncio.sleep(0.01)
    return loop.time() - start


# ----------------------------------------------------------- processes and logs


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss(pid: int) -> int:
    """Resident set size in bytes (VmRSS)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * KIB
    raise AssertionError(f"no VmRSS for pid {pid}")


def settle(measure: Callable[[], int], target: int, timeout: float = 5.0) -> int:
    """Poll ``measure`` until it is at most ``target`` (bounded); its last value."""
    deadline = time.monotonic() + timeout
    value = measure()
    while value > target and time.monotonic() < deadline:
        time.sleep(0.05)
        value = measure()
    return value


def log_count(process: Started, pattern: str) -> int:
    return len(re.findall(pattern, process.stderr()))


async def wait_for_log(process: Started, pattern: str, timeout: float, count: int = 1) -> float:
    """Seconds until ``pattern`` shows up ``count`` times in the program's stderr."""
    return await wait_until(
        lambda: log_count(process, pattern) >= count,
        timeout,
        f"{process.name} logging {pattern!r} ({count}x)",
    )


def wait_for_log_sync(process: Started, pattern: str, timeout: float, count: int = 1) -> float:
    start = time.monotonic()
    while log_count(process, pattern) < count:
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{process.name} did not log {pattern!r} {count}x in {timeout}s")
        if not process.alive():
            raise AssertionError(f"{process.name} exited before logging {pattern!r}")
        time.sleep(0.01)
    return time.monotonic() - start


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False
