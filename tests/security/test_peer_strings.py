"""Strings a client sends reach the server's log, metrics and status only bounded and escaped.

A hand-driven peer (``tests.reliability.rawpeer``: frames built with ``struct``, the hello as
the protocol document writes it) talks to a real ambassador-server on loopback. Its hello's
name tries to forge a log line and to become the identity and metric label of its session;
streams it opens before its hello is answered try to fill the log. The server's log file, its
/metrics and its /status are read as an operator would read them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import signal
import struct
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.rawpeer import (
    CONTROL_STREAM,
    RST,
    RawPeer,
    data,
    hello,
    message,
    open_stream,
)
from tests.security.conftest import Programs, Server, pick_free_port
from tunnel.security import auth
from tunnel.security.auth import load_tokens

pytestmark = pytest.mark.timeout(60)

FORGED = "INFO ambassador.server: session up with 10.9.9.9:4444 (admin) as admin"
LINE_START = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ambassador\.")


def run(coroutine: asyncio.Future[object] | object, timeout: float = 30.0) -> object:
    async def bounded() -> object:
        return await asyncio.wait_for(coroutine, timeout)  # type: ignore[arg-type]

    return asyncio.run(bounded())


@pytest.fixture
def metered(programs: Programs, echo_port: int) -> Iterator[tuple[Server, int]]:
    """A plaintext server offering echo, with its metrics and status endpoint."""
    metrics_port = pick_free_port()
    server = programs.server(
        "--link", f"echo=127.0.0.1:{echo_port}",
        "--metrics-listen", f"127.0.0.1:{metrics_port}",
        "--handshake-timeout", "2",
    )  # fmt: skip
    yield server, metrics_port


def fetch(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
        return str(answer.read().decode())


def test_a_name_with_a_newline_forges_no_log_line_and_is_no_identity_or_label(
    metered: tuple[Server, int],
) -> None:
    server, metrics_port = metered
    since = server.program.mark()
    name = f"x\n2030-01-01 00:00:00,000 {FORGED}\x1b[2J"

    async def scenario() -> tuple[dict[str, object], str]:
        peer = await RawPeer.connect("127.0.0.1", server.port)
        answer = await peer.say_hello(hello([1], name=name))
        server.program.wait_for(rf"session up with {re.escape(peer.local)}\b", since)
        metrics = await asyncio.to_thread(fetch, metrics_port, "/metrics")
        status = json.loads(await asyncio.to_thread(fetch, metrics_port, "/status"))
        page = await asyncio.to_thread(fetch, metrics_port, "/")
        peer.close()
        return answer, f"{peer.local}\n{metrics}\n{json.dumps(status)}\n{page}"

    answer, seen = run(scenario())  # type: ignore[misc]
    assert answer["type"] == "welcome", answer
    local = seen.split("\n", 1)[0]
    lines = server.program.lines(since)
    for line in lines:
        assert LINE_START.match(line), f"a line the server did not write: {line!r}"
        assert "\x1b" not in line, line
    ups = [line for line in lines if "session up with" in line]
    assert len(ups) == 1, ups
    up = ups[0]
    # The address is who the peer is; the name it gave itself is not an identity.
    assert f"session up with {local} as anonymous" in up, up
    assert "(admin)" not in up.split(" as anonymous")[0], up
    rtt = re.findall(r'ambassador_rtt_seconds\{peer="([^"]*)"\}', seen)
    assert rtt == [local], rtt
    assert "10.9.9.9" not in seen.split("\n", 1)[1], "the peer's name reached metrics or status"


def chunked(stream_id: int, payload: bytes, size: int = 16 * 1024) -> bytes:
    return b"".join(data(stream_id, payload[i : i + size]) for i in range(0, len(payload), size))


@pytest.fixture
def token_server(programs: Programs, echo_port: int, tmp_path: Path) -> Server:
    tokens = tmp_path / "tokens"
    tokens.write_text("alice:a3f1c0de9b7e4d2a8c6b5e4f3a2d1c0b\n")
    tokens.chmod(0o600)
    return programs.server(
        "--link", f"echo=127.0.0.1:{echo_port}", "--token-file", str(tokens),
        "--handshake-timeout", "2",
    )  # fmt: skip


def test_streams_opened_before_the_hello_is_answered_cost_a_bounded_log(
    token_server: Server,
) -> None:
    """The hello names a token and a long name; before proving the token, 300 bare SYNs."""
    server = token_server
    since = server.program.mark()
    before = len(server.program.text())
    syns = 300

    async def scenario() -> str:
        peer = await RawPeer.connect("127.0.0.1", server.port)
        nonce = base64.b64encode(b"n" * 16).decode()
        answer = await peer.say_hello(hello([1], name="n" * 200, token_name="alice", nonce=nonce))
        assert answer["type"] == "challenge", answer
        peer.send(b"".join(open_stream(CONTROL_STREAM + 2 * i) for i in range(1, syns + 1)))
        await peer.read_for(0.5)
        peer.close()
        return peer.local

    local = str(run(scenario()))
    server.program.wait_for(rf"{re.escape(local)}\b.*before its hello", since, timeout=5)
    time.sleep(0.3)
    lines = [line for line in server.program.lines(since) if local in line]
    assert 1 <= len(lines) <= 3, lines
    grown = len(server.program.text()) - before
    assert grown < 4096, f"the log grew by {grown} bytes"


def test_a_huge_name_is_refused_in_one_short_line(metered: tuple[Server, int]) -> None:
    server, _ = metered
    since = server.program.mark()
    before = len(server.program.text())

    async def scenario() -> str:
        peer = await RawPeer.connect("127.0.0.1", server.port)
        body = message(hello([1], name="N\n" * 100_000))
        peer.send(open_stream(CONTROL_STREAM) + chunked(CONTROL_STREAM, body))
        await peer.read_for(1.0)
        peer.close()
        return peer.local

    local = str(run(scenario()))
    server.program.wait_for(rf"{re.escape(local)}\b", since, timeout=5)
    time.sleep(0.3)
    lines = server.program.lines(since)
    assert all(LINE_START.match(line) for line in lines), lines
    grown = len(server.program.text()) - before
    assert grown < 4096, f"the log grew by {grown} bytes"


def header(name: str) -> bytes:
    raw = name.encode()
    return bytes((1, len(raw))) + raw


def test_made_up_service_names_do_not_each_get_a_log_line(metered: tuple[Server, int]) -> None:
    """1000 streams, each naming a different service that does not exist: refused, counted,
    and logged as one fault (the throttle is keyed on the reason, not on the made-up name)."""
    server, _ = metered
    since = server.program.mark()
    before = len(server.program.text())
    names = 1000

    async def scenario() -> int:
        peer = await RawPeer.connect("127.0.0.1", server.port)
        answer = await peer.say_hello(hello([1], name="prober"))
        assert answer["type"] == "welcome", answer
        for batch in range(0, names, 100):
            burst = b""
            for i in range(batch, batch + 100):
                stream = CONTROL_STREAM + 2 * (i + 1)
                burst += open_stream(stream) + data(stream, header(f"nosuch-{i}\n"))
            peer.send(burst)
            await peer.read_for(0.05)
        await peer.read_for(0.5)
        resets = {f.stream_id for f in peer.frames if f.flags & RST}
        peer.close()
        return len(resets)

    assert run(scenario()) == names
    lines = [line for line in server.program.lines(since) if "refused" in line]
    assert 1 <= len(lines) <= 2, lines[:5]
    assert "\\n" in lines[0] and "'nosuch-0\\n'" in lines[0], lines[0]
    grown = len(server.program.text()) - before
    assert grown < 4096, f"the log grew by {grown} bytes"


# ------------------------------------------------------------- what a client may learn

SECRET = "a3f1c0de9b7e4d2a8c6b5e4f3a2d1c0b"


def stream_answer(peer: RawPeer, stream: int) -> tuple[int, str]:
    raw = b"".join(f.payload for f in peer.frames if f.stream_id == stream and f.type == 0)
    assert len(raw) >= 3, (stream, peer.frames[-5:])
    code, length = struct.unpack_from(">BH", raw)
    return code, raw[3 : 3 + length].decode()


async def authenticated(server: Server, tokens: Path, name: str) -> RawPeer:
    """A raw peer that proved the token ``name`` and was welcomed."""
    secret = load_tokens(str(tokens))[0][name]
    peer = await RawPeer.connect("127.0.0.1", server.port)
    nonce = b"c" * auth.NONCE_SIZE
    b64 = base64.b64encode
    challenge = await peer.say_hello(
        hello([1], name="raw", token_name=name, nonce=b64(nonce).decode())
    )
    assert challenge["type"] == "challenge", challenge
    server_nonce = base64.b64decode(challenge["nonce"])
    proof = auth.client_proof(secret, name, nonce, server_nonce, version=1, binding=b"")
    peer.send(data(CONTROL_STREAM, message({"type": "auth", "proof": b64(proof).decode()})))
    async with asyncio.timeout(5):
        while len(peer.control_messages()) < 2:
            await peer.read_for(0.05)
    welcome = peer.control_messages()[1]
    assert welcome["type"] == "welcome", welcome
    return peer


@pytest.fixture
def hidden(programs: Programs, echo_port: int, tmp_path: Path) -> tuple[Server, Path]:
    """redis and secret (both the echo backend); alice may reach redis only."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice:{SECRET}\n")
    tokens.chmod(0o600)
    server = programs.server(
        "--link", f"redis=127.0.0.1:{echo_port}",
        "--link", f"secret=127.0.0.1:{echo_port}",
        "--access", "alice=redis",
        "--token-file", str(tokens),
    )  # fmt: skip
    return server, tokens


