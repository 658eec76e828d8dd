"""The client's TLS files are read once per configuration: the CLI checks them, and the
connector connects with what was checked rather than reading the files again."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from client.cli import build_config, cli
from client.connector import Connector
from server.cli import main as server_main


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    with pytest.raises(SystemExit) as done:
        server_main(["certs", "init", str(tmp_path), "--san", "127.0.0.1"])
    assert done.value.code == 0
    return tmp_path


def test_the_connector_uses_the_context_the_cli_built(pki: Path) -> None:
    args = ["--remote", "127.0.0.1:7000", "--tls-ca", str(pki / "ca.pem")]
    config = build_config(cli.make_context("ambassador-client", args).params, {})
    os.remove(pki / "ca.pem")  # gone now: reading it again would fail

    async def connector_context() -> object:
        connector = Connector(config)
        connector.reconfigure(config)
        return connector.tls_context

    assert asyncio.run(connector_context()) is config.tls_context is not None
