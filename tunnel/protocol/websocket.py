"""The tunnel inside a WebSocket: its constants and the words for what can go wrong.

The yamux byte stream is carried in binary messages of one WebSocket connection (RFC 6455),
so that the tunnel passes ingresses and load balancers that carry only HTTP. Message
boundaries mean nothing: a message holds whatever bytes one write had, and a frame may split
anywhere. The codec itself is the ``websockets`` library's sans-IO core, driven by
:mod:`tunnel.aio.wslayer`; this module holds what the two ends agree on and the one-line
descriptions of a failed upgrade or a close, so that they are tested without a socket.
"""

from __future__ import annotations

from tunnel.protocol.peertext import shown

SUBPROTOCOL = "ambassador"  # Sec-WebSocket-Protocol: the client offers it, the server requires it
SEND_MESSAGE = 256 * 1024  # the most one sent message holds; a bigger write is cut
# The most one received message (all its fragments) may hold. Twice what an ambassador sends,
# and bounded, so that a hostile peer cannot make the codec buffer without limit.
MAX_MESSAGE = 2 * SEND_MESSAGE

# Close codes (RFC 6455 7.4.1) and what each means for the tunnel.
NORMAL = 1000
GOING_AWAY = 1001
UNSUPPORTED_DATA = 1003
MESSAGE_TOO_BIG = 1009
_CLOSE_WORDS = {
    1000: "normal closure",
    1001: "going away (the peer or a proxy between is shutting down)",
    1002: "protocol error",
    1003: "unsupported data (the tunnel takes binary messages only)",
    1005: "no close code",
    1006: "closed without a close frame",
    1007: "invalid data",
    1008: "policy violation (refused by the peer or a proxy between)",
    1009: f"message too big (the most is {MAX_MESSAGE} bytes)",
    1011: "internal error",
    1012: "service restart",
    1013: "try again later",
    1014: "bad gateway (a proxy between could not reach the server)",
}

# What an HTTP answer other than 101 usually means here, and what to do about it.
_STATUS_HINTS = {
    400: "the server refused the upgrade request",
    401: "an ingress or proxy between wants credentials",
    403: "an ingress, proxy or the server forbids this path",
    404: "nothing serves WebSockets at this path: check it against the ingress's routes and "
    "the server's --websocket-path",
    405: "the path is served, but not as a WebSocket",
    426: "the upgrade did not reach the server: a proxy between drops the Upgrade and "
    "Connection headers (nginx: proxy_http_version 1.1; proxy_set_header Upgrade "
    '$http_upgrade; proxy_set_header Connection "upgrade")',
    502: "the ingress could not reach the server",
    503: "the ingress has no server available",
    504: "the ingress timed out reaching the server",
}


def close_words(code: int, reason: str) -> str:
    """A peer's close frame as a clause: ``'1001 going away (...)'`` with its reason, escaped."""
    words = _CLOSE_WORDS.get(code, "unknown close code")
    return f"{code} {words}" + (f": {shown(reason, 120)}" if reason else "")


def status_words(status: int, phrase: str) -> str:
    """Why an upgrade was answered with ``status`` instead of 101, in one clause."""
    hint = _STATUS_HINTS.get(status)
    if hint is None and 200 <= status < 400:
        hint = "a plain web server answers there, not an ambassador-server with --websocket-path"
    elif hint is None:
        hint = "the upgrade was refused"
    return f"answered HTTP {status} {shown(phrase, 60)} instead of upgrading to WebSocket: {hint}"
