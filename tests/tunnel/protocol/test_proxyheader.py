"""The PROXY protocol codec: headers written for every family, and read back strictly."""

from __future__ import annotations

import contextlib
import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel.protocol.origin import Family, Origin
from tunnel.protocol.proxyheader import (
    V1_MAX,
    V2_MAX,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    ProxyHeaderParser,
    encode,
    encode_v1,
    encode_v2,
    starts_like_proxy,
)

V4 = Origin(Family.INET, "198.51.100.7", "10.0.0.5", 51234, 6379)
V6 = Origin(Family.INET6, "2001:db8::7", "::1", 40000, 443)
UNIX = Origin(Family.UNIX, "", "/run/ambassador/redis.sock")


def parse(data: bytes, max_v2: int = V2_MAX) -> tuple[ProxyHeader | None, bytes]:
    return ProxyHeaderParser(max_v2).feed(data)


def test_v1_ipv4_line_is_as_the_specification_writes_it() -> None:
    assert encode_v1(V4) == b"PROXY TCP4 198.51.100.7 10.0.0.5 51234 6379\r\n"


def test_v1_ipv6_line() -> None:
    assert encode_v1(V6) == b"PROXY TCP6 2001:db8::7 ::1 40000 443\r\n"


@pytest.mark.parametrize("origin", [None, UNIX, Origin(Family.UNSPEC)])
def test_v1_has_no_words_for_unix_or_local_so_says_unknown(origin: Origin | None) -> None:
    assert encode_v1(origin) == b"PROXY UNKNOWN\r\n"


def test_v2_ipv4_header_bytes() -> None:
    header = encode_v2(V4)
    assert header[:12] == V2_SIGNATURE
    assert header[12:16] == bytes((0x21, 0x11, 0, 12))
    assert header[16:] == bytes((198, 51, 100, 7, 10, 0, 0, 5)) + struct.pack(">HH", 51234, 6379)


def test_v2_ipv6_header_has_the_inet6_family_and_36_bytes() -> None:
    header = encode_v2(V6)
    assert header[12:16] == bytes((0x21, 0x21, 0, 36))
    assert len(header) == 16 + 36


def test_v2_unix_header_has_af_unix_and_two_108_byte_paths() -> None:
    header = encode_v2(UNIX)
    assert header[12:16] == bytes((0x21, 0x31, 0, 216))
    assert header[16 + 108 :].rstrip(b"\0") == b"/run/ambassador/redis.sock"


def test_v2_local_has_no_addresses() -> None:
    assert encode_v2(None) == V2_SIGNATURE + bytes((0x20, 0x00, 0, 0))


@pytest.mark.parametrize("origin", [V4, V6, UNIX])
def test_v2_round_trip(origin: Origin) -> None:
    header, rest = parse(encode_v2(origin) + b"PING")
    assert header is not None and header.version == 2
    assert header.origin == origin
    assert rest == b"PING"


@pytest.mark.parametrize("origin", [V4, V6])
def test_v1_round_trip(origin: Origin) -> None:
    header, rest = parse(encode_v1(origin) + b"\x00\x00")
    assert header == ProxyHeader(1, origin, len(encode_v1(origin)))
    assert rest == b"\x00\x00"


def test_local_and_unknown_read_as_no_origin() -> None:
    assert parse(encode_v2(None))[0] == ProxyHeader(2, None, 16)
    assert parse(b"PROXY UNKNOWN ffff::1 ::1 1 2\r\n")[0] == ProxyHeader(1, None, 31)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("origin", [V4, V6])
def test_a_header_fed_a_byte_at_a_time_is_read_once_complete(version: int, origin: Origin) -> None:
    data = encode(version, origin) + b"rest"
    parser = ProxyHeaderParser()
    for index in range(len(data) - 5):
        assert parser.feed(data[index : index + 1]) == (None, b"")
    header, rest = parser.feed(data[len(data) - 5 :])
    assert header is not None and header.origin == origin
    assert rest == b"rest"


@given(
    st.sampled_from([Family.INET, Family.INET6]),
    st.integers(0, 2**128 - 1),
    st.integers(0, 2**128 - 1),
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.sampled_from([1, 2]),
)
@settings(max_examples=200)
def test_any_tcp_origin_round_trips(
    family: Family, source: int, destination: int, sport: int, dport: int, version: int
) -> None:
    kind = ipaddress.IPv4Address if family is Family.INET else ipaddress.IPv6Address
    bound = 2**32 if family is Family.INET else 2**128
    source_text, destination_text = str(kind(source % bound)), str(kind(destination % bound))
    origin = Origin(family, source_text, destination_text, sport, dport)
    header, rest = parse(encode(version, origin))
    assert header is not None and header.origin == origin and rest == b""


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_garbage_is_a_header_error_or_need_more_never_anything_else(data: bytes) -> None:
    with contextlib.suppress(ProxyHeaderError):
        parse(data)


