"""Token authentication: a wrong token and a replayed proof are refused, in words.

The server runs in plaintext with a token file; a legitimate client connects through a small
recording proxy and stays connected. What it sent (its hello and its proof) is then replayed
on a new connection: the server's fresh challenge makes the old proof worthless.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.security.conftest import (
    Client,
    Programs,
    RawTunnel,
    Server,
    assert_each_refused_once,
    assert_not_let_in,
    assert_one_client_line,
    assert_still_serving,
    bad_attempt,
)
from tunnel.errors import Reason
from tunnel.protocol.frames import FrameDecoder, FrameType
from tunnel.protocol.messages import Auth, Challenge, Hello, Refusal, Welcome, decode_message

SECRET = "a3f1c0de9b7e4d2a8c6b5e4f3a2d1c0b"


def token_file(path: Path, line: str, mode: int) -> Path:
    path.write_text(line + "\n")
    path.chmod(mode)
    return path


@dataclass
class Recorder:
    """A loopback TCP proxy that keeps every byte each side sent, per connection."""

    target: tuple[str, int]
    listener: socket.socket = field(init=False)
    upstream: list[bytearray] = field(default_factory=list)  # client -> server
    downstream: list[bytearray] = field(default_factory=list)  # server -> client
    threads: list[threading.Thread] = field(default_factory=list)
    sockets: list[socket.socket] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.stopping = threading.Event()
        self._spawn(self._accept)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.listener.getsockname()[1]}"

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self.threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed under us
                return
            client.settimeout(None)
            server = socket.create_connection(self.target, timeout=5)
            server.settimeout(None)
            self.sockets += [client, server]
            up, down = bytearray(), bytearray()
            self.upstream.append(up)
            self.downstream.append(down)
            self._spawn(self._pump, client, server, up)
            self._spawn(self._pump, server, client, down)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, record: bytearray) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                record += data
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.stopping.set()
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self.threads:
            thread.join(timeout=5)


def control_messages(recorded: bytes) -> list[bytes]:
    """The raw control messages (length prefix and JSON) carried on stream 1."""
    decoder = FrameDecoder(max_data_length=1 << 30)
    decoder.feed(recorded)
    control = b""
    while (frame := decoder.next_frame()) is not None:
        if frame.type is FrameType.DATA and frame.stream_id == 1:
            control += frame.payload
    messages = []
    while len(control) >= 4:
        (length,) = struct.unpack_from(">I", control)
        messages.append(control[: 4 + length])
        control = control[4 + length :]
    return messages


@dataclass
class TokenServer:
    server: Server
    good: Client
    recorder: Recorder
    since: int


@pytest.fixture(scope="module")
def tokens(
    module_programs: Programs, tmp_path_factory: pytest.TempPathFactory, echo_port: int
) -> Iterator[TokenServer]:
    """A token server (its token file readable by others) and alice connected through the
    recording proxy, with a private token file."""
    directory = tmp_path_factory.mktemp("tokens")
    server_file = token_file(directory / "server-tokens", f"alice:{SECRET}", 0o644)
    alice_file = token_file(directory / "alice-token", f"alice:{SECRET}", 0o600)
    server = module_programs.server(
        "--token-file", str(server_file), "--link", f"echo=127.0.0.1:{echo_port}"
    )
    recorder = Recorder(("127.0.0.1", server.port))
    try:
        mark = server.program.mark()
        good = module_programs.client(recorder.address, "--token-file", str(alice_file))
        good.program.wait_for(r"tunnel up to ")
        found = server.program.wait_for(r"session up with 127\.0\.0\.1:(\d+) \(alice\)", mark)
        good.peer_port = int(found.group(1))
        yield TokenServer(server, good, recorder, server.program.mark())
    finally:
        recorder.close()


def test_token_files_readable_by_others_are_warned_about(tokens: TokenServer) -> None:
    warnings = [line for line in tokens.server.program.lines() if "can be read by" in line]
    assert len(warnings) == 1, warnings
    assert "chmod 600" in warnings[0] and "server-tokens" in warnings[0]
    assert "can be read by" not in tokens.good.program.text()  # alice's file is private


def test_wrong_token(programs: Programs, tokens: TokenServer, tmp_path: Path) -> None:
    wrong = token_file(tmp_path / "wrong", f"alice:{'0' * 32}", 0o644)
    since = tokens.server.program.mark()
    result = bad_attempt(programs, tokens.server, "--token-file", str(wrong))
    assert_not_let_in(result)
    mode = [line for line in result.client_log if "can be read by other users" in line]
    assert len(mode) == 1 and "chmod 600" in mode[0], result.client_log
    result.client_warnings = [line for line in result.client_warnings if line not in mode]
    assert_one_client_line(result, "refused this client", "wrong or unknown token for 'alice'")
    assert_each_refused_once(
        result.server_lines, [tokens.good.peer_port or 0], "wrong or unknown token for 'alice'"
    )
    assert_still_serving(tokens.server, tokens.good, since)


def test_replayed_proof_is_refused(tokens: TokenServer) -> None:
    sent = control_messages(bytes(tokens.recorder.upstream[0]))
    received = control_messages(bytes(tokens.recorder.downstream[0]))
    hello, proof = (decode_message(raw[4:]) for raw in sent[:2])
    challenge, welcome = (decode_message(raw[4:]) for raw in received[:2])
    assert isinstance(hello, Hello) and hello.token_name == "alice"
    assert isinstance(proof, Auth) and isinstance(challenge, Challenge)
    assert isinstance(welcome, Welcome)
    assert SECRET.encode() not in tokens.recorder.upstream[0]  # the token never crossed

    since = tokens.server.program.mark()
    with socket.create_connection(("127.0.0.1", tokens.server.port), timeout=5) as sock:
        raw = RawTunnel(sock)
        raw.control = raw.session.open_stream()
        raw.session.send_data(raw.control, sent[0])  # alice's hello, byte for byte
        raw.flush()
        fresh = raw.next_message()
        assert isinstance(fresh, Challenge), fresh
        assert fresh.nonce != challenge.nonce
        raw.session.send_data(raw.control, sent[1])  # alice's recorded proof
        raw.flush()
        answer = raw.next_message()
        assert isinstance(answer, Refusal), answer
        assert answer.reason is Reason.AUTH_FAILED
        assert "wrong or unknown token for 'alice'" in answer.text
        assert raw.next_message(timeout=3) is None  # and the server hangs up
        local_port = sock.getsockname()[1]

    line = tokens.server.program.wait_for(rf".*127\.0\.0\.1:{local_port}.*", since).group(0)
    assert "wrong or unknown token for 'alice'" in line, line
    assert_each_refused_once(
        tokens.server.program.lines(since), [tokens.good.peer_port or 0], "wrong or unknown token"
    )
    assert_still_serving(tokens.server, tokens.good, since)
