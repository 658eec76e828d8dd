"""Tests for tunnel.protocol.messages: control messages, stream headers and stream answers."""

from __future__ import annotations

import contextlib
import itertools
import json
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel.errors import Reason, RemoteProtocolError
from tunnel.protocol.messages import (
    CONNECTED,
    HEADER_VERSION,
    MAX_ANSWER_TEXT,
    MAX_CATALOG,
    MAX_MESSAGE,
    SUPPORTED_VERSIONS,
    Auth,
    CatalogChanged,
    Challenge,
    GoingAway,
    Hello,
    Message,
    MessageReader,
    Refusal,
    ServiceInfo,
    StreamAnswer,
    StreamAnswerParser,
    StreamHeader,
    StreamHeaderParser,
    Welcome,
    decode_message,
    encode_message,
    negotiate_version,
)

FAST = settings(max_examples=150, deadline=None)

texts = st.text(max_size=40)
services = st.builds(
    ServiceInfo,
    alias=st.none() | st.from_regex(r"[a-z][a-z0-9_-]{0,19}", fullmatch=True),
    port=st.integers(1, 65535),
)
catalogs = st.lists(services, max_size=6).map(tuple)
tokens = st.one_of(
    st.tuples(st.none(), st.just(b"")),
    st.tuples(st.text(min_size=1, max_size=20), st.binary(max_size=32)),
)
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(
        lambda versions, name, software, token: Hello(versions, name, software, *token),
        versions=st.lists(st.integers(0, 0xFFFF), max_size=5).map(tuple),
        name=texts,
        software=texts,
        token=tokens,
    ),
    st.builds(
        Welcome,
        version=st.integers(0, 100),
        server=texts,
        catalog=catalogs,
        proof=st.binary(max_size=32),
    ),
    st.builds(Challenge, nonce=st.binary(max_size=32)),
    st.builds(Auth, proof=st.binary(max_size=32)),
    st.builds(Refusal, reason=st.sampled_from(Reason), text=texts),
    st.builds(CatalogChanged, catalog=catalogs),
    st.builds(GoingAway, reason=st.sampled_from(Reason), text=texts),
)


def split(data: bytes, points: list[int]) -> list[bytes]:
    cuts = sorted({p % (len(data) + 1) for p in points})
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def framed(obj: Any) -> bytes:
    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body


# ------------------------------------------------------------------ control messages


@pytest.mark.parametrize(
    "message",
    [
        Hello((1, 2), "edge-b", "ambassador 0.1"),
        Hello((1,), "edge-b", "ambassador 0.1", token_name="ops", nonce=b"\x00\xffnonce"),
        Welcome(1, "host-a", (ServiceInfo("redis", 6379), ServiceInfo(None, 5432))),
        Welcome(1, "host-a", (), proof=b"\x01proof"),
        Challenge(b"\x00" * 32),
        Auth(b"\xfe" * 32),
        Refusal(Reason.AUTH_FAILED, "unknown client"),
        CatalogChanged((ServiceInfo("pg", 5432),)),
        GoingAway(Reason.SHUTTING_DOWN, "reload"),
    ],
    ids=[
        "hello",
        "hello-token",
        "welcome",
        "welcome-proof",
        "challenge",
        "auth",
        "refusal",
        "catalog",
        "going-away",
    ],
)
def test_each_message_type_round_trips(message: Message) -> None:
    data = encode_message(message)
    (length,) = struct.unpack(">I", data[:4])
    assert length == len(data) - 4
    assert MessageReader().feed(data) == [message]


@FAST
@given(message=messages)
def test_any_message_round_trips(message: Message) -> None:
    assert decode_message(encode_message(message)[4:]) == message


@FAST
@given(batch=st.lists(messages, max_size=8), points=st.lists(st.integers(min_value=0), max_size=20))
def test_reader_handles_any_chunking(batch: list[Message], points: list[int]) -> None:
    reader = MessageReader()
    out: list[Message] = []
    for chunk in split(b"".join(encode_message(m) for m in batch), points):
        out += reader.feed(chunk)
    assert out == batch


def test_reader_waits_for_the_whole_message() -> None:
    data = encode_message(GoingAway(Reason.OK, "bye"))
    reader = MessageReader()
    assert reader.feed(data[:-1]) == []
    assert reader.feed(data[-1:]) == [GoingAway(Reason.OK, "bye")]


