"""One error hierarchy for the whole project.

Errors that cross the wire carry a reason code (:class:`Reason`) so that the same code reaches
the peer's log, our log and the metrics. Protocol errors are split, as in h11, into the ones the
peer caused (:class:`RemoteProtocolError`: we answer with a Go Away) and the ones our own code
caused by misusing the core (:class:`LocalProtocolError`: a bug, raised to the caller).
"""

from __future__ import annotations

from enum import IntEnum


class Reason(IntEnum):
    """Why a stream was refused or a session ended; the first byte of a stream answer."""

    OK = 0  # the backend is connected; data follows
    UNKNOWN_SERVICE = 1  # the stream named a service the catalog does not hold
    NOT_ALLOWED = 2  # the client's identity may not reach that service
    BACKEND_REFUSED = 3  # the backend actively refused the connection
    BACKEND_TIMEOUT = 4  # the backend did not answer the dial in time
    BACKEND_UNREACHABLE = 5  # no route, name does not resolve, or another OS error
    BAD_HEADER = 6  # the stream header could not be parsed
    LIMIT_EXCEEDED = 7  # a per-session limit (streams, pending dials, memory) was hit
    SHUTTING_DOWN = 8  # the server is draining and takes no new streams
    PROTOCOL_ERROR = 9  # the peer broke the protocol
    INTERNAL_ERROR = 10  # a bug on our side
    VERSION_MISMATCH = 11  # the peers share no protocol version
    AUTH_FAILED = 12  # the hello was refused

    @property
    def label(self) -> str:
        """The lowercase name used in logs and metric labels."""
        return self.name.lower()


class TunnelError(Exception):
    """Base of every error this project raises on purpose."""

    reason: Reason = Reason.INTERNAL_ERROR


class ConfigError(TunnelError):
    """A mistake in what the user gave us (flag, file, environment)."""


class ProtocolError(TunnelError):
    """The yamux or application protocol was broken."""

    reason = Reason.PROTOCOL_ERROR


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids; the session ends with a Go Away."""


class LocalProtocolError(ProtocolError):
    """Our own code asked the core for something the protocol forbids (a bug)."""


class LimitExceeded(RemoteProtocolError):
    """The peer pushed past one of the session's limits."""

    reason = Reason.LIMIT_EXCEEDED

    def __init__(self, text: str, limit: str = "") -> None:
        super().__init__(text)
        self.limit = limit  # which limit, as named in Limits (for logs and metrics)


class EgressFailed(TunnelError):
    """An egress proxy (HTTP CONNECT or SOCKS5) did not open the way to the target: it refused,
    broke its protocol, closed, or did not answer in time. ``label`` names the kind for
    metrics (``proxy_auth``, ``proxy_refused``, ...); the text is one line for the log."""

    def __init__(self, text: str, label: str) -> None:
        super().__init__(text)
        self.label = label
