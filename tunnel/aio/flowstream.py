"""One datagram flow's stream, as either role sees it: datagrams in, datagrams out, drops counted.

A :class:`FlowStream` is the tunnel side of a flow (``tunnel.protocol.datagrams``). Sending
never waits: when the stream is paused (no window, or its queue over ``stream_send_buffer``,
which is what bounds the datagrams queued per flow) or the session's send budget is full, the
datagram is dropped and counted, as UDP allows and a UDP consumer expects. Receiving credits
the window at once, since a datagram is handed to a UDP socket or dropped, never held.

A peer that breaks the framing (a length beyond the bound, a stream ending inside a datagram)
gets this one stream reset; the session carries on. Faults are logged once per interval per
(service, reason), never per datagram.
"""

from __future__ import annotations

import logging

from tunnel.aio.transport import TunnelConnection
from tunnel.errors import RemoteProtocolError
from tunnel.operations.datagram_meters import FlowMeters
from tunnel.operations.logonce import Throttled
from tunnel.protocol.datagrams import DatagramTooLarge, Deframer, frame
from tunnel.protocol.peertext import shown

log = logging.getLogger("ambassador.udp")
throttled = Throttled(log)


class FlowStream:
    """The stream half of a flow; subclasses say where datagrams go (:meth:`on_datagram`)."""

    def __init__(self, tunnel: TunnelConnection, meters: FlowMeters, role: str) -> None:
        self.tunnel = tunnel
        self.meters = meters
        self.role = role
        self.stream_id: int | None = None
        self.deframer = Deframer()
        self.paused = False  # the stream said stop: drop until on_drained
        self.closed = False
        self.preamble = True  # a header (server) or an answer (client) comes first

    # ----------------------------------------------------------------- sending

    def send_datagram(self, payload: bytes) -> bool:
        """Frame and queue one datagram; False when it was dropped (and counted)."""
        if self.closed or self.stream_id is None:
            return False
        try:
            framed = frame(payload)
        except DatagramTooLarge as exc:
            return self.dropped("too_large", str(exc))
        if self.paused:
            return self.dropped("no_window", "its stream has no window or its queue is full")
        if self.tunnel.full:
            return self.dropped("session_full", "the session's send budget is full")
        self.paused = self.tunnel.send(self.stream_id, framed)
        return True

    def dropped(self, reason: str, why: str) -> bool:
        self.meters.drop(reason)
        throttled.warning(
            f"{self.role}:{self.meters.service}:{reason}",
            "%s: UDP datagram of %r dropped (%s): %s",
            self.role,
            self.meters.service,
            reason,
            why,
        )
        return False

    # ------------------------------------------------------- the stream's events

    def on_data(self, data: bytes | bytearray) -> None:
        if self.stream_id is not None:
            self.tunnel.consumed(self.stream_id, len(data))
        if self.closed:
            return
        if self.preamble:
            data = self.on_preamble(data)
            if self.preamble or self.closed or not data:
                return
        try:
            datagrams = self.deframer.feed(data)
        except RemoteProtocolError as exc:
            self.broken(str(exc))
            return
        for datagram in datagrams:
            self.on_datagram(datagram)

    def on_end(self) -> None:
        try:
            self.deframer.finish()
        except RemoteProtocolError as exc:
            self.broken(str(exc))
            return
        if self.stream_id is not None and not self.closed:
            self.tunnel.end(self.stream_id)
        self.close()

    def on_reset(self, reason: str) -> None:
        self.close()

    def on_drained(self) -> None:
        self.paused = False

    def broken(self, text: str) -> None:
        """The peer broke the framing: reset this stream alone, say so once per interval."""
        self.meters.drop("bad_stream")
        throttled.warning(
            f"{self.role}:{self.meters.service}:bad_stream",
            "%s: UDP flow of %r reset: %s",
            self.role,
            self.meters.service,
            shown(text),
        )
        if self.stream_id is not None and not self.closed:
            self.tunnel.reset(self.stream_id)
        self.close()

    # ------------------------------------------------------------------ hooks

    def on_preamble(self, data: bytes | bytearray) -> bytes | bytearray:
        """Take the header or answer off the front; clear ``preamble`` when done."""
        self.preamble = False
        return data

    def on_datagram(self, payload: bytes) -> None:
        """A whole datagram from the peer."""

    def close(self) -> None:
        """The flow is over (idempotent): release its socket and counts."""
        self.closed = True
