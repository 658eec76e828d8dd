"""docs/operations.md covers what an operator meets: every config key of both roles with its
environment variable, every metric, the endpoints, and commands whose flags exist."""

from __future__ import annotations

import click
import pytest

from tests.deploy.support import OPERATIONS, ROLES, ambassador_invocations, unknown_flags
from tunnel.operations.metrics import REGISTRY
from tunnel.settings.config import params_of


@pytest.fixture(scope="module")
def text() -> str:
    return OPERATIONS.read_text()


@pytest.mark.parametrize("role", ["server", "client"])
def test_every_config_key_and_its_variable_are_in_the_reference(role: str, text: str) -> None:
    command = ROLES[role]
    options = {p.name: p for p in command.params if isinstance(p, click.Option)}
    for name in params_of(command):
        key = name.replace("_", "-")
        rows = [line for line in text.splitlines() if line.startswith(f"| `{key}` |")]
        assert rows, f"no row for the {role}'s key `{key}` in the reference tables"
        envvar = options[name].envvar
        if isinstance(envvar, str):
            assert f"`{envvar}`" in rows[0], f"`{key}`: its variable {envvar} is not in its row"


def test_every_metric_is_explained(text: str) -> None:
    families = [metric.name for metric in REGISTRY.collect()]
    assert families
    for family in families:
        assert f"| `{family}` |" in text, f"{family} has no row in the metrics table"


def test_endpoints_and_status_commands_are_explained(text: str) -> None:
    for path in ("/metrics", "/healthz", "/readyz", "/status"):
        assert f"| `{path}` |" in text, path
    for command in ("ambassador-server status", "ambassador-client status"):
        assert command in text


def test_systemd_section_gives_the_lifecycle_commands(text: str) -> None:
    for command in (
        "systemctl enable --now ambassador-server",
        "systemctl reload ambassador-server",
        "install -m 0644 deploy/systemd/ambassador-server.service /etc/systemd/system/",
    ):
        assert command in text, command


def test_drop_in_mode_is_shown_beside_the_seeds_commands(text: str) -> None:
    seed = "docker run -d --link redis:redis --name redis_ambassador -p 6379:6379"
    assert f"`{seed} svendowideit/ambassador`" in text
    assert f"`{seed} ambassador`" in text


@pytest.mark.parametrize("program", ["ambassador-server", "ambassador-client"])
def test_documented_commands_use_real_flags(program: str, text: str) -> None:
    invocations = [args for p, args in ambassador_invocations(text) if p == program]
    assert invocations
    for args in invocations:
        assert unknown_flags(ROLES[program], args) == [], f"{program} {' '.join(args)}"


def test_the_client_drain_line_is_the_one_the_client_logs(text: str) -> None:
    """The client's line when its server drains comes from the connector's reason and
    its "lost ...; reconnecting" wording; the reference gives that line, nothing else."""
    from pathlib import Path

    source = (Path(__file__).parents[2] / "client" / "connector.py").read_text()
    assert '"the server is draining"' in source and '"%s; reconnecting"' in source
    assert 'f"tunnel to {remote} lost: {reason}"' in source
    assert "lost: the server is draining; reconnecting` |" in text
    assert "server is going away" not in text
