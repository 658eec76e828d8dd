"""The flow header and the datagram framing, in memory: boundaries kept, hostile lengths refused."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel.errors import RemoteProtocolError
from tunnel.protocol.datagrams import (
    FLOW_HEADER,
    MAX_DATAGRAM,
    DatagramTooLarge,
    Deframer,
    FlowHeaderParser,
    encode_flow_header,
    frame,
    is_flow,
)
from tunnel.protocol.flows import FlowTable
from tunnel.protocol.messages import StreamHeaderParser


def test_the_flow_header_round_trips_and_is_told_apart_from_a_stream_header() -> None:
    header = encode_flow_header("dns:53")
    assert is_flow(header) and not is_flow(b"\x01\x03dns") and not is_flow(b"")
    parser = FlowHeaderParser()
    assert parser.feed(header[:3]) == (None, b"")
    assert parser.feed(header[3:] + b"rest") == ("dns:53", b"rest")


def test_a_server_without_flows_refuses_the_flow_header() -> None:
    # What an older server's stream header parser makes of it: an unknown version, which it
    # answers with BAD_HEADER and an RST.
    with pytest.raises(
        RemoteProtocolError, match=f"unsupported stream header version {FLOW_HEADER}"
    ):
        StreamHeaderParser().feed(encode_flow_header("dns"))


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\x01\x03dns", "starts with 16, not 1"),
        (b"\x10\x00", "empty service name"),
        (b"\x10\x02\xff\xfe", "not UTF-8"),
    ],
)
def test_a_bad_flow_header_is_a_protocol_error(data: bytes, problem: str) -> None:
    with pytest.raises(RemoteProtocolError, match=problem):
        FlowHeaderParser().feed(data)


def test_datagram_boundaries_survive_any_split() -> None:
    datagrams = [b"", b"a", b"question?" * 10, bytes(MAX_DATAGRAM)]
    wire = b"".join(frame(datagram) for datagram in datagrams)
    for cut in (1, 2, 3, 7, 1000, len(wire)):
        deframer = Deframer()
        out = []
        for start in range(0, len(wire), cut):
            out += deframer.feed(wire[start : start + cut])
        assert out == datagrams
        assert deframer.pending == 0
        deframer.finish()


@given(st.lists(st.binary(max_size=300), max_size=20), st.integers(1, 64))
def test_framing_round_trips(datagrams: list[bytes], cut: int) -> None:
    wire = b"".join(frame(datagram) for datagram in datagrams)
    deframer = Deframer()
    out = []
    for start in range(0, len(wire), cut):
        out += deframer.feed(wire[start : start + cut])
    assert out == datagrams


def test_a_datagram_beyond_the_bound_cannot_be_framed() -> None:
    with pytest.raises(DatagramTooLarge, match="65508 bytes"):
        frame(bytes(MAX_DATAGRAM + 1))


@pytest.mark.parametrize("length", [MAX_DATAGRAM + 1, 0xFFFF])
def test_a_hostile_length_prefix_is_refused_before_waiting_for_its_bytes(length: int) -> None:
    deframer = Deframer()
    assert deframer.feed(frame(b"ok")) == [b"ok"]
    with pytest.raises(RemoteProtocolError, match=f"length prefix {length} is beyond the bound"):
        deframer.feed(struct.pack(">H", length))


def test_a_smaller_bound_is_kept_too() -> None:
    with pytest.raises(RemoteProtocolError, match="beyond the bound of 512"):
        Deframer(max_datagram=512).feed(frame(bytes(513)))


def test_a_flow_that_ends_inside_a_datagram_is_truncated() -> None:
    deframer = Deframer()
    assert deframer.feed(frame(b"whole") + frame(b"cut short")[:5]) == [b"whole"]
    assert deframer.pending == 5
    with pytest.raises(RemoteProtocolError, match=r"ended inside a datagram \(5 bytes truncated\)"):
        deframer.finish()
    with pytest.raises(RemoteProtocolError, match="1 bytes truncated"):
        half_prefix = Deframer()
        half_prefix.feed(b"\x00")
        half_prefix.finish()


@given(st.binary(max_size=2000))
def test_garbage_yields_datagrams_or_a_protocol_error_and_nothing_else(data: bytes) -> None:
    deframer = Deframer()
    try:
        for datagram in deframer.feed(data):
            assert len(datagram) <= MAX_DATAGRAM
    except RemoteProtocolError:
        return
    assert deframer.pending <= 2 + MAX_DATAGRAM


# --- the flow table


def test_flows_expire_when_idle_and_activity_keeps_them() -> None:
    table: FlowTable[tuple[str, int], str] = FlowTable(max_flows=4, idle_timeout=60.0)
    assert table.next_expiry() is None
    assert table.add(("127.0.0.1", 1), "a", now=0.0)
    assert table.add(("127.0.0.1", 2), "b", now=10.0)
    table.touch(("127.0.0.1", 1), now=30.0)
    assert table.next_expiry() == 70.0  # b, last active at 10
    assert table.expired(now=69.9) == []
    assert table.expired(now=70.0) == [(("127.0.0.1", 2), "b")]
    assert table.next_expiry() == 90.0
    assert table.expired(now=95.0) == [(("127.0.0.1", 1), "a")]
    assert len(table) == 0


def test_a_new_source_beyond_the_bound_is_refused() -> None:
    table: FlowTable[int, str] = FlowTable(max_flows=2)
    assert table.add(1, "a", 0.0) and table.add(2, "b", 0.0)
    assert table.full
    assert not table.add(3, "c", 0.0)
    assert 3 not in table and len(table) == 2
    assert table.remove(1) == "a"
    assert table.add(3, "c", 0.0)
    with pytest.raises(KeyError):
        table.add(3, "again", 0.0)


def test_the_table_refuses_nonsense_bounds() -> None:
    with pytest.raises(ValueError, match="max_flows"):
        FlowTable(max_flows=0)
    with pytest.raises(ValueError, match="idle_timeout"):
        FlowTable(idle_timeout=0)
