"""What the egress proxy handshakes share: the step they return and the kinds of failure.

Theory of operation. Reaching the tunnel through an egress proxy (an HTTP proxy's CONNECT, or
SOCKS5) is a short exchange before the tunnel's own bytes (TLS or yamux) flow. Each kind is a
sans-IO machine (:mod:`tunnel.protocol.httpconnect`, :mod:`tunnel.protocol.socks5`): ``start``
gives the first bytes to send; ``receive`` takes what the proxy sent and answers with an
:class:`EgressStep`: how many of those bytes it used, what to send next, and whether the way is
open. A machine never uses a byte past the end of the proxy's answer, so whatever follows (the
tunnel peer's first bytes) stays in the socket for the tunnel. Everything the proxy sends is
bounded before it is kept, and a refusal, a broken answer or a bound passed is raised as
:class:`~tunnel.errors.EgressFailed` whose text quotes the proxy only through
:func:`~tunnel.protocol.peertext.shown`. The clock is the caller's: a proxy that says nothing
is a deadline in the I/O layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class Kind(StrEnum):
    """Why an egress proxy did not open the way: the metric label and the hint's key."""

    AUTH = "proxy_auth"  # it wants credentials, or refused the ones given
    FORBIDDEN = "proxy_forbidden"  # its rules do not allow this target or port
    TARGET = "proxy_target"  # it could not reach the target (unreachable, refused, no name)
    REFUSED = "proxy_refused"  # another refusal
    PROTOCOL = "proxy_protocol"  # it answered something that is not its protocol
    CLOSED = "proxy_closed"  # it closed the connection during the handshake
    TIMEOUT = "proxy_timeout"  # it did not answer within the deadline
    UNREACHABLE = "proxy_unreachable"  # the proxy itself could not be reached


@dataclass(frozen=True, slots=True)
class EgressStep:
    """What a handshake machine made of the proxy's bytes."""

    consumed: int  # bytes of the data given that belong to the handshake (more than 0)
    send: bytes = b""  # to send to the proxy now
    done: bool = False  # the way to the target is open: the tunnel's bytes follow


class EgressHandshake(Protocol):
    """An egress proxy handshake as a machine: bytes in, bytes out, no I/O."""

    def start(self) -> bytes:
        """The first bytes to send to the proxy."""
        ...

    def receive(self, data: bytes) -> EgressStep:
        """Take (some of) ``data``, which is not empty; EgressFailed if the proxy refused or
        broke its protocol."""
        ...
