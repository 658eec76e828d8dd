"""Config files: TOML settings that fill in whatever flags and environment leave unset.

Theory of operation. Settings come, strongest first, from command-line flags,
``AMBASSADOR_*`` environment variables, a TOML config file, and built-in defaults.
click already resolves "command line > environment variable > default_map >
default" for every option, so a config file only has to become the command's
``default_map``; click then keeps the order for us.

A file's keys are the command's option names, with ``-`` or ``_`` between words
(``links-from-env`` and ``links_from_env`` are the same key). Values are checked
against each option's kind here, so a mistake in the file is reported as the
file's, in one line, rather than as a bad flag. Options that take many values
(``multiple=True``) accept an array or a single value under the option's name or
its plural; string options also accept a table, read as ``KEY=VALUE`` items:
``[links]`` with ``redis = "10.0.0.5:6379"`` adds ``redis=10.0.0.5:6379`` to
``link``.

What a command accepts is described by ``ParamSpec`` values, which
``params_of`` derives from a ``click.Command``; each CLI thus checks its file
against its own options. Reading the file is the only I/O here.
"""

from __future__ import annotations

import difflib
import enum
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass

import click

from tunnel.errors import ConfigError
from tunnel.settings.wording import unreadable

__all__ = [
    "Kind",
    "ParamSpec",
    "apply_config_file",
    "default_map_for",
    "load_config_file",
    "params_of",
    "to_default_map",
]


class Kind(enum.Enum):
    """The kind of value an option takes; the value says how to ask for it."""

    BOOL = "true or false"
    INT = "an integer"
    FLOAT = "a number"
    STR = "a string"
    COUNT = 'a number or "auto"'


@dataclass(frozen=True, slots=True)
class ParamSpec:
    """What a config key may hold: one value of ``kind``, or many when ``multiple``."""

    kind: Kind
    multiple: bool = False


