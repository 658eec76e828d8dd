"""UDP services through the pair, with real programs: dig against dnsmasq, many sources at once,
a one-way flow to a UDP sink, drops under overload, idle expiry, and bad input.

Every program runs on loopback and is stopped by its own pid (the ``processes`` fixture).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.environment import missing
from tests.integration.support import AmbassadorServer, Processes, Started
from tests.integration.unixsockets import redis_cli_s, wait_for_socket
from tests.reliability import rawpeer

DNS_NAME = "example.test"
DNS_ANSWER = "192.0.2.7"
SOURCES = 50  # concurrent dig processes, each asking its own name


def udp_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def dns_port() -> int:
    """A loopback port free for UDP and for TCP: dnsmasq listens on both, and a port picked for
    UDP alone is now and then some connection's TCP port (its start then fails)."""
    for _ in range(50):
        port = udp_port()
        with socket.socket() as tcp:
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise AssertionError("no loopback port free for both UDP and TCP in 50 tries")


def metric(port: int, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` with ``labels`` on a role's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    total = 0.0
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{([^}}]*)\}} (\S+)", line)
        if match and all(f'{key}="{value}"' in match[1] for key, value in labels.items()):
            total += float(match[2])
    return total


def dig(port: int, name: str = DNS_NAME, host: str = "127.0.0.1") -> str:
    done = subprocess.run(
        ["dig", f"@{host}", "-p", str(port), name, "+short", "+tries=1", "+time=3"],
        capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    return done.stdout.strip()


@pytest.fixture
def dnsmasq(processes: Processes) -> Callable[..., int]:
    """``dnsmasq(*records)``: a dnsmasq on a free loopback UDP port answering example.test and
    each ``/NAME/ADDRESS`` record; its port."""
    if not os.path.exists("/usr/sbin/dnsmasq"):
        missing("dnsmasq (Debian package dnsmasq-base)")
    if not os.path.exists("/usr/bin/dig"):
        missing("dig (Debian package bind9-dnsutils)")
    if os.geteuid() != 0:
        missing("root, to run dnsmasq (it drops privileges to a user only root can become)")

    def start(*records: str) -> int:
        port = dns_port()
        argv = [
            "/usr/sbin/dnsmasq", "--no-daemon", f"--port={port}", "--listen-address=127.0.0.1",
            "--bind-interfaces", "--no-resolv", "--no-hosts", "--user=root", "--log-facility=-",
            f"--address=/{DNS_NAME}/{DNS_ANSWER}", *(f"--address={r}" for r in records),
        ]  # fmt: skip
        process = processes.start("dnsmasq", argv)
        deadline = time.monotonic() + 10
        while dig(port) != DNS_ANSWER:
            assert process.alive() and time.monotonic() < deadline, "dnsmasq did not answer"
            time.sleep(0.1)
        return port

    return start


@dataclass
class UdpPair:
    server: AmbassadorServer
    client: Started
    port: int  # the client's UDP port
    server_metrics: int
    client_metrics: int


@pytest.fixture
def udp_pair(
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    free_port: Callable[..., int],
) -> Callable[..., UdpPair]:
    """``udp_pair(target_port, *client_args, host=...)``: a server linking ``dns`` to the UDP
    target, and a client exposing it as UDP; returns once the tunnel is up."""

    def start(target: int, *client_args: str, host: str = "127.0.0.1") -> UdpPair:
        server_metrics, client_metrics = free_port(), free_port()
        server = start_server(
            f"dns=udp:127.0.0.1:{target}", args=[f"--metrics-listen=127.0.0.1:{server_metrics}"]
        )
        port = udp_port(host)
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        client = start_client(
            f"--remote=127.0.0.1:{server.port}",
            f"--expose=udp:{where}=dns",
            f"--metrics-listen=127.0.0.1:{client_metrics}",
            *client_args,
        )
        client.wait_for_stderr(rf"exposing UDP 'dns' on {re.escape(where)}")
        return UdpPair(server, client, port, server_metrics, client_metrics)

    return start


class Sink:
    """A UDP socket that counts what it receives, in a thread; each datagram kept whole."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.received.append(self.sock.recv(70000))
            except TimeoutError:
                continue

    def wait_for(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def sink() -> Iterator[Sink]:
    found = Sink()
    yield found
    found.close()


def numbered(index: int, size: int) -> bytes:
    """A datagram that says its own index and length, so a cut or a merge shows."""
    head = struct.pack(">II", index, size)
    return head + bytes([index % 251]) * (size - len(head))


def intact(datagram: bytes) -> bool:
    index, size = struct.unpack_from(">II", datagram)
    return len(datagram) == size and datagram[8:] == bytes([index % 251]) * (size - 8)


# --------------------------------------------------------------------- DNS with dig


def test_dig_through_the_pair_reaches_dnsmasq(
    dnsmasq: Callable[..., int], udp_pair: Callable[..., UdpPair]
) -> None:
    pair = udp_pair(dnsmasq())
    assert dig(pair.port) == DNS_ANSWER
    assert dig(pair.port) == DNS_ANSWER  # a second source port: a second flow
    assert metric(pair.client_metrics, "ambassador_udp_flows_total", service="dns") == 2
    assert metric(pair.server_metrics, "ambassador_udp_datagrams_total",
                  service="dns", direction="to_backend") == 2  # fmt: skip


def test_fifty_concurrent_sources_each_get_their_own_answer(
    dnsmasq: Callable[..., int], udp_pair: Callable[..., UdpPair]
) -> None:
    records = [f"/host{n}.test/10.9.0.{n}" for n in range(1, SOURCES + 1)]
    pair = udp_pair(dnsmasq(*records))
    argv = ["dig", "-p", str(pair.port), "@127.0.0.1", "+short", "+tries=2", "+time=5"]
    digs = [
        subprocess.Popen([*argv, f"host{n}.test"], stdout=subprocess.PIPE, text=True)
        for n in range(1, SOURCES + 1)
    ]
    answers = [proc.communicate(timeout=20)[0].strip() for proc in digs]
    assert answers == [f"10.9.0.{n}" for n in range(1, SOURCES + 1)]
    assert metric(pair.client_metrics, "ambassador_udp_flows_total", service="dns") >= SOURCES


def test_idle_flows_expire_and_the_metrics_and_status_say_so(
    dnsmasq: Callable[..., int], udp_pair: Callable[..., UdpPair]
) -> None:
    pair = udp_pair(dnsmasq(), "--udp-idle-timeout=0.5")
    assert dig(pair.port) == DNS_ANSWER
    deadline = time.monotonic() + 5
    while metric(pair.client_metrics, "ambassador_udp_flows_expired_total") < 1:
        assert time.monotonic() < deadline, "the idle flow did not expire"
        time.sleep(0.1)
    assert metric(pair.client_metrics, "ambassador_udp_flows_open", service="dns") == 0
    with urllib.request.urlopen(f"http://127.0.0.1:{pair.client_metrics}/status") as answer:
        (row,) = json.load(answer)["udp"]
    assert row["flows_expired"] == 1 and row["flows_open"] == 0
    assert row["service"] == f"udp:dns on 127.0.0.1:{pair.port}"
    # The server's side of the flow ended with it.
    deadline = time.monotonic() + 5
    while metric(pair.server_metrics, "ambassador_udp_flows_open", service="dns") != 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)


# ----------------------------------------------------------- one-way, and overload


def test_a_one_way_flow_keeps_every_datagram_whole(
    sink: Sink, udp_pair: Callable[..., UdpPair]
) -> None:
    pair = udp_pair(sink.port)
    sizes = [1, 8, 100, 512, 1400, 9000, 65507]
    count = 1000
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for index in range(count):
            sender.sendto(
                numbered(index, max(8, sizes[index % len(sizes)])), ("127.0.0.1", pair.port)
            )
            if index % 5 == 4:
                time.sleep(0.01)  # a syslog-like pace, not a flood: every datagram should arrive
    sink.wait_for(count, timeout=15)
    assert len(sink.received) == count
    assert all(intact(datagram) for datagram in sink.received)
    assert sorted(struct.unpack_from(">I", d)[0] for d in sink.received) == list(range(count))


def test_overload_drops_and_counts_instead_of_stalling(
    sink: Sink, udp_pair: Callable[..., UdpPair]
) -> None:
    pair = udp_pair(sink.port)
    size, count = 1200, 4000  # 4.8 MB: beyond the stream's window and queue
    os.kill(pair.server.process.pid, signal.SIGSTOP)  # the server reads nothing: no window
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for index in range(count):
                sender.sendto(numbered(index, size), ("127.0.0.1", pair.port))
                if index % 200 == 199:
                    time.sleep(0.005)  # let the client read its socket rather than the kernel drop
        deadline = time.monotonic() + 10
        while metric(pair.client_metrics, "ambassador_udp_drops_total", reason="no_window") == 0:
            assert time.monotonic() < deadline, "no datagram was dropped and counted"
            time.sleep(0.1)
    finally:
        os.kill(pair.server.process.pid, signal.SIGCONT)
    dropped = metric(pair.client_metrics, "ambassador_udp_drops_total", service="dns")
    time.sleep(1.0)
    before = len(sink.received)
    # Not stalled: a datagram sent after the overload goes through.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.sendto(numbered(count, 64), ("127.0.0.1", pair.port))
    sink.wait_for(before + 1, timeout=5)
    assert any(struct.unpack_from(">I", d)[0] == count for d in sink.received)
    assert all(intact(datagram) for datagram in sink.received)
    assert dropped > 0 and len(sink.received) + dropped <= count + 1
    log = pair.client.stderr()
    assert (
        len(re.findall(r"UDP datagram of 'dns' dropped \(no_window\)", log)) <= 2
    )  # not per datagram


# ------------------------------------------------------------------ bad input


def test_a_datagram_larger_than_a_udp_payload_is_dropped_and_counted(
    sink: Sink, udp_pair: Callable[..., UdpPair]
) -> None:
    # Over IPv6 a datagram may carry 65,527 bytes; the tunnel carries at most 65,507 (IPv4's
    # bound, and what the length prefix allows).
    if not socket.has_ipv6:
        missing("IPv6 on loopback")
    pair = udp_pair(sink.port, host="::1")
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sender:
        sender.sendto(numbered(1, 64), ("::1", pair.port))
        sender.sendto(numbered(2, 65520), ("::1", pair.port))
        sender.sendto(numbered(3, 64), ("::1", pair.port))
    sink.wait_for(2, timeout=5)
    time.sleep(0.3)
    assert sorted(struct.unpack_from(">I", d)[0] for d in sink.received) == [1, 3]
    assert metric(pair.client_metrics, "ambassador_udp_drops_total", reason="too_large") == 1
    (line,) = re.findall(r".*dropped \(too_large\).*", pair.client.stderr())
    assert line.endswith("UDP datagram of 'dns' dropped (too_large): a datagram of 65520 bytes "
                         "(at most 65507)")  # fmt: skip


def test_a_flood_of_new_sources_is_bounded_and_counted(
    sink: Sink, udp_pair: Callable[..., UdpPair]
) -> None:
    pair = udp_pair(sink.port, "--udp-max-flows=5")
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(30)]
    try:
        for index, sender in enumerate(senders):
            sender.sendto(numbered(index, 32), ("127.0.0.1", pair.port))
        sink.wait_for(5, timeout=5)
        time.sleep(0.3)
    finally:
        for sender in senders:
            sender.close()
    assert len(sink.received) == 5
    assert metric(pair.client_metrics, "ambassador_udp_drops_total", reason="too_many_flows") == 25
    assert metric(pair.client_metrics, "ambassador_udp_flows_open", service="dns") == 5
    lines = re.findall(r".*dropped \(too_many_flows\).*", pair.client.stderr())
    assert len(lines) == 1 and lines[0].endswith("5 flows are open (--udp-max-flows)")


async def _hostile_flows(server_port: int) -> tuple[list[rawpeer.Frame], rawpeer.RawPeer]:
    peer = await rawpeer.RawPeer.connect("127.0.0.1", server_port)
    welcome = await peer.say_hello(rawpeer.hello([1, 2]))
    assert welcome["type"] == "welcome"
    header = bytes((16, 3)) + b"dns"
    # Stream 3: a length prefix beyond 65,507. Stream 5: a datagram cut short by a FIN.
    # Stream 7: a good flow after both, on the same session.
    peer.send(rawpeer.open_stream(3) + rawpeer.data(3, header + struct.pack(">H", 0xFFFF)))
    peer.send(rawpeer.open_stream(5) + rawpeer.data(5, header + b"\x00\x10abc", rawpeer.FIN))
    good = struct.pack(">H", 8) + numbered(7, 8)
    peer.send(rawpeer.open_stream(7) + rawpeer.data(7, header + good))
    return await peer.read_for(1.5), peer


def test_a_hostile_flow_stream_is_reset_and_the_session_survives(
    sink: Sink, start_server: Callable[..., AmbassadorServer], free_port: Callable[..., int]
) -> None:
    metrics_port = free_port()
    server = start_server(
        f"dns=udp:127.0.0.1:{sink.port}", args=[f"--metrics-listen=127.0.0.1:{metrics_port}"]
    )
    frames, peer = asyncio.run(_hostile_flows(server.port))
    resets = {f.stream_id for f in frames if f.flags & rawpeer.RST}
    assert resets == {3, 5}
    assert rawpeer.go_aways(frames) == [] and not peer.closed
    sink.wait_for(1, timeout=5)
    assert [struct.unpack_from(">I", d)[0] for d in sink.received] == [7]
    log = server.process.stderr()
    beyond = "datagram length prefix 65535 is beyond the bound of 65507"
    assert f"UDP flow of 'dns' reset: {beyond}" in log
    # The truncated one is counted; its line waits for the interval, like any repeat.
    assert metric(metrics_port, "ambassador_udp_drops_total", reason="bad_stream") == 2


def test_an_expose_of_the_other_transport_is_one_line(
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    sink: Sink,
) -> None:
    server = start_server(f"dns=udp:127.0.0.1:{sink.port}", "redis=127.0.0.1:6379")
    client = start_client(
        f"--remote=127.0.0.1:{server.port}",
        f"--expose=127.0.0.1:{dns_port()}=dns",  # a TCP port
        f"--expose=udp:127.0.0.1:{udp_port()}=redis",
    )
    client.wait_for_stderr("as a UDP service, not TCP")
    client.wait_for_stderr("as a TCP service, not UDP")
    log = client.stderr()
    assert "the server offers 'dns' as a UDP service, not TCP: expose it as udp:PORT=dns" in log
    assert (
        "the server offers 'redis' as a TCP service, not UDP: expose it as PORT=redis "
        "(no udp: prefix)" in log
    )


# --------------------------------------------------------------------- beside unix sockets


def test_a_udp_port_and_a_unix_socket_through_one_pair(
    dnsmasq: Callable[..., int],
    processes: Processes,
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    tmp_path: Path,
) -> None:
    """dig over a UDP expose to dnsmasq, and redis-cli -s over an exposed socket to a
    redis-server on a socket, through one pair; a client exposing the whole catalog binds the
    UDP service and says once why the port-less socket link gets no port."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        missing("redis-server and redis-cli (Debian packages redis-server, redis-tools)")
    backend = tmp_path / "redis.sock"
    redis = processes.start(
        "redis-server",
        ["redis-server", "--port", "0", "--unixsocket", str(backend), "--unixsocketperm", "700",
         "--save", "", "--appendonly", "no"],
    )  # fmt: skip
    wait_for_socket(backend, redis.alive)
    server = start_server(f"dns=udp:127.0.0.1:{dnsmasq()}", f"cache=unix:{backend}")
    port, exposed = udp_port(), tmp_path / "cache.sock"
    client = start_client(
        f"--remote=127.0.0.1:{server.port}",
        f"--expose=udp:127.0.0.1:{port}=dns",
        f"--expose=unix:{exposed}=cache",
    )
    client.wait_for_stderr(rf"exposing UDP 'dns' on 127\.0\.0\.1:{port}")
    client.wait_for_stderr(rf"exposing 'cache' on {re.escape(f'unix:{exposed}')}")
    assert dig(port) == DNS_ANSWER
    assert redis_cli_s(exposed, "SET", "k", "beside udp") == "OK"
    assert redis_cli_s(backend, "GET", "k") == "beside udp"
    # The whole catalog, on another loopback address (dnsmasq holds the port on 127.0.0.1).
    whole = start_client(f"--remote=127.0.0.1:{server.port}", "--bind=127.0.0.2")
    found = whole.wait_for_stderr(r"exposing UDP 'dns' on 127\.0\.0\.2:(\d+)")
    whole.wait_for_stderr(r"not exposing 'cache': the server announces it without a port")
    assert dig(int(found[1]), host="127.0.0.2") == DNS_ANSWER


# ------------------------------------------------------------- active-active (--sessions all)


class UdpEcho:
    """A UDP echo on loopback, in a thread: each datagram goes back to its sender."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, source = self.sock.recvfrom(70000)
            except TimeoutError:
                continue
            self.sock.sendto(data, source)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def udp_echo() -> Iterator[UdpEcho]:
    found = UdpEcho()
    yield found
    found.close()


def ask(port: int, payload: bytes, timeout: float = 5.0) -> bytes | None:
    """One datagram from a new source port (a new flow), and its answer, if one comes."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(payload, ("127.0.0.1", port))
        try:
            return sock.recv(70000)
        except TimeoutError:
            return None


@dataclass
class TwoServers:
    tcp_only: AmbassadorServer  # listed first: the first healthy session
    with_udp: AmbassadorServer
    client: Started
    port: int  # the client's UDP port


@pytest.fixture
def two_servers(
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    free_port: Callable[..., int],
    udp_echo: UdpEcho,
) -> TwoServers:
    """A client with a session to each of two servers, only the second linking ``dns``."""
    tcp_only = start_server(f"web=127.0.0.1:{free_port()}")
    with_udp = start_server(f"dns=udp:127.0.0.1:{udp_echo.port}")
    port = udp_port()
    client = start_client(
        "--sessions=all",
        f"--remote=127.0.0.1:{tcp_only.port}",
        f"--remote=127.0.0.1:{with_udp.port}",
        f"--expose=udp:127.0.0.1:{port}=dns",
        "--backoff-max=0.5",
        wait_tunnel=False,
    )
    for server in (tcp_only, with_udp):
        client.wait_for_stderr(rf"tunnel up to 127\.0\.0\.1:{server.port}\b")
    client.wait_for_stderr(r"exposing UDP 'dns' on ")
    return TwoServers(tcp_only, with_udp, client, port)


def test_with_sessions_all_a_udp_flow_goes_to_the_server_that_offers_it(
    two_servers: TwoServers,
) -> None:
    # The first healthy session's server does not link dns: every flow must skip it.
    answers = [ask(two_servers.port, f"query {index}".encode()) for index in range(10)]
    assert answers == [f"query {index}".encode() for index in range(10)]
    assert "not_offered" not in two_servers.client.stderr()
    assert "unknown_service" not in two_servers.tcp_only.process.stderr()


def test_a_udp_flow_waits_for_the_server_that_offers_it_to_come_back(
    two_servers: TwoServers,
    start_server: Callable[..., AmbassadorServer],
    udp_echo: UdpEcho,
) -> None:
    assert ask(two_servers.port, b"before") == b"before"
    two_servers.with_udp.process.kill()
    two_servers.client.wait_for_stderr(
        rf"tunnel to 127\.0\.0\.1:{two_servers.with_udp.port} lost", 10
    )

    # The datagram of a new flow is held (up to --link-wait-timeout) while the session that
    # offers dns is down, not sent to the other server and not dropped.
    def restart() -> None:
        time.sleep(1.0)
        start_server(f"dns=udp:127.0.0.1:{udp_echo.port}", port=two_servers.with_udp.port)

    later = threading.Thread(target=restart)
    later.start()
    try:
        assert ask(two_servers.port, b"while down", timeout=9.0) == b"while down"
    finally:
        later.join(15)
