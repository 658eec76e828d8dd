"""Tests for tunnel.security.tls: a certificate or key that cannot be read is named in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.cli import main
from tunnel.errors import ConfigError
from tunnel.security.tls import ServerTls, server_context


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    with pytest.raises(SystemExit) as done:
        main(["certs", "init", str(tmp_path), "--san", "127.0.0.1"])
    assert done.value.code == 0
    return tmp_path


@pytest.mark.parametrize("missing", ["cert", "key"])
def test_the_missing_file_of_the_pair_is_named(pki: Path, missing: str) -> None:
    cert, key = pki / "server.pem", pki / "server-key.pem"
    gone = pki / "gone.pem"
    tls = ServerTls(
        cert=str(gone if missing == "cert" else cert), key=str(gone if missing == "key" else key)
    )
    with pytest.raises(ConfigError) as raised:
        server_context(tls)
    assert str(raised.value) == f"cannot read {gone}: no such file"
