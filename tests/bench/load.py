"""Redis consumers written in asyncio, for what redis-benchmark and iperf3 do not measure:
per-request latency on one connection, the first response of a fresh connection, and many
connections held open at once.

A request is an inline ``PING``; its latency is the time from the write until all of ``+PONG``
has been read, measured with ``time.perf_counter`` in this process.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

PING = b"PING\r\n"
PONG = b"+PONG\r\n"
OPEN_CONCURRENCY = 100  # connections being opened at once while building up the held set
PING_CONCURRENCY = 50  # held connections doing their PING at once (redis-benchmark's -c 50)


class BadReply(Exception):
    pass


async def _ping(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
) -> float:
    start = time.perf_counter()
    writer.write(PING)
    reply = await asyncio.wait_for(reader.readexactly(len(PONG)), timeout)
    elapsed = time.perf_counter() - start
    if reply != PONG:
        raise BadReply(f"unexpected reply {reply!r}")
    return elapsed


async def ping_series(
    port: int, duration: float, max_count: int = 100_000, timeout: float = 5.0
) -> list[float]:
    """Sequential PINGs on one connection for ``duration`` seconds: their latencies, seconds."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    latencies: list[float] = []
    try:
        await _ping(reader, writer, timeout)  # the first one may include a stream or channel open
        deadline = time.perf_counter() + duration
        while time.perf_counter() < deadline and len(latencies) < max_count:
            latencies.append(await _ping(reader, writer, timeout))
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), timeout)
    return latencies


async def first_response(port: int, timeout: float = 10.0) -> float:
    """Seconds from the start of connect() on a fresh connection until +PONG has been read."""
    start = time.perf_counter()
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        writer.write(PING)
        reply = await asyncio.wait_for(reader.readexactly(len(PONG)), timeout)
        elapsed = time.perf_counter() - start
        if reply != PONG:
            raise BadReply(f"unexpected reply {reply!r}")
        return elapsed
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), timeout)


@dataclass
class HoldResult:
    wanted: int
    opened: int = 0
    open_seconds: float = 0.0
    pinged: int = 0  # held connections whose PING got its +PONG
    each_latencies: list[float] = field(default_factory=list)  # those PINGs
    loaded_latencies: list[float] = field(default_factory=list)  # one more connection's series
    errors: collections.Counter[str] = field(default_factory=collections.Counter)


def _why(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timed out"
    if isinstance(exc, asyncio.IncompleteReadError):
        return f"connection closed after {len(exc.partial)} reply bytes"
    if isinstance(exc, RuntimeError) and "closed" in str(exc):
        return "connection closed before the request was written"
    return f"{type(exc).__name__}: {exc}"


async def hold(
    port: int,
    count: int,
    series_seconds: float,
    while_held: Callable[[], Awaitable[None]] | None = None,
    timeout: float = 15.0,
    paced: bool = False,
) -> HoldResult:
    """Open ``count`` connections and keep them; each does one PING (50 at a time); then a
    separate connection measures a PING series while all are still open; then
    ``while_held()`` runs (to read memory figures); then everything is closed.

    Connections are opened 100 at a time, but a connect() completes as soon as the chain's
    listener accepts it, so the chain sees them as a burst. ``paced``: each connection also
    does a PING right after its connect, inside the 100, so no more than 100 are ever being
    set up end to end at once.
    """
    result = HoldResult(wanted=count)
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)

    async def open_one() -> None:
        async with gate:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), timeout
                )
            except (TimeoutError, OSError) as exc:
                result.errors[f"open: {_why(exc)}"] += 1
                return
            held.append((reader, writer))
            if paced:
                try:
                    await _ping(reader, writer, timeout)
                except Exception as exc:  # counted; its PING after the opening fails too
                    result.errors[f"PING at open: {_why(exc)}"] += 1

    async def ping_one(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ping_gate: asyncio.Semaphore
    ) -> None:
        async with ping_gate:
            try:
                result.each_latencies.append(await _ping(reader, writer, timeout))
                result.pinged += 1
            except Exception as exc:  # one connection's failure is counted, never fatal
                result.errors[f"ping: {_why(exc)}"] += 1

    try:
        start = time.perf_counter()
        await asyncio.gather(*(open_one() for _ in range(count)))
        result.open_seconds = time.perf_counter() - start
        result.opened = len(held)
        ping_gate = asyncio.Semaphore(PING_CONCURRENCY)
        await asyncio.gather(*(ping_one(r, w, ping_gate) for r, w in held))
        try:
            result.loaded_latencies = await ping_series(port, series_seconds)
        except Exception as exc:  # one connection's failure is counted, never fatal
            result.errors[f"series: {_why(exc)}"] += 1
        if while_held is not None:
            await while_held()
    finally:
        for _, writer in held:
            writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                asyncio.gather(*(w.wait_closed() for _, w in held), return_exceptions=True), 60
            )
    return result
