"""A wss:// remote implies TLS; a ws:// remote is plaintext and refuses TLS options."""

from __future__ import annotations

import pytest

from client.cli import remote_tls
from tunnel.errors import ConfigError
from tunnel.security.tls import ClientTls
from tunnel.settings.websocket import parse_remote


def test_wss_implies_tls_with_the_system_cas() -> None:
    assert remote_tls(None, [parse_remote("wss://h/a", 7700)]) == ClientTls()
    assert remote_tls(None, [parse_remote("ws://h/a", 7700)]) is None
    given = ClientTls(ca="ca.pem")
    assert remote_tls(given, [parse_remote("wss://h/a", 7700)]) is given


def test_ws_with_tls_is_one_line_saying_wss() -> None:
    with pytest.raises(ConfigError, match="write the remote as wss:// for TLS"):
        remote_tls(ClientTls(ca="ca.pem"), [parse_remote("ws://h/a", 7700)])
    with pytest.raises(ConfigError, match="a ws:// remote is plaintext"):
        remote_tls(None, [parse_remote("ws://h/a", 7700), parse_remote("wss://g/a", 7700)])
