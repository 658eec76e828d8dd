"""A SOCKS5 CONNECT (RFC 1928), with username/password authentication (RFC 1929), sans-IO.

The client offers "no authentication", and also "username/password" when it has credentials;
the proxy picks one. The target goes to the proxy as a name (address type 3, the proxy
resolves it: the client's host need not know the server's name) or, for an address, as that
address. Every message of the proxy has a length known from its first bytes, so the machine
asks for exactly what the current message still lacks and never uses a byte beyond the proxy's
last reply: those are the tunnel's. A refusal is named by its reply code (RFC 1928 section 6).
"""

from __future__ import annotations

import ipaddress
from enum import Enum
from typing import NoReturn

from tunnel.errors import EgressFailed
from tunnel.protocol.egress import EgressStep, Kind

VERSION = 5
NO_AUTH = 0x00
USERNAME = 0x02  # RFC 1929
NO_ACCEPTABLE = 0xFF
CONNECT = 0x01
ATYP_IPV4, ATYP_NAME, ATYP_IPV6 = 0x01, 0x03, 0x04
AUTH_VERSION = 0x01
MAX_FIELD = 255  # bytes in a name, a username or a password: one length byte

# Reply codes (RFC 1928 section 6), named as the RFC names them, with the kind of failure.
REPLIES: dict[int, tuple[str, Kind]] = {
    1: ("general SOCKS server failure", Kind.REFUSED),
    2: ("connection not allowed by ruleset", Kind.FORBIDDEN),
    3: ("network unreachable", Kind.TARGET),
    4: ("host unreachable", Kind.TARGET),
    5: ("connection refused", Kind.TARGET),
    6: ("TTL expired", Kind.TARGET),
    7: ("command not supported", Kind.REFUSED),
    8: ("address type not supported", Kind.REFUSED),
}
_ADDRESS_SIZE = {ATYP_IPV4: 4, ATYP_IPV6: 16}


class _State(Enum):
    METHOD = "method"  # waiting for the method the proxy chose (2 bytes)
    AUTH = "auth"  # waiting for the username/password verdict (2 bytes)
    REPLY = "reply"  # waiting for the reply's head: VER REP RSV ATYP and one byte (5 bytes)
    BOUND = "bound"  # waiting for the rest of the bound address and port
    DONE = "done"


def target_address(host: str, port: int) -> bytes:
    """ATYP, address and port of ``host``: an address as itself, a name for the proxy."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        name = host.encode("idna")
        if not 0 < len(name) <= MAX_FIELD:
            raise ValueError(f"a SOCKS5 host name has 1 to {MAX_FIELD} bytes: {host!r}") from None
        return bytes([ATYP_NAME, len(name)]) + name + port.to_bytes(2, "big")
    atyp = ATYP_IPV4 if address.version == 4 else ATYP_IPV6
    return bytes([atyp]) + address.packed + port.to_bytes(2, "big")


class Socks5Connect:
    """One SOCKS5 CONNECT exchange to ``host:port``."""

    def __init__(self, host: str, port: int, credentials: tuple[str, str] | None) -> None:
        self._request = bytes([VERSION, CONNECT, 0]) + target_address(host, port)
        self._credentials: tuple[bytes, bytes] | None = None
        if credentials is not None:
            user, password = (part.encode() for part in credentials)
            if not (0 < len(user) <= MAX_FIELD and 0 < len(password) <= MAX_FIELD):
                raise ValueError(f"a SOCKS5 username and password have 1 to {MAX_FIELD} bytes")
            self._credentials = (user, password)
        self._state = _State.METHOD
        self._needed = 2
        self._buffer = bytearray()

    def start(self) -> bytes:
        methods = [NO_AUTH] if self._credentials is None else [NO_AUTH, USERNAME]
        return bytes([VERSION, len(methods), *methods])

    def receive(self, data: bytes) -> EgressStep:
        if self.done:
            raise EgressFailed("sent bytes after its reply", Kind.PROTOCOL)
        used = 0
        send = b""
        # Messages are taken while nothing needs sending: the proxy waits for what is sent.
        while used < len(data) and not send and not self.done:
            take = min(len(data) - used, self._needed - len(self._buffer))
            self._buffer += data[used : used + take]
            used += take
            if len(self._buffer) < self._needed:
                break
            message = bytes(self._buffer)
            self._buffer.clear()
            send = self._message(message)
        return EgressStep(consumed=used, send=send, done=self.done)

    @property
    def done(self) -> bool:
        """Whether the proxy's last reply has been read: the way is open."""
        return self._state is _State.DONE

    def _message(self, message: bytes) -> bytes:
        """Act on one whole message of the proxy; what to send in answer."""
        if self._state is _State.METHOD:
            return self._method(message)
        if self._state is _State.AUTH:
            if message[0] not in (AUTH_VERSION, VERSION):  # some proxies answer 5 here
                _fail(f"answered the credentials with version {message[0]}", Kind.PROTOCOL)
            if message[1] != 0:
                _fail(f"refused the username and password (status {message[1]})", Kind.AUTH)
            return self._ask(_State.REPLY, 5, self._request)
        if self._state is _State.REPLY:
            return self._reply(message)
        self._state = _State.DONE  # the bound address and port: not needed, the way is open
        return b""

    def _method(self, message: bytes) -> bytes:
        if message[0] != VERSION:
            hint = " (an HTTP proxy? then give http://)" if message[:1] == b"H" else ""
            _fail(f"answered version {message[0]}, not SOCKS5{hint}", Kind.PROTOCOL)
        method = message[1]
        if method == NO_AUTH:
            return self._ask(_State.REPLY, 5, self._request)
        if method == USERNAME and self._credentials is not None:
            user, password = self._credentials
            auth = bytes([AUTH_VERSION, len(user)]) + user + bytes([len(password)]) + password
            return self._ask(_State.AUTH, 2, auth)
        if method == NO_ACCEPTABLE:
            if self._credentials is None:  # it wants a username and password, most likely
                _fail("accepts no connection without authentication", Kind.AUTH)
            _fail("accepts neither no authentication nor username/password", Kind.REFUSED)
        _fail(f"chose method {method}, which was not offered", Kind.PROTOCOL)

    def _reply(self, head: bytes) -> bytes:
        version, code, _, atyp, first = head
        if version != VERSION:
            _fail(f"answered the request with version {version}", Kind.PROTOCOL)
        if code != 0:
            text, kind = REPLIES.get(code, (f"unassigned reply code {code}", Kind.REFUSED))
            _fail(f"refused it: {text} (SOCKS5 reply {code})", kind)
        if atyp == ATYP_NAME:
            rest = first + 2
        elif atyp in _ADDRESS_SIZE:
            rest = _ADDRESS_SIZE[atyp] - 1 + 2
        else:
            _fail(f"answered with address type {atyp}", Kind.PROTOCOL)
        return self._ask(_State.BOUND, rest, b"")

    def _ask(self, state: _State, needed: int, send: bytes) -> bytes:
        self._state, self._needed = state, needed
        return send


def _fail(text: str, kind: Kind) -> NoReturn:
    raise EgressFailed(text, kind)
