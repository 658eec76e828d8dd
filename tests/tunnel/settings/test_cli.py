"""Each role knows the variables only the other reads, without importing its command line."""

from __future__ import annotations

from pathlib import Path

import click

from client.cli import cli as client_cli
from server.cli import cli as server_cli
from tests.tunnel.test_sansio import imported_modules
from tunnel.settings.cli import ROLE_ONLY_VARIABLES, option_variables
from tunnel.settings.wrongrole import ROLE_ONLY_OPTIONS

ROOT = Path(__file__).parents[3]


def test_the_table_holds_the_variables_only_one_role_reads() -> None:
    server, client = option_variables(server_cli), option_variables(client_cli)
    assert ROLE_ONLY_VARIABLES["ambassador-server"] == server - client
    assert ROLE_ONLY_VARIABLES["ambassador-client"] == client - server


def options(command: click.Command) -> dict[str, click.Option]:
    """A command's own options by first long spelling."""
    found = {}
    for param in command.params:
        if isinstance(param, click.Option):
            found[next(o for o in param.opts if o.startswith("--"))] = param
    return found


def test_the_table_holds_the_options_only_one_role_has() -> None:
    server, client = options(server_cli), options(client_cli)
    assert ROLE_ONLY_OPTIONS["ambassador-server"] == server.keys() - client.keys()
    assert ROLE_ONLY_OPTIONS["ambassador-client"] == client.keys() - server.keys()
    # The one other spelling an option has is its --no- side, which the table does not list.
    for option in (*server.values(), *client.values()):
        other = [o for o in (*option.opts, *option.secondary_opts) if o.startswith("--")][1:]
        assert other in ([], [f"--no-{option.opts[0].removeprefix('--')}"]), option.opts


def test_neither_command_line_imports_the_other() -> None:
    assert "server.cli" not in imported_modules(ROOT / "client" / "cli.py")
    assert "client.cli" not in imported_modules(ROOT / "server" / "cli.py")
