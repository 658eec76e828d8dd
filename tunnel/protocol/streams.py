"""The life of one yamux stream, as a transition table.

Rules this module keeps:

* A stream is OPEN from its SYN until a FIN or RST.
* FIN is a half-close: the side that sent it sends no more data but keeps reading; the stream is
  CLOSED when both sides have sent FIN.
* RST closes the stream at once from any state.
* Every (state, input) pair not in ``TRANSITIONS`` is a protocol error: data after the peer's
  FIN is the peer's fault (a Go Away follows), data after our own FIN is a bug in our code.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum, auto
from types import MappingProxyType


class StreamState(Enum):
    # Members are singletons, so identity hashes them; Enum's own __hash__ is Python code,
    # and the transition table is looked up on every change of a stream's state.
    __hash__ = object.__hash__

    OPEN = auto()
    HALF_CLOSED_LOCAL = auto()  # we sent FIN; the peer may still send
    HALF_CLOSED_REMOTE = auto()  # the peer sent FIN; we may still send
    CLOSED = auto()


class StreamInput(Enum):
    __hash__ = object.__hash__

    SEND_DATA = auto()
    SEND_FIN = auto()
    SEND_RST = auto()
    RECV_DATA = auto()
    RECV_FIN = auto()
    RECV_RST = auto()


_S = StreamState
_I = StreamInput

TRANSITIONS: Mapping[tuple[StreamState, StreamInput], StreamState] = MappingProxyType(
    {
        (_S.OPEN, _I.SEND_DATA): _S.OPEN,
        (_S.OPEN, _I.RECV_DATA): _S.OPEN,
        (_S.OPEN, _I.SEND_FIN): _S.HALF_CLOSED_LOCAL,
        (_S.OPEN, _I.RECV_FIN): _S.HALF_CLOSED_REMOTE,
        (_S.HALF_CLOSED_LOCAL, _I.RECV_DATA): _S.HALF_CLOSED_LOCAL,
        (_S.HALF_CLOSED_LOCAL, _I.RECV_FIN): _S.CLOSED,
        (_S.HALF_CLOSED_REMOTE, _I.SEND_DATA): _S.HALF_CLOSED_REMOTE,
        (_S.HALF_CLOSED_REMOTE, _I.SEND_FIN): _S.CLOSED,
        **{(state, _I.SEND_RST): _S.CLOSED for state in StreamState},
        **{(state, _I.RECV_RST): _S.CLOSED for state in StreamState},
    }
)


def next_state(state: StreamState, event: StreamInput) -> StreamState | None:
    """The state after ``event``, or None when the protocol forbids it."""
    return TRANSITIONS.get((state, event))
