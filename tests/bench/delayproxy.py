"""A TCP proxy that stands for a long link: every byte arrives ``--delay`` seconds after it left.

    python delayproxy.py --delay 0.025 --map 24000=127.0.0.1:23379 [--map ...]

Each direction of each connection is a queue of (release time, chunk): a chunk read at time t is
written on at t + delay, whatever else is queued, so the delay costs latency and never
bandwidth. Reading pauses only when the far side stops taking data (its socket buffer is full)
or when one direction holds more than ``--queue-cap`` bytes (a memory bound, 64 MiB by default:
at 25 ms that would be a 2.7 GB/s link).

A new connection also pays for the TCP handshake a real link would cost: the far end is dialled
1.5 round trips (three delays) after the accept, which is when a real server's accept() returns,
and bytes the near end sends in the meantime wait for it. So a fresh connection's first
request-response costs two round trips, as over a real link. ``--no-handshake`` dials at once.

What it does not model: TCP's own window and congestion control over the long link (each side's
TCP ends at this proxy, on loopback), nor loss. Protocols that carry their own flow control on
top of TCP (yamux windows, SSH channel windows) do see the delay on their window updates.

This file uses only the standard library (and uvloop when installed) so it can run on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import signal
import typing
from collections.abc import Callable

_EOF = None  # queued in place of a chunk: half-close the far side when released


class _Direction:
    """Bytes from ``source`` to ``sink``, each released ``delay`` seconds after it was read."""

    def __init__(self, side: _Side, delay: float, cap: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.side = side  # the side the bytes are read from
        self.delay = delay
        self.cap = cap
        self.queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.queued = 0
        self.timer: asyncio.TimerHandle | None = None
        self.sink: asyncio.Transport | None = None
        self.not_before = 0.0  # for client-to-server bytes: when the far end exists
        self.done = False

    def push(self, data: bytes | None) -> None:
        self.queue.append((self.loop.time() + self.delay, data))
        self.queued += len(data or b"")
        if self.queued > self.cap:
            self.side.pause("queue")
        self._arm()

    def attach(self, sink: asyncio.Transport) -> None:
        self.sink = sink
        self._arm()

    def _arm(self) -> None:
        if self.timer is None and self.queue and self.sink is not None:
            when = max(self.queue[0][0], self.not_before)
            self.timer = self.loop.call_at(when, self._release)

    def _release(self) -> None:
        self.timer = None
        now = self.loop.time()
        sink = self.sink
        assert sink is not None
        while self.queue and self.queue[0][0] <= now:
            _, data = self.queue.popleft()
            if data is _EOF:
                self.done = True
                if sink.can_write_eof() and not sink.is_closing():
                    sink.write_eof()
                self.side.pair.maybe_close()
                continue
            self.queued -= len(data)
            if not sink.is_closing():
                sink.write(data)
        if self.queued <= self.cap:
            self.side.resume("queue")
        self._arm()


class _Side(asyncio.Protocol):
    """One of the two sockets of a proxied connection."""

    def __init__(self, pair: _Pair) -> None:
        self.pair = pair
        self.transport: asyncio.Transport | None = None
        self.outbound: _Direction | None = None  # bytes read here, going to the other side
        self.paused_by: set[str] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is not a subclass of asyncio.Transport, hence the cast).
        self.transport = typing.cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=4 * 1024 * 1024)

    def data_received(self, data: bytes) -> None:
        assert self.outbound is not None
        self.outbound.push(data)

    def eof_received(self) -> bool:
        assert self.outbound is not None
        self.outbound.push(_EOF)
        return True  # keep the other direction open (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pair.lost(self, exc)

    def pause_writing(self) -> None:
        self.pair.other(self).pause("sink")

    def resume_writing(self) -> None:
        self.pair.other(self).resume("sink")

    def pause(self, reason: str) -> None:
        if not self.paused_by and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self.paused_by.add(reason)

    def resume(self, reason: str) -> None:
        if reason in self.paused_by:
            self.paused_by.discard(reason)
            if (
                not self.paused_by
                and self.transport is not None
                and not self.transport.is_closing()
            ):
                self.transport.resume_reading()


class _Pair:
    def __init__(self, target: tuple[str, int], delay: float, cap: int, handshake: bool) -> None:
        self.target = target
        self.delay = delay
        self.handshake = handshake
        self.near = _Side(self)
        self.far = _Side(self)
        self.near.outbound = _Direction(self.near, delay, cap)
        self.far.outbound = _Direction(self.far, delay, cap)
        self.closed = False

    def other(self, side: _Side) -> _Side:
        return self.far if side is self.near else self.near

    async def dial(self) -> None:
        loop = asyncio.get_running_loop()
        wait = 3 * self.delay if self.handshake else 0.0
        assert self.near.outbound is not None and self.far.outbound is not None
        self.near.outbound.not_before = loop.time() + wait
        if wait:
            await asyncio.sleep(wait)
        try:
            await loop.create_connection(lambda: self.far, *self.target)
        except OSError:
            self._abort()
            return
        if self.closed:
            self._abort()
            return
        assert self.near.transport is not None and self.far.transport is not None
        self.near.outbound.attach(self.far.transport)
        self.far.outbound.attach(self.near.transport)

    def maybe_close(self) -> None:
        assert self.near.outbound is not None and self.far.outbound is not None
        if self.near.outbound.done and self.far.outbound.done:
            self._close()

    def lost(self, side: _Side, exc: Exception | None) -> None:
        # A reset (or close without EOF) crosses the link after the delay, like a RST would.
        other = self.other(side)
        if other.transport is None:
            self.closed = True
            return
        # A hair later than the delay, so the bytes read before the loss are released first.
        asyncio.get_running_loop().call_later(self.delay + 0.002, self._close)

    def _close(self) -> None:
        self.closed = True
        for side in (self.near, self.far):
            if side.transport is not None and not side.transport.is_closing():
                side.transport.close()

    def _abort(self) -> None:
        self.closed = True
        for side in (self.near, self.far):
            if side.transport is not None:
                side.transport.abort()


async def serve(
    maps: list[tuple[int, tuple[str, int]]], delay: float, cap: int, handshake: bool
) -> None:
    loop = asyncio.get_running_loop()
    dials: set[asyncio.Task[None]] = set()

    def factory(target: tuple[str, int]) -> _Side:
        pair = _Pair(target, delay, cap, handshake)
        task = loop.create_task(pair.dial())
        dials.add(task)
        task.add_done_callback(dials.discard)
        return pair.near

    servers = [
        await loop.create_server(
            functools.partial(factory, target), "127.0.0.1", port, backlog=4096, reuse_address=True
        )
        for port, target in maps
    ]
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def _parse_map(text: str) -> tuple[int, tuple[str, int]]:
    listen, _, target = text.partition("=")
    host, _, port = target.rpartition(":")
    return int(listen), (host or "127.0.0.1", int(port))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delay", type=float, default=0.025, help="one-way delay, seconds")
    parser.add_argument(
        "--map",
        action="append",
        required=True,
        type=_parse_map,
        metavar="PORT=HOST:PORT",
        help="listen on 127.0.0.1:PORT, forward there",
    )
    parser.add_argument("--queue-cap", type=int, default=64 * 1024 * 1024)
    parser.add_argument("--no-handshake", dest="handshake", action="store_false")
    args = parser.parse_args(argv)
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(args.map, args.delay, args.queue_cap, args.handshake))


if __name__ == "__main__":
    main()
