"""The PROXY protocol (HAProxy's, versions 1 and 2): writing a header, and reading one strictly.

A connection relayed through a proxy reaches its server from the proxy's address. The PROXY
protocol puts the original connection's endpoints in front of the first byte: version 1 as one
text line (``PROXY TCP4 198.51.100.7 10.0.0.5 51234 6379\\r\\n``, at most 107 bytes), version 2
as a binary header (a 12-byte signature, command, family, length, the addresses, optional TLVs).
The specification is haproxy's ``doc/proxy-protocol.txt``.

Both roles use it: the server writes a header in front of a backend connection whose link asks
for one (:func:`encode_v1`, :func:`encode_v2`), with the consumer's endpoints as the client saw
them (:mod:`tunnel.protocol.origin`); and the server's tunnel listener can read one from a load
balancer in front of it (:class:`ProxyHeaderParser`), so that it sees the real client.

The parser takes bytes as they arrive and says, after each piece, "need more", "here is the
header and what followed it", or raises :class:`ProxyHeaderError`. It is strict, since what it
reads decides who a connection is: the v1 line must be exactly as the specification writes it
(single spaces, canonical addresses of the named family, ports without leading zeros, CRLF,
at most 107 bytes); v2 must carry version 2, a known command, family and transport, an address
block of its family's size and well-formed TLVs, within ``max_v2`` bytes. Every length is
checked before anything is kept, and nothing is buffered beyond the header's own bound.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass

from tunnel.errors import RemoteProtocolError
from tunnel.protocol.origin import MAX_UNIX_PATH, UNSPECIFIED, Family, Origin

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the whole line, CRLF included (the specification's bound)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
# The largest v2 header we read: the fixed 16 bytes, the largest address block (unix, 216)
# and room for the TLVs load balancers add (AWS's VPC endpoint id, GCP's PSC id, SSL facts).
# The specification allows 65535; a bound keeps what a stranger can make us hold small.
V2_MAX = 16 + 1024

_V2_FIXED = struct.Struct(">12sBBH")
_INET = struct.Struct(">4s4sHH")
_INET6 = struct.Struct(">16s16sHH")
_UNIX = struct.Struct(f">{MAX_UNIX_PATH}s{MAX_UNIX_PATH}s")
_TLV = struct.Struct(">BH")

_LOCAL, _PROXY = 0x0, 0x1
_STREAM = 0x1
# v2 family nibble -> (our family, address block layout)
_V2_FAMILIES: dict[int, tuple[Family, struct.Struct | None]] = {
    0x0: (Family.UNSPEC, None),
    0x1: (Family.INET, _INET),
    0x2: (Family.INET6, _INET6),
    0x3: (Family.UNIX, _UNIX),
}
_V2_NIBBLE = {family: nibble for nibble, (family, _) in _V2_FAMILIES.items()}
_PORT = re.compile(r"0|[1-9][0-9]{0,4}")


class ProxyHeaderError(RemoteProtocolError):
    """A PROXY protocol header that is malformed, cut short or too long."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A header read off a connection.

    ``origin`` is None when the header gives no endpoints to use (v2 LOCAL, v1 UNKNOWN, v2
    UNSPEC): the connection's own addresses stand, as the specification asks.
    """

    version: int  # 1 or 2
    origin: Origin | None
    length: int  # bytes the header took


# ------------------------------------------------------------------ writing


def encode_v1(origin: Origin | None) -> bytes:
    """A v1 line; ``PROXY UNKNOWN`` where v1 has no words (no origin, unix, unspecified)."""
    if origin is None or origin.family not in (Family.INET, Family.INET6):
        return b"PROXY UNKNOWN\r\n"
    proto = "TCP4" if origin.family is Family.INET else "TCP6"
    line = (
        f"PROXY {proto} {origin.source} {origin.destination} "
        f"{origin.source_port} {origin.destination_port}\r\n"
    )
    return line.encode("ascii")


def encode_v2(origin: Origin | None) -> bytes:
    """A v2 header: PROXY with the origin's endpoints, or LOCAL when there is no origin."""
    if origin is None:
        return _V2_FIXED.pack(V2_SIGNATURE, 0x20 | _LOCAL, 0x00, 0)
    family = origin.family
    nibble = _V2_NIBBLE[family]
    if family is Family.INET or family is Family.INET6:
        layout = _INET if family is Family.INET else _INET6
        block = layout.pack(
            ipaddress.ip_address(origin.source).packed,
            ipaddress.ip_address(origin.destination).packed,
            origin.source_port,
            origin.destination_port,
        )
    elif family is Family.UNIX:
        block = _UNIX.pack(origin.source.encode(), origin.destination.encode())  # NUL-padded
    else:
        return _V2_FIXED.pack(V2_SIGNATURE, 0x20 | _PROXY, 0x00, 0)
    return _V2_FIXED.pack(V2_SIGNATURE, 0x20 | _PROXY, nibble << 4 | _STREAM, len(block)) + block


