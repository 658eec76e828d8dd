"""Tests for protocol.frames: the yamux version 0 codec, byte for byte and under any chunking."""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunnel.errors import RemoteProtocolError
from tunnel.protocol.frames import (
    HEADER_SIZE,
    MAX_LENGTH,
    MAX_STREAM_ID,
    READ_SIZE,
    Flags,
    Frame,
    FrameDecoder,
    FrameType,
    GoAwayCode,
    encode,
    encode_header,
)

MAX_DATA = 4096
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

flags = st.integers(0, 0xF).map(Flags)
u32 = st.integers(0, MAX_LENGTH)


@st.composite
def frames(draw: st.DrawFn, max_payload: int = 300) -> Frame:
    """Any frame the decoder must accept: every type, every flag combination."""
    type_ = draw(st.sampled_from(FrameType))
    if type_ is FrameType.DATA:
        payload = draw(st.binary(max_size=max_payload))
        return Frame(type_, draw(flags), draw(u32), len(payload), payload)
    stream_id = 0 if type_ in (FrameType.PING, FrameType.GO_AWAY) else draw(u32)
    return Frame(type_, draw(flags), stream_id, draw(u32))


def decode_stream(chunks: list[bytes], max_data: int = MAX_DATA) -> list[Frame]:
    """Feed ``chunks`` one by one, taking frames out after each, as a driver would."""
    decoder = FrameDecoder(max_data_length=max_data)
    out = []
    for chunk in chunks:
        decoder.feed(chunk)
        while (frame := decoder.next_frame()) is not None:
            out.append(frame)
        # Whatever is left is less than one frame: the decoder never hoards input.
        assert decoder.buffered < HEADER_SIZE + max_data
    assert decoder.buffered == 0
    return out


def split(data: bytes, points: list[int]) -> list[bytes]:
    cuts = sorted({p % (len(data) + 1) for p in points})
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# ------------------------------------------------------------------ byte layout


def test_data_frame_layout_is_big_endian_header_then_payload() -> None:
    frame = Frame(FrameType.DATA, Flags.SYN | Flags.FIN, 0x01020304, 5, b"hello")
    expected = (
        b"\x00"  # version
        b"\x00"  # type: data
        b"\x00\x05"  # flags: SYN | FIN
        b"\x01\x02\x03\x04"  # stream id
        b"\x00\x00\x00\x05"  # length
        b"hello"
    )
    assert encode(frame) == expected


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (
            Frame(FrameType.WINDOW_UPDATE, Flags.ACK, 2, 0x000C0000),
            bytes([0, 1, 0, 2, 0, 0, 0, 2, 0, 0x0C, 0, 0]),
        ),
        (
            Frame(FrameType.WINDOW_UPDATE, Flags.RST, 0xFFFFFFFF, 0),
            bytes([0, 1, 0, 8, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0]),
        ),
        (
            Frame(FrameType.PING, Flags.SYN, 0, 0xDEADBEEF),
            bytes([0, 2, 0, 1, 0, 0, 0, 0, 0xDE, 0xAD, 0xBE, 0xEF]),
        ),
        (
            Frame(FrameType.GO_AWAY, Flags.NONE, 0, GoAwayCode.PROTOCOL_ERROR),
            bytes([0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
        ),
    ],
    ids=["window-update-ack", "rst", "ping", "go-away"],
)
def test_control_frame_layout(frame: Frame, expected: bytes) -> None:
    assert encode(frame) == expected
    assert encode_header(frame.type, frame.flags, frame.stream_id, frame.length) == expected
    assert decode_stream([expected]) == [frame]


def test_wire_constants_match_the_spec() -> None:
    assert [int(t) for t in FrameType] == [0, 1, 2, 3]
    assert (Flags.SYN, Flags.ACK, Flags.FIN, Flags.RST) == (1, 2, 4, 8)
    assert [int(c) for c in GoAwayCode] == [0, 1, 2]
    assert HEADER_SIZE == 12


