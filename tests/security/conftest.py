"""Fixtures for the security tests: real programs, real sockets, real TLS handshakes.

Both roles run as subprocesses (``python -m server`` / ``python -m client``) on loopback, with
their stderr in a file that the tests read: what a user would see is what is asserted. Every
program is stopped by its own pid at teardown (SIGTERM, a short grace, then SIGKILL), and every
wait is bounded.

Certificates come from the project's own ``certs`` commands; only the ones those commands
refuse to make on purpose (expired, not yet valid) are built here with ``cryptography``.

:class:`RawTunnel` is a minimal client built from the sans-IO core over a blocking socket, for
the checks that need to put exact bytes on the wire (a replayed token proof, a stream header
naming ``host:port``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.conftest import pick_free_port as shared_pick_free_port
from tunnel.protocol.events import ConnectionTerminated, DataReceived, StreamEnded, StreamReset
from tunnel.protocol.limits import Limits
from tunnel.protocol.messages import (
    SUPPORTED_VERSIONS,
    Hello,
    Message,
    MessageReader,
    StreamAnswer,
    StreamAnswerParser,
    encode_message,
)
from tunnel.protocol.session import Role, Session

ROOT = Path(__file__).resolve().parents[2]
STOP_GRACE = 3.0
WAIT = 10.0  # the longest any single wait for a log line may take
LOOPBACK = "127.0.0.1"


def pick_free_port() -> int:
    """A loopback TCP port nothing is bound to right now (see ``tests.conftest``)."""
    return shared_pick_free_port(LOOPBACK)


def environ() -> dict[str, str]:
    """This environment without AMBASSADOR_* settings that would change what programs do."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMBASSADOR_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


# --------------------------------------------------------------------------- programs


@dataclass
class Program:
    """One running program; its stderr is read from a file, as a user would read a log."""

    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    err_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def text(self) -> str:
        return self.err_path.read_text(errors="replace")

    def mark(self) -> int:
        """A position in the log: lines after it are what happened since."""
        text = self.text()
        return text.rfind("\n") + 1

    def lines(self, since: int = 0, until: int | None = None) -> list[str]:
        """Complete log lines between two marks."""
        text = self.text()
        end = text.rfind("\n") + 1 if until is None else until
        return [line for line in text[since:end].splitlines() if line]

    def wait_for(self, pattern: str, since: int = 0, timeout: float = WAIT) -> re.Match[str]:
        """The first match of ``pattern`` in the log after ``since``; fails after ``timeout``."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = compiled.search(self.text(), since)
            if found is not None:
                return found
            if not self.alive():
                pytest.fail(f"{self.name} exited ({self.popen.returncode}) before {pattern!r}")
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name} did not log {pattern!r} within {timeout:g}s")
            time.sleep(0.02)

    def send(self, sig: signal.Signals) -> None:
        os.kill(self.pid, sig)

    def stop(self) -> int:
        """SIGTERM by pid, a short grace, then SIGKILL; the exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(timeout=STOP_GRACE)


@dataclass
class Server:
    program: Program
    port: int

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"


@dataclass
class Client:
    """An ambassador-client exposing one service on a local port."""

    program: Program
    port: int
    peer_port: int | None = None  # its tunnel connection's port, as the server logs it


def wait_up(server: Server, client: Client, identity: str, since: int) -> Client:
    """Wait until ``client``'s tunnel is up; learn its port from the server's log line,
    which names the identity (several clients may be starting at once)."""
    client.program.wait_for(r"tunnel up to ")
    who = re.escape(f" ({identity})") if identity else r"\b"
    found = server.program.wait_for(rf"session up with 127\.0\.0\.1:(\d+){who}", since)
    client.peer_port = int(found.group(1))
    return client


_LIVE: list[Programs] = []