# ------------------------------------------------------------------ strictness


@pytest.mark.parametrize(
    ("line", "says"),
    [
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "CRLF"),
        (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "not 'PROXY TCP4"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "not 'PROXY TCP4"),
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "not TCP4, TCP6 or UNKNOWN"),
        (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "not an TCP4 address"),
        (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "not an TCP6 address"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "leading zeros"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", "0..65535"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "0..65535"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.\xff 1 2\r\n", "printable ASCII"),
        (b"PROXX TCP4", "not a PROXY protocol v1 line"),
        (b"GET / HTTP/1.1\r\n", "not a PROXY protocol header"),
    ],
)
def test_malformed_v1_lines_are_refused_saying_what_is_wrong(line: bytes, says: str) -> None:
    with pytest.raises(ProxyHeaderError, match=says):
        parse(line)


def test_v1_line_longer_than_107_bytes_is_refused_before_more_is_kept() -> None:
    parser = ProxyHeaderParser()
    assert parser.feed(b"PROXY UNKNOWN " + b"x" * (V1_MAX - 15)) == (None, b"")
    with pytest.raises(ProxyHeaderError, match="longer than 107 bytes"):
        parser.feed(b"x")


def test_v1_line_of_exactly_107_bytes_is_read() -> None:
    line = b"PROXY UNKNOWN " + b"x" * (V1_MAX - 16) + b"\r\n"
    assert len(line) == V1_MAX
    assert parse(line)[0] == ProxyHeader(1, None, V1_MAX)


def _v2(command: int, family: int, body: bytes, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return V2_SIGNATURE + bytes((command, family)) + struct.pack(">H", size) + body


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"\r\n\r\n\x00\r\nQUIX\n", "wrong signature"),
        (_v2(0x11, 0x11, bytes(12)), "version 1, not 2"),
        (_v2(0x22, 0x11, bytes(12)), "unknown command 2"),
        (_v2(0x21, 0x41, bytes(12)), "unknown address family 4"),
        (_v2(0x21, 0x12, bytes(12)), "transport 2, not a stream"),
        (_v2(0x21, 0x11, bytes(8)), "shorter than its family's 12"),
        (_v2(0x21, 0x21, bytes(12)), "shorter than its family's 36"),
        (_v2(0x21, 0x11, bytes(12) + b"\x01\x00\x05ab"), "TLV runs past"),
        (_v2(0x21, 0x11, bytes(12) + b"\x01\x00"), "ends inside a TLV"),
        (_v2(0x21, 0x31, b"\xff" * 216), "not UTF-8"),
    ],
)
def test_malformed_v2_headers_are_refused_saying_what_is_wrong(data: bytes, says: str) -> None:
    with pytest.raises(ProxyHeaderError, match=says):
        parse(data)


def test_v2_length_is_bounded_before_the_body_arrives() -> None:
    with pytest.raises(ProxyHeaderError, match=f"at most {V2_MAX}"):
        parse(_v2(0x21, 0x11, b"", length=0xFFFF))
    with pytest.raises(ProxyHeaderError, match="at most 100"):
        parse(_v2(0x21, 0x11, b"", length=100), max_v2=100)


def test_v2_tlvs_after_the_addresses_are_skipped() -> None:
    tlvs = b"\x05\x00\x03abc" + b"\xea\x00\x00"
    header, rest = parse(_v2(0x21, 0x11, encode_v2(V4)[16:] + tlvs) + b"data")
    assert header is not None and header.origin == V4 and rest == b"data"


def test_v2_truncated_header_waits_for_the_rest() -> None:
    data = encode_v2(V6)
    assert parse(data[:-1]) == (None, b"")


def test_v2_local_ignores_its_family_and_addresses() -> None:
    header, _ = parse(_v2(0x20, 0x11, bytes(12)))
    assert header == ProxyHeader(2, None, 28)


def test_starts_like_proxy() -> None:
    assert starts_like_proxy(b"PROXY TCP4 ")
    assert starts_like_proxy(b"PROXY")
    assert starts_like_proxy(V2_SIGNATURE[:6])
    assert not starts_like_proxy(b"PROX")
    assert not starts_like_proxy(b"\x16\x03\x01\x02\x00")  # a TLS ClientHello
    assert not starts_like_proxy(bytes(12))  # a yamux frame
