"""Flow control for one stream's receiving side.

yamux has a window per stream and none for the session. The receiver grants the sender credit
(the window); every Data byte uses some up, and the receiver gives it back with a Window Update
once the bytes have *left* it: here that means written to the local socket, so a slow consumer
holds back its own stream and nothing else.

Auto-tuning: a fixed 256 KiB window caps one stream at 5 MB/s on a 50 ms path. The window is
sized to at least twice the bandwidth-delay product: the pace at which the stream's bytes are
handed on, measured over at least a round trip (and at least ``MIN_PERIOD``, so that one burst
is not taken for a pace), times the round trip. A stream that hands on more than half its
window per round trip is held back by it, and its window doubles each period (a round trip, as
in slow start) until the link or the consumer is the limit; up to ``maximum``, and only while
the session's memory budget has room. QUIC and HTTP/2 implementations tune theirs in much the
same way.

The round trip used is the smallest one measured on the connection, not a smoothed one: a
window that grows with a round trip made long by its own queued bytes only queues more of them,
and on a short path every byte queued in the tunnel is one that a small request on another
stream waits behind.
"""

from __future__ import annotations

MIN_PERIOD = 0.01  # seconds: the shortest span a pace is measured over
PERIOD_RTTS = 1  # round trips a pace is measured over, at least


class ReceiveWindow:
    """Credit granted to the peer on one stream, and when to give more."""

    __slots__ = ("_period_bytes", "_period_start", "available", "buffered", "maximum", "target")

    def __init__(self, target: int, maximum: int, available: int) -> None:
        self.target = target  # the window we aim to keep granted
        self.maximum = maximum  # the most ``target`` may grow to
        self.available = available  # bytes the peer may still send
        self.buffered = 0  # received but not yet consumed
        self._period_start: float | None = None  # when the current measuring period began
        self._period_bytes = 0  # bytes consumed since then

    def receive(self, length: int) -> bool:
        """Account for ``length`` received bytes; False if the peer overran its credit."""
        if length > self.available:
            return False
        self.available -= length
        self.buffered += length
        return True

    def consume(self, length: int, now: float, rtt: float | None, room: int) -> int:
        """Account for ``length`` bytes handed on; return the delta to announce (0: not yet).

        ``room`` is how many more bytes the session's memory budget lets this window grow.
        """
        self.buffered = max(0, self.buffered - length)
        self._period_bytes += length
        credit = self.target - self.available - self.buffered
        # Announce in batches: a quarter of the window at a time keeps the pipe full without
        # a Window Update frame for every Data frame.
        if credit < self.target // 4:
            return 0
        if self._period_start is None:
            self._period_start, self._period_bytes = now, 0  # the first update starts a period
        elif rtt is not None and self.target < self.maximum:
            elapsed = now - self._period_start
            if elapsed >= max(PERIOD_RTTS * rtt, MIN_PERIOD):
                wanted = int(2 * self._period_bytes * rtt / elapsed)  # twice the BDP
                # Short of that, double it, as slow start does: a window grown only to the
                # measured need ramps slowly, since each round trip also carries the time the
                # bytes take to be handed on.
                growth = 0
                if wanted > self.target:
                    growth = min(self.target, self.maximum - self.target, room)
                if growth > 0:
                    self.target += growth
                    credit += growth
                self._period_start, self._period_bytes = now, 0
        self.available += credit
        return credit
