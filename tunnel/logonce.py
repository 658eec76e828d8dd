"""Logging a repeating fault once, not once per connection.

When a tunnel is down, every consumer connection fails for the same reason; a thousand identical
lines help nobody. :class:`Throttled` logs the first occurrence of a message key at once, then
at most one line per ``interval`` seconds saying how many more there were. Every occurrence is
still counted in the metrics by the caller.
"""

from __future__ import annotations

import logging
import time


class Throttled:
    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self._log = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        more = self._suppressed.pop(key, 0)
        if more and last is not None:
            message += f" (and {more} more like it in the last {now - last:.0f}s)"
        self._log.warning(message, *args)
