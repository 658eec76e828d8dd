"""An HTTP proxy's CONNECT (RFC 9110 section 9.3.6) as a sans-IO machine.

The request names the target as ``host:port`` (an IPv6 address in brackets) and, with
credentials, carries ``Proxy-Authorization: Basic`` (RFC 7617). The answer is read line by
line up to the empty line that ends its header, and no further: the bytes after it are the
tunnel's. Every line is bounded (:data:`LINE_LIMIT`), so are the header's lines together
(:data:`HEADER_LIMIT`) and their number (:data:`MAX_LINES`): a proxy that streams an endless
header is cut off at the bound, not buffered. A 2xx status opens the way; any other ends the
attempt with the proxy's status and reason (escaped, bounded) and the kind of refusal.
"""

from __future__ import annotations

import base64
import re
from typing import NoReturn

from tunnel.errors import EgressFailed
from tunnel.protocol.egress import EgressStep, Kind
from tunnel.protocol.peertext import NAME_LIMIT, shown

LINE_LIMIT = 4096  # bytes in one line of the answer (squid's status lines are < 100)
HEADER_LIMIT = 16 * 1024  # bytes in the whole header
MAX_LINES = 64  # status line and header lines

_STATUS = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: ([^\r\n]*))?")
_TARGET_FAILED = {502, 503, 504}  # the proxy could not reach the target (squid, tinyproxy)


def authority(host: str, port: int) -> str:
    """``host:port`` as a request target; an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class HttpConnect:
    """One CONNECT exchange: the request to send, then the proxy's answer read."""

    def __init__(self, host: str, port: int, credentials: tuple[str, str] | None) -> None:
        if not host or any(char in host for char in " \r\n\t/@"):
            raise ValueError(f"not a host name: {host!r}")
        target = authority(host, port)
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        if credentials is not None:
            pair = f"{credentials[0]}:{credentials[1]}".encode()
            lines.append(f"Proxy-Authorization: Basic {base64.b64encode(pair).decode()}")
        self._request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self._credentials = credentials is not None
        self._lines: list[bytes] = []
        self._partial = bytearray()  # the line being read
        self._total = 0  # header bytes read so far

    def start(self) -> bytes:
        return self._request

    def receive(self, data: bytes) -> EgressStep:
        used = 0
        while used < len(data):
            end = data.find(b"\n", used)
            chunk = data[used : end + 1] if end >= 0 else data[used:]
            self._take(chunk)
            used += len(chunk)
            if end < 0:
                break
            line = bytes(self._partial).rstrip(b"\r\n")
            self._partial.clear()
            if not line:
                self._answer()  # the empty line: the header is complete
                return EgressStep(consumed=used, done=True)
            self._line(line)
        return EgressStep(consumed=used)

    def _take(self, chunk: bytes) -> None:
        self._total += len(chunk)
        self._partial += chunk
        if len(self._partial) > LINE_LIMIT + 2:
            self._fail(f"sent a header line longer than {LINE_LIMIT} bytes", Kind.PROTOCOL)
        if self._total > HEADER_LIMIT:
            self._fail(f"sent a header longer than {HEADER_LIMIT} bytes", Kind.PROTOCOL)
        if not self._lines and len(self._partial) >= 5 and not self._partial.startswith(b"HTTP/"):
            # Garbage is told at its first bytes, not at the deadline.
            self._fail(f"answered {_quote(self._partial)}, not HTTP", Kind.PROTOCOL)

    def _line(self, line: bytes) -> None:
        if not self._lines and _STATUS.fullmatch(line) is None:
            self._fail(f"answered {_quote(line)}, not an HTTP status line", Kind.PROTOCOL)
        self._lines.append(line)
        if len(self._lines) > MAX_LINES:
            self._fail(f"sent more than {MAX_LINES} header lines", Kind.PROTOCOL)

    def _answer(self) -> None:
        if not self._lines:
            self._fail("answered an empty line, not an HTTP status line", Kind.PROTOCOL)
        found = _STATUS.fullmatch(self._lines[0])
        assert found is not None  # checked as the line arrived
        status = int(found.group(1))
        if 200 <= status < 300:
            return
        said = f"{status} {shown((found.group(2) or b'').decode('latin-1'), NAME_LIMIT)}".strip()
        if status in (401, 407):  # tinyproxy answers wrong credentials with 401
            if self._credentials:
                self._fail(f"refused the credentials ({said})", Kind.AUTH)
            schemes = ", ".join(self._schemes()) or "no scheme named"
            self._fail(f"wants credentials ({said}; it offers {schemes})", Kind.AUTH)
        if status == 403:
            self._fail(f"does not allow it ({said})", Kind.FORBIDDEN)
        if status in _TARGET_FAILED:
            self._fail(f"could not reach it ({said})", Kind.TARGET)
        self._fail(f"refused it ({said})", Kind.REFUSED)

    def _schemes(self) -> list[str]:
        """The authentication schemes the proxy's 407 offers (Basic, Negotiate, ...)."""
        schemes = []
        for line in self._lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"proxy-authenticate":
                scheme = value.strip().split(b" ", 1)[0].decode("latin-1")
                schemes.append(shown(scheme, 32))
        return list(dict.fromkeys(schemes))[:4]

    def _fail(self, text: str, kind: Kind) -> NoReturn:
        raise EgressFailed(text, kind)


def _quote(data: bytes | bytearray) -> str:
    return "'" + shown(bytes(data[:NAME_LIMIT]).decode("latin-1"), NAME_LIMIT) + "'"