# ------------------------------------------------------------------ round trips


@FAST
@given(frame=frames())
def test_every_frame_round_trips(frame: Frame) -> None:
    data = encode(frame)
    assert len(data) == HEADER_SIZE + len(frame.payload)
    assert decode_stream([data]) == [frame]


@FAST
@given(
    type_=st.sampled_from(FrameType),
    flag_bits=st.integers(0, 0xF),
    stream_id=u32,
    length=st.integers(0, 64),
)
def test_every_type_and_flag_combination_round_trips(
    type_: FrameType, flag_bits: int, stream_id: int, length: int
) -> None:
    if type_ in (FrameType.PING, FrameType.GO_AWAY):
        stream_id = 0
    payload = bytes(range(length)) if type_ is FrameType.DATA else b""
    frame = Frame(type_, Flags(flag_bits), stream_id, length, payload)
    (decoded,) = decode_stream([encode(frame)])
    assert decoded == frame
    assert int(decoded.flags) == flag_bits


@FAST
@given(
    many=st.lists(frames(), min_size=1, max_size=30),
    points=st.lists(st.integers(min_value=0), max_size=40),
)
def test_any_chunking_decodes_to_the_same_frames(many: list[Frame], points: list[int]) -> None:
    data = b"".join(encode(f) for f in many)
    assert decode_stream(split(data, points)) == many


def read_into(decoder: FrameDecoder, chunks: list[bytes]) -> list[Frame]:
    """Read ``chunks`` straight into the decoder's buffer, as a BufferedProtocol does."""
    out: list[Frame] = []
    for chunk in chunks:
        while chunk:
            room = decoder.get_buffer()
            assert len(room) > 0
            taken = min(len(room), len(chunk))
            room[:taken] = chunk[:taken]
            chunk = chunk[taken:]
            out += decoder.buffer_updated(taken)
    assert decoder.buffered == 0
    return out


@FAST
@given(
    many=st.lists(frames(max_payload=MAX_DATA), min_size=1, max_size=60),
    points=st.lists(st.integers(min_value=0), max_size=40),
)
def test_reading_into_the_buffer_decodes_to_the_same_frames(
    many: list[Frame], points: list[int]
) -> None:
    data = b"".join(encode(f) for f in many)
    assert read_into(FrameDecoder(max_data_length=MAX_DATA), split(data, points)) == many
    assert FrameDecoder(max_data_length=MAX_DATA).decode(data) == many


def test_a_frame_larger_than_the_buffer_grows_it_then_gives_the_room_back() -> None:
    big = Frame(FrameType.DATA, Flags.NONE, 1, 3 * READ_SIZE, bytes(range(256)) * 3072)
    small = Frame(FrameType.DATA, Flags.NONE, 3, 5, b"after")
    decoder = FrameDecoder(max_data_length=4 * READ_SIZE)
    data = encode(big) + encode(small)
    assert read_into(decoder, split(data, [10_000, 300_000, 700_000])) == [big, small]
    assert len(decoder.get_buffer()) == READ_SIZE  # back to its usual size


def test_the_partial_frame_left_at_the_end_of_the_buffer_moves_to_its_start() -> None:
    # Frames that never line up with the buffer's end: every read leaves a tail behind.
    frame = Frame(FrameType.DATA, Flags.NONE, 5, 40_000, bytes(40_000))
    decoder = FrameDecoder(max_data_length=MAX_DATA * 100)
    data = encode(frame) * 40
    chunks = [data[i : i + 65_000] for i in range(0, len(data), 65_000)]
    assert read_into(decoder, chunks) == [frame] * 40


@settings(max_examples=20, deadline=None)
@given(many=st.lists(frames(max_payload=MAX_DATA), min_size=1, max_size=60))
def test_byte_by_byte_feeding_decodes_to_the_same_frames(many: list[Frame]) -> None:
    data = b"".join(encode(f) for f in many)
    assert decode_stream([data[i : i + 1] for i in range(len(data))]) == many


