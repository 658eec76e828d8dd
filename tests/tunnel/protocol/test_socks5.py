"""The SOCKS5 machine: methods, RFC 1929 credentials, the request, and each reply code."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel.errors import EgressFailed
from tunnel.protocol.egress import Kind
from tunnel.protocol.socks5 import REPLIES, Socks5Connect

SUCCESS_V4 = b"\x05\x00\x00\x01\x7f\x00\x00\x01\x1f\x90"


def run(machine: Socks5Connect, *answers: bytes) -> list[bytes]:
    """Feed each answer whole; what the machine sent, first bytes included."""
    sent = [machine.start()]
    for data in answers:
        step = machine.receive(data)
        assert step.consumed == len(data)
        sent.append(step.send)
    return sent


def test_a_name_goes_to_the_proxy_to_resolve() -> None:
    machine = Socks5Connect("tunnel.example", 7000, None)
    sent = run(machine, b"\x05\x00", SUCCESS_V4)
    assert sent[0] == b"\x05\x01\x00"
    assert sent[1] == b"\x05\x01\x00\x03\x0etunnel.example\x1b\x58"
    assert machine.done


def test_addresses_go_as_addresses() -> None:
    sent = run(Socks5Connect("10.1.2.3", 80, None), b"\x05\x00")
    assert sent[1] == b"\x05\x01\x00\x01\x0a\x01\x02\x03\x00\x50"
    sent = run(Socks5Connect("::1", 80, None), b"\x05\x00")
    assert sent[1] == b"\x05\x01\x00\x04" + b"\x00" * 15 + b"\x01\x00\x50"


def test_credentials_are_offered_and_sent_as_rfc_1929_says() -> None:
    machine = Socks5Connect("h", 1, ("alice", "s3cret"))
    sent = run(machine, b"\x05\x02", b"\x01\x00")
    assert sent[0] == b"\x05\x02\x00\x02"
    assert sent[1] == b"\x01\x05alice\x06s3cret"
    assert sent[2] == b"\x05\x01\x00\x03\x01h\x00\x01"


def test_the_reply_is_read_to_its_last_byte_and_no_further() -> None:
    name_reply = b"\x05\x00\x00\x03\x09proxy.lan\x04\x38"
    machine = Socks5Connect("h", 1, None)
    run(machine, b"\x05\x00")
    used = 0
    data = name_reply + b"tunnel bytes"
    while not machine.done:
        used += machine.receive(data[used:]).consumed
    assert used == len(name_reply)


def test_a_reply_cut_anywhere_is_read_the_same() -> None:
    reply = b"\x05\x00\x00\x04" + b"\x00" * 16 + b"\x00\x50"
    for cut in range(1, len(reply)):
        machine = Socks5Connect("h", 1, None)
        run(machine, b"\x05\x00")
        step = machine.receive(reply[:cut])
        assert (step.consumed, step.done) == (cut, False)
        rest = reply[cut:]
        while rest:
            rest = rest[machine.receive(rest).consumed :]
        assert machine.done


@pytest.mark.parametrize("code", sorted(REPLIES))
def test_each_refusal_is_named_by_its_reply_code(code: int) -> None:
    machine = Socks5Connect("h", 1, None)
    run(machine, b"\x05\x00")
    with pytest.raises(EgressFailed) as failed:
        machine.receive(bytes([5, code, 0, 1, 0]))
    name, kind = REPLIES[code]
    assert str(failed.value) == f"refused it: {name} (SOCKS5 reply {code})"
    assert failed.value.label == kind


def test_the_rfc_names_of_the_codes() -> None:
    assert REPLIES[2][0] == "connection not allowed by ruleset"
    assert REPLIES[5][0] == "connection refused"
    assert REPLIES[2][1] == Kind.FORBIDDEN and REPLIES[4][1] == Kind.TARGET


def test_an_unassigned_code_is_given_as_a_number() -> None:
    machine = Socks5Connect("h", 1, None)
    run(machine, b"\x05\x00")
    with pytest.raises(EgressFailed, match="unassigned reply code 42"):
        machine.receive(b"\x05\x2a\x00\x01\x00")


def test_no_acceptable_method_without_credentials_asks_for_them() -> None:
    with pytest.raises(EgressFailed) as failed:
        run(Socks5Connect("h", 1, None), b"\x05\xff")
    assert failed.value.label == Kind.AUTH
    assert str(failed.value) == "accepts no connection without authentication"
    with pytest.raises(EgressFailed) as failed:
        run(Socks5Connect("h", 1, ("a", "b")), b"\x05\xff")
    assert failed.value.label == Kind.REFUSED


def test_refused_credentials_are_named() -> None:
    with pytest.raises(EgressFailed) as failed:
        run(Socks5Connect("h", 1, ("alice", "bad")), b"\x05\x02", b"\x01\x01")
    assert failed.value.label == Kind.AUTH
    assert str(failed.value) == "refused the username and password (status 1)"


@pytest.mark.parametrize(
    ("answers", "text"),
    [
        ((b"HT",), "answered version 72, not SOCKS5 (an HTTP proxy? then give http://)"),
        ((b"\x04\x5a",), "answered version 4, not SOCKS5"),
        ((b"\x05\x02",), "chose method 2, which was not offered"),
        ((b"\x05\x00", b"\x05\x00\x00\x07\x00"), "answered with address type 7"),
        ((b"\x05\x00", b"\x04\x00\x00\x01\x00"), "answered the request with version 4"),
    ],
)
def test_broken_answers_are_protocol_errors(answers: tuple[bytes, ...], text: str) -> None:
    with pytest.raises(EgressFailed) as failed:
        run(Socks5Connect("h", 1, None), *answers)
    assert (failed.value.label, str(failed.value)) == (Kind.PROTOCOL, text)


def test_fields_too_long_for_one_length_byte_are_refused() -> None:
    with pytest.raises(ValueError):
        Socks5Connect("x" * 256, 1, None)
    with pytest.raises(ValueError):
        Socks5Connect("h", 1, ("u" * 256, "p"))


@given(st.binary(max_size=600), st.integers(min_value=1, max_value=64), st.booleans())
def test_any_answer_opens_the_way_fails_in_words_or_waits(
    data: bytes, cut: int, credentials: bool
) -> None:
    machine = Socks5Connect("h", 1, ("u", "p") if credentials else None)
    machine.start()
    try:
        while data and not machine.done:
            step = machine.receive(data[:cut])
            assert 0 < step.consumed <= min(cut, len(data))
            data = data[step.consumed :]
    except EgressFailed as exc:
        assert str(exc).isprintable() and len(str(exc)) < 200
