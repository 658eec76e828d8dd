"""The WebSocket forms of --remote and --websocket-path: what is accepted, and one line for
what is not."""

from __future__ import annotations

import pytest

from tunnel.settings.links import Address, LinkError
from tunnel.settings.websocket import WebSocketAddress, parse_path, parse_remote


@pytest.mark.parametrize(
    ("text", "expected", "shown"),
    [
        ("ws://tunnel.example.com/ambassador",
         WebSocketAddress("tunnel.example.com", 80, "/ambassador", False),
         "ws://tunnel.example.com:80/ambassador"),
        ("WSS://[::1]:8443/a/b", WebSocketAddress("::1", 8443, "/a/b", True), "wss://[::1]:8443/a/b"),
        ("wss://host", WebSocketAddress("host", 443, "/", True), "wss://host:443/"),
        ("host:7000", Address("host", 7000), "host:7000"),
    ],
)  # fmt: skip
def test_remote_forms(text: str, expected: Address, shown: str) -> None:
    remote = parse_remote(text, default_port=7000)
    assert remote == expected
    assert type(remote) is type(expected)
    assert str(remote) == shown


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("ws://user:pw@host/x", "bad URL 'ws://user:pw@host/x': no user or password in it; "
         "use ws://HOST[:PORT]/PATH or wss://HOST[:PORT]/PATH"),
        ("ws://host/a?b=1", "bad URL 'ws://host/a?b=1': a path only, without '?' or '#'; "
         "use ws://HOST[:PORT]/PATH or wss://HOST[:PORT]/PATH"),
        ("ws://host:99999/x", "bad URL 'ws://host:99999/x': bad address 'host:99999'"),
        ("http://host/x", "bad address 'http://host/x': expected HOST:PORT, not a URL"),
    ],
)  # fmt: skip
def test_bad_remotes_are_one_line(text: str, error: str) -> None:
    with pytest.raises(LinkError) as caught:
        parse_remote(text, default_port=7000)
    assert str(caught.value).startswith(error)
    assert "\n" not in str(caught.value)


def test_websocket_path() -> None:
    assert parse_path("/ambassador") == "/ambassador"
    for bad in ("ambassador", "/a b", "/x?y", "/" + "a" * 300):
        with pytest.raises(LinkError, match="bad WebSocket path"):
            parse_path(bad)
