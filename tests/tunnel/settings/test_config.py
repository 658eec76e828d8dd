"""Tests for settings.config: TOML files as click default maps, under flags and environment."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from tunnel.errors import ConfigError
from tunnel.settings.config import (
    Kind,
    ParamSpec,
    apply_config_file,
    default_map_for,
    load_config_file,
    params_of,
    to_default_map,
)


def one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(error.value)
    assert message.splitlines() == [message], message
    return message


def write(tmp_path: Path, text: str, name: str = "ambassador.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@click.command(context_settings={"auto_envvar_prefix": "AMBASSADOR"})
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    is_eager=True,
    expose_value=False,
    callback=apply_config_file,
)
@click.option("--link", multiple=True)
@click.option("--expose", multiple=True)
@click.option("--port", type=int, default=7700)
@click.option("--timeout", type=float, default=5.0)
@click.option("--links-from-env/--no-links-from-env", default=False)
@click.option("--log-level", type=click.Choice(["debug", "info"]), default="info")
def serve(**settings: object) -> None:
    click.echo(json.dumps(settings))


PARAMS = params_of(serve)


def run(*args: str, env: dict[str, str] | None = None) -> dict[str, object]:
    result = CliRunner().invoke(serve, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    settings: dict[str, object] = json.loads(result.output)
    return settings


# --- reading the file


def test_load_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'port = 7701\nlink = ["redis=10.0.0.5:6379"]\n[links]\ndb = "x:1"\n')
    assert load_config_file(path) == {
        "port": 7701,
        "link": ["redis=10.0.0.5:6379"],
        "links": {"db": "x:1"},
    }
    assert load_config_file(str(path)) == load_config_file(path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError) as error:
        load_config_file(path)
    message = one_line(error)
    assert str(path) in message
    assert "no such file" in message


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_config_file(tmp_path)
    assert "directory" in one_line(error)


def test_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "port = 7701\nbind = 127.0.0.1\n")  # the string lacks quotes
    with pytest.raises(ConfigError) as error:
        load_config_file(path)
    message = one_line(error)
    assert str(path) in message
    assert "not valid TOML" in message
    assert "line 2, column 13" in message


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('bind = "café"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as error:
        load_config_file(path)
    assert "UTF-8" in one_line(error)


# --- checking it against the options


def test_params_of_a_command() -> None:
    # Neither --help nor --config is a key of the file.
    assert params_of(serve) == {
        "link": ParamSpec(Kind.STR, multiple=True),
        "expose": ParamSpec(Kind.STR, multiple=True),
        "port": ParamSpec(Kind.INT),
        "timeout": ParamSpec(Kind.FLOAT),
        "links_from_env": ParamSpec(Kind.BOOL),
        "log_level": ParamSpec(Kind.STR),
    }


def test_counted_options_take_integers() -> None:
    @click.command()
    @click.option("-v", "--verbose", count=True)
    def command(verbose: int) -> None: ...

    assert params_of(command) == {"verbose": ParamSpec(Kind.INT)}


def test_a_worker_count_in_a_file_is_a_number_or_auto(tmp_path: Path) -> None:
    from tunnel.settings.cli import AutoWorkers, WorkerCount, cpus_available

    @click.command()
    @click.option("--config", is_eager=True, expose_value=False, callback=apply_config_file)
    @click.option("--workers", type=WorkerCount(), default=1)
    def command(workers: int) -> None:
        click.echo(f"{workers} {isinstance(workers, AutoWorkers)}")

    assert params_of(command) == {"workers": ParamSpec(Kind.COUNT)}
    config = tmp_path / "workers.toml"
    expected = {"3": "3 False", '"auto"': f"{min(64, cpus_available())} True"}
    for written, shown in expected.items():
        config.write_text(f"workers = {written}\n")
        result = CliRunner().invoke(command, ["--config", str(config)])
        assert (result.exit_code, result.output.strip()) == (0, shown)
    config.write_text("workers = 2.5\n")
    result = CliRunner().invoke(command, ["--config", str(config)])
    assert result.exit_code == 2
    assert 'workers must be a number or "auto", not a number (2.5)' in result.output


def test_to_default_map_converts_and_renames() -> None:
    data = {
        "port": 7701,
        "timeout": 2,
        "links-from-env": True,
        "log_level": "debug",
        "link": ["redis=10.0.0.5:6379", "db=10.0.0.6:5432"],
        "expose": "6379",
    }
    assert to_default_map(data, PARAMS) == {
        "port": 7701,
        "timeout": 2.0,
        "links_from_env": True,
        "log_level": "debug",
        "link": ("redis=10.0.0.5:6379", "db=10.0.0.6:5432"),
        "expose": ("6379",),
    }


def test_tables_of_links_and_exposes() -> None:
    data = {
        "link": ["web=10.0.0.8:80"],
        "links": {"redis": "10.0.0.5:6379", "db:5433": "10.0.0.6:5432"},
        "expose": {"127.0.0.1:16379": "redis", "[::1]:15432": "db"},
    }
    assert to_default_map(data, PARAMS) == {
        "link": ("web=10.0.0.8:80", "redis=10.0.0.5:6379", "db:5433=10.0.0.6:5432"),
        "expose": ("127.0.0.1:16379=redis", "[::1]:15432=db"),
    }


def test_plural_array() -> None:
    assert to_default_map({"links": ["redis=10.0.0.5:6379"]}, PARAMS) == {
        "link": ("redis=10.0.0.5:6379",)
    }


def test_empty_file_changes_nothing() -> None:
    assert to_default_map({}, PARAMS) == {}


def test_unknown_key_names_the_nearest_one() -> None:
    with pytest.raises(ConfigError) as error:
        to_default_map({"prot": 7701}, PARAMS, "/etc/ambassador.toml")
    message = one_line(error)
    assert message == "/etc/ambassador.toml: unknown key 'prot'; did you mean 'port'?"


@pytest.mark.parametrize("key", ["Log_Levle", "exposes_"])
def test_unknown_key_is_matched_across_spellings(key: str) -> None:
    with pytest.raises(ConfigError) as error:
        to_default_map({key: "x"}, PARAMS)
    assert one_line(error).endswith(("did you mean 'log-level'?", "did you mean 'expose'?"))


def test_unknown_key_far_from_any_points_at_help() -> None:
    with pytest.raises(ConfigError) as error:
        to_default_map({"colour": "blue"}, PARAMS, "/etc/ambassador.toml")
    assert one_line(error) == (
        "/etc/ambassador.toml: unknown key 'colour'; "
        "the keys are the long flags without '--' (see --help)"
    )


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"port": "7701"}, "port must be an integer, not a string ('7701')"),
        ({"port": True}, "port must be an integer, not a boolean (true)"),
        ({"port": 1.5}, "port must be an integer, not a number (1.5)"),
        ({"timeout": "fast"}, "timeout must be a number, not a string ('fast')"),
        ({"links-from-env": 1}, "links-from-env must be true or false, not an integer (1)"),
        ({"log-level": ["debug"]}, "log-level must be a string, not an array"),
        ({"log-level": {"a": "b"}}, "log-level must be a string, not a table"),
        ({"link": ["a=b:1", 2]}, "link must be a string or an array of them, not an integer (2)"),
        ({"link": [["a=b:1"]]}, "link must be a string or an array of them, not an array"),
        ({"links": {"redis": 6379}}, "links.redis must be a string, not an integer (6379)"),
        ({"port": "x" * 100}, "port must be an integer, not a string"),
    ],
)
def test_wrong_kinds(data: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        to_default_map(data, PARAMS, "ambassador.toml")
    assert one_line(error) == f"ambassador.toml: {expected}"


def test_one_key_spelled_twice() -> None:
    with pytest.raises(ConfigError) as error:
        to_default_map({"links-from-env": True, "links_from_env": False}, PARAMS, "a.toml")
    message = one_line(error)
    assert "'links-from-env' and 'links_from_env' are the same key" in message


def test_default_map_for_reports_unknown_keys_with_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "remote = '192.168.1.52'\n")
    with pytest.raises(ConfigError) as error:
        default_map_for(serve, path)
    message = one_line(error)
    assert str(path) in message
    assert "'remote'" in message


# --- precedence: flags > AMBASSADOR_* environment > file > defaults

FILE = """
port = 7701
timeout = 1.5
links-from-env = true
log-level = "debug"
link = ["redis=10.0.0.5:6379"]

