"""Which target of a pool a new stream goes to: the decision alone, with no I/O and no clock.

Theory of operation. A :class:`Balancer` holds the targets of one pooled service, in the order
the link lists them, each with a state:

- ``healthy``: it may be chosen;
- ``ejected``: a dial to it failed (passive ejection); it is skipped until its backoff is over
  (1 s, doubling with each failure in a row, at most :data:`MAX_BACKOFF`), then tried again by
  the next stream; a dial that succeeds, or an active check that passes, ends the ejection;
- ``down``: active health checks failed ``fall`` times in a row; it is skipped until they pass
  ``rise`` times in a row.

:meth:`Balancer.choose` picks among the targets that may be chosen, by the pool's strategy:
``failover`` (the first in order: the others are spares), ``round-robin`` (each in turn) or
``least-streams`` (the one with fewest open streams, the first in order on a tie). When none may
be chosen it returns why, in one line, and the stream is refused at once rather than waiting for
a dial that cannot succeed. Everything that happens is told to the balancer with the time it
happened (``now``, in the caller's monotonic seconds): dials that failed or succeeded, checks,
streams opened and closed, and new addresses from the resolver, which replace the targets a
``dns:`` member stood for while keeping the state of those that remain.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Literal

from tunnel.settings.pooling import HealthCheck, Strategy

State = Literal["healthy", "ejected", "down"]

MIN_BACKOFF = 1.0  # seconds a target is ejected after its first failed dial
MAX_BACKOFF = 30.0  # the longest ejection, however many dials failed in a row


class Target:
    """One target's state; ``key`` is what the caller dials (an endpoint)."""

    __slots__ = (
        "checks_failed", "checks_passed", "down", "ejected_until", "failures", "key",
        "last_error", "open", "opened",
    )  # fmt: skip

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self.open = 0  # streams open to it now
        self.opened = 0  # streams it was given, ever
        self.failures = 0  # dials failed in a row
        self.ejected_until = 0.0
        self.down = False  # by active checks
        self.checks_passed = 0  # in a row
        self.checks_failed = 0  # in a row
        self.last_error = ""

    def state(self, now: float) -> State:
        if self.down:
            return "down"
        return "ejected" if now < self.ejected_until else "healthy"


class Balancer:
    """The targets of one pool and the choice among them (see the module's theory)."""

    def __init__(
        self,
        name: str,
        keys: Sequence[Hashable],
        strategy: Strategy = "failover",
        checks: HealthCheck | None = None,
    ) -> None:
        self.name = name
        self.strategy = strategy
        self.checks = checks
        self.targets: list[Target] = [Target(key) for key in keys]
        self._next = 0  # round-robin's place

    def _find(self, key: Hashable) -> Target | None:
        for target in self.targets:
            if target.key == key:
                return target
        return None

    def choose(self, now: float, tried: Iterable[Hashable] = ()) -> Hashable | str:
        """The target a new stream dials (not one of ``tried``); or why there is none."""
        skip = set(tried)
        ready = [t for t in self.targets if t.key not in skip and t.state(now) == "healthy"]
        if not ready:
            return self._why_none(now, skip)
        if self.strategy == "round-robin":
            count = len(self.targets)
            for step in range(count):
                target = self.targets[(self._next + step) % count]
                if target in ready:
                    self._next = (self._next + step + 1) % count
                    return target.key
        if self.strategy == "least-streams":
            return min(ready, key=lambda t: t.open).key
        return ready[0].key

    def _why_none(self, now: float, tried: set[Hashable]) -> str:
        if not self.targets:
            return f"{self.name} has no target (its host name resolved to no address)"
        parts = []
        for target in self.targets[:4]:
            # A dial's error names its target; a check's does not.
            error = target.last_error or f"{target.key} failed"
            state = "tried" if target.key in tried else target.state(now)
            if state == "ejected":
                parts.append(f"{error}, ejected for {target.ejected_until - now:.0f}s more")
            elif state == "down":
                parts.append(f"{target.key} is down: {error}")
            else:
                parts.append(error)
        more = len(self.targets) - 4
        listed = "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
        return f"no target of {self.name} is available ({listed})"

    def dial_failed(self, key: Hashable, error: str, now: float) -> None:
        """A dial to ``key`` failed: eject it for a backoff that doubles with each failure."""
        target = self._find(key)
        if target is None:
            return
        target.failures += 1
        backoff = min(MAX_BACKOFF, MIN_BACKOFF * 2 ** min(target.failures - 1, 16))
        target.ejected_until = now + backoff
        target.last_error = error

    def opened(self, key: Hashable) -> None:
        """A dial to ``key`` succeeded and its stream is open."""
        target = self._find(key)
        if target is None:
            return
        target.failures = 0
        target.ejected_until = 0.0
        target.open += 1
        target.opened += 1

    def closed(self, key: Hashable) -> None:
        target = self._find(key)
        if target is not None and target.open > 0:
            target.open -= 1

    def checked(self, key: Hashable, error: str | None) -> bool:
        """An active check of ``key`` passed (``error`` None) or failed; True when that
        changed whether the target is down."""
        target = self._find(key)
        if target is None or self.checks is None:
            return False
        if error is None:
            target.checks_passed += 1
            target.checks_failed = 0
            target.failures = 0
            target.ejected_until = 0.0  # a passing check ends a passive ejection too
            if target.down and target.checks_passed >= self.checks.rise:
                target.down = False
                return True
            return False
        target.checks_failed += 1
        target.checks_passed = 0
        target.last_error = error
        if not target.down and target.checks_failed >= self.checks.fall:
            target.down = True
            return True
        return False

    def replace(self, old: Iterable[Hashable], new: Sequence[Hashable]) -> None:
        """The targets ``old`` stood for are now ``new`` (a host name resolved again): those in
        both keep their state, the new ones start healthy, in the place of the old ones."""
        old_keys = set(old)
        present = {t.key for t in self.targets if t.key not in old_keys}
        new = [key for key in dict.fromkeys(new) if key not in present]  # no target twice
        kept = {t.key: t for t in self.targets if t.key in old_keys}
        result: list[Target] = []
        placed = False
        for target in self.targets:
            if target.key in old_keys:
                if not placed:
                    result.extend(kept.get(key) or Target(key) for key in new)
                    placed = True
                continue
            result.append(target)
        if not placed:
            result.extend(Target(key) for key in new)
        self.targets = result
        self._next %= max(1, len(result))