class Programs:
    """The programs of one test (or one module), stopped by pid at teardown."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[Program] = []

    def start(self, name: str, argv: Sequence[str]) -> Program:
        path = self.directory / f"{name}-{len(self.started)}.err"
        with path.open("wb") as err:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=environ(),
                cwd=self.directory,
            )
        program = Program(name, list(argv), popen, path)
        self.started.append(program)
        return program

    def server(self, *args: str, port: int | None = None, host: str = LOOPBACK) -> Server:
        """ambassador-server on ``host`` (loopback); returns once it logs that it listens.

        The log is watched rather than the port probed: a probe would be a connection the
        server logs (as a TLS handshake cut short, for one).
        """
        port = port or pick_free_port()
        argv = [sys.executable, "-m", "server", "--listen", f"{host}:{port}", *args]
        program = self.start("server", argv)
        program.wait_for(r"listening on ")
        return Server(program, port)

    def client(self, server: Server | str, *args: str, service: str = "echo") -> Client:
        """ambassador-client exposing ``service`` on a free loopback port (not waited for)."""
        remote = server.address if isinstance(server, Server) else server
        port = pick_free_port()
        argv = [
            sys.executable, "-m", "client", "--remote", remote,
            "--expose", f"{LOOPBACK}:{port}={service}", *args,
        ]  # fmt: skip
        return Client(self.start("client", argv), port)

    def good_client(
        self, server: Server, *args: str, identity: str = "", service: str = "echo"
    ) -> Client:
        """A client whose tunnel is up; ``peer_port`` is read from the server's log."""
        mark = server.program.mark()
        return wait_up(server, self.client(server, *args, service=service), identity, mark)

    def stop_all(self) -> None:
        """Clients first (so servers have nothing to drain), then the rest; each by its pid."""
        clients = [p for p in self.started if p.name == "client"]
        others = [p for p in self.started if p.name != "client"]
        for group in (clients, others):
            for program in group:
                if program.alive():
                    program.popen.send_signal(signal.SIGTERM)
            for program in group:
                program.stop()

    def logs(self) -> Iterator[tuple[str, str]]:
        for program in self.started:
            text = program.text() if program.err_path.exists() else ""
            yield f"stderr of {program.name} (pid {program.pid}): {' '.join(program.argv)}", text


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """When a test fails, show what each of its programs logged."""
    report = yield
    if report.failed:
        for programs in _LIVE:
            for header, text in programs.logs():
                report.sections.append((header, text[-8000:]))
    return report


def _programs(directory: Path) -> Iterator[Programs]:
    group = Programs(directory)
    _LIVE.append(group)
    try:
        yield group
    finally:
        _LIVE.remove(group)
        group.stop_all()


@pytest.fixture
def programs(tmp_path: Path) -> Iterator[Programs]:
    yield from _programs(tmp_path)


@pytest.fixture(scope="module")
def module_programs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Programs]:
    yield from _programs(tmp_path_factory.mktemp("programs"))


# ------------------------------------------------------------------------ backends


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(60)
        try:
            while data := sock.recv(256 * 1024):
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