def encode(version: int, origin: Origin | None) -> bytes:
    """The header of ``version`` (1 or 2) for ``origin``."""
    return encode_v2(origin) if version == 2 else encode_v1(origin)


# ------------------------------------------------------------------ reading


def starts_like_proxy(data: bytes | bytearray) -> bool:
    """Whether ``data`` (at least 5 bytes of a connection's start) begins a PROXY header."""
    head = bytes(data[: len(V2_SIGNATURE)])
    return len(head) >= 5 and (V1_PREFIX.startswith(head[:6]) or V2_SIGNATURE.startswith(head))


class ProxyHeaderParser:
    """Reads one PROXY header (v1 or v2) off the front of a connection."""

    __slots__ = ("_buffer", "max_v2")

    def __init__(self, max_v2: int = V2_MAX) -> None:
        self._buffer = b""
        self.max_v2 = max_v2

    def feed(self, data: bytes | bytearray) -> tuple[ProxyHeader | None, bytes]:
        """The header once complete, and the bytes after it; ProxyHeaderError if malformed."""
        buffer = self._buffer + bytes(data)
        if not buffer:
            return None, b""
        if buffer[:1] == b"P":
            header = self._v1(buffer)
        elif buffer[:1] == b"\r":
            header = self._v2(buffer)
        else:
            raise ProxyHeaderError(
                f"not a PROXY protocol header (it starts with {buffer[:8]!r}, not "
                "'PROXY ' or the v2 signature)"
            )
        if header is None:
            self._buffer = buffer
            return None, b""
        self._buffer = b""
        return header, buffer[header.length :]

    # v1 ---------------------------------------------------------------------------------

    def _v1(self, buffer: bytes) -> ProxyHeader | None:
        if not buffer[:6] == V1_PREFIX[: len(buffer[:6])]:
            raise ProxyHeaderError(f"not a PROXY protocol v1 line (it starts with {buffer[:8]!r})")
        end = buffer.find(b"\r\n", 0, V1_MAX)
        if end < 0:
            if len(buffer) >= V1_MAX:
                raise ProxyHeaderError(f"PROXY v1 line longer than {V1_MAX} bytes")
            if b"\n" in buffer or b"\r" in buffer[:-1]:
                raise ProxyHeaderError("PROXY v1 line not ended by CRLF")
            return None
        raw = buffer[:end]
        if not all(0x20 <= byte < 0x7F for byte in raw):
            raise ProxyHeaderError("PROXY v1 line holds bytes other than printable ASCII")
        return ProxyHeader(1, _v1_origin(raw.decode("ascii")), end + 2)

    # v2 ---------------------------------------------------------------------------------

    def _v2(self, buffer: bytes) -> ProxyHeader | None:
        signature = buffer[: len(V2_SIGNATURE)]
        if not V2_SIGNATURE.startswith(signature):
            raise ProxyHeaderError("not a PROXY protocol v2 header (wrong signature)")
        if len(buffer) < _V2_FIXED.size:
            return None
        _, version_command, family_proto, length = _V2_FIXED.unpack_from(buffer)
        if version_command >> 4 != 2:
            raise ProxyHeaderError(f"PROXY v2 header of version {version_command >> 4}, not 2")
        command = version_command & 0xF
        if command not in (_LOCAL, _PROXY):
            raise ProxyHeaderError(f"PROXY v2 header with unknown command {command}")
        if _V2_FIXED.size + length > self.max_v2:
            raise ProxyHeaderError(
                f"PROXY v2 header of {_V2_FIXED.size + length} bytes (at most {self.max_v2})"
            )
        total = _V2_FIXED.size + length
        if len(buffer) < total:
            return None
        body = buffer[_V2_FIXED.size : total]
        if command == _LOCAL:
            # The proxy's own connection (a health check): its addresses are to be ignored.
            return ProxyHeader(2, None, total)
        return ProxyHeader(2, _v2_origin(family_proto, body), total)