def test_service_name_is_the_alias_or_the_port() -> None:
    assert ServiceInfo("redis", 6379).name == "redis"
    assert ServiceInfo(None, 6379).name == "6379"


def test_oversize_message_is_refused_from_its_length_alone() -> None:
    with pytest.raises(RemoteProtocolError, match="too large"):
        MessageReader().feed(struct.pack(">I", MAX_MESSAGE + 1))


def test_message_of_the_maximum_size_is_awaited() -> None:
    assert MessageReader().feed(struct.pack(">I", MAX_MESSAGE) + b"{") == []


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe\xfd",
        b"[1, 2]",
        b'"hello"',
        b"{}",
        b'{"type": "nonsense"}',
        b'{"type": "hello", "name": "x"}',
        b'{"type": "hello", "versions": 1, "name": "x"}',
        b'{"type": "hello", "versions": ["1"], "name": "x"}',
        b'{"type": "hello", "versions": [true], "name": "x"}',
        b'{"type": "hello", "versions": [1], "name": 7}',
        b'{"type": "welcome", "version": 1.5, "server": "s", "catalog": []}',
        b'{"type": "welcome", "version": 1, "server": "s", "catalog": {}}',
        b'{"type": "refusal", "reason": "no"}',
        b'{"type": "going_away"}',
        b'{"type": "challenge"}',
        b'{"type": "challenge", "nonce": "not base64!"}',
        b'{"type": "challenge", "nonce": 5}',
        b'{"type": "auth", "proof": "\xc3\xa9t\xc3\xa9"}',
        b'{"type": "hello", "versions": [1], "name": "b", "token_name": 3}',
        b'{"type": "welcome", "version": 1, "server": "s", "catalog": [], "proof": "=="}',
    ],
)
def test_malformed_message_is_a_remote_protocol_error(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="malformed"):
        MessageReader().feed(struct.pack(">I", len(body)) + body)


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b"[1, 2]", "ValueError('not an object')"),
        (b'{"type": "nonsense"}', "ValueError(\"unknown message type 'nonsense'\")"),
        (
            b'{"type": "welcome", "version": 1, "server": "s", "catalog": {}}',
            "TypeError('catalog is not a list')",
        ),
        (
            b'{"type": "hello", "versions": ["1"], "name": "x"}',
            "TypeError('expected an integer, got str')",
        ),
        (
            b'{"type": "hello", "versions": [1], "name": 7}',
            "TypeError('expected a string, got int')",
        ),
        (
            b'{"type": "hello", "versions": [70000], "name": "x"}',
            "ValueError('protocol version out of range (0..65535)')",
        ),
        (
            json.dumps({"type": "hello", "versions": list(range(17)), "name": "x"}).encode(),
            "ValueError('versions must be a list of at most 16')",
        ),
    ],
)
def test_a_malformed_message_says_what_is_wrong_with_it(body: bytes, complaint: str) -> None:
    with pytest.raises(RemoteProtocolError) as refused:
        decode_message(body)
    assert str(refused.value) == f"malformed control message: {complaint}"


def test_a_hello_may_list_as_many_versions_as_allowed() -> None:
    hello = {"type": "hello", "versions": list(range(16)), "name": "x"}
    assert decode_message(json.dumps(hello).encode()) == Hello(tuple(range(16)), "x")


@pytest.mark.parametrize(
    "item",
    [
        "1",
        '"redis"',
        "[6379]",
        "null",
        '{"alias": "r"}',
        '{"alias": 5, "port": 1}',
        '{"port": 0}',
        '{"port": 65536}',
        '{"port": true}',
        '{"alias": "bad alias", "port": 1}',
        '{"alias": "x\\n2030-01-01 INFO forged", "port": 1}',
        '{"alias": "Redis", "port": 1}',
        '{"alias": "' + "a" * 64 + '", "port": 1}',
        '{"alias": "", "port": 1}',
    ],
)
def test_a_catalog_entry_the_client_cannot_use_is_skipped_and_counted(item: str) -> None:
    body = b'{"type": "catalog", "catalog": [' + item.encode() + b', {"alias": "ok", "port": 2}]}'
    assert decode_message(body) == CatalogChanged((ServiceInfo("ok", 2),), skipped=1)