def test_long_stream_of_frames_keeps_memory_bounded() -> None:
    # Many frames through one decoder, always leaving a partial frame behind: the consumed
    # prefix must be dropped rather than kept for the life of the connection.
    frame = encode(Frame(FrameType.DATA, Flags.NONE, 1, 1000, bytes(1000)))
    decoder = FrameDecoder(max_data_length=MAX_DATA)
    stream = frame * 2000
    count = 0
    for start in range(0, len(stream), 1337):
        decoder.feed(stream[start : start + 1337])
        while decoder.next_frame() is not None:
            count += 1
        assert decoder.buffered < HEADER_SIZE + 1000
    assert count == 2000


def test_nothing_comes_out_until_a_frame_is_complete() -> None:
    data = encode(Frame(FrameType.DATA, Flags.NONE, 3, 4, b"abcd"))
    decoder = FrameDecoder(max_data_length=MAX_DATA)
    for byte in data[:-1]:
        decoder.feed(bytes([byte]))
        assert decoder.next_frame() is None
    decoder.feed(data[-1:])
    assert decoder.next_frame() == Frame(FrameType.DATA, Flags.NONE, 3, 4, b"abcd")
    assert decoder.next_frame() is None


def test_data_frame_of_exactly_the_limit_is_accepted() -> None:
    frame = Frame(FrameType.DATA, Flags.NONE, 1, MAX_DATA, bytes(MAX_DATA))
    assert decode_stream([encode(frame)]) == [frame]


def test_empty_data_frame_carries_flags_only() -> None:
    frame = Frame(FrameType.DATA, Flags.SYN, 1, 0)
    assert decode_stream([encode(frame)]) == [frame]


def test_unknown_flag_bits_are_ignored() -> None:
    data = struct.pack(">BBHII", 0, FrameType.WINDOW_UPDATE, 0xFFF2, 5, 7)
    assert decode_stream([data]) == [Frame(FrameType.WINDOW_UPDATE, Flags.ACK, 5, 7)]


# ------------------------------------------------------------------ rejection


# The decoder has three ways in, and every check must hold on each: the session takes frames
# with ``decode`` (bytes handed over) and ``buffer_updated`` (bytes read into its buffer), both
# through the batch parser; ``next_frame`` is the one-at-a-time path tools and tests use.
Path = Callable[[FrameDecoder, bytes], list[Frame]]


def by_next_frame(decoder: FrameDecoder, data: bytes) -> list[Frame]:
    decoder.feed(data)
    out = []
    while (frame := decoder.next_frame()) is not None:
        out.append(frame)
    return out


def by_decode(decoder: FrameDecoder, data: bytes) -> list[Frame]:
    return [Frame(*raw) for raw in decoder.decode(data)]


def by_reading_into_the_buffer(decoder: FrameDecoder, data: bytes) -> list[Frame]:
    out: list[Frame] = []
    view = memoryview(data)
    while True:
        with decoder.get_buffer() as room:
            taken = min(len(room), len(view))
            room[:taken] = view[:taken]
        out += [Frame(*raw) for raw in decoder.buffer_updated(taken)]
        view = view[taken:]
        if not view:
            return out


PATHS: dict[str, Path] = {
    "next_frame": by_next_frame,
    "decode": by_decode,
    "buffer_updated": by_reading_into_the_buffer,
}
every_path = pytest.mark.parametrize("path", PATHS.values(), ids=PATHS.keys())


def feed_header(data: bytes, path: Path, max_data: int = MAX_DATA) -> None:
    """Feed exactly one header (no payload) and ask for frames."""
    assert len(data) == HEADER_SIZE
    path(FrameDecoder(max_data_length=max_data), data)


