"""Every option of both roles has a section of --help by name, not the fallback."""

from __future__ import annotations

import click
import pytest

from client.cli import cli as client_cli
from server.cli import cli as server_cli
from tunnel.settings.helpgroups import DEFAULT_GROUP, GroupedHelp, group_of


@pytest.mark.parametrize("command", [server_cli, client_cli], ids=["server", "client"])
def test_every_option_has_a_named_section(command: click.Command) -> None:
    ctx = click.Context(command)
    unplaced = [
        param.name
        for param in command.get_params(ctx)
        if isinstance(param, click.Option) and group_of(param) == DEFAULT_GROUP
    ]
    assert not unplaced, (
        f"options shown under '{DEFAULT_GROUP}' in --help: {unplaced}; give each a section "
        "in tunnel.settings.helpgroups.OPTION_GROUPS"
    )


def test_an_unknown_option_is_shown_under_the_fallback_section() -> None:
    @click.group(cls=GroupedHelp, invoke_without_command=True)
    @click.option("--brand-new", default=3, envvar="AMBASSADOR_BRAND_NEW", help="New.")
    @click.option("--listen", default="0.0.0.0:1", help="Where.")
    def command(brand_new: int, listen: str) -> None:
        """A command."""

    text = command.get_help(click.Context(command, info_name="prog"))
    assert text.index("Tunnel options:") < text.index("--listen")
    assert text.index(f"{DEFAULT_GROUP} options:") < text.index("--brand-new")
    assert "[env var: AMBASSADOR_BRAND_NEW; default: 3]" in text
