"""Each role knows the variables only the other reads, without importing its command line."""

from __future__ import annotations

from pathlib import Path

from client.cli import cli as client_cli
from server.cli import cli as server_cli
from tests.tunnel.test_sansio import imported_modules
from tunnel.settings.cli import ROLE_ONLY_VARIABLES, option_variables

ROOT = Path(__file__).parents[3]


def test_the_table_holds_the_variables_only_one_role_reads() -> None:
    server, client = option_variables(server_cli), option_variables(client_cli)
    assert ROLE_ONLY_VARIABLES["ambassador-server"] == server - client
    assert ROLE_ONLY_VARIABLES["ambassador-client"] == client - server


def test_neither_command_line_imports_the_other() -> None:
    assert "server.cli" not in imported_modules(ROOT / "client" / "cli.py")
    assert "client.cli" not in imported_modules(ROOT / "server" / "cli.py")