def test_a_catalog_is_taken_up_to_its_bound() -> None:
    catalog = [{"alias": None, "port": 1 + i % 65535} for i in range(MAX_CATALOG + 10)]
    body = json.dumps({"type": "welcome", "version": 1, "server": "s", "catalog": catalog})
    welcome = decode_message(body.encode())
    assert isinstance(welcome, Welcome)
    assert len(welcome.catalog) == MAX_CATALOG and welcome.skipped == 10


@pytest.mark.parametrize("opener", [b"[", b'{"a":'])
def test_deeply_nested_json_is_a_remote_protocol_error(opener: bytes) -> None:
    # Valid-looking JSON well under MAX_MESSAGE that would blow the parser's stack.
    body = opener * 100_000
    with pytest.raises(RemoteProtocolError):
        MessageReader().feed(struct.pack(">I", len(body)) + body)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(
        ["hello", "welcome", "challenge", "auth", "refusal", "catalog", "going_away", "other"]
    ),
    fields=st.dictionaries(
        st.sampled_from(
            [
                "versions",
                "name",
                "software",
                "version",
                "server",
                "reason",
                "text",
                "token_name",
                "nonce",
                "proof",
            ]
        ),
        json_values,
    ),
    catalog=st.none()
    | st.lists(
        st.dictionaries(st.sampled_from(["alias", "port", "x"]), json_values) | json_values,
        max_size=3,
    ),
)
def test_hostile_control_messages_raise_only_remote_protocol_error(
    kind: str, fields: dict[str, Any], catalog: list[dict[str, Any]] | None
) -> None:
    obj: dict[str, Any] = {"type": kind, **fields}
    if catalog is not None:
        obj["catalog"] = catalog
    with contextlib.suppress(RemoteProtocolError):
        decode_message(json.dumps(obj).encode())


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=200))
def test_garbage_bodies_raise_only_remote_protocol_error(body: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        MessageReader().feed(struct.pack(">I", len(body)) + body)


def test_unknown_fields_are_ignored() -> None:
    # A later version may add fields anywhere; this one must read what it knows.
    extra = {"future": {"nested": [1, 2]}, "flag": True}
    cases: list[tuple[dict[str, Any], Message]] = [
        (
            {"type": "hello", "versions": [1], "name": "b", "software": "s", **extra},
            Hello((1,), "b", "s"),
        ),
        (
            {
                "type": "welcome",
                "version": 1,
                "server": "a",
                "catalog": [{"alias": "redis", "port": 6379, "weight": 3}],
                **extra,
            },
            Welcome(1, "a", (ServiceInfo("redis", 6379),)),
        ),
        (
            {"type": "refusal", "reason": 12, "text": "no", **extra},
            Refusal(Reason.AUTH_FAILED, "no"),
        ),
        (
            {"type": "catalog", "catalog": [{"port": 5432, "tls": True}], **extra},
            CatalogChanged((ServiceInfo(None, 5432),)),
        ),
        (
            {"type": "going_away", "reason": 8, "text": "", **extra},
            GoingAway(Reason.SHUTTING_DOWN, ""),
        ),
        ({"type": "challenge", "nonce": "AAE=", **extra}, Challenge(b"\x00\x01")),
        ({"type": "auth", "proof": "/w==", **extra}, Auth(b"\xff")),
    ]
    reader = MessageReader()
    assert reader.feed(b"".join(framed(obj) for obj, _ in cases)) == [m for _, m in cases]


def test_optional_fields_may_be_missing() -> None:
    assert decode_message(b'{"type":"hello","versions":[1],"name":"b"}') == Hello((1,), "b", "")
    assert decode_message(b'{"type":"refusal","reason":1}') == Refusal(Reason.UNKNOWN_SERVICE, "")


def test_unknown_reason_code_reads_as_internal_error() -> None:
    # A newer peer's new reason must not end the session.
    assert decode_message(b'{"type":"going_away","reason":999,"text":"new"}') == GoingAway(
        Reason.INTERNAL_ERROR, "new"
    )


@pytest.mark.parametrize(
    ("offered", "expected"),
    [((1,), 1), ((0, 1, 7), 1), ((1, 2), 2), ((2, 3), 2), ((3, 4), None), ((), None)],
)
def test_negotiate_version(offered: tuple[int, ...], expected: int | None) -> None:
    assert negotiate_version(offered) == expected


@given(offered=st.lists(st.integers(0, 10), max_size=6).map(tuple))
def test_negotiated_version_is_the_highest_both_speak(offered: tuple[int, ...]) -> None:
    common = set(offered) & set(SUPPORTED_VERSIONS)
    assert negotiate_version(offered) == (max(common) if common else None)


# ------------------------------------------------------------------ stream header


def test_stream_header_layout() -> None:
    assert StreamHeader("redis").encode() == bytes([HEADER_VERSION, 5]) + b"redis"


@FAST
@given(
    name=st.text(min_size=1, max_size=60).filter(lambda s: 0 < len(s.encode()) < 256),
    rest=st.binary(max_size=50),
    points=st.lists(st.integers(min_value=0), max_size=10),
)
def test_stream_header_parses_incrementally_and_returns_the_rest(
    name: str, rest: bytes, points: list[int]
) -> None:
    parser = StreamHeaderParser()
    chunks = split(StreamHeader(name).encode() + rest, points)
    header = None
    after = b""
    for i, chunk in enumerate(chunks):
        header, after = parser.feed(chunk)
        if header is not None:
            # Bytes in the chunks that follow are consumer data the driver passes on as is.
            after += b"".join(chunks[i + 1 :])
            break
    assert header == StreamHeader(name)
    assert after == rest


def test_stream_header_waits_for_the_whole_name() -> None:
    parser = StreamHeaderParser()
    assert parser.feed(b"\x01") == (None, b"")
    assert parser.feed(b"\x05red") == (None, b"")
    assert parser.feed(b"is\r\nPING") == (StreamHeader("redis"), b"\r\nPING")


def test_stream_header_name_length_bounds() -> None:
    assert StreamHeaderParser().feed(StreamHeader("x" * 255).encode())[0] == StreamHeader("x" * 255)
    for service in ("x" * 256, "é" * 128, ""):  # é is two bytes: 256 of them
        with pytest.raises(ValueError) as refused:
            StreamHeader(service).encode()
        assert str(refused.value) == "service reference must be 1..255 bytes"


@pytest.mark.parametrize("version", [0, 3, 255])
def test_stream_header_bad_version_is_refused_at_once(version: int) -> None:
    with pytest.raises(RemoteProtocolError, match="version"):
        StreamHeaderParser().feed(bytes([version, 5]))


def test_stream_header_empty_name_is_refused() -> None:
    with pytest.raises(RemoteProtocolError, match=r"^empty service name in stream header$"):
        StreamHeaderParser().feed(bytes([HEADER_VERSION, 0]) + b"data")


def test_stream_header_name_must_be_utf8() -> None:
    with pytest.raises(RemoteProtocolError, match=r"^service name in stream header is not UTF-8$"):
        StreamHeaderParser().feed(bytes([HEADER_VERSION, 2]) + b"\xff\xfe")


# ------------------------------------------------------------------ stream answer


def test_connected_answer_is_three_bytes() -> None:
    assert CONNECTED == b"\x00\x00\x00"
    assert StreamAnswerParser().feed(CONNECTED + b"+PONG\r\n") == (
        StreamAnswer(Reason.OK),
        b"+PONG\r\n",
    )
    assert StreamAnswer(Reason.OK).ok
    assert not StreamAnswer(Reason.BACKEND_REFUSED).ok


@FAST
@given(
    reason=st.sampled_from(Reason),
    text=st.text(max_size=100),
    rest=st.binary(max_size=50),
    points=st.lists(st.integers(min_value=0), max_size=10),
)
def test_stream_answer_parses_incrementally_and_returns_the_rest(
    reason: Reason, text: str, rest: bytes, points: list[int]
) -> None:
    parser = StreamAnswerParser()
    chunks = split(StreamAnswer(reason, text).encode() + rest, points)
    answer = None
    after = b""
    for i, chunk in enumerate(chunks):
        answer, after = parser.feed(chunk)
        if answer is not None:
            after += b"".join(chunks[i + 1 :])
            break
    assert answer == StreamAnswer(reason, text)
    assert after == rest


def test_stream_answer_text_is_cut_to_the_maximum() -> None:
    data = StreamAnswer(Reason.BACKEND_UNREACHABLE, "x" * (MAX_ANSWER_TEXT + 100)).encode()
    answer, rest = StreamAnswerParser().feed(data)
    assert answer == StreamAnswer(Reason.BACKEND_UNREACHABLE, "x" * MAX_ANSWER_TEXT)
    assert rest == b""


def test_stream_answer_overlong_text_is_refused_from_its_length() -> None:
    with pytest.raises(RemoteProtocolError, match="too long"):
        StreamAnswerParser().feed(struct.pack(">BH", 3, MAX_ANSWER_TEXT + 1))


def test_an_answer_still_arriving_gives_back_no_bytes() -> None:
    # The client credits the stream with what the parser did not give back: bytes returned
    # before the answer is complete would be credited twice.
    data = StreamAnswer(Reason.BACKEND_UNREACHABLE, "refused").encode() + b"after"
    parser = StreamAnswerParser()
    assert parser.feed(data[:2]) == (None, b"")  # not even the code and the length
    assert parser.feed(data[2:6]) == (None, b"")  # the text is still on its way
    assert parser.feed(data[6:]) == (StreamAnswer(Reason.BACKEND_UNREACHABLE, "refused"), b"after")


def test_an_answer_text_that_is_not_utf8_is_shown_with_replacements() -> None:
    answer, rest = StreamAnswerParser().feed(struct.pack(">BH", 3, 4) + b"no\xff!tail")
    assert answer == StreamAnswer(Reason(3), "no\ufffd!")
    assert rest == b"tail"


def test_stream_answer_unknown_reason_reads_as_internal_error() -> None:
    answer, _ = StreamAnswerParser().feed(struct.pack(">BH", 200, 2) + b"hm")
    assert answer == StreamAnswer(Reason.INTERNAL_ERROR, "hm")


# ------------------------------------------------------------- bounded peer strings


@pytest.mark.parametrize(
    "hello",
    [
        {"type": "hello", "versions": [1], "name": "n" * 256},
        {"type": "hello", "versions": [1], "name": "n", "software": "s" * 256},
        {"type": "hello", "versions": [1], "name": "n", "token_name": "t" * 256, "nonce": ""},
        {"type": "hello", "versions": list(range(17)), "name": "n"},
        {"type": "hello", "versions": [10**100], "name": "n"},
        {"type": "welcome", "version": 1, "server": "s" * 256, "catalog": []},
    ],
)
def test_names_and_versions_a_peer_declares_are_bounded(hello: dict[str, object]) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        decode_message(json.dumps(hello).encode())
    assert len(str(caught.value)) < 200


def test_a_name_of_the_maximum_length_is_taken_and_a_longer_one_is_refused_by_length() -> None:
    hello = {"type": "hello", "versions": [1], "name": "n" * 255}
    assert decode_message(json.dumps(hello).encode()) == Hello((1,), "n" * 255)
    hello["name"] = "n" * 256
    with pytest.raises(RemoteProtocolError) as refused:
        decode_message(json.dumps(hello).encode())
    assert "a name of 256 characters (at most 255)" in str(refused.value)


def test_a_welcome_carries_the_identity_the_server_gave() -> None:
    welcome = Welcome(1, "host-a", (), identity="edge-b")
    assert b'"identity":"edge-b"' in encode_message(welcome)
    assert MessageReader().feed(encode_message(welcome)) == [welcome]


def test_a_malformed_message_does_not_quote_a_huge_value() -> None:
    body = json.dumps({"type": "hello", "versions": ["v" * 100_000], "name": "n"}).encode()
    with pytest.raises(RemoteProtocolError) as caught:
        decode_message(body)
    assert len(str(caught.value)) < 200


def test_a_challenge_names_the_version_that_says_how_to_prove() -> None:
    # A server of version 1 sends no version: its challenge asks for a version 1 proof.
    assert decode_message(b'{"type":"challenge","nonce":"AAE="}') == Challenge(b"\x00\x01", 1)
    encoded = encode_message(Challenge(b"\x00\x01", 2))
    assert b'"version":2' in encoded
    assert decode_message(encoded[4:]) == Challenge(b"\x00\x01", 2)


def test_a_udp_catalog_entry_says_so_and_a_tcp_one_is_written_as_before() -> None:
    catalog = (ServiceInfo("dns", 53, "udp"), ServiceInfo("redis", 6379))
    body = encode_message(CatalogChanged(catalog))[4:]
    assert json.loads(body)["catalog"] == [
        {"alias": "dns", "port": 53, "transport": "udp"},
        {"alias": "redis", "port": 6379},
    ]
    assert decode_message(body) == CatalogChanged(catalog)


def test_a_catalog_entry_of_an_unknown_transport_is_skipped() -> None:
    body = b'{"type":"catalog","catalog":[{"alias":"x","port":1,"transport":"sctp"}]}'
    assert decode_message(body) == CatalogChanged((), skipped=1)
