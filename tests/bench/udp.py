"""The UDP row: datagrams a second and loss one way, and request/answer latency, through
nothing, the seed-style socat UDP pair, and the ambassador pair.

``python -m tests.bench.udp [--datagrams N] [--round-trips N] [--amb-bin DIR]`` prints one
markdown table. Everything listens on 127.0.0.1; each program is stopped by its own pid; every
wait is bounded. The backend is a UDP echo (and counter) in a thread of this process.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SIZE = 100  # bytes per datagram: syslog- or DNS-sized


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Echo:
    """A UDP echo that also counts what it received."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.received = 0
        self.echo = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(70000)
            except TimeoutError:
                continue
            self.received += 1
            if self.echo:
                self.sock.sendto(data, addr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@contextmanager
def started(argvs: list[list[str]]) -> Iterator[None]:
    procs = [
        subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for argv in argvs
    ]
    try:
        time.sleep(2.0)  # bounded: each program binds in well under a second
        yield
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def one_way(port: int, echo: Echo, count: int) -> tuple[float, float]:
    """(datagrams a second received, loss in percent) for ``count`` sent as fast as possible."""
    echo.echo, echo.received = False, 0
    payload = bytes(SIZE)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        start = time.perf_counter()
        for _ in range(count):
            sender.sendto(payload, ("127.0.0.1", port))
        sent = time.perf_counter() - start
    # Wait until the count stops moving (half a second without a new datagram), at most 5 s;
    # the rate is over the time from the first send to the last datagram seen arriving.
    deadline = start + sent + 5
    last, seen = -1, time.perf_counter()
    while time.perf_counter() < deadline:
        if echo.received != last:
            last, seen = echo.received, time.perf_counter()
        elif time.perf_counter() - seen > 0.5:
            break
        time.sleep(0.01)
    elapsed = max(sent, seen - start)
    return echo.received / elapsed, 100.0 * (count - echo.received) / count


def round_trips(port: int, echo: Echo, count: int) -> tuple[float, float, int]:
    """(median µs, p99 µs, answers lost) for ``count`` questions asked one at a time."""
    echo.echo = True
    times: list[float] = []
    lost = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as asker:
        asker.settimeout(1.0)
        for index in range(count):
            question = index.to_bytes(4, "big") + bytes(SIZE - 4)
            start = time.perf_counter()
            asker.sendto(question, ("127.0.0.1", port))
            try:
                while asker.recv(70000)[:4] != question[:4]:
                    pass
            except TimeoutError:
                lost += 1
                continue
            times.append((time.perf_counter() - start) * 1e6)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1], lost


def chains(amb_bin: Path, echo: int) -> dict[str, tuple[int, list[list[str]]]]:
    """name -> (the consumer's port, the programs to start)."""
    socat_client, socat_server = free_udp_port(), free_udp_port()
    amb_port, tunnel = free_udp_port(), free_tcp_port()
    return {
        "direct": (echo, []),
        "socat pair (UDP-LISTEN,fork)": (
            socat_client,
            [
                [
                    "socat",
                    f"UDP-LISTEN:{socat_server},bind=127.0.0.1,fork,reuseaddr",
                    f"UDP:127.0.0.1:{echo}",
                ],
                [
                    "socat",
                    f"UDP-LISTEN:{socat_client},bind=127.0.0.1,fork,reuseaddr",
                    f"UDP:127.0.0.1:{socat_server}",
                ],
            ],
        ),
        "ambassador pair": (
            amb_port,
            [
                [
                    str(amb_bin / "ambassador-server"),
                    "--listen",
                    f"127.0.0.1:{tunnel}",
                    "--link",
                    f"echo=udp:127.0.0.1:{echo}",
                    "--log-level",
                    "error",
                ],
                [
                    str(amb_bin / "ambassador-client"),
                    "--remote",
                    f"127.0.0.1:{tunnel}",
                    "--expose",
                    f"udp:127.0.0.1:{amb_port}=echo",
                    "--log-level",
                    "error",
                ],
            ],
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.udp")
    parser.add_argument("--datagrams", type=int, default=50_000)
    parser.add_argument("--round-trips", type=int, default=2_000)
    parser.add_argument("--amb-bin", type=Path, default=Path(sys.executable).parent)
    args = parser.parse_args(argv)
    echo = Echo()
    rows = []
    try:
        for name, (port, programs) in chains(args.amb_bin, echo.port).items():
            with started(programs):
                median, p99, lost = round_trips(port, echo, args.round_trips)
                rate, loss = one_way(port, echo, args.datagrams)
            rows.append(
                f"| {name} | {rate:,.0f} | {loss:.1f}% | {median:.0f} | {p99:.0f} | {lost} |"
            )
    finally:
        echo.close()
    print(f"UDP, {SIZE}-byte datagrams, {os.cpu_count()} cores, loopback")
    print("| chain | one way: datagrams/s received | loss | request/answer median µs "
          "| p99 µs | answers lost |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