@every_path
@FAST
@given(version=st.integers(1, 255), type_=st.sampled_from(FrameType), length=u32)
def test_bad_version_is_rejected_from_the_header_alone(
    path: Path, version: int, type_: FrameType, length: int
) -> None:
    with pytest.raises(RemoteProtocolError, match="version"):
        feed_header(struct.pack(">BBHII", version, type_, 0, 0, length), path)


@every_path
def test_tls_handshake_on_a_plaintext_port_is_named_as_such(path: Path) -> None:
    # The start of a TLS ClientHello record, as sent by a client configured for TLS.
    hello = bytes.fromhex("160301020001000001fc0303")
    with pytest.raises(RemoteProtocolError) as refused:
        feed_header(hello, path)
    assert str(refused.value) == (
        "unsupported yamux version 22 (expected 0)"
        "; this is a TLS handshake: the peer speaks TLS to a plaintext port"
    )


@every_path
@pytest.mark.parametrize(("version", "type_"), [(1, 0), (0x16, 1), (5, 3)])
def test_a_bad_version_that_is_not_tls_gets_no_tls_hint(
    path: Path, version: int, type_: int
) -> None:
    # Only 16 03 is the start of a TLS record: another version byte, or 0x16 followed by
    # another type, is just a peer that does not speak yamux version 0.
    with pytest.raises(RemoteProtocolError) as refused:
        feed_header(struct.pack(">BBHII", version, type_, 0, 0, 0), path)
    assert str(refused.value) == f"unsupported yamux version {version} (expected 0)"


@every_path
@FAST
@given(type_=st.integers(4, 255), length=u32)
def test_unknown_type_is_rejected_from_the_header_alone(
    path: Path, type_: int, length: int
) -> None:
    with pytest.raises(RemoteProtocolError, match="type"):
        feed_header(struct.pack(">BBHII", 0, type_, 0, 1, length), path)


@every_path
@FAST
@given(length=st.integers(MAX_DATA + 1, MAX_LENGTH))
def test_oversized_data_frame_is_rejected_before_its_payload(path: Path, length: int) -> None:
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        feed_header(encode_header(FrameType.DATA, Flags.NONE, 1, length), path)


@every_path
def test_oversized_data_frame_is_rejected_on_the_last_header_byte(path: Path) -> None:
    header = encode_header(FrameType.DATA, Flags.NONE, 1, MAX_DATA + 1)
    decoder = FrameDecoder(max_data_length=MAX_DATA)
    assert path(decoder, header[:-1]) == []
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        path(decoder, header[-1:])


@every_path
@FAST
@given(
    type_=st.sampled_from([FrameType.PING, FrameType.GO_AWAY]),
    stream_id=st.integers(1, MAX_STREAM_ID),
)
def test_ping_and_go_away_on_a_stream_are_rejected(
    path: Path, type_: FrameType, stream_id: int
) -> None:
    with pytest.raises(RemoteProtocolError, match="stream 0"):
        feed_header(encode_header(type_, Flags.SYN, stream_id, 0), path)


@every_path
@FAST
@given(type_=st.sampled_from(FrameType), flags=flags, stream_id=u32, length=st.integers(0, 64))
def test_a_valid_header_after_good_frames_is_not_rejected(
    path: Path, type_: FrameType, flags: Flags, stream_id: int, length: int
) -> None:
    # The other side of each check: the batch parser's quick test must not refuse a header
    # the full check accepts (a Window Update on stream 0 is the session's business, not ours).
    if type_ in (FrameType.PING, FrameType.GO_AWAY):
        stream_id = 0
    frame = Frame(
        type_, flags, stream_id, length, bytes(length) if type_ is FrameType.DATA else b""
    )
    good = Frame(FrameType.PING, Flags.SYN, 0, 7)
    assert path(FrameDecoder(max_data_length=64), encode(good) + encode(frame)) == [good, frame]


