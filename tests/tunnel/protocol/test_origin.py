"""The consumer's origin: taken from a socket's names, and carried in a stream header."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel.errors import RemoteProtocolError
from tunnel.protocol.messages import (
    EXTENDED_HEADER_VERSION,
    HEADER_VERSION,
    MAX_EXTENSIONS,
    StreamHeader,
    StreamHeaderParser,
    Welcome,
    decode_message,
    encode_message,
)
from tunnel.protocol.origin import UNSPECIFIED, Family, Origin, origin_of

V4 = Origin(Family.INET, "198.51.100.7", "127.0.0.1", 51234, 6379)
V6 = Origin(Family.INET6, "::1", "::1", 40000, 16379)
UNIX = Origin(Family.UNIX, "", "/run/redis.sock")


def test_origin_of_ipv4_and_ipv6_sockets() -> None:
    assert origin_of("inet", ("198.51.100.7", 51234), ("127.0.0.1", 6379)) == V4
    assert origin_of("inet6", ("::1", 40000, 0, 0), ("::1", 16379, 0, 0)) == V6


def test_origin_of_an_ipv4_consumer_of_a_dual_stack_listener_is_ipv4() -> None:
    origin = origin_of("inet6", ("::ffff:10.1.2.3", 5, 0, 0), ("::ffff:10.0.0.1", 6, 0, 0))
    assert origin == Origin(Family.INET, "10.1.2.3", "10.0.0.1", 5, 6)


def test_origin_of_a_unix_socket_and_of_something_else() -> None:
    assert origin_of("unix", "", "/run/redis.sock") == UNIX
    assert origin_of("other", None, None) == UNSPECIFIED
    assert origin_of("inet", None, ("127.0.0.1", 1)) == UNSPECIFIED


@pytest.mark.parametrize("origin", [V4, V6, UNIX, UNSPECIFIED])
def test_stream_header_carries_the_origin_in_version_2(origin: Origin) -> None:
    encoded = StreamHeader("redis", origin).encode()
    assert encoded[0] == EXTENDED_HEADER_VERSION
    header, rest = StreamHeaderParser().feed(encoded + b"PING\r\n")
    assert header == StreamHeader("redis", origin)
    assert rest == b"PING\r\n"


def test_stream_header_without_origin_stays_version_1_for_older_servers() -> None:
    assert StreamHeader("redis").encode()[0] == HEADER_VERSION


def test_extended_header_fed_byte_by_byte() -> None:
    encoded = StreamHeader("redis:6379", V6).encode()
    parser = StreamHeaderParser()
    for byte in encoded[:-1]:
        assert parser.feed(bytes((byte,))) == (None, b"")
    assert parser.feed(encoded[-1:]) == (StreamHeader("redis:6379", V6), b"")


def _extended(extensions: bytes, size: int | None = None) -> bytes:
    length = len(extensions) if size is None else size
    return bytes((EXTENDED_HEADER_VERSION, 5)) + b"redis" + struct.pack(">H", length) + extensions


def test_unknown_extensions_are_skipped() -> None:
    header, _ = StreamHeaderParser().feed(_extended(b"\x09\x03abc" + b"\x01\x01\x00"))
    assert header == StreamHeader("redis", UNSPECIFIED)


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (_extended(b"", size=0xFFFF), f"at most {MAX_EXTENSIONS}"),
        (_extended(b"\x01"), "cut short"),
        (_extended(b"\x01\xff\x04"), "runs past"),
        (_extended(b"\x01\x01\x04"), "is 0 bytes, not 12"),
        (_extended(b"\x01\x02\x06\x00"), "is 1 bytes, not 36"),
        (_extended(b"\x01\x01\x07"), "unknown origin family 7"),
        (_extended(b"\x01\x03\x01\xff\x00"), "at most 108"),
        (_extended(b"\x01\x03\x01\x05\x00"), "cut short"),
        (_extended(b"\x01\x04\x01\x01\xff\x00"), "not UTF-8"),
        (_extended(b"\x01\x02\x00\x00"), "carries no addresses"),
        (_extended(b"\x01\x01\x00\x01\x01\x00"), "two origins"),
        (_extended(b"\x01\x00"), "empty origin"),
    ],
)
def test_hostile_extensions_are_refused_before_anything_is_allocated(
    data: bytes, says: str
) -> None:
    with pytest.raises(RemoteProtocolError, match=says):
        StreamHeaderParser().feed(data)


@given(st.binary(max_size=MAX_EXTENSIONS))
@settings(max_examples=300)
def test_any_extension_bytes_are_an_origin_or_a_protocol_error(extensions: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        StreamHeaderParser().feed(_extended(extensions))


def test_welcome_says_which_stream_header_the_server_reads_and_older_ones_mean_1() -> None:
    welcome = Welcome(2, "server", (), stream_header=2)
    assert decode_message(encode_message(welcome)[4:]) == welcome
    older = Welcome(2, "server", ())
    assert b"stream_header" not in encode_message(older)
    assert decode_message(encode_message(older)[4:]).stream_header == HEADER_VERSION
