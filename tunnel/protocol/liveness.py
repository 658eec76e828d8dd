"""Is the peer still there? Fast detection of a frozen or black-holed peer, time passed in.

Theory of operation
-------------------
The idle keepalive (a ping every ``keepalive_interval``, dead after ``keepalive_timeout``) is
slow on purpose: it must not fire on a quiet but healthy link. A session that is *waiting* for
its peer can decide much sooner. Whenever this end sends something that calls for a reply (a
stream's SYN, Data), and nothing at all has come from the peer since, the session starts a
clock. If the deadline passes with the peer still silent, the session probes at once with a
ping; if that ping is not answered within the same deadline either, the peer is declared dead.

Any byte from the peer proves it alive and clears both clocks. So a long transfer never
triggers a probe (window updates or answers keep coming), and a backend that is slow to answer
costs one ping, which the live peer answers, and nothing else.

The deadline is ``max(floor, factor * smoothed RTT)``: several round trips, so that queueing on
a slow link is not mistaken for death, and a floor, so that a loopback RTT of microseconds does
not make it hair-trigger. The floor defaults to 1 s, so a dead peer is found within about 2 s
of the first stream or byte that finds it silent.

A timer that fires late (the event loop was busy) is not trusted: the peer's answer may be
sitting unread in the socket, and some loops run timers before reading. The decision is then
put off briefly, so that the reads come first.
"""

from __future__ import annotations

from enum import Enum

PROBE_FLOOR = 1.0  # seconds: the shortest deadline, whatever the round trip
PROBE_RTTS = 4.0  # round trips in a deadline
LATE = 0.25  # a timer later than this is not trusted to have seen the reads before it
RECHECK = 0.05  # how long a late decision is put off


class Verdict(Enum):
    """What :meth:`Liveness.check` asks the session to do."""

    NOTHING = 0
    PROBE = 1  # send a ping now
    DEAD = 2  # the peer answered neither what was sent nor the probe


class Liveness:
    """The two clocks of one session: waiting for any reply, waiting for the probe's."""

    __slots__ = ("floor", "probe_at", "recheck_at", "waiting_since")

    def __init__(self, floor: float = PROBE_FLOOR) -> None:
        self.floor = floor  # 0 turns fast detection off (the keepalive alone remains)
        self.waiting_since: float | None = None  # sent something calling for a reply, at
        self.probe_at: float | None = None  # the probe went out at
        self.recheck_at: float | None = None  # a late decision is due again at

    def deadline(self, rtt: float | None) -> float:
        """How long a silence may last: several round trips, and never under the floor."""
        return max(self.floor, PROBE_RTTS * rtt) if rtt is not None else self.floor

    def sent(self, now: float) -> bool:
        """Something that calls for a reply left; True when a clock started (a timer to arm)."""
        if self.waiting_since is None and self.floor > 0:
            self.waiting_since = now
            return True
        return False

    def heard(self) -> None:
        """The peer sent something: it is alive."""
        self.waiting_since = self.probe_at = self.recheck_at = None

    def due(self, rtt: float | None) -> float | None:
        """When :meth:`check` must next run, or None."""
        if self.recheck_at is not None:
            return self.recheck_at
        if self.probe_at is not None:
            return self.probe_at + self.deadline(rtt)
        if self.waiting_since is not None:
            return self.waiting_since + self.deadline(rtt)
        return None

    def check(self, now: float, rtt: float | None) -> Verdict:
        """What the silence up to ``now`` calls for."""
        due = self.due(rtt)
        if due is None or now < due:
            return Verdict.NOTHING
        if now - due > LATE and self.recheck_at is None:
            self.recheck_at = now + RECHECK  # late: let the loop read what may be waiting
            return Verdict.NOTHING
        self.recheck_at = None
        if self.probe_at is None:
            self.probe_at = now
            return Verdict.PROBE
        return Verdict.DEAD

    def reason(self, rtt: float | None) -> str:
        """The one line that says why the peer was declared dead."""
        wait = self.deadline(rtt)
        return (
            f"peer did not answer a ping for {wait:.1f}s, sent after {wait:.1f}s without a "
            "reply to a stream open or data"
        )
