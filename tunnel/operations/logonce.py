"""Logging a repeating fault once, not once per connection.

When a tunnel is down, every consumer connection fails for the same reason; a thousand identical
lines help nobody. :class:`Throttled` logs the first occurrence of a message key at once, then
at most one line per ``interval`` seconds saying how many more there were. Every occurrence is
still counted in the metrics by the caller.

Keys must be made of bounded things (a reason code, an identity, a service of the catalog),
never of what a peer typed; even so the table is bounded: it keeps the ``max_keys`` most
recently seen keys and forgets the oldest, so no sequence of faults makes it grow for ever.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

MAX_KEYS = 1024


class Throttled:
    def __init__(
        self, logger: logging.Logger, interval: float = 10.0, max_keys: int = MAX_KEYS
    ) -> None:
        self._log = logger
        self._interval = interval
        self._max_keys = max_keys
        # key -> [when last logged, occurrences suppressed since], least recently seen first
        self._keys: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def warning(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        entry = self._keys.get(key)
        if entry is not None:
            self._keys.move_to_end(key)
            if now - entry[0] < self._interval:
                entry[1] += 1
                return
            last, more = entry
            entry[0], entry[1] = now, 0
            if more:
                message += f" (and {more:.0f} more like it in the last {now - last:.0f}s)"
        else:
            self._keys[key] = [now, 0]
            if len(self._keys) > self._max_keys:
                self._keys.popitem(last=False)
        self._log.warning(message, *args)
