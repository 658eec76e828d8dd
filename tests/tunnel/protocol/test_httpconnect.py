"""The CONNECT machine: the request it sends, and what it makes of every kind of answer."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel.errors import EgressFailed
from tunnel.protocol.egress import Kind
from tunnel.protocol.httpconnect import HEADER_LIMIT, LINE_LIMIT, MAX_LINES, HttpConnect


def answer(data: bytes, credentials: tuple[str, str] | None = None) -> tuple[int, bool]:
    """Feed ``data`` to a fresh machine; (bytes used, whether the way is open)."""
    machine = HttpConnect("tunnel.example", 7000, credentials)
    step = machine.receive(data)
    return step.consumed, step.done


def refusal(data: bytes, credentials: tuple[str, str] | None = None) -> EgressFailed:
    with pytest.raises(EgressFailed) as failed:
        answer(data, credentials)
    return failed.value


def test_the_request_names_the_target_and_carries_basic_credentials() -> None:
    request = HttpConnect("tunnel.example", 7000, ("alice", "pa:ss")).start()
    head, _, rest = request.partition(b"\r\n\r\n")
    assert rest == b""
    lines = head.split(b"\r\n")
    assert lines[0] == b"CONNECT tunnel.example:7000 HTTP/1.1"
    assert b"Host: tunnel.example:7000" in lines
    assert (
        f"Proxy-Authorization: Basic {base64.b64encode(b'alice:pa:ss').decode()}".encode() in lines
    )
    assert b"Proxy-Authorization" not in HttpConnect("h", 1, None).start()


def test_an_ipv6_target_is_bracketed() -> None:
    assert HttpConnect("::1", 7000, None).start().startswith(b"CONNECT [::1]:7000 HTTP/1.1\r\n")


def test_a_200_opens_the_way_and_the_bytes_after_it_are_left_for_the_tunnel() -> None:
    head = b"HTTP/1.1 200 Connection established\r\nProxy-Agent: x\r\n\r\n"
    assert answer(head + b"\x16\x03\x01") == (len(head), True)
    assert answer(b"HTTP/1.0 200 OK\n\nrest") == (len(b"HTTP/1.0 200 OK\n\n"), True)


def test_an_answer_cut_anywhere_is_read_the_same() -> None:
    head = b"HTTP/1.1 200 Connection established\r\nVia: 1.1 proxy\r\n\r\n"
    for cut in range(1, len(head)):
        machine = HttpConnect("h", 1, None)
        first = machine.receive(head[:cut])
        assert (first.consumed, first.done) == (cut, False)
        second = machine.receive(head[cut:] + b"tunnel")
        assert (second.consumed, second.done) == (len(head) - cut, True)


def test_407_without_credentials_asks_for_them_and_names_the_schemes() -> None:
    failed = refusal(
        b"HTTP/1.1 407 Proxy Authentication Required\r\n"
        b'Proxy-Authenticate: Basic realm="x"\r\nProxy-Authenticate: Negotiate\r\n\r\n'
    )
    assert failed.label == Kind.AUTH
    assert str(failed) == (
        "wants credentials (407 Proxy Authentication Required; it offers Basic, Negotiate)"
    )


def test_407_or_401_with_credentials_says_they_were_refused() -> None:
    for status in (b"407 Proxy Authentication Required", b"401 Unauthorized"):
        failed = refusal(b"HTTP/1.1 " + status + b"\r\n\r\n", ("alice", "wrong"))
        assert failed.label == Kind.AUTH
        assert str(failed) == f"refused the credentials ({status.decode()})"


@pytest.mark.parametrize(
    ("status", "kind", "text"),
    [
        (b"403 Forbidden", Kind.FORBIDDEN, "does not allow it (403 Forbidden)"),
        (b"502 Bad Gateway", Kind.TARGET, "could not reach it (502 Bad Gateway)"),
        (b"503 Service Unavailable", Kind.TARGET, "could not reach it (503 Service Unavailable)"),
        (b"500 Unable to connect", Kind.REFUSED, "refused it (500 Unable to connect)"),
        (b"405", Kind.REFUSED, "refused it (405)"),
    ],
)
def test_each_refusal_is_named_with_its_status(status: bytes, kind: Kind, text: str) -> None:
    failed = refusal(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")
    assert (failed.label, str(failed)) == (kind, text)


def test_garbage_is_told_at_its_first_bytes_escaped() -> None:
    failed = refusal(b"\x05\x00\x1b[2J")
    assert failed.label == Kind.PROTOCOL
    assert str(failed) == "answered '\\x05\\x00\\x1b[2J', not HTTP"
    failed = refusal(b"HTTP/2 200\r\n")
    assert "not an HTTP status line" in str(failed)


def test_the_proxys_reason_is_escaped_and_bounded() -> None:
    failed = refusal(b"HTTP/1.1 403 evil\x1b[31m\tline" + b"x" * 1000 + b"\r\n\r\n")
    text = str(failed)
    assert "\x1b" not in text and "\t" not in text
    assert "evil\\x1b[31m\\tline" in text
    assert len(text) < 200


def test_a_long_line_is_cut_off_at_its_bound_without_waiting_for_its_end() -> None:
    machine = HttpConnect("h", 1, None)
    machine.receive(b"HTTP/1.1 200 OK\r\nX: ")
    with pytest.raises(EgressFailed, match=f"header line longer than {LINE_LIMIT}"):
        for _ in range(LINE_LIMIT // 512 + 2):
            machine.receive(b"y" * 512)


def test_the_whole_header_and_its_line_count_are_bounded() -> None:
    machine = HttpConnect("h", 1, None)
    machine.receive(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(EgressFailed, match=f"more than {MAX_LINES} header lines"):
        for _ in range(MAX_LINES + 1):
            machine.receive(b"X: y\r\n")
    machine = HttpConnect("h", 1, None)
    machine.receive(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(EgressFailed, match=f"header longer than {HEADER_LIMIT}"):
        for _ in range(MAX_LINES):
            machine.receive(b"X: " + b"y" * 1000 + b"\r\n")


def test_a_host_that_would_split_the_request_is_refused() -> None:
    for host in ("a b", "a\r\nX: y", "", "user@host"):
        with pytest.raises(ValueError):
            HttpConnect(host, 1, None)


@given(st.binary(max_size=3000), st.integers(min_value=1, max_value=600))
def test_any_answer_opens_the_way_fails_in_words_or_waits_for_more(data: bytes, cut: int) -> None:
    machine = HttpConnect("h", 1, None)
    try:
        for start in range(0, len(data), cut):
            chunk = data[start : start + cut]
            step = machine.receive(chunk)
            assert 0 < step.consumed <= len(chunk)
            if step.done:
                return
            assert step.consumed == len(chunk)
    except EgressFailed as exc:
        assert str(exc).isprintable() and len(str(exc)) < 300
