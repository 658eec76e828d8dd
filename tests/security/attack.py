"""What an attacker on loopback does to a real ambassador-server, and what it costs the server.

No pytest here: the tests of this folder and ``python -m tests.security.attack_budget`` both use
it. The server runs as its own process (``python -m server``); the attacker is this process,
with raw sockets; the cost is read where an operator would read it: resident memory from
``/proc/PID/status``, descriptors from ``/proc/PID/fd``, and the size of the server's log.
Every wait is bounded and every program is stopped by its own pid.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import pick_free_port
from tests.pki import loopback_pki

ROOT = Path(__file__).resolve().parents[2]
KIB = 1024
MIB = 1024 * KIB
HOST = "127.0.0.1"

# A yamux Data frame's header: SYN on stream 1, announcing 128 MiB (the largest stream window).
HUGE_FRAME_HEADER = struct.pack(">BBHII", 0, 0, 1, 1, 128 * MIB)
# The start of a hello: a Data frame opening the control stream, announcing 200 bytes, with 8.
HELLO_START = struct.pack(">BBHII", 0, 0, 1, 1, 200) + b'\x00\x00\x00\xc4{"ty'
# The first five bytes of a TLS ClientHello: a handshake record header, and nothing after it.
CLIENT_HELLO_START = bytes((0x16, 0x03, 0x01, 0x02, 0x00))


def rss(pid: int) -> int:
    """Resident memory of a process, bytes (VmRSS)."""
    text = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    assert found is not None, text
    return int(found.group(1)) * KIB


def descriptors(pid: int) -> int:
    """Open descriptors of a process."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_for_descriptors(pid: int, at_most: int, timeout: float = 5.0) -> int:
    """Wait (bounded) until the process holds at most ``at_most`` descriptors; how many."""
    deadline = time.monotonic() + timeout
    while (count := descriptors(pid)) > at_most and time.monotonic() < deadline:
        time.sleep(0.05)
    return count


def settled_rss(pid: int, seconds: float = 1.0) -> int:
    """RSS once it stopped moving (two reads 0.2 s apart agree within 256 KiB), or after
    ``seconds``."""
    deadline = time.monotonic() + seconds
    last = rss(pid)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = rss(pid)
        if abs(now - last) < 256 * KIB:
            return now
        last = now
    return last


def raise_nofile(wanted: int) -> int:
    """Raise this process's soft descriptor limit towards ``wanted`` (programs started from
    here inherit it); the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


@dataclass
class Program:
    """A program started here; its stderr goes to ``log``."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def log_size(self) -> int:
        return self.log.stat().st_size

    def wait_for(self, pattern: str, since: int = 0, timeout: float = 10.0) -> re.Match[str]:
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = compiled.search(self.text(), since)
            if found is not None:
                return found
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited before logging {pattern!r}:\n{self.text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not log {pattern!r}:\n{self.text()[-3000:]}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)


@dataclass
class Target:
    """A server under attack, with an honest client connected to it."""

    server: Program
    client: Program
    port: int
    tls: bool

    @property
    def pid(self) -> int:
        return self.server.pid


def start(name: str, argv: Sequence[str], directory: Path) -> Program:
    log = directory / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMBASSADOR_")}
    env["PYTHONUNBUFFERED"] = "1"
    with log.open("wb") as err:
        popen = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            env=env, cwd=ROOT,
        )  # fmt: skip
    return Program(name, popen, log)


@contextlib.contextmanager
def target(directory: Path, tls: bool, server_args: Sequence[str] = ()) -> Iterator[Target]:
    """A real ambassador-server on loopback (TLS without client certificates, or plaintext)
    and an honest ambassador-client whose session is up; both stopped on the way out."""
    directory.mkdir(parents=True, exist_ok=True)
    port = pick_free_port(HOST)
    backend = pick_free_port(HOST)  # nothing listens there: no stream is opened
    server_argv = [sys.executable, "-m", "server", "--listen", f"{HOST}:{port}",
                   "--link", f"echo={HOST}:{backend}", *server_args]  # fmt: skip
    client_argv = [sys.executable, "-m", "client", "--remote", f"{HOST}:{port}",
                   "--expose", f"{HOST}:{pick_free_port(HOST)}=echo"]  # fmt: skip
    if tls:
        server_tls, client_tls = loopback_pki(directory)
        server_argv += ["--tls-cert", server_tls.cert, "--tls-key", server_tls.key]
        client_argv += ["--tls-ca", str(client_tls.ca)]
    programs: list[Program] = []
    try:
        server = start("server", server_argv, directory)
        programs.append(server)
        server.wait_for(r"listening on ")
        client = start("client", client_argv, directory)
        programs.append(client)
        client.wait_for(r"tunnel up to ")
        server.wait_for(r"session up with ")
        yield Target(server, client, port, tls)
    finally:
        for program in reversed(programs):
            program.stop()


def attacker_context() -> ssl.SSLContext:
    """What an attacker speaks TLS with: anything the server offers, no verification."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def connect(port: int, source: str = HOST, timeout: float = 5.0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    if source != HOST:
        sock.bind((source, 0))
    sock.connect((HOST, port))
    return sock


def sources(count: int) -> list[str]:
    """``count`` loopback addresses to attack from (127.0.0.0/8 is all loopback on Linux)."""
    return [f"127.0.{1 + i // 250}.{1 + i % 250}" for i in range(count)]


def open_half_hellos(
    port: int, count: int, payload: bytes, spread: int = 1
) -> tuple[list[socket.socket], int]:
    """``count`` connections that each send ``payload`` and then nothing, from ``spread``
    source addresses in turn; those still open (the server may close some at once), and how
    many the server closed."""
    addresses = sources(spread) if spread > 1 else [HOST]
    held: list[socket.socket] = []
    for i in range(count):
        sock = connect(port, addresses[i % len(addresses)])
        with contextlib.suppress(OSError):
            sock.sendall(payload)
        held.append(sock)
    time.sleep(0.5)  # let the server take them all
    open_ = [sock for sock in held if is_open(sock)]
    closed = len(held) - len(open_)
    for sock in held:
        if sock not in open_:
            sock.close()
    return open_, closed


def is_open(sock: socket.socket) -> bool:
    """Whether the server still holds the connection (it has neither closed nor reset it)."""
    sock.setblocking(False)
    try:
        data = sock.recv(65536, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)
    return bool(data)


def close_all(socks: Sequence[socket.socket]) -> None:
    for sock in socks:
        sock.close()


def big_frames(port: int, tls: bool, conns: int = 4, size: int = 256 * KIB) -> int:
    """The big-frame attack: ``conns`` connections (TLS-handshaken if ``tls``), each sending a
    header that announces a 128 MiB Data frame and then ``size`` bytes of it; returns how many
    payload bytes the server took before it closed them."""
    socks: list[socket.socket] = []
    context = attacker_context() if tls else None
    taken = 0
    chunk = bytes(16 * KIB)
    try:
        for _ in range(conns):
            sock = connect(port, timeout=2.0)
            if context is not None:
                sock = context.wrap_socket(sock, server_hostname=HOST)
            socks.append(sock)
            sock.sendall(HUGE_FRAME_HEADER)
        for sock in socks:
            for _ in range(size // len(chunk)):
                try:
                    sock.sendall(chunk)
                except OSError:  # closed by the server, or it stopped reading
                    break
                taken += len(chunk)
        time.sleep(0.3)
    finally:
        close_all(socks)
    return taken