@pytest.fixture(scope="session")
def echo_port() -> Iterator[int]:
    """An echo backend on loopback (a thread of this process): every byte comes back."""
    server = _EchoServer((LOOPBACK, 0), _EchoHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def echo(port: int, data: bytes = b"still serving\n", timeout: float = 5.0) -> bytes:
    """Send ``data`` to a client's local port and read back as many bytes (or until EOF)."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        while len(received) < len(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def consumer_receives(port: int, timeout: float = 3.0) -> bytes:
    """What a consumer of a client's local port gets back for a request within ``timeout``
    (b"" if nothing: reset, closed, or still waiting)."""
    received = b""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            while chunk := sock.recv(65536):
                received += chunk
    except (ConnectionResetError, BrokenPipeError, TimeoutError):
        pass
    return received


# -------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path

    def args(self) -> list[str]:
        return ["--tls-cert", str(self.cert), "--tls-key", str(self.key)]


@dataclass(frozen=True)
class Pki:
    """One ``certs init`` directory."""

    dir: Path
    server_pin: str  # as `certs init` printed it

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def server(self) -> Pair:
        return Pair(self.dir / "server.pem", self.dir / "server-key.pem")

    def client(self, name: str) -> Pair:
        return Pair(self.dir / f"{name}.pem", self.dir / f"{name}-key.pem")

    def server_args(self, mutual: bool = True) -> list[str]:
        args = self.server.args()
        return [*args, "--tls-ca", str(self.ca)] if mutual else args

    def copy(self, to: Path) -> Pki:
        shutil.copytree(self.dir, to)
        return Pki(to, self.server_pin)


@dataclass(frozen=True)
class Certificates:
    main: Pki  # `certs init --san 127.0.0.1`, clients alice and bob
    other: Pki  # another CA, `--san 127.0.0.1`, client mallory
    elsewhere: Pki  # another CA whose server certificate names only other.example
    expired_client: Pair  # signed by main's CA, expired yesterday
    future_client: Pair  # signed by main's CA, valid from tomorrow
    expired_server: Pair  # signed by main's CA, for 127.0.0.1, expired yesterday


def certs_command(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "server", "certs", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environ(),
        cwd=cwd,
    )


def run_certs(*commands: Sequence[str], cwd: Path) -> list[str]:
    """Run ``certs`` commands side by side (bounded); their outputs, in order."""
    running = [certs_command(*command, cwd=cwd) for command in commands]
    outputs = []
    try:
        for command, process in zip(commands, running, strict=True):
            out, _ = process.communicate(timeout=30)
            assert process.returncode == 0, f"certs {' '.join(command)} failed:\n{out}"
            outputs.append(out)
    finally:
        for process in running:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=STOP_GRACE)
    return outputs


def _pin_in(output: str) -> str:
    found = re.search(r"server pin: (sha256:\S+)", output)
    assert found is not None, output
    return found.group(1)


def issue_odd(
    ca: Pki, name: str, not_before: datetime, not_after: datetime, server: bool = False
) -> Pair:
    """A certificate the ``certs`` commands will not make: validity chosen freely."""
    ca_cert = x509.load_pem_x509_certificate(ca.ca.read_bytes())
    ca_key = serialization.load_pem_private_key((ca.dir / "ca-key.pem").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )
    if server:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))])
        builder = builder.add_extension(san, critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    pair = Pair(ca.dir / f"{name}.pem", ca.dir / f"{name}-key.pem")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pair.key.chmod(0o600)
    return pair


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """Every certificate the security tests use, made once."""
    base = tmp_path_factory.mktemp("certs")
    inits = run_certs(
        ["init", "main", "--san", LOOPBACK],
        ["init", "other", "--san", LOOPBACK],
        ["init", "elsewhere", "--san", "other.example"],
        cwd=base,
    )
    run_certs(
        ["client", "alice", "--dir", "main"],
        ["client", "bob", "--dir", "main"],
        ["client", "mallory", "--dir", "other"],
        cwd=base,
    )
    main, other, elsewhere = (
        Pki(base / name, _pin_in(out))
        for name, out in zip(("main", "other", "elsewhere"), inits, strict=True)
    )
    now = datetime.now(UTC)
    day = timedelta(days=1)
    return Certificates(
        main=main,
        other=other,
        elsewhere=elsewhere,
        expired_client=issue_odd(main, "old-alice", now - 30 * day, now - day),
        future_client=issue_odd(main, "early-alice", now + day, now + 30 * day),
        expired_server=issue_odd(main, "old-server", now - 30 * day, now - day, server=True),
    )


def der_serial(der: bytes) -> int:
    return x509.load_der_x509_certificate(der).serial_number


def tls_context(pki: Pki, client: Pair | None = None) -> ssl.SSLContext:
    """A plain ssl client context trusting ``pki``'s CA, with a client certificate if given."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    return context


def tls_connect(server: Server, context: ssl.SSLContext, timeout: float = 5.0) -> ssl.SSLSocket:
    sock = socket.create_connection((LOOPBACK, server.port), timeout=timeout)
    try:
        return context.wrap_socket(sock, server_hostname=LOOPBACK)
    except BaseException:
        sock.close()
        raise


# ------------------------------------------------------------------- server's log


def peer_lines(lines: Sequence[str], known: Sequence[int]) -> dict[int, list[str]]:
    """Log lines grouped by the loopback peer port they mention, ``known`` ports left out."""
    grouped: dict[int, list[str]] = defaultdict(list)
    for line in lines:
        for port in {int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", line)}:
            if port not in known:
                grouped[port].append(line)
    return grouped


def assert_each_refused_once(lines: Sequence[str], known: Sequence[int], *cause: str) -> None:
    """Every connection the server saw was refused in exactly one line naming ``cause``."""
    grouped = peer_lines(lines, known)
    assert grouped, "the server logged nothing about the refused connections:\n" + "\n".join(lines)
    for port, mentions in grouped.items():
        assert len(mentions) == 1, f"connection from port {port}: {mentions}"
        line = mentions[0]
        assert " WARNING " in line or " ERROR " in line, line
        for words in cause:
            assert words in line, line
        assert "session up" not in line, line


# -------------------------------------------------------------------- bad attempts


@dataclass
class Attempt:
    """What one misconfigured client and the server logged while it tried to connect."""

    client_warnings: list[str]
    client_log: list[str]
    server_lines: list[str]
    consumer_got: bytes
    consumer_lines: list[str]  # what the client logged about the consumer's connection


def bad_attempt(
    programs: Programs, target: Server | str, *client_args: str, hold: float = 0.4
) -> Attempt:
    """Run a client that should not get in: until its first warning, then ``hold`` seconds
    (more retries), with a consumer trying its local port meanwhile; then stop it.

    ``target`` is a server whose log is read too, or the address of some other peer.
    """
    server = target if isinstance(target, Server) else None
    mark = server.program.mark() if server else 0
    client = programs.client(
        target, "--link-wait-timeout", "0", "--connect-timeout", "3", *client_args
    )
    client.program.wait_for(r"WARNING ambassador\.client: .*retrying")
    got = consumer_receives(client.port)
    time.sleep(hold)
    until = server.program.mark() if server else 0
    client.program.stop()
    log = client.program.lines()
    warnings = [line for line in log if " WARNING " in line or " ERROR " in line]
    # The consumer's own connection is dropped with a line of its own, which is expected.
    dropped = [line for line in warnings if "ambassador.client: connection to '" in line]
    tunnel = [line for line in warnings if line not in dropped]
    server_lines = server.program.lines(mark, until) if server else []
    return Attempt(tunnel, log, server_lines, got, dropped)


def assert_not_let_in(attempt: Attempt) -> None:
    """No welcome reached the client, and its consumer got nothing."""
    text = "\n".join(attempt.client_log)
    assert "tunnel up" not in text, text
    assert attempt.consumer_got == b"", attempt.consumer_got
    assert len(attempt.consumer_lines) == 1, attempt.client_log
    # Dropped (the tunnel stayed down), or refused at once when the server refused the client.
    line = attempt.consumer_lines[0]
    assert "dropped" in line or "the tunnel is not up because" in line, attempt.consumer_lines
    assert not any("session up" in line for line in attempt.server_lines), attempt.server_lines


def assert_one_client_line(attempt: Attempt, *cause: str) -> str:
    """The client said why in one line, and did not repeat it on every retry."""
    assert len(attempt.client_warnings) == 1, "\n".join(attempt.client_warnings)
    line = attempt.client_warnings[0]
    for words in cause:
        assert words in line, line
    assert "Traceback" not in "\n".join(attempt.client_log)
    return line


def assert_still_serving(server: Server, client: Client, since: int) -> None:
    """The good client kept its one session through it all and still gets its echo."""
    assert echo(client.port) == b"still serving\n"
    assert client.program.text().count("tunnel up to ") == 1, client.program.text()
    ended = [
        line
        for line in server.program.lines(since)
        if f"127.0.0.1:{client.peer_port}" in line and "session up" not in line
    ]
    assert not ended, ended


# ---------------------------------------------------------------------- raw client


@dataclass
class RawTunnel:
    """A minimal tunnel client over a blocking socket, driven by the sans-IO session."""

    sock: socket.socket
    session: Session = field(default_factory=lambda: Session(Role.CLIENT, Limits()))
    control: int | None = None
    messages: list[Message] = field(default_factory=list)
    streams: dict[int, bytearray] = field(default_factory=lambda: defaultdict(bytearray))
    reset: set[int] = field(default_factory=set)
    ended: set[int] = field(default_factory=set)
    closed: str = ""  # why the connection ended, once it has
    _reader: MessageReader = field(default_factory=MessageReader)

    def flush(self) -> None:
        while data := self.session.data_to_send():
            self.sock.sendall(data)

    def hello(self, name: str = "raw-test", token: str | None = None, nonce: bytes = b"") -> None:
        self.control = self.session.open_stream()
        hello = Hello(SUPPORTED_VERSIONS, name, "security-test", token, nonce)
        self.session.send_data(self.control, encode_message(hello))
        self.flush()

    def next_message(self, timeout: float = 5.0) -> Message | None:
        """The next control message, or None if the connection ends (or time runs out)."""
        if self.wait(lambda: bool(self.messages), timeout):
            return self.messages.pop(0)
        return None

    def open(self, header: bytes, data: bytes = b"") -> int:
        stream_id = self.session.open_stream()
        self.session.send_data(stream_id, header + data)
        self.flush()
        return stream_id

    def answer(self, stream_id: int, timeout: float = 5.0) -> tuple[StreamAnswer | None, bytes]:
        """The server's answer on a stream, and the bytes after it."""

        def parsed() -> bool:
            return StreamAnswerParser().feed(bytes(self.streams[stream_id]))[0] is not None

        self.wait(lambda: parsed() or stream_id in self.reset, timeout)
        return StreamAnswerParser().feed(bytes(self.streams[stream_id]))

    def wait(self, done: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Read and handle frames until ``done()`` or the connection ends; bounded."""
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if self.closed or left <= 0:
                return done()
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(256 * 1024)
            except TimeoutError:
                continue
            except (OSError, ssl.SSLError) as exc:
                self.closed = f"{type(exc).__name__}: {exc}"
                continue
            if not data:
                self.closed = "EOF"
                continue
            self._handle(data)
        return True

    def _handle(self, data: bytes) -> None:
        now = time.monotonic()
        for event in self.session.receive_data(data, now):
            if isinstance(event, DataReceived):
                self.session.consumed(event.stream_id, len(event.data), now)
                if event.stream_id == self.control:
                    self.messages += self._reader.feed(event.data)
                else:
                    self.streams[event.stream_id] += event.data
            elif isinstance(event, StreamReset):
                self.reset.add(event.stream_id)
            elif isinstance(event, StreamEnded):
                self.ended.add(event.stream_id)
            elif isinstance(event, ConnectionTerminated):
                self.closed = event.reason
        with contextlib.suppress(OSError):  # the peer may be gone already
            self.flush()


def stream_header(service: str) -> bytes:
    """A data stream's header as the protocol lays it out, for any text at all."""
    name = service.encode()
    return bytes((1, len(name))) + name
