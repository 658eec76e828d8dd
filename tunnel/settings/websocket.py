"""The WebSocket forms of the tunnel's endpoints: ``--remote ws://HOST[:PORT]/PATH`` (or
``wss://``) on the client, ``--websocket-path /PATH`` on the server.

A tunnel inside one WebSocket connection passes HTTP ingresses and load balancers that carry
nothing but HTTP. The client names the endpoint as a URL, the way such an ingress is reached;
the server only needs the path, since it listens on ``--listen`` as always. Plain text
parsing, no socket: a mistake is one ``LinkError`` line naming the accepted forms.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tunnel.settings.links import Address, LinkError, parse_address
from tunnel.settings.wording import hostport

SCHEMES = {"ws": (False, 80), "wss": (True, 443)}  # secure, the port a URL implies
PATH_LIMIT = 256  # a path is written by an operator, never this long; bounds what is echoed
# An absolute path of URL characters; no spaces, no '#', no query (it would not route the same
# through every ingress, and the server compares the path alone).
_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*")
_FORMS = "ws://HOST[:PORT]/PATH or wss://HOST[:PORT]/PATH"


@dataclass(frozen=True, slots=True)
class WebSocketAddress(Address):
    """A remote reached through a WebSocket upgrade at ``path``; ``secure``: TLS first (wss)."""

    path: str = "/"
    secure: bool = False

    @property
    def url(self) -> str:
        return f"{'wss' if self.secure else 'ws'}://{hostport(self.host, self.port)}{self.path}"

    def __str__(self) -> str:
        return self.url


def is_websocket_url(text: str) -> bool:
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.lower() in SCHEMES


def parse_remote(text: str, default_port: int) -> Address:
    """``--remote``: ``HOST[:PORT]``, or a ``ws://``/``wss://`` URL. Raises LinkError."""
    if not is_websocket_url(text):
        return parse_address(text, default_port=default_port)
    scheme, _, rest = text.partition("://")
    secure, port = SCHEMES[scheme.lower()]
    slash = rest.find("/")
    authority, path = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
    shown = _show(text)
    if "@" in authority:
        raise LinkError(f"bad URL {shown}: no user or password in it; use {_FORMS}")
    problem = path_problem(path)
    if problem is not None:
        raise LinkError(f"bad URL {shown}: {problem}; use {_FORMS}")
    try:
        address = parse_address(authority, default_port=port)
    except LinkError as exc:
        raise LinkError(f"bad URL {shown}: {exc}") from None
    return WebSocketAddress(address.host, address.port, path, secure)


def parse_path(text: str) -> str:
    """``--websocket-path``: an absolute path. Raises LinkError."""
    problem = path_problem(text)
    if problem is not None:
        raise LinkError(f"bad WebSocket path {_show(text)}: {problem}")
    return text


def path_problem(path: str) -> str | None:
    if len(path) > PATH_LIMIT:
        return f"the path is longer than {PATH_LIMIT} characters"
    if "?" in path or "#" in path:
        return "a path only, without '?' or '#'"
    if not _PATH.fullmatch(path):
        return "the path must start with '/' and hold only URL characters (no spaces)"
    return None


def _show(text: str) -> str:
    return repr(text if len(text) <= 2 * PATH_LIMIT else text[: 2 * PATH_LIMIT] + "...")
