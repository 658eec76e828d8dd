"""Progress of a long run (the benchmark, a long load test) on the terminal that watches it.

One status line, rewritten in place: which step runs now and what it is doing, how many steps
are done and left, and an estimate of the time left from the steps done so far (the same
step's earlier duration when it ran before, as a chain does in each round, else their mean).
Only on a terminal: in a pipe, a file or under CI (``CI`` set) it writes nothing, so a CI log
holds the run's own lines and no carriage returns.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import TextIO


def wanted(stream: TextIO) -> bool:
    """Whether progress belongs on ``stream``: a terminal, outside CI."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """A run of planned steps, each a (label, kind) pair: :meth:`next` starts the next one,
    :meth:`phase` says what it is doing; :meth:`clear` before printing other lines, and
    :meth:`close` at the end. A step's kind (a chain's name, say) makes the estimate: a step
    is expected to take what its kind took last time, else the mean of the steps done."""

    def __init__(
        self,
        plan: list[tuple[str, str]],
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        enabled: bool | None = None,
        expect: dict[str, float] | None = None,
    ) -> None:
        self.plan = plan
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = wanted(self.stream) if enabled is None else enabled
        self.clock = clock
        self.started = clock()
        self.current = -1  # index in plan of the step running, -1 before the first
        self.detail = ""
        self._step_started = self.started
        # kind -> seconds its last step took; ``expect`` seeds it for a step of known length
        # (a soak of N seconds), so that the first step has an estimate too.
        self._took: dict[str, float] = dict(expect or {})
        self._durations: list[float] = []

    def next(self) -> None:
        """The next planned step begins (the one before, if any, is done)."""
        now = self.clock()
        self._finish(now)
        self.current += 1
        self.detail = ""
        self._step_started = now
        self.draw()

    def phase(self, detail: str) -> None:
        """What the current step is doing now."""
        self.detail = detail
        self.draw()

    def _finish(self, now: float) -> None:
        if 0 <= self.current < len(self.plan):
            took = now - self._step_started
            self._took[self.plan[self.current][1]] = took
            self._durations.append(took)

    def left(self) -> float | None:
        """Seconds left, or None before any step is done."""
        if not self._durations and not self._took:
            return None
        mean = sum(self._durations) / len(self._durations) if self._durations else 0.0
        expect = lambda kind: self._took.get(kind, mean)  # noqa: E731
        rest = sum(expect(kind) for _, kind in self.plan[self.current + 1 :])
        if 0 <= self.current < len(self.plan):
            elapsed = self.clock() - self._step_started
            rest += max(0.0, expect(self.plan[self.current][1]) - elapsed)
        return rest

    def line(self) -> str:
        label = self.plan[self.current][0] if 0 <= self.current < len(self.plan) else "done"
        text = f"[{self.current + 1}/{len(self.plan)}] {label}"
        if self.detail:
            text += f": {self.detail}"
        text += f" · {duration(self.clock() - self.started)} so far"
        estimate = self.left()
        return text + (", estimating" if estimate is None else f", ~{duration(estimate)} left")

    def draw(self) -> None:
        if not self.enabled:
            return
        width = _width(self.stream)
        text = self.line()
        if len(text) > width - 1:
            text = text[: width - 2] + "…"
        self.stream.write("\r\x1b[K" + text)
        self.stream.flush()

    def clear(self) -> None:
        """Take the status line away, so that a line printed next starts clean."""
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def close(self) -> None:
        self._finish(self.clock())
        self.current = len(self.plan)
        self.clear()


def _width(stream: TextIO) -> int:
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 100
    return columns if columns >= 20 else 100  # a terminal that tells no size says 0
