"""The effective configuration, written as a config file that says where each value came from.

``--check-config`` prints it. The text is TOML that the same command accepts back with
``--config``: one key per option, under the option's own name, holding the value the run would
use. Some values are not what click parsed but what the role made of them (links read from
Docker link variables, ``tls`` implied by a CA, the host name as the default ``name``); the role
passes those in as ``Setting`` values. A value that is not set has no TOML form, so it appears
as a comment, as do facts that are no option (which tokens a token file holds, never their
secrets).

Each line ends with its source, in click's order of precedence: a flag, an environment
variable (by name), the config file (by path) or the default.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import click
from click.core import ParameterSource

__all__ = ["Item", "Setting", "comment", "render", "settings_of", "source_of", "toml_value"]


@dataclass(frozen=True, slots=True)
class Item:
    """One value of a list option, with a source of its own (a link variable, say)."""

    value: str
    source: str


@dataclass(frozen=True, slots=True)
class Setting:
    """One option's effective value (None: not set) and where it came from."""

    key: str
    value: object
    source: str


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def comment(text: str) -> str:
    """``text`` fit for a TOML comment, which ends at a line break and holds no control
    characters: a path or token name holding one shows it escaped."""
    return "".join(
        f"\\x{ord(char):02x}" if ord(char) < 0x20 or ord(char) == 0x7F else char for char in text
    )


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if isinstance(value, float) else str(int(value))
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, Item):
        return toml_string(value.value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def source_of(ctx: click.Context, name: str, config_file: str | None) -> str:
    """Where click took option ``name``'s value from, in words."""
    source = ctx.get_parameter_source(name)
    param = next((p for p in ctx.command.params if p.name == name), None)
    if source is ParameterSource.COMMANDLINE and isinstance(param, click.Option):
        return f"flag {max(param.opts, key=len)}"
    if source is ParameterSource.ENVIRONMENT and param is not None:
        envvar = param.envvar
        names = [envvar] if isinstance(envvar, str) else list(envvar or ())
        found = next((var for var in names if var in os.environ), names[0] if names else "")
        return f"environment {found}"
    if source is ParameterSource.DEFAULT_MAP:
        return f"config file {config_file}" if config_file else "config file"
    return "default"


def settings_of(
    ctx: click.Context,
    params: Mapping[str, object],
    config_file: str | None,
    effective: Iterable[Setting] = (),
) -> list[Setting]:
    """Every option of ``params`` as a Setting, ``effective`` replacing those it names."""
    replaced = {setting.key: setting for setting in effective}
    settings = []
    for name, value in params.items():
        if name == "check_config":
            continue  # a command, not a setting: a file holding it would never run
        key = name.replace("_", "-")
        setting = replaced.pop(key, None)
        if setting is None:
            shown = list(value) if isinstance(value, tuple) else value
            setting = Setting(key, shown, source_of(ctx, name, config_file))
        settings.append(setting)
    settings.extend(replaced.values())
    return sorted(settings, key=lambda setting: setting.key)


def _lines(setting: Setting) -> list[str]:
    if setting.value is None:
        return [f"# {setting.key} is not set  # {comment(setting.source)}"]
    value = setting.value
    if isinstance(value, list) and any(isinstance(item, Item) for item in value):
        # Items with sources of their own: one per line, each with its comment.
        lines = [f"{setting.key} = [  # {comment(setting.source)}"]
        for item in value:
            source = item.source if isinstance(item, Item) else setting.source
            lines.append(f"  {toml_value(item)},  # {comment(source)}")
        return [*lines, "]"]
    return [f"{setting.key} = {toml_value(value)}  # {comment(setting.source)}"]


def render(
    title: str, settings: Sequence[Setting], notes: Sequence[str] = (), config_file: str = ""
) -> str:
    """The config file text: a header, ``notes`` as comments, then one setting per line."""
    lines = [
        f"# {title}: the effective configuration (give it back with --config FILE).",
        "# Each value says where it came from: a flag, an environment variable, the config",
        "# file or the default.",
    ]
    if config_file:
        lines.append(f"# config file: {comment(config_file)}")
    lines.extend(f"# {comment(note)}" for note in notes)
    for setting in settings:
        lines.extend(_lines(setting))
    return "\n".join(lines) + "\n"
