"""The numbers that bound a session, in one frozen object.

Limits are part of the protocol: every one of them has a default here, a flag on both CLIs, and
a defined reaction when the peer exceeds it (an RST or a Go Away with a reason), so memory stays
bounded whatever the peer does.
"""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024
MIB = 1024 * KIB

INITIAL_WINDOW = 256 * KIB  # fixed by the yamux spec: both sides assume it at stream open


@dataclass(frozen=True, slots=True)
class Limits:
    # Flow control. A stream's receive window starts at ``stream_window`` (announced in the
    # window update that goes with SYN/ACK) and auto-tunes up to ``max_stream_window``.
    stream_window: int = 1 * MIB
    max_stream_window: int = 128 * MIB
    # All receive windows together never promise more than this: yamux has no session window,
    # so this is what bounds the memory a peer can make us hold.
    session_memory: int = 256 * MIB
    # Largest Data frame we send; larger frames cost less per byte, smaller ones interleave
    # streams more finely. 128 KiB took 3-10% off the CPU per GiB of 64 KiB in interleaved
    # runs, and still fits the receiver's 256 KiB read buffer. What a new request waits behind is
    # bounded by the socket's limits (write buffer, TCP_NOTSENT_LOWAT), not by this. Incoming
    # frames may be as large as the window we granted.
    max_frame_size: int = 128 * KIB
    # Bytes queued on one stream, not yet sent, before its producer is paused.
    stream_send_buffer: int = 256 * KIB
    max_streams: int = 8192
    # Keepalive: a ping every ``keepalive_interval`` seconds when idle; a ping unanswered for
    # ``keepalive_timeout`` seconds declares the peer dead.
    keepalive_interval: float = 15.0
    keepalive_timeout: float = 30.0
    # Fast detection (tunnel.protocol.liveness): a peer silent for max(probe_floor, 4 round
    # trips) after a stream open or data is probed with a ping at once, and declared dead if
    # that goes unanswered as long. 0 leaves only the keepalive.
    probe_floor: float = 1.0
    # Budgets against floods: frames that cost us work and move no data. A peer over one of
    # them is cut off with a Go Away (the HTTP/2 "rapid reset" and "ping flood" attacks).
    resets_per_second: int = 1000
    pings_per_second: int = 100
    empty_frames_per_second: int = 1000  # zero-length Data and zero-delta Window Updates

    def __post_init__(self) -> None:
        if self.stream_window < INITIAL_WINDOW:
            raise ValueError(f"stream_window must be at least {INITIAL_WINDOW} bytes")
        if self.max_stream_window < self.stream_window:
            raise ValueError("max_stream_window must be at least stream_window")
        if self.max_frame_size < 1024:
            raise ValueError("max_frame_size must be at least 1024 bytes")
        if self.probe_floor < 0:
            raise ValueError("probe_floor must be 0 (off) or more seconds")
        if self.max_streams < 1:
            raise ValueError("max_streams must be at least 1")


class Budget:
    """A token bucket: ``rate`` events a second on average, bursts of up to one second's worth.

    Time is passed in, so the session stays free of clocks.
    """

    __slots__ = ("_stamp", "_tokens", "rate")

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._tokens = float(rate)
        self._stamp: float | None = None

    def spend(self, now: float) -> bool:
        """Take one event; False when the budget is exhausted."""
        if self._stamp is not None:
            self._tokens = min(float(self.rate), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
