"""Flow control for one stream's receiving side.

yamux has a window per stream and none for the session. The receiver grants the sender credit
(the window); every Data byte uses some up, and the receiver gives it back with a Window Update
once the bytes have *left* it: here that means written to the local socket, so a slow consumer
holds back its own stream and nothing else.

Auto-tuning: a fixed 256 KiB window caps one stream at 5 MB/s on a 50 ms path. When the window
is used up in less than two round trips, the link could carry more than the window allows, so
the target doubles (up to ``maximum``, and only while the session's memory budget has room),
much as QUIC and HTTP/2 implementations tune theirs.
"""

from __future__ import annotations


class ReceiveWindow:
    """Credit granted to the peer on one stream, and when to give more."""

    __slots__ = ("_last_update", "available", "buffered", "maximum", "target")

    def __init__(self, target: int, maximum: int, available: int) -> None:
        self.target = target  # the window we aim to keep granted
        self.maximum = maximum  # the most ``target`` may grow to
        self.available = available  # bytes the peer may still send
        self.buffered = 0  # received but not yet consumed
        self._last_update: float | None = None

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
        credit = self.target - self.available - self.buffered
        # Announce in batches: a quarter of the window at a time keeps the pipe full without
        # a Window Update frame for every Data frame.
        if credit < self.target // 4:
            return 0
        if (
            rtt is not None
            and self._last_update is not None
            and now - self._last_update < 2 * rtt
            and self.target < self.maximum
        ):
            growth = min(self.target, self.maximum - self.target, room)
            if growth > 0:
                self.target += growth
                credit += growth
        self._last_update = now
        self.available += credit
        return credit
