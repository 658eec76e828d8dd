"""Steady redis traffic through the pair, spoken by a small RESP client, each answer checked.

Kinds: a short connection per request (``SET`` then ``GET`` of a random value, then close),
and kept connections that make requests for a while and then ``QUIT``. Every outcome is
tallied: completed, failed (a reset or a refusal, with its text), corrupted (a wrong answer,
which must never happen) and short EOFs (which only a backend's own close may cause).
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field


@dataclass
class Tally:
    completed: int = 0
    failed: list[str] = field(default_factory=list)  # resets, refusals: the consumer was told
    corrupted: list[str] = field(default_factory=list)  # wrong bytes: never
    # A clean EOF before the answer was whole, and when (time.monotonic()): the tunnel passes
    # on a backend's own close this way, and must never make one up itself.
    eof: list[float] = field(default_factory=list)

    def fail(self, exc: BaseException) -> None:
        if isinstance(exc, asyncio.IncompleteReadError):
            self.eof.append(time.monotonic())
        elif isinstance(exc, Corrupted):
            self.corrupted.append(repr(exc))
        else:
            self.failed.append(repr(exc))


class Corrupted(Exception):
    """An answer other than the one the request called for."""


def command(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


async def set_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, size: int) -> None:
    key, value = os.urandom(8).hex().encode(), os.urandom(size)
    writer.write(command(b"SET", key, value) + command(b"GET", key) + command(b"DEL", key))
    ok = await reader.readexactly(5)
    if ok != b"+OK\r\n":
        raise Corrupted(f"SET answered {ok!r}")
    head = await reader.readuntil(b"\r\n")
    if head != b"$%d\r\n" % size:
        raise Corrupted(f"GET answered {head!r}")
    body = await reader.readexactly(size + 2)
    if body[:-2] != value:
        raise Corrupted("GET answered other bytes")
    if await reader.readexactly(4) != b":1\r\n":
        raise Corrupted("DEL did not delete")


async def short_request(port: int, tally: Tally, size: int = 100, timeout: float = 15) -> None:
    """One connection, one SET/GET/DEL, closed."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                await set_get(reader, writer, size)
            finally:
                writer.close()
        tally.completed += 1
    except (OSError, TimeoutError, Corrupted, asyncio.IncompleteReadError) as exc:
        tally.fail(exc)


async def kept_connection(port: int, tally: Tally, seconds: float, timeout: float = 15) -> None:
    """One connection making requests for ``seconds``, then QUIT: one completed transfer."""
    try:
        async with asyncio.timeout(seconds + timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    await set_get(reader, writer, 1000)
                    await asyncio.sleep(0.02)
                writer.write(command(b"QUIT"))
                if await reader.readexactly(5) != b"+OK\r\n":
                    raise Corrupted("QUIT not answered")
            finally:
                writer.close()
        tally.completed += 1
    except (OSError, TimeoutError, Corrupted, asyncio.IncompleteReadError) as exc:
        tally.fail(exc)


async def steady(
    port: int, stop: asyncio.Event, tally: Tally, short: int = 4, kept: int = 2
) -> None:
    """``short`` loops of short requests and ``kept`` loops of 1 s kept connections, until
    ``stop`` is set; every request started is finished before it returns."""

    async def shorts() -> None:
        while not stop.is_set():
            await short_request(port, tally)

    async def keeps() -> None:
        while not stop.is_set():
            await kept_connection(port, tally, 1.0)

    await asyncio.gather(*(shorts() for _ in range(short)), *(keeps() for _ in range(kept)))
