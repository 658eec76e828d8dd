"""The example configuration files load through the real config loader, and make a
configuration the roles accept once their certificates exist."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest

from client.cli import cli as client_cli
from server.cli import cli as server_cli
from tests.deploy.support import DEPLOY, OPERATIONS, REPO, ROLES
from tunnel.settings.cli import run_cli
from tunnel.settings.config import default_map_for

EXAMPLES = {
    "server": DEPLOY / "systemd" / "server.toml",
    "client": DEPLOY / "systemd" / "client.toml",
}


@pytest.mark.parametrize("role", EXAMPLES)
def test_example_loads_through_the_config_loader(role: str) -> None:
    settings = default_map_for(ROLES[role], EXAMPLES[role])
    if role == "server":
        assert settings["link"] == ("redis=127.0.0.1:6379", "db=10.0.0.6:5432")
        assert settings["access"] == ("client1=redis, db",)
    else:
        assert settings["remote"] and settings["expose"]


def toml_blocks(markdown: str) -> list[tuple[str, str]]:
    """(role, text) of each TOML block whose first line names the role it configures."""
    blocks = re.findall(r"^```toml\n(.*?)^```", markdown, flags=re.MULTILINE | re.DOTALL)
    found = []
    for block in blocks:
        first = block.splitlines()[0]
        role = re.search(r"ambassador-(server|client)|/(server|client)\.toml", first)
        assert role, f"say which role a TOML example is for in its first line: {first!r}"
        found.append((role[1] or role[2], block))
    return found


@pytest.mark.parametrize("document", [OPERATIONS, REPO / "README.md"], ids=lambda p: p.name)
def test_toml_examples_in_the_docs_load(document: Path, tmp_path: Path) -> None:
    blocks = toml_blocks(document.read_text())
    assert blocks
    for i, (role, text) in enumerate(blocks):
        path = tmp_path / f"{i}.toml"
        path.write_text(text)
        default_map_for(ROLES[role], path)


@pytest.fixture
def pki(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A CA, a server certificate and client1's, made by the project's own tooling."""
    directory = tmp_path / "pki"
    init = ["certs", "init", str(directory), "--san", "big-server.example.com"]
    assert run_cli(server_cli, "ambassador-server", init) == 0
    client = ["certs", "client", "client1", "--dir", str(directory)]
    assert run_cli(server_cli, "ambassador-server", client) == 0
    capsys.readouterr()
    return directory


@pytest.mark.parametrize("role", EXAMPLES)
def test_example_passes_check_config_once_its_files_exist(
    role: str,
    pki: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The example's keys live under /etc/ambassador/pki; point them at freshly made ones.
    text = EXAMPLES[role].read_text().replace("/etc/ambassador/pki", str(pki))
    referenced = re.findall(r'^[a-z-]+ = "(/[^"]+)"', text, flags=re.MULTILINE)
    assert all(Path(path).exists() for path in referenced), referenced
    config = tmp_path / EXAMPLES[role].name
    config.write_text(text)
    for name in [name for name in os.environ if name.startswith("AMBASSADOR_")]:
        monkeypatch.delenv(name)
    command = server_cli if role == "server" else client_cli
    status = run_cli(command, f"ambassador-{role}", ["--config", str(config), "--check-config"])
    out, err = capsys.readouterr()
    assert status == 0, err
    # The effective configuration is printed, the file's catalog or expose list in it.
    key, wanted = (
        ("link", ["redis=127.0.0.1:6379", "db=10.0.0.6:5432"])
        if role == "server"
        else ("expose", ["127.0.0.1:6379=redis", "127.0.0.1:5432=db"])
    )
    assert tomllib.loads(out)[key] == wanted, out