def _v1_origin(line: str) -> Origin | None:
    parts = line.split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return None  # the rest of the line is to be ignored
    if len(parts) != 6:
        raise ProxyHeaderError(
            "PROXY v1 line is not 'PROXY TCP4|TCP6 SOURCE DESTINATION SPORT DPORT'"
        )
    _, proto, source, destination, source_port, destination_port = parts
    if proto not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN")
    family = Family.INET if proto == "TCP4" else Family.INET6
    kind = ipaddress.IPv4Address if family is Family.INET else ipaddress.IPv6Address
    addresses = []
    for text in (source, destination):
        try:
            address = kind(text)
        except ValueError:
            raise ProxyHeaderError(f"PROXY v1 address is not an {proto} address") from None
        if family is Family.INET and str(address) != text:
            raise ProxyHeaderError("PROXY v1 IPv4 address is not in its canonical form")
        addresses.append(str(address))
    ports = []
    for text in (source_port, destination_port):
        if not _PORT.fullmatch(text) or int(text) > 0xFFFF:
            raise ProxyHeaderError("PROXY v1 port is not a number 0..65535 without leading zeros")
        ports.append(int(text))
    return Origin(family, addresses[0], addresses[1], ports[0], ports[1])


def _v2_origin(family_proto: int, body: bytes) -> Origin | None:
    nibble, proto = family_proto >> 4, family_proto & 0xF
    known = _V2_FAMILIES.get(nibble)
    if known is None:
        raise ProxyHeaderError(f"PROXY v2 header with unknown address family {nibble}")
    family, layout = known
    if layout is None:  # UNSPEC: the connection's own addresses stand
        _check_tlvs(body)
        return None
    if proto != _STREAM:
        raise ProxyHeaderError(f"PROXY v2 header for transport {proto}, not a stream")
    if len(body) < layout.size:
        raise ProxyHeaderError(
            f"PROXY v2 address block of {len(body)} bytes, shorter than its family's {layout.size}"
        )
    _check_tlvs(body[layout.size :])
    if family is Family.UNIX:
        source_path, destination_path = (_unix_path(raw) for raw in _UNIX.unpack_from(body))
        return Origin(Family.UNIX, source_path, destination_path)
    source, destination, source_port, destination_port = layout.unpack_from(body)
    return Origin(
        family,
        str(ipaddress.ip_address(source)),
        str(ipaddress.ip_address(destination)),
        source_port,
        destination_port,
    )


def _unix_path(raw: bytes) -> str:
    try:
        return raw.split(b"\0", 1)[0].decode()
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v2 unix path is not UTF-8") from None


def _check_tlvs(data: bytes) -> None:
    """The TLVs after the addresses must each fit exactly; their contents are not ours."""
    offset = 0
    while offset < len(data):
        if len(data) - offset < _TLV.size:
            raise ProxyHeaderError("PROXY v2 header ends inside a TLV")
        _, length = _TLV.unpack_from(data, offset)
        offset += _TLV.size + length
        if offset > len(data):
            raise ProxyHeaderError("PROXY v2 TLV runs past the header's end")


__all__ = [
    "UNSPECIFIED",
    "V1_MAX",
    "V2_MAX",
    "ProxyHeader",
    "ProxyHeaderError",
    "ProxyHeaderParser",
    "encode",
    "encode_v1",
    "encode_v2",
    "starts_like_proxy",
]
