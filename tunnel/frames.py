"""yamux version 0 framing, exactly as in hashicorp/yamux's ``spec.md``.

Every frame starts with a 12-byte big-endian header::

    version:u8  type:u8  flags:u16  stream_id:u32  length:u32

For Data frames ``length`` bytes of payload follow; for the other types ``length`` is a value
(a window delta, an opaque ping value, a Go Away code) and nothing follows.

:class:`FrameDecoder` is incremental: feed it whatever the socket gave, take frames out. It checks
the version, the type and, for Data frames, the length as soon as a header is complete, so a
hostile peer cannot make it buffer a payload it was never going to accept.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from tunnel.errors import RemoteProtocolError

VERSION = 0
HEADER = struct.Struct(">BBHII")
HEADER_SIZE = HEADER.size  # 12
MAX_STREAM_ID = 0xFFFF_FFFF
MAX_LENGTH = 0xFFFF_FFFF


class FrameType(IntEnum):
    DATA = 0x0  # payload follows the header
    WINDOW_UPDATE = 0x1  # length is a delta added to the peer's send window
    PING = 0x2  # length is an opaque value echoed back
    GO_AWAY = 0x3  # length is a GoAwayCode


class Flags(IntFlag):
    NONE = 0x0
    SYN = 0x1  # opens a stream; on a ping: a request
    ACK = 0x2  # accepts a stream; on a ping: the reply
    FIN = 0x4  # half-close: the sender sends no more data
    RST = 0x8  # the stream is reset at once


class GoAwayCode(IntEnum):
    NORMAL = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame. ``payload`` is empty except for Data frames."""

    type: FrameType
    flags: int  # a bitwise OR of Flags, kept as a plain int: cheaper on the hot path
    stream_id: int
    length: int
    payload: bytes = b""


def encode_header(type_: FrameType, flags: int, stream_id: int, length: int) -> bytes:
    """The 12 header bytes of a frame; a Data frame's payload is written right after them."""
    return HEADER.pack(VERSION, type_, flags, stream_id, length)


def encode(frame: Frame) -> bytes:
    """A whole frame as bytes (header, then the payload of a Data frame)."""
    header = encode_header(frame.type, frame.flags, frame.stream_id, frame.length)
    return header + frame.payload if frame.payload else header


class FrameDecoder:
    """Turns a byte stream into frames, one ``feed`` at a time.

    ``max_data_length`` bounds a single Data frame's payload; anything larger is refused
    before a byte of it is buffered.
    """

    def __init__(self, max_data_length: int) -> None:
        self._buffer = bytearray()
        self._offset = 0
        self._max_data_length = max_data_length
        self._header: tuple[FrameType, int, int, int] | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buffer) - self._offset

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._offset and self._offset == len(self._buffer):
            self._buffer.clear()
            self._offset = 0
        self._buffer += data

    def decode(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Feed ``data`` and return every frame now complete: the session's fast path.

        Same checks as :meth:`next_frame`; a bad header raises :class:`RemoteProtocolError`
        (frames decoded before it in this call are dropped: the session ends anyway). When
        nothing is left over from earlier reads, frames are cut straight out of ``data`` and
        only an incomplete tail is kept, so a bulk transfer is copied once, not three times.
        """
        if self._offset == len(self._buffer) and isinstance(data, bytes):
            self._buffer.clear()
            self._offset = 0
            source: bytes | bytearray = data
        else:
            self.feed(data)
            source = self._buffer
        frames: list[Frame] = []
        size = len(source)
        offset = self._offset
        header = self._header
        max_data = self._max_data_length
        unpack = HEADER.unpack_from
        data_type = FrameType.DATA
        with memoryview(source) as view:
            while True:
                if header is None:
                    if size - offset < HEADER_SIZE:
                        break
                    version, raw_type, raw_flags, stream_id, length = unpack(source, offset)
                    offset += HEADER_SIZE
                    if (
                        version
                        or raw_type > 3
                        or (length > max_data and not raw_type)
                        or (raw_type > 1 and stream_id)
                    ):
                        self._header = None
                        _check_header(version, raw_type, raw_flags, stream_id, length, max_data)
                    header = (_TYPES[raw_type], raw_flags & 0xF, stream_id, length)
                type_, flags, stream_id, length = header
                if type_ is data_type and length:
                    end = offset + length
                    if end > size:
                        break
                    payload = bytes(view[offset:end])
                    frames.append(Frame(type_, flags, stream_id, length, payload))
                    offset = end
                else:
                    frames.append(Frame(type_, flags, stream_id, length))
                header = None
            if source is data:
                # Keep only the incomplete tail of this read.
                self._buffer += view[offset:]
                offset = 0
        self._offset, self._header = offset, header
        if source is not data:
            self._compact()
        return frames

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None until more bytes arrive.

        Raises :class:`RemoteProtocolError` on a bad version, unknown type or oversized frame;
        the decoder is unusable afterwards.
        """
        if self._header is None:
            if len(self._buffer) - self._offset < HEADER_SIZE:
                return None
            version, raw_type, raw_flags, stream_id, length = HEADER.unpack_from(
                self._buffer, self._offset
            )
            self._offset += HEADER_SIZE
            self._header = _check_header(
                version, raw_type, raw_flags, stream_id, length, self._max_data_length
            )
        type_, flags, stream_id, length = self._header
        if type_ is not FrameType.DATA or length == 0:
            self._header = None
            self._compact()
            return Frame(type_, flags, stream_id, length)
        end = self._offset + length
        if end > len(self._buffer):
            return None
        payload = bytes(self._buffer[self._offset : end])
        self._offset = end
        self._header = None
        self._compact()
        return Frame(type_, flags, stream_id, length, payload)

    def _compact(self) -> None:
        # Drop consumed bytes once they dominate the buffer, so memory stays bounded without
        # shifting the buffer on every frame.
        if self._offset >= 65536 and self._offset * 2 >= len(self._buffer):
            del self._buffer[: self._offset]
            self._offset = 0


def _check_header(
    version: int, raw_type: int, raw_flags: int, stream_id: int, length: int, max_data: int
) -> tuple[FrameType, int, int, int]:
    if version != VERSION:
        hint = ""
        if version == 0x16 and raw_type == 0x03:  # a TLS handshake record: 16 03 01 ...
            hint = "; this is a TLS handshake: the peer speaks TLS to a plaintext port"
        raise RemoteProtocolError(f"unsupported yamux version {version} (expected {VERSION}){hint}")
    if raw_type >= len(_TYPES):
        raise RemoteProtocolError(f"unknown frame type {raw_type:#x}")
    type_ = _TYPES[raw_type]
    if type_ is FrameType.DATA and length > max_data:
        raise RemoteProtocolError(
            f"data frame of {length} bytes on stream {stream_id} exceeds the {max_data} byte limit"
        )
    if type_ in (FrameType.PING, FrameType.GO_AWAY) and stream_id != 0:
        raise RemoteProtocolError(f"{type_.name} frame on stream {stream_id}, expected stream 0")
    # Unknown flag bits are kept and ignored, as the reference implementation does.
    return type_, raw_flags & 0xF, stream_id, length


_TYPES = tuple(FrameType)  # indexed by the wire value: a tuple lookup instead of an enum call
