"""The fault proxy does what the other tests rely on it to do, measured against an echo."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest

from tests.reliability.backends import EchoBackend
from tests.reliability.faultproxy import DOWN, UP, FaultProxy
from tests.reliability.support import MIB, Transfer, echo_transfer, run

pytestmark = pytest.mark.timeout(30)


def connect(proxy: FaultProxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_exactly(sock: socket.socket, size: int) -> bytes:
    out = b""
    while len(out) < size:
        chunk = sock.recv(size - len(out))
        if not chunk:
            break
        out += chunk
    return out


def test_latency_delays_each_direction_without_capping_throughput(
    make_echo: Callable[..., EchoBackend], make_proxy: Callable[..., FaultProxy]
) -> None:
    proxy = make_proxy(make_echo().port)
    proxy.set_latency(up=0.1, down=0.1)
    with connect(proxy) as sock:
        sock.sendall(b"x")  # the link is established before the clock starts
        assert read_exactly(sock, 1) == b"x"
        start = time.monotonic()
        sock.sendall(b"ping")
        assert read_exactly(sock, 4) == b"ping"
        rtt = time.monotonic() - start
    assert 0.2 <= rtt < 0.35, rtt
    # 16 MiB through a 200 ms round trip: a delay applied per chunk in series would need
    # 256 chunks x 0.2 s; timestamped queues need about one round trip more than the copy.
    transfer = run(echo_transfer(proxy.port, Transfer(16 * MIB, seed=1)), timeout=20)
    assert transfer.exact, transfer
    assert transfer.seconds < 3.0, transfer.seconds


def test_bandwidth_caps_one_direction(
    make_echo: Callable[..., EchoBackend], make_proxy: Callable[..., FaultProxy]
) -> None:
    proxy = make_proxy(make_echo().port)
    proxy.set_bandwidth(up=1_000_000)
    transfer = run(echo_transfer(proxy.port, Transfer(600_000, seed=2)), timeout=10)
    assert transfer.exact, transfer
    assert 0.5 <= transfer.seconds < 0.9, transfer.seconds  # 600 kB at 1 MB/s (20 ms burst)


def test_cut_closes_both_sides(
    make_echo: Callable[..., EchoBackend], make_proxy: Callable[..., FaultProxy]
) -> None:
    echo = make_echo()
    proxy = make_proxy(echo.port)
    with connect(proxy) as sock:
        sock.sendall(b"hello")
        assert read_exactly(sock, 5) == b"hello"
        assert proxy.cut() == 1
        assert read_exactly(sock, 1) == b""  # EOF
    deadline = time.monotonic() + 2
    while not echo.endings and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [e.how for e in echo.endings] in (["eof"], ["closed"], ["reset"])
    assert proxy.links() == []


def test_reset_aborts_both_sides(
    make_echo: Callable[..., EchoBackend], make_proxy: Callable[..., FaultProxy]
) -> None:
    echo = make_echo()
    proxy = make_proxy(echo.port)
    with connect(proxy) as sock:
        sock.sendall(b"hello")
        assert read_exactly(sock, 5) == b"hello"
        assert proxy.reset() == 1
        with pytest.raises(ConnectionResetError):
            sock.recv(1)
    deadline = time.monotonic() + 2
    while not echo.endings and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [e.how for e in echo.endings] == ["reset"]


def test_blackhole_keeps_sockets_open_and_forwards_nothing(
    make_echo: Callable[..., EchoBackend], make_proxy: Callable[..., FaultProxy]
) -> None:
    echo = make_echo()
    proxy = make_proxy(echo.port)
    with connect(proxy) as sock:
        sock.sendall(b"before")
        assert read_exactly(sock, 6) == b"before"
        assert proxy.blackhole() == 1
        sock.sendall(b"after")
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # neither an answer nor an EOF: the path is just dead
        assert echo.endings == [] and echo.open == 1
        assert [link.frozen for link in proxy.links()] == [True]
        with connect(proxy) as fresh:  # new links are not black-holed unless asked
            fresh.sendall(b"new")
            assert read_exactly(fresh, 3) == b"new"


def test_corrupt_flips_exactly_one_byte_at_the_offset(
    make_echo: Callable[..., EchoBackend], make_proxy: Callable[..., FaultProxy]
) -> None:
    proxy = make_proxy(make_echo().port)
    with connect(proxy) as sock:
        sock.sendall(b"0123")
        assert read_exactly(sock, 4) == b"0123"
        proxy.corrupt(UP, 6)
        proxy.corrupt(DOWN, 12)
        sock.sendall(b"456789abcdef")
        back = read_exactly(sock, 12)
    expected = bytearray(b"456789abcdef")
    expected[2] ^= 0xFF  # offset 6 of the upstream direction
    expected[8] ^= 0xFF  # offset 12 of the downstream direction
    assert back == bytes(expected)