def test_a_hidden_service_is_answered_like_one_that_does_not_exist(
    hidden: tuple[Server, Path], echo_port: int
) -> None:
    server, tokens = hidden
    since = server.program.mark()

    async def scenario() -> tuple[dict[str, object], dict[str, tuple[int, str]]]:
        peer = await authenticated(server, tokens, "alice")
        welcome = peer.control_messages()[1]
        asked = {"secret": 3, "nosuch": 5, "redis": 7}
        for name, stream in asked.items():
            peer.send(open_stream(stream) + data(stream, header(name)))
        await peer.read_for(0.5)
        answers = {name: stream_answer(peer, stream) for name, stream in asked.items()}
        peer.close()
        return welcome, answers

    welcome, answers = run(scenario())  # type: ignore[misc]
    assert welcome["catalog"] == [{"alias": "redis", "port": echo_port}], welcome
    assert welcome["identity"] == "alice", welcome
    assert answers["redis"] == (0, "")
    (code, text), (other_code, other_text) = answers["secret"], answers["nosuch"]
    assert code == other_code == 1, answers  # UNKNOWN_SERVICE, both
    assert text.replace("'secret'", "'nosuch'") == other_text, answers
    assert "secret" not in other_text and f"offered to it: redis:{echo_port})" in text, text
    assert "identity 'alice'" in text and "check the server's access rules" in text, text
    # The operator's log says plainly which it was.
    lines = server.program.lines(since)
    assert any(
        "to 'secret' refused (not_allowed)" in line and "the access rules hide it" in line
        for line in lines
    ), lines
    assert any("to 'nosuch' refused (unknown_service)" in line for line in lines), lines