@every_path
@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=400),
    points=st.lists(st.integers(min_value=0), max_size=8),
)
def test_garbage_raises_only_remote_protocol_error(
    path: Path, data: bytes, points: list[int]
) -> None:
    decoder = FrameDecoder(max_data_length=256)
    try:
        for chunk in split(data, points):
            for frame in path(decoder, chunk):
                assert frame.type in FrameType
                assert frame.type is FrameType.DATA or not frame.payload
    except RemoteProtocolError:
        pass


@every_path
@settings(max_examples=300, deadline=None)
@given(headers=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 5), u32, u32), max_size=6))
def test_near_valid_headers_raise_only_remote_protocol_error(
    path: Path, headers: list[tuple[int, int, int, int]]
) -> None:
    # Random bytes rarely form a plausible header; these mostly do, and hit every check.
    data = b"".join(
        struct.pack(">BBHII", version, type_, 0, stream_id, length)
        for version, type_, stream_id, length in headers
    )
    decoder = FrameDecoder(max_data_length=256)
    try:
        for frame in path(decoder, data):
            assert frame.type in FrameType
            assert frame.length <= 256 or frame.type is not FrameType.DATA
    except RemoteProtocolError:
        pass


def test_a_released_decoder_holds_nothing() -> None:
    decoder = FrameDecoder(max_data_length=MAX_DATA)
    decoder.feed(encode(Frame(FrameType.DATA, Flags.NONE, 1, 10, bytes(10)))[:15])
    assert decoder.buffered == 15
    decoder.release()
    assert decoder.buffered == 0


def _room_offered(decoder: FrameDecoder, reads: int, fill: bool) -> list[int]:
    """Room offered to ``reads`` reads of Data frames, each filling all of it or not."""
    stream = encode(Frame(FrameType.DATA, Flags.NONE, 1, 4000, bytes(4000))) * 800  # 3 MiB
    offered, at = [], 0
    for _ in range(reads):
        room = decoder.get_buffer()
        offered.append(len(room))
        taken = len(room) if fill else min(len(room), HEADER_SIZE * 10 + 5)  # ends mid-frame
        room[:taken] = stream[at : at + taken]
        room.release()
        at += taken
        decoder.buffer_updated(taken)
    return offered


def test_a_busy_connection_gets_reads_of_the_full_read_size() -> None:
    # Reads that fill the buffer double it, up to READ_SIZE: a bulk transfer is not read in
    # first-read-sized pieces.
    offered = _room_offered(FrameDecoder(max_data_length=MAX_DATA), 10, fill=True)
    assert max(offered) > READ_SIZE - (HEADER_SIZE + 4000)  # less only a partial frame


def test_a_quiet_connection_keeps_a_small_buffer_and_reads_into_a_quarter_of_it_at_least() -> None:
    # What is left unparsed moves to the start once less than a quarter of the buffer is free.
    offered = _room_offered(FrameDecoder(max_data_length=MAX_DATA), 300, fill=False)
    assert max(offered) <= 16 * 1024
    assert min(offered) >= 16 * 1024 // 4


@every_path
@pytest.mark.parametrize(
    ("header", "complaint"),
    [
        (
            struct.pack(">BBHII", 0, 0, 0, 7, MAX_DATA + 1),
            f"data frame of {MAX_DATA + 1} bytes on stream 7 exceeds the {MAX_DATA} byte limit",
        ),
        (struct.pack(">BBHII", 0, 2, 0, 7, 0), "PING frame on stream 7, expected stream 0"),
        (struct.pack(">BBHII", 0, 9, 0, 7, 0), "unknown frame type 0x9"),
    ],
)
def test_a_refused_header_names_its_stream_and_what_is_wrong(
    path: Path, header: bytes, complaint: str
) -> None:
    with pytest.raises(RemoteProtocolError) as refused:
        feed_header(header, path)
    assert str(refused.value) == complaint