def load_config_file(path: str | os.PathLike[str]) -> dict[str, object]:
    """Read a TOML file; ConfigError (one line naming the file) if that fails."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as file:
            return tomllib.load(file)
    except OSError as error:
        raise unreadable(name, error, "config file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {name} is not UTF-8 text; save it as UTF-8") from None
    except tomllib.TOMLDecodeError as error:
        # tomllib's message already ends with "(at line L, column C)".
        raise ConfigError(f"config file {name} is not valid TOML: {error}") from None


def _key_name(param: str) -> str:
    """How a parameter is spelled in a file and in messages."""
    return param.replace("_", "-")


def _describe(value: object) -> str:
    """A TOML user's word for a value's type, with the value itself when short."""
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    kinds = {str: "a string", int: "an integer", float: "a number"}
    kind = kinds.get(type(value), "a date or time")
    text = repr(value)
    return f"{kind} ({text})" if len(text) <= 40 else kind


def _convert(value: object, kind: Kind) -> object:
    """``value`` as ``kind``, or None if it is not one; bool is never an integer here."""
    if isinstance(value, bool):
        return value if kind is Kind.BOOL else None
    if kind is Kind.INT and isinstance(value, int):
        return value
    if kind is Kind.FLOAT and isinstance(value, int | float):
        return float(value)
    if kind is Kind.STR and isinstance(value, str):
        return value
    if kind is Kind.COUNT and isinstance(value, int | str):
        return value
    return None


def _table_items(where: str, table: Mapping[str, object]) -> list[str]:
    items = []
    for key, value in table.items():
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            value = ",".join(value)  # a pool's targets: `redis = ["HOST:PORT", "HOST:PORT"]`
        if not isinstance(value, str):
            raise ConfigError(f"{where}.{key} must be a string, not {_describe(value)}")
        items.append(f"{key}={value}")
    return items


def _one_value(where: str, value: object, spec: ParamSpec) -> object:
    result = _convert(value, spec.kind)
    if result is None:
        raise ConfigError(f"{where} must be {spec.kind.value}, not {_describe(value)}")
    return result


def _many_values(where: str, value: object, spec: ParamSpec) -> list[object]:
    # A single value is accepted for a list: `link = "redis=10.0.0.5:6379"`.
    values = value if isinstance(value, list) else [value]
    results: list[object] = []
    for item in values:
        result = _convert(item, spec.kind)
        if result is None:
            raise ConfigError(
                f"{where} must be {spec.kind.value} or an array of them, not {_describe(item)}"
            )
        results.append(result)
    return results


def _param_for(key: str, params: Mapping[str, ParamSpec]) -> str | None:
    name = key.replace("-", "_")
    if name in params:
        return name
    # Many values read naturally under a plural name: `links = [...]`, `[links]`.
    singular = name.removesuffix("s")
    if singular in params and params[singular].multiple:
        return singular
    return None


def _nearest_key(key: str, params: Mapping[str, ParamSpec]) -> str:
    """The key ``key`` was probably meant to be, or where the keys are listed."""
    keys = [_key_name(param) for param in params]
    spelled = _key_name(key.lower())
    close = difflib.get_close_matches(spelled, keys, n=1, cutoff=0.6)
    if not close:  # a plural, as `links = [...]` is read
        close = difflib.get_close_matches(spelled.removesuffix("s"), keys, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    return "the keys are the long flags without '--' (see --help)"


def to_default_map(
    data: Mapping[str, object], params: Mapping[str, ParamSpec], source: str = "config file"
) -> dict[str, object]:
    """Turn a parsed config file into a click ``default_map`` for ``params``.

    ``source`` names the file in messages. Raises ConfigError for an unknown key,
    a key given twice, or a value of the wrong kind. An option's array and its
    table add up, in the order the file gives them.
    """
    result: dict[str, object] = {}
    many: dict[str, list[object]] = {}
    spelled: dict[str, str] = {}
    for key, value in data.items():
        where = f"{source}: {key}"
        name = _param_for(key, params)
        if name is None:
            raise ConfigError(f"{source}: unknown key {key!r}; {_nearest_key(key, params)}")
        spec = params[name]
        if isinstance(value, dict) and spec.multiple and spec.kind is Kind.STR:
            many.setdefault(name, []).extend(_table_items(where, value))
            continue
        if name in spelled:
            raise ConfigError(f"{source}: {spelled[name]!r} and {key!r} are the same key; keep one")
        spelled[name] = key
        if spec.multiple:
            many.setdefault(name, []).extend(_many_values(where, value, spec))
        else:
            result[name] = _one_value(where, value, spec)
    # click takes a tuple as the default of a multiple option.
    result.update((name, tuple(values)) for name, values in many.items())
    return result


def _kind_of(param: click.Parameter) -> Kind:
    declared = getattr(param.type, "config_kind", None)  # a type of our own says
    if isinstance(declared, Kind):
        return declared
    if isinstance(param, click.Option) and param.count:
        return Kind.INT
    if isinstance(param.type, click.types.BoolParamType):
        return Kind.BOOL
    if isinstance(param.type, click.types.IntParamType):
        return Kind.INT
    if isinstance(param.type, click.types.FloatParamType):
        return Kind.FLOAT
    # Choices, paths and plain strings all arrive as TOML strings; click checks
    # them further when it converts the default.
    return Kind.STR


def params_of(command: click.Command) -> dict[str, ParamSpec]:
    """The config keys ``command`` accepts: its options, minus --help, --config and the like."""
    return {
        param.name: ParamSpec(_kind_of(param), param.multiple or param.nargs != 1)
        for param in command.params
        if isinstance(param, click.Option)
        and param.name is not None
        and param.expose_value
        and param.callback is not apply_config_file
    }


def default_map_for(command: click.Command, path: str | os.PathLike[str]) -> dict[str, object]:
    """Read the TOML file at ``path`` as a ``default_map`` for ``command``."""
    return to_default_map(load_config_file(path), params_of(command), os.fspath(path))


def apply_config_file(
    ctx: click.Context, param: click.Parameter, value: str | os.PathLike[str] | None
) -> None:
    """Callback for an eager ``--config`` option: load the file into ``ctx.default_map``.

    Being eager, the option is processed before the others, so they all see the
    file's values as their defaults.
    """
    if value is None:
        return
    try:
        from_file = default_map_for(ctx.command, value)
    except ConfigError as error:
        # click reports its own errors as one line with a usage hint; a ConfigError
        # raised inside a callback would surface as a traceback instead.
        raise click.BadParameter(str(error), ctx=ctx, param=param) from None
    ctx.default_map = {**(ctx.default_map or {}), **from_file}