def test_a_client_asking_for_a_hidden_service_is_pointed_at_the_access_rules(
    programs: Programs, hidden: tuple[Server, Path]
) -> None:
    server, tokens = hidden
    client = programs.client(server, "--token-file", str(tokens), service="secret")
    # The listener stays (a sidecar's consumer may come before the rule is fixed); one warning
    # says why the service is missing without confirming that it exists.
    client.program.wait_for(r"WARNING .*does not offer 'secret' to this client, identity 'alice'")
    (line,) = [line for line in client.program.lines() if "does not offer 'secret'" in line]
    assert "(offered: redis)" in line and "access rules" in line, line


def test_an_access_rule_naming_no_service_is_warned_about_at_start_and_reload(
    programs: Programs, echo_port: int, tmp_path: Path
) -> None:
    config = tmp_path / "server.toml"
    links = f'[links]\nredis = "127.0.0.1:{echo_port}"\ndb = "127.0.0.1:{echo_port}"\n\n'
    config.write_text(links + '[access]\nalice = "redsi"\n')
    server = programs.server("--config", str(config))
    server.program.wait_for(
        r"WARNING .*access rule alice=redsi names no service .*did you mean 'redis'\?"
    )
    since = server.program.mark()
    config.write_text(links + '[access]\nalice = "redis"\nbob = "dbb"\n')
    server.program.send(signal.SIGHUP)
    server.program.wait_for(r"WARNING .*access rule bob=dbb .*did you mean 'db'\?", since)
    assert not any("redsi" in line for line in server.program.lines(since))


def test_a_burst_of_bad_control_messages_costs_one_line(metered: tuple[Server, int]) -> None:
    server, _ = metered
    since = server.program.mark()

    async def scenario() -> str:
        peer = await RawPeer.connect("127.0.0.1", server.port)
        burst = message(hello([1], name="a")) + message(hello([1], name="b")) * 200
        peer.send(open_stream(CONTROL_STREAM) + data(CONTROL_STREAM, burst))
        await peer.read_for(1.0)
        peer.close()
        return peer.local

    local = str(run(scenario()))
    server.program.wait_for(rf"{re.escape(local)}\b.*second hello", since, timeout=5)
    time.sleep(0.3)
    lines = [line for line in server.program.lines(since) if local in line]
    assert len(lines) <= 3, lines[:5]