[expose]
"127.0.0.1:16379" = "redis"
"""


def test_defaults_alone() -> None:
    assert run() == {
        "link": [],
        "expose": [],
        "port": 7700,
        "timeout": 5.0,
        "links_from_env": False,
        "log_level": "info",
    }


def test_file_beats_defaults(tmp_path: Path) -> None:
    assert run("--config", str(write(tmp_path, FILE))) == {
        "link": ["redis=10.0.0.5:6379"],
        "expose": ["127.0.0.1:16379=redis"],
        "port": 7701,
        "timeout": 1.5,
        "links_from_env": True,
        "log_level": "debug",
    }


def test_environment_beats_file(tmp_path: Path) -> None:
    env = {
        "AMBASSADOR_PORT": "7702",
        "AMBASSADOR_LINKS_FROM_ENV": "false",
        "AMBASSADOR_LINK": "db=10.0.0.6:5432 web=10.0.0.8:80",
    }
    settings = run("--config", str(write(tmp_path, FILE)), env=env)
    assert settings["port"] == 7702
    assert settings["links_from_env"] is False
    assert settings["link"] == ["db=10.0.0.6:5432", "web=10.0.0.8:80"]
    assert settings["timeout"] == 1.5  # not in the environment: the file still counts
    assert settings["expose"] == ["127.0.0.1:16379=redis"]


def test_flags_beat_environment_and_file(tmp_path: Path) -> None:
    env = {"AMBASSADOR_PORT": "7702", "AMBASSADOR_LINK": "db=10.0.0.6:5432"}
    settings = run(
        "--config",
        str(write(tmp_path, FILE)),
        "--port",
        "7703",
        "--no-links-from-env",
        "--link",
        "cache=10.0.0.7:6379",
        env=env,
    )
    assert settings["port"] == 7703
    assert settings["links_from_env"] is False
    assert settings["link"] == ["cache=10.0.0.7:6379"]
    assert settings["log_level"] == "debug"


def test_config_path_from_the_environment(tmp_path: Path) -> None:
    settings = run(env={"AMBASSADOR_CONFIG": str(write(tmp_path, FILE))})
    assert settings["port"] == 7701


def test_config_option_anywhere_on_the_line(tmp_path: Path) -> None:
    # --config is eager, so it applies even when it comes after other flags.
    settings = run("--port", "7703", "--config", str(write(tmp_path, FILE)))
    assert (settings["port"], settings["timeout"]) == (7703, 1.5)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("prot = 1\n", "unknown key 'prot'"),
        ("port = 'x'\n", "port must be an integer"),
        ("port = \n", "not valid TOML"),
    ],
)
def test_bad_file_is_one_clear_error_not_a_traceback(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    result = CliRunner().invoke(serve, ["--config", str(path)])
    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit)
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1
    assert expected in errors[0]
    assert str(path) in errors[0]


def test_missing_file_through_the_cli(tmp_path: Path) -> None:
    result = CliRunner().invoke(serve, ["--config", str(tmp_path / "none.toml")])
    assert result.exit_code == 2
    assert "no such file" in result.output


def test_file_value_is_checked_by_click_too(tmp_path: Path) -> None:
    result = CliRunner().invoke(serve, ["--config", str(write(tmp_path, "log-level = 'loud'\n"))])
    assert result.exit_code == 2
    assert "loud" in result.output
