"""A ceiling on log lines that strangers can cause.

Every connection that fails its TLS handshake or never says hello may be worth a line, but an
attacker can open thousands a second, from as many addresses: keyed suppression
(:mod:`tunnel.operations.logonce`) does not bound that. :class:`LogBudget` is one token bucket for a
whole class of lines: ``burst`` at once, then ``rate`` a second; the lines it drops are counted, and
the next line it lets through says how many. Metrics count every occurrence regardless.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class LogBudget:
    def __init__(
        self,
        logger: logging.Logger,
        rate: float = 1.0,
        burst: int = 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._stamp = clock()
        self.suppressed = 0  # lines dropped since the last one logged

    def log(self, level: int, message: str, *args: object) -> None:
        if not self._log.isEnabledFor(level):
            return
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < 1.0:
            self.suppressed += 1
            return
        self._tokens -= 1.0
        if self.suppressed:
            message += f" (and {self.suppressed} more such lines, not logged)"
            self.suppressed = 0
        self._log.log(level, message, *args)

    def warning(self, message: str, *args: object) -> None:
        self.log(logging.WARNING, message, *args)
