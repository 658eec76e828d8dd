"""yamux version 0 framing, exactly as in hashicorp/yamux's ``spec.md``.

Every frame starts with a 12-byte big-endian header::

    version:u8  type:u8  flags:u16  stream_id:u32  length:u32

For Data frames ``length`` bytes of payload follow; for the other types ``length`` is a value
(a window delta, an opaque ping value, a Go Away code) and nothing follows.

:class:`FrameDecoder` is incremental: feed it whatever the socket gave, take frames out. It checks
the version, the type and, for Data frames, the length as soon as a header is complete, so a
hostile peer cannot make it buffer a payload it was never going to accept. A Data frame whose
payload is still on its way is also shown to the owner's ``admit`` check (the session compares it
with the stream's window) before a byte of it is kept.

Memory follows what arrived, never what a header announced: a new decoder holds nothing, its
first read gets ``FIRST_SIZE`` bytes of room, the buffer doubles only when reads fill it (up to
``READ_SIZE`` for ordinary traffic), and a frame larger than that grows it to at most twice the
part of the frame already received. A header that announces 128 MiB and is followed by nothing
costs nothing.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from enum import IntEnum, IntFlag
from typing import NamedTuple

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


class Frame(NamedTuple):
    """One decoded frame. ``payload`` is empty except for Data frames.

    A plain tuple underneath: the session unpacks the decoder's frames by position, and a
    tuple costs a fraction of an object with attributes to build, once per frame.
    """

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


# A frame as the decoder hands it out on the fast paths (buffer_updated, decode): a plain tuple
# in Frame's field order, which compares equal to the Frame with the same fields. The payload
# is a bytearray that nothing else holds; treat it as immutable.
RawFrame = tuple[FrameType, int, int, int, bytes | bytearray]

READ_SIZE = 256 * 1024  # the receive buffer of a busy connection; one read takes at most this
# A connection's buffer at its first read (none before it: a TLS handshake that never completes
# costs nothing here). A hello fits, and so does a burst of small frames, which is read whole.
FIRST_SIZE = 16 * 1024
_MIN_READ = 64 * 1024  # less room than this at the buffer's end: move the unparsed tail first

# Called with (stream id, flags, length) for a Data frame whose payload has not all arrived;
# raises RemoteProtocolError to refuse it before any of it is buffered.
Admit = Callable[[int, int, int], None]


class FrameDecoder:
    """Turns a byte stream into frames.

    It owns one receive buffer. The driver either reads straight into it (:meth:`get_buffer`,
    then :meth:`buffer_updated`, as ``asyncio.BufferedProtocol`` does) or hands bytes over
    (:meth:`decode`, or :meth:`feed` then :meth:`next_frame`). Each payload is copied out of
    the buffer once, so a bulk transfer costs one copy between the socket and its frames.

    ``max_data_length`` bounds a single Data frame's payload; anything larger is refused
    before a byte of it is buffered (it may be lowered and raised again: ``max_data_length``).
    The buffer is made at the first read (``FIRST_SIZE``), doubles while reads fill it, grows
    past ``READ_SIZE`` only while a frame larger than that is being received (to at most twice
    what has arrived of it), and shrinks back once that frame is out.
    """

    def __init__(self, max_data_length: int, admit: Admit | None = None) -> None:
        self._buffer = bytearray()
        self._start = 0  # first byte not yet parsed
        self._end = 0  # end of the bytes received
        self.max_data_length = max_data_length
        self.max_buffer = READ_SIZE  # the most the buffer grows to for frames that fit in it
        self._admit = admit
        self._hungry = True  # the last read filled the buffer (or there is none yet): grow it
        self._header: tuple[FrameType, int, int, int] | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return self._end - self._start

    def head(self, size: int) -> bytes:
        """The first ``size`` bytes of the connection, while no frame has been parsed (else
        nothing): what a peer that does not speak yamux sent instead."""
        return bytes(self._buffer[: min(size, self._end)]) if self._start == 0 else b""

    # ------------------------------------------------------------ reading into the buffer

    def get_buffer(self) -> memoryview:
        """Room at the end of the receive buffer: read into it, then call buffer_updated."""
        size = len(self._buffer)
        if self._hungry or size - self._end < (_MIN_READ if size >= READ_SIZE else size >> 2):
            self._make_room()
        return memoryview(self._buffer)[self._end :]

    def buffer_updated(self, nbytes: int) -> list[RawFrame]:
        """``nbytes`` were written at the start of the last :meth:`get_buffer`; return every
        frame now complete. A bad header raises :class:`RemoteProtocolError` (frames decoded
        before it in this call are dropped: the session ends anyway)."""
        self._end += nbytes
        if self._end == len(self._buffer):
            self._hungry = True
        return self._parse()

    def whole_data(self, nbytes: int) -> tuple[int, bytearray] | None:
        """:meth:`buffer_updated` for the usual read of a request or an answer: when the bytes
        held are exactly one Data frame without flags, return its stream id and payload (no
        frame tuple, no list). Otherwise None, and the bytes wait, unparsed, for
        ``buffer_updated(0)`` (which also raises on a bad header: nothing is checked here
        beyond what makes the frame an ordinary one)."""
        self._end = end = self._end + nbytes
        buf = self._buffer
        if end == len(buf):
            self._hungry = True
        start = self._start
        if self._header is not None or end - start <= HEADER_SIZE:
            return None
        version, raw_type, flags, stream_id, length = HEADER.unpack_from(buf, start)
        if (
            version
            or raw_type
            or flags
            or length != end - start - HEADER_SIZE
            or length > self.max_data_length
        ):
            return None
        payload = buf[start + HEADER_SIZE : end]  # a fresh copy, as in _parse
        self._start = self._end = 0
        if len(buf) > READ_SIZE:  # a large frame is out: give its room back
            self._buffer = bytearray(READ_SIZE)
        return stream_id, payload

    def release(self) -> None:
        """Give the buffer back (the connection is over); the decoder takes nothing more."""
        self._buffer = bytearray()
        self._start = self._end = 0
        self._header = None
        self._admit = None  # a method of the owner: a cycle through it would outlive the close

    def _make_room(self, in_hand: int = 0) -> None:
        """Move the unparsed tail to the start, growing the buffer if reads keep filling it.

        ``in_hand``: bytes the caller holds for it already (:meth:`feed`), room for which is
        room for bytes that have arrived."""
        pending = self._end - self._start
        size = len(self._buffer)
        largest = max(self.max_buffer, pending + in_hand)
        header = self._header
        if header is not None and header[0] is FrameType.DATA:
            # The frame under way may need more, but room is only ever made for twice what has
            # arrived of it: its header alone (a promise of 128 MiB, say) allocates nothing.
            largest = max(largest, min(header[3], 2 * pending))
        if self._hungry or pending > size >> 1:
            size = min(largest, max(size * 2, FIRST_SIZE))  # reads fill it: double it
            self._hungry = False
        old = memoryview(self._buffer)
        if size != len(self._buffer):
            self._buffer = bytearray(size)
        with old, memoryview(self._buffer) as new:
            new[:pending] = old[self._start : self._end]  # overlapping moves are safe here
        self._start, self._end = 0, pending

    def _parse(self) -> list[RawFrame]:
        buf = self._buffer
        start, end, header = self._start, self._end, self._header
        frames: list[RawFrame] = []
        append = frames.append
        max_data = self.max_data_length
        unpack = HEADER.unpack_from
        data_type = FrameType.DATA
        while True:
            if header is None:
                if end - start < HEADER_SIZE:
                    break
                version, raw_type, flags, stream_id, length = unpack(buf, start)
                if (
                    version
                    or raw_type > 3
                    or (length > max_data and not raw_type)
                    or (raw_type > 1 and stream_id)
                ):
                    self._header = None
                    _check_header(version, raw_type, flags, stream_id, length, max_data)
                type_ = _TYPES[raw_type]
                flags &= 0xF
                body = start + HEADER_SIZE
                if type_ is data_type and body + length > end and self._admit is not None:
                    # The payload is still on its way: the owner says now whether it may be
                    # kept. Once per frame, and only for one that spans reads.
                    self._header = None
                    self._admit(stream_id, flags, length)
            else:
                type_, flags, stream_id, length = header
                header = None
                body = start
            if type_ is data_type and length:
                stop = body + length
                if stop > end:  # the payload is still on its way
                    header = (type_, flags, stream_id, length)
                    start = body
                    break
                # A slice of the bytearray is a fresh copy that nothing else holds: the payload
                # is never changed after this, so it serves as bytes without another copy.
                append((type_, flags, stream_id, length, buf[body:stop]))
                start = stop
            else:
                append((type_, flags, stream_id, length, b""))
                start = body
        if start == end:
            start = end = 0
            if len(buf) > READ_SIZE:  # a large frame is out: give its room back
                self._buffer = bytearray(READ_SIZE)
        self._start, self._end, self._header = start, end, header
        return frames

    # ------------------------------------------------------------ handing bytes over

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` to the buffer; take frames out with :meth:`next_frame`."""
        with memoryview(data) as source, source.cast("B") as source:
            while source:
                if len(self._buffer) - self._end < len(source):
                    self._make_room(len(source))
                room = memoryview(self._buffer)[self._end :]
                taken = min(len(room), len(source))
                room[:taken] = source[:taken]
                room.release()
                self._end += taken
                source = source[taken:]

    def decode(self, data: bytes | bytearray | memoryview) -> list[RawFrame]:
        """Feed ``data`` and return every frame now complete (same checks as ``next_frame``)."""
        self.feed(data)
        return self._parse()

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None until more bytes arrive.

        Raises :class:`RemoteProtocolError` on a bad version, unknown type or oversized frame;
        the decoder is unusable afterwards.
        """
        if self._header is None:
            if self._end - self._start < HEADER_SIZE:
                return None
            version, raw_type, raw_flags, stream_id, length = HEADER.unpack_from(
                self._buffer, self._start
            )
            self._start += HEADER_SIZE
            self._header = _check_header(
                version, raw_type, raw_flags, stream_id, length, self.max_data_length
            )
        type_, flags, stream_id, length = self._header
        payload = b""
        if type_ is FrameType.DATA and length:
            stop = self._start + length
            if stop > self._end:
                return None
            payload = bytes(self._buffer[self._start : stop])
            self._start = stop
        self._header = None
        if self._start == self._end:
            self._start = self._end = 0
        return Frame(type_, flags, stream_id, length, payload)


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
