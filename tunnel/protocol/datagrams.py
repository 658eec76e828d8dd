"""UDP datagram flows inside yamux streams: the flow header and the length-prefix framing.

Theory of operation. A UDP service is carried as *flows*: each source address (ip, port) that
sends to the client's UDP socket gets a stream of its own. The stream opens with a flow header,
which is a stream header (``tunnel.protocol.messages``) whose first byte is
:data:`FLOW_HEADER` instead of the byte-stream header's version 1::

    16:u8  length:u8 (1..255)  service:length bytes of UTF-8

A server that predates flows reads 16 as an unknown header version and refuses the stream with
``BAD_HEADER`` and an RST, which is a clean refusal the client logs; a server that knows flows
answers with the usual stream answer. After the header (client to server) and after the answer
(server to client) each direction is a sequence of datagrams, each one::

    length:u16 (big endian, 0..65507)  payload:length bytes

so datagram boundaries survive the byte stream. 65,507 is the largest payload of a UDP datagram
over IPv4; a longer length prefix is a protocol error of the peer, and so is a stream that ends
inside a datagram. Either resets that one stream: the session and its other streams carry on.

Everything here is sans-IO: bytes in, datagrams out.
"""

from __future__ import annotations

import struct

from tunnel.errors import RemoteProtocolError

#: The first byte of a flow stream's header (a byte stream's header starts with 1).
FLOW_HEADER = 16
#: The largest UDP payload over IPv4 (65,535 - 8 bytes of UDP header - 20 of IP header).
MAX_DATAGRAM = 65507
PREFIX = 2  # bytes of length before each datagram

_LENGTH = struct.Struct(">H")


class DatagramTooLarge(ValueError):
    """A datagram longer than :data:`MAX_DATAGRAM`: it cannot be framed, and is dropped."""


def is_flow(first: bytes | bytearray) -> bool:
    """Whether the first bytes of a stream start a flow header."""
    return len(first) > 0 and first[0] == FLOW_HEADER


def encode_flow_header(service: str) -> bytes:
    """The header that opens a flow stream to ``service`` (an alias, a port or both)."""
    name = service.encode()
    if not 0 < len(name) < 256:
        raise ValueError("service reference must be 1..255 bytes")
    return bytes((FLOW_HEADER, len(name))) + name


class FlowHeaderParser:
    """Reads the flow header off the front of a stream."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes | bytearray) -> tuple[str | None, bytes]:
        """The service once the header is complete, and the bytes after it."""
        buffer = self._buffer + data
        if len(buffer) < 2:
            self._buffer = buffer
            return None, b""
        kind, length = buffer[0], buffer[1]
        if kind != FLOW_HEADER:
            raise RemoteProtocolError(f"a flow header starts with {FLOW_HEADER}, not {kind}")
        if length == 0:
            raise RemoteProtocolError("empty service name in flow header")
        if len(buffer) < 2 + length:
            self._buffer = buffer
            return None, b""
        try:
            service = buffer[2 : 2 + length].decode()
        except UnicodeDecodeError:
            raise RemoteProtocolError("service name in flow header is not UTF-8") from None
        self._buffer = b""
        return service, buffer[2 + length :]


def frame(payload: bytes | bytearray | memoryview) -> bytes:
    """One datagram with its length prefix; DatagramTooLarge beyond :data:`MAX_DATAGRAM`."""
    size = len(payload)
    if size > MAX_DATAGRAM:
        raise DatagramTooLarge(f"a datagram of {size} bytes (at most {MAX_DATAGRAM})")
    return _LENGTH.pack(size) + payload


class Deframer:
    """Splits one direction of a flow stream back into datagrams.

    It holds at most one incomplete datagram (its prefix says how long, and the prefix is
    checked against the bound before anything waits for the rest), so what a peer can make it
    keep is bounded by :data:`MAX_DATAGRAM`, whatever it sends.
    """

    __slots__ = ("_buffer", "max_datagram")

    def __init__(self, max_datagram: int = MAX_DATAGRAM) -> None:
        self._buffer = bytearray()
        self.max_datagram = max_datagram

    @property
    def pending(self) -> int:
        """Bytes of an incomplete datagram (its prefix included) held for the rest."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray) -> list[bytes]:
        """The datagrams completed by ``data``; RemoteProtocolError on a length beyond the
        bound (the stream is broken from there on: the caller resets it)."""
        buffer = self._buffer
        buffer += data
        out: list[bytes] = []
        start = 0
        end = len(buffer)
        while end - start >= PREFIX:
            (size,) = _LENGTH.unpack_from(buffer, start)
            if size > self.max_datagram:
                raise RemoteProtocolError(
                    f"datagram length prefix {size} is beyond the bound of {self.max_datagram}"
                )
            if end - start - PREFIX < size:
                break
            out.append(bytes(buffer[start + PREFIX : start + PREFIX + size]))
            start += PREFIX + size
        del buffer[:start]
        return out

    def finish(self) -> None:
        """The stream ended: RemoteProtocolError if it ended inside a datagram."""
        if self._buffer:
            held = len(self._buffer)
            self._buffer.clear()
            raise RemoteProtocolError(f"the flow ended inside a datagram ({held} bytes truncated)")
