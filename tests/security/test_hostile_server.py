"""A real ambassador-client against a hostile server: it checks what it is sent, and survives.

The server (``tests.security.hostileserver``) speaks the protocol but fills it with what a
compromised or impostor server could send: catalog aliases with whitespace, newlines or terminal
escapes, a server name and refusal texts that try to forge log lines. The client must keep
running, skip what it cannot use with one warning, and log, count and show on /status only
escaped, bounded text.
"""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest

from tests.security.conftest import LOOPBACK, Programs, consumer_receives, pick_free_port
from tests.security.hostileserver import HostileServer, stream_answer

pytestmark = pytest.mark.timeout(60)

FORGED = "2030-01-01 00:00:00,000 INFO ambassador.client: tunnel up to 10.9.9.9:4444 (admin)"
LINE_START = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ambassador\.|ambassador-)")


def welcome(catalog: list[object], server: str = "hostile") -> dict[str, object]:
    return {"type": "welcome", "version": 1, "server": server, "catalog": catalog}


@pytest.fixture
def hostile() -> Iterator[list[HostileServer]]:
    started: list[HostileServer] = []
    yield started
    for server in started:
        server.stop()


def start(hostile: list[HostileServer], *replies: dict[str, object], **kw: bytes) -> str:
    server = HostileServer(list(replies), **kw)
    hostile.append(server)
    return server.address


def client_argv(remote: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "client", "--remote", remote, *args]


def assert_only_own_lines(text: str) -> None:
    for line in text.splitlines():
        assert LINE_START.match(line), f"a line the client did not write: {line!r}"
        assert "\x1b" not in line and len(line) < 2000, line
    assert "Traceback" not in text, text


def test_a_catalog_with_invalid_aliases_is_used_without_them(
    programs: Programs, hostile: list[HostileServer]
) -> None:
    port = pick_free_port()
    remote = start(
        hostile,
        welcome(
            [
                {"alias": "bad alias", "port": pick_free_port()},
                {"alias": f"x\n{FORGED}\x1b[2J", "port": pick_free_port()},
                {"alias": "a" * 5000, "port": pick_free_port()},
                {"alias": "echo", "port": port},
                {"alias": ["not", "a", "name"], "port": 7},
                {"port": 0},
            ],
            server=f"evil\n{FORGED}",
        ),
    )
    client = programs.start("client", client_argv(remote))
    client.wait_for(rf"exposing 'echo' on {LOOPBACK}:{port}\b")
    time.sleep(0.3)
    assert client.alive(), client.text()
    text = client.text()
    assert_only_own_lines(text)
    skipped = [line for line in text.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and " WARNING " in skipped[0], text
    assert "5 of 6" in skipped[0], skipped
    assert text.count("exposing ") == 1, text


def test_a_refusal_text_is_escaped_in_the_log_and_in_status(
    programs: Programs, hostile: list[HostileServer]
) -> None:
    remote = start(
        hostile, {"type": "refusal", "reason": 12, "text": f"go away\n{FORGED}" + "!" * 100_000}
    )
    metrics_port, port = pick_free_port(), pick_free_port()
    client = programs.start(
        "client",
        client_argv(
            remote,
            "--expose", f"{LOOPBACK}:{port}=echo",
            "--metrics-listen", f"{LOOPBACK}:{metrics_port}",
        ),
    )  # fmt: skip
    client.wait_for(r"refused this client")
    url = f"http://{LOOPBACK}:{metrics_port}/status"
    with urllib.request.urlopen(url, timeout=5) as answer:
        status = json.loads(answer.read())
    assert client.alive(), client.text()
    assert_only_own_lines(client.text())
    error = status["remotes"][0]["last_error"]
    assert "go away\\n2030" in error and "\n" not in error and len(error) < 1000, error


def test_a_stream_refusal_text_is_escaped_in_the_log(
    programs: Programs, hostile: list[HostileServer]
) -> None:
    port = pick_free_port()
    remote = start(
        hostile,
        welcome([{"alias": "echo", "port": port}]),
        answer=stream_answer(1, f"nope\n{FORGED}\x1b[2J"),
    )
    client = programs.start("client", client_argv(remote, "--expose", f"{LOOPBACK}:{port}=echo"))
    client.wait_for(r"tunnel up to ")
    assert consumer_receives(port) == b""
    client.wait_for(r"refused by the server \(unknown_service\)")
    assert client.alive(), client.text()
    assert_only_own_lines(client.text())
