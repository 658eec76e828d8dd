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
    max_stream_window: int = 16 * MIB
    # All receive windows together never promise more than this: yamux has no session window,
    # so this is what bounds the memory a peer can make us hold.
    session_memory: int = 256 * MIB
    # Largest Data frame we send; larger frames cost less per byte, smaller ones interleave
    # streams more finely. Incoming frames may be as large as the window we granted.
    max_frame_size: int = 64 * KIB
    # Bytes queued on one stream beyond its send window before its producer is paused.
    stream_send_buffer: int = 256 * KIB
    max_streams: int = 8192
    # Keepalive: a ping every ``keepalive_interval`` seconds when idle; a ping unanswered for
    # ``keepalive_timeout`` seconds declares the peer dead.
    keepalive_interval: float = 15.0
    keepalive_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.stream_window < INITIAL_WINDOW:
            raise ValueError(f"stream_window must be at least {INITIAL_WINDOW} bytes")
        if self.max_stream_window < self.stream_window:
            raise ValueError("max_stream_window must be at least stream_window")
        if self.max_frame_size < 1024:
            raise ValueError("max_frame_size must be at least 1024 bytes")
        if self.max_streams < 1:
            raise ValueError("max_streams must be at least 1")
