"""The token file and the TLS files are read once per configuration: the CLI checks them, and
the server runs with what was checked rather than reading the files again."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from server.app import Server
from server.cli import build_config, cli, main

SECRET = "a3f1c0de9b7e4d2a8c6b5e4f3a2d1c0b"


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    with pytest.raises(SystemExit) as done:
        main(["certs", "init", str(tmp_path), "--san", "127.0.0.1"])
    assert done.value.code == 0
    return tmp_path


def test_the_server_runs_with_the_files_the_cli_read(pki: Path) -> None:
    tokens = pki / "tokens"
    tokens.write_text(f"alice:{SECRET}\n")
    tokens.chmod(0o600)
    args = [
        "--link", "redis=127.0.0.1:6379", "--listen", "127.0.0.1:7000",
        "--token-file", str(tokens),
        "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server-key.pem"),
    ]  # fmt: skip
    params = cli.make_context("ambassador-server", args).params
    config = build_config(params, {})
    for path in (tokens, pki / "server.pem", pki / "server-key.pem"):
        os.remove(path)  # gone now: reading them again would fail
    server = Server(config)
    assert server.config.tokens == {"alice": SECRET.encode()}
    assert server.config.tls_context is config.tls_context is not None
    assert server.config.tls_binding == config.tls_binding != b""
