"""What both command lines share: common options, limits, and one-line errors.

The CLIs only parse: they build a config object and hand it to the role's runner. Every
mistake a user can make ends as one line on stderr naming what to fix, never a traceback.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import click
from click.core import ParameterSource

from tunnel.errors import ConfigError
from tunnel.protocol.limits import KIB, Limits
from tunnel.settings.config import Kind, apply_config_file
from tunnel.settings.effective import Setting, comment, render, settings_of, source_of
from tunnel.settings.wrongrole import ROLE_ONLY_OPTIONS, other_role, wrong_role_line

F = TypeVar("F", bound=Callable[..., Any])


def _envvar(flag: str) -> str:
    return "AMBASSADOR_" + flag.lstrip("-").replace("-", "_").upper()


def config_option(f: F) -> F:
    return click.option(
        "--config",
        type=click.Path(dir_okay=False),
        envvar="AMBASSADOR_CONFIG",
        is_eager=True,
        expose_value=False,
        callback=apply_config_file,
        help="TOML file holding any of these options (flags and AMBASSADOR_* variables win).",
    )(f)


def log_option(f: F) -> F:
    f = click.option(
        "--check-config",
        is_flag=True,
        default=False,
        help="Validate the configuration, print it (token secrets masked) and exit.",
    )(f)
    f = click.option(
        "--metrics-listen",
        default=None,
        envvar="AMBASSADOR_METRICS_LISTEN",
        metavar="HOST:PORT",
        help="Serve /metrics (Prometheus), /healthz, /readyz, /status and a status page.",
    )(f)
    f = click.option(
        "--log-format",
        type=click.Choice(["text", "json"], case_sensitive=False),
        default="text",
        show_default=True,
        envvar="AMBASSADOR_LOG_FORMAT",
        help="Log lines as text or as one JSON object per line.",
    )(f)
    return click.option(
        "--log-level",
        type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
        default="info",
        show_default=True,
        envvar="AMBASSADOR_LOG_LEVEL",
        help="How much to log.",
    )(f)


DEFAULT_STATUS_ENDPOINT = "127.0.0.1:9700"


def endpoint_option(f: F) -> F:
    """The status command's options: where the running process serves its status, and how
    to show it (tables or JSON, once or redrawn)."""
    f = click.option(
        "--count",
        type=click.IntRange(1),
        default=None,
        metavar="N",
        help="With --watch: stop after N refreshes [default: at Ctrl-C].",
    )(f)
    f = click.option(
        "--interval",
        type=click.FloatRange(0.2, 3600),
        default=2.0,
        show_default=True,
        metavar="SECONDS",
        help="With --watch: seconds between refreshes.",
    )(f)
    f = click.option(
        "--watch",
        is_flag=True,
        help="Redraw the status every --interval, as top does, with rates in and out.",
    )(f)
    f = click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="Print /status as JSON, for scripts (with --watch: one object a line).",
    )(f)
    f = click.option(
        "--config",
        "status_config",
        type=click.Path(dir_okay=False),
        metavar="FILE",
        help="The running process's TOML config file: its metrics-listen is the endpoint.",
    )(f)
    return click.option(
        "--endpoint",
        default=None,
        metavar="HOST:PORT",
        help="The status endpoint of the running process [default: its metrics-listen, as "
        f"the role reads it: flag, AMBASSADOR_METRICS_LISTEN, --config; else "
        f"{DEFAULT_STATUS_ENDPOINT}].",
    )(f)


def status_endpoint(ctx: click.Context, endpoint: str | None, config: str | None) -> str:
    """Where the status command reads from, found as the role finds its --metrics-listen:
    the flag, then AMBASSADOR_METRICS_LISTEN, then the config file (the status command's
    --config, or the one the role's own --config or AMBASSADOR_CONFIG names)."""
    from click.core import ParameterSource

    from tunnel.settings.config import default_map_for

    if endpoint:
        return endpoint
    root = ctx.find_root()
    value = root.params.get("metrics_listen")
    source = root.get_parameter_source("metrics_listen")
    config_file = config_file_of((ctx.obj or {}).get("argv", []))
    if config is not None and source not in (
        ParameterSource.COMMANDLINE,
        ParameterSource.ENVIRONMENT,
    ):
        config_file = config
        value = default_map_for(root.command, config).get("metrics_listen")
    if not value:
        if config_file is not None:
            raise ConfigError(
                f"{config_file} sets no metrics-listen, so the process it configures serves no "
                'status; add metrics-listen = "127.0.0.1:9701" to it (and reload), or give '
                "--endpoint HOST:PORT"
            )
        return DEFAULT_STATUS_ENDPOINT
    address = metrics_address(str(value))
    assert address is not None
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def print_effective(
    ctx: click.Context,
    params: dict[str, Any],
    effective: Iterable[Setting],
    token_names: Iterable[str] | None,
    notes: Iterable[str] = (),
) -> None:
    """The effective configuration as a config file this command accepts back, each value
    with its source; a token file's names shown (``token_names``, None without a file), its
    secrets never."""
    config_file = watched_config_file(ctx)
    notes = list(notes)
    if token_names is not None:
        names = ", ".join(f"{name}:***" for name in token_names)
        notes.append(f"token-file holds the tokens {names} (secrets not shown)")
    effective = list(effective)
    workers = params.get("workers")
    if isinstance(workers, AutoWorkers):  # "auto" stays auto: another machine, another count
        source = source_of(ctx, "workers", config_file)
        effective.append(Setting("workers", "auto", f"{source} ({workers} here)"))
    settings = settings_of(ctx, params, config_file, effective)
    print(render(ctx.command_path, settings, notes, config_file or ""), end="")


def effective_name(ctx: click.Context, params: dict[str, Any], name: str) -> Setting:
    """``name`` as the run uses it: the host name when none was given."""
    if params["name"]:
        return Setting("name", name, source_of(ctx, "name", watched_config_file(ctx)))
    return Setting("name", name, "default: the host name")


def path_option(flag: str, help: str) -> Callable[[F], F]:
    """A file option (a certificate, a key, a token file), read from ``AMBASSADOR_<FLAG>``."""
    return click.option(flag, type=click.Path(dir_okay=False), envvar=_envvar(flag), help=help)


def name_option(role: str, use: str) -> Callable[[F], F]:
    """``--name``: what this ``role`` calls itself, and where the name is ``use``d."""
    help = f"This {role}'s name, {use} [default: the host name]."
    return click.option("--name", default="", envvar="AMBASSADOR_NAME", help=help)


def links_from_env_option(help: str) -> Callable[[F], F]:
    """``--links-from-env``: read Docker link variables, as the role ``help`` says."""
    return click.option(
        "--links-from-env/--no-links-from-env",
        default=False,
        envvar="AMBASSADOR_LINKS_FROM_ENV",
        help=help,
    )


def workers_option(help: str) -> Callable[[F], F]:
    return setting("--workers", WorkerCount(), 1, help)


def proxy_options(f: F) -> F:
    """``--proxy``, ``--proxy-credentials-file`` and ``--proxy-from-env``: how the dialing
    side reaches the tunnel through an egress proxy (tunnel.settings.proxy)."""
    f = click.option(
        "--proxy-from-env/--no-proxy-from-env",
        default=False,
        envvar="AMBASSADOR_PROXY_FROM_ENV",
        help="Take the proxy from https_proxy or all_proxy, and the targets to reach "
        "directly from no_proxy (upper case too).",
    )(f)
    f = path_option(
        "--proxy-credentials-file",
        "A USER:PASSWORD line: the proxy's credentials (HTTP Basic, or SOCKS5 "
        "username/password); never in the URL.",
    )(f)
    return click.option(
        "--proxy",
        default=None,
        envvar="AMBASSADOR_PROXY",
        metavar="URL",
        help="Reach the tunnel through this egress proxy: http://HOST:PORT (CONNECT) or "
        "socks5://HOST:PORT (the proxy resolves the name). TLS runs inside it.",
    )(f)


def accept_proxy_options(applies: str, peer: str) -> Callable[[F], F]:
    """--accept-proxy-protocol and --accept-proxy-from, for whichever role has a tunnel
    listener: ``applies`` says when (``""``: always), ``peer`` names who connects to it."""

    def decorate(f: F) -> F:
        f = click.option(
            "--accept-proxy-from",
            multiple=True,
            envvar="AMBASSADOR_ACCEPT_PROXY_FROM",
            metavar="CIDR",
            help="With --accept-proxy-protocol, only these addresses (the load balancers') may "
            "send a PROXY header; one from elsewhere is refused. Default: loopback only, and "
            "required when --listen is beyond loopback.",
        )(f)
        return click.option(
            "--accept-proxy-protocol",
            is_flag=True,
            default=False,
            envvar="AMBASSADOR_ACCEPT_PROXY_PROTOCOL",
            help=f"{applies}Read a PROXY protocol header (v1 or v2, from a load balancer in "
            f"front) at the start of each tunnel connection, so that logs, limits and "
            f"--allow-from see the real {peer}. Without it, a connection that sends one is "
            "refused.",
        )(f)

    return decorate


def role_command(f: F) -> F:
    """A role's top command: the options both roles end with (limits, logging, metrics,
    --check-config, --version), around the command body that takes them all."""
    body = cast(F, click.pass_context(f))
    body = click.version_option(package_name="ambassador-tunnel")(body)
    return limit_options(log_option(body))


C = TypeVar("C", bound="Watched")


class Watched(Protocol):
    def watched_files(self) -> list[str | None]:
        """The files this configuration was read from (besides the config file itself)."""
        ...


def reloading(
    command: click.Command,
    prog: str,
    ctx: click.Context,
    build: Callable[[dict[str, Any], Mapping[str, str]], C],
) -> tuple[Callable[[], C], Callable[[C], list[str | None]]]:
    """What a reload needs: ``load``, the configuration built again as at start, and
    ``files``, the paths to watch for a configuration (its own, not the first one's: a reload
    may move the files)."""
    config_file = watched_config_file(ctx)

    def load() -> C:
        return build(reparse(command, prog, ctx), os.environ)

    def files(config: C) -> list[str | None]:
        return [config_file, *config.watched_files()]

    return load, files


def begin(
    ctx: click.Context,
    params: dict[str, Any],
    prog: str,
    build: Callable[[dict[str, Any], Mapping[str, str]], C],
) -> tuple[C, tuple[str, int] | None]:
    """A role's start, once logging is set up: warn of unknown variables, build the
    configuration, read where metrics are served."""
    other = other_role(prog)
    warn_unknown_variables(
        option_variables(ctx.command), ROLE_ONLY_VARIABLES[other], other, os.environ
    )
    return build(params, os.environ), metrics_address(params["metrics_listen"])


# AMBASSADOR_* variables read by something other than an option: the config file's name, the
# worker processes' hand-over, and the compose files' .env (user, group, image).
# A helper process learns from these that it is one, which descriptor leads back to the main
# process, and its number (tunnel.operations.workers).
WORKER_FD_ENV = "AMBASSADOR_WORKER_FD"
WORKER_INDEX_ENV = "AMBASSADOR_WORKER_INDEX"
OTHER_VARIABLES = frozenset(
    {"AMBASSADOR_CONFIG", WORKER_FD_ENV, WORKER_INDEX_ENV, "AMBASSADOR_UID",
     "AMBASSADOR_GID", "AMBASSADOR_IMAGE"}
)  # fmt: skip
# The variables only one role reads: each role knows the other's (one environment, the image's
# or a shared env file, often serves both), without importing the other role's command line.
ROLE_ONLY_VARIABLES = {
    role: frozenset(_envvar(flag) for flag in flags) for role, flags in ROLE_ONLY_OPTIONS.items()
}
# What a container linked as "ambassador" (Docker links) or a Kubernetes Service called
# "ambassador" puts in the environment: not settings, and nothing to warn about.
_NOT_SETTINGS = re.compile(
    r"AMBASSADOR_(PORT(_\d+_(TCP|UDP|SCTP)(_ADDR|_PORT|_PROTO)?)?|ENV_.*"
    r"|SERVICE_HOST|SERVICE_PORT(_.*)?)"
)


def option_variables(command: click.Command) -> set[str]:
    """The variables ``command``'s options (its subcommands' too) are read from."""
    names: set[str] = set()
    for param in command.params:
        envvar = getattr(param, "envvar", None)
        names.update([envvar] if isinstance(envvar, str) else envvar or ())
    for sub in getattr(command, "commands", {}).values():
        names |= option_variables(sub)
    return names


def warn_unknown_variables(
    own: AbstractSet[str], other: AbstractSet[str], other_role: str, environ: Mapping[str, str]
) -> None:
    """Warn, once at start, of each AMBASSADOR_* variable nothing reads: a misspelt one would
    otherwise be ignored without a word. ``other``: the other role's variables, known too,
    since one environment (the image's, a shared env file) often serves both roles."""
    if WORKER_FD_ENV in environ:
        return  # a helper process: the main one has warned
    known = own | other | OTHER_VARIABLES
    for name in sorted(environ):
        if not name.startswith("AMBASSADOR_") or name in known or _NOT_SETTINGS.fullmatch(name):
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
        if not close:
            hint = "no setting is read from it"
        elif close[0] in own or close[0] in OTHER_VARIABLES:
            hint = f"did you mean {close[0]}?"
        else:
            hint = f"did you mean {close[0]} (an {other_role} setting)?"
        logging.getLogger("ambassador.config").warning(
            "unknown variable %s ignored; %s", comment(name[:80]), hint
        )


MAX_WORKERS = 64


class AutoWorkers(int):
    """A worker count that ``auto`` chose: one per CPU (where one process is all there can
    be, as in drop-in mode, it quietly means one)."""


def cpus_available() -> int:
    """CPUs this process may run on (its affinity, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - platforms without affinity
        return os.cpu_count() or 1


if TYPE_CHECKING:
    _IntParamType = click.ParamType[int]
else:  # click before 8.2 has no subscriptable ParamType
    _IntParamType = click.ParamType


class WorkerCount(_IntParamType):
    """``--workers``: 1 to 64 processes, or ``auto``, one per CPU this process may run on."""

    name = "N|auto"
    config_kind = Kind.COUNT  # a config file may give a number or "auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            count = value
        elif str(value).strip().lower() == "auto":
            return AutoWorkers(max(1, min(MAX_WORKERS, cpus_available())))
        else:
            try:
                count = int(str(value).strip())
            except ValueError:
                self.fail(f"{value!r} is neither a number of processes nor 'auto'", param, ctx)
        if not 1 <= count <= MAX_WORKERS:
            self.fail(f"{count} is not from 1 to {MAX_WORKERS} (or 'auto')", param, ctx)
        return count


def metrics_address(text: str | None) -> tuple[str, int] | None:
    """``--metrics-listen`` as (host, port); ConfigError when malformed."""
    if not text:
        return None
    from tunnel.settings.links import LinkError, parse_address

    try:
        address = parse_address(text, default_host="127.0.0.1")
    except LinkError as exc:
        raise ConfigError(f"bad --metrics-listen: {exc}") from None
    return address.host, address.port


def setting(flag: str, type_: click.ParamType[Any], default: Any, help: str) -> Callable[[F], F]:
    """An option with a shown default, also read from ``AMBASSADOR_<FLAG>`` (``--dial-timeout``
    reads ``AMBASSADOR_DIAL_TIMEOUT``), as every flag of both roles is."""
    return click.option(
        flag, type=type_, default=default, show_default=True, envvar=_envvar(flag), help=help
    )


tls_key_option = path_option("--tls-key", "PEM private key of --tls-cert.")


_DEFAULTS = Limits()


def limit_options(f: F) -> F:
    options = [
        setting(
            "--max-streams",
            click.IntRange(1),
            _DEFAULTS.max_streams,
            "Streams one session may hold open at once.",
        ),
        setting(
            "--stream-window",
            click.IntRange(256),
            _DEFAULTS.stream_window // KIB,
            "Initial receive window per stream, KiB.",
        ),
        setting(
            "--max-stream-window",
            click.IntRange(256),
            _DEFAULTS.max_stream_window // KIB,
            "Largest a stream's window may auto-tune to, KiB.",
        ),
        setting(
            "--session-memory",
            click.IntRange(1),
            _DEFAULTS.session_memory // KIB // KIB,
            "MiB all grown windows of a session may promise together.",
        ),
        setting(
            "--keepalive-interval",
            click.FloatRange(0.1),
            _DEFAULTS.keepalive_interval,
            "Seconds of silence before the tunnel is pinged.",
        ),
        setting(
            "--keepalive-timeout",
            click.FloatRange(0.1),
            _DEFAULTS.keepalive_timeout,
            "Seconds an unanswered ping may wait before the peer is declared dead.",
        ),
        setting(
            "--probe-after",
            click.FloatRange(0),
            _DEFAULTS.probe_floor,
            "Seconds (or 4 round trips, if longer) a peer may stay silent after a stream "
            "open or data before it is pinged at once, and its answer may take; 0: off.",
        ),
        setting(
            "--resets-per-second",
            click.IntRange(1),
            _DEFAULTS.resets_per_second,
            "Stream resets a peer may send a second before it is cut off.",
        ),
        setting(
            "--pings-per-second",
            click.IntRange(1),
            _DEFAULTS.pings_per_second,
            "Pings a peer may send a second before it is cut off.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def limits_from(params: dict[str, Any]) -> Limits:
    try:
        return Limits(
            max_streams=params.pop("max_streams"),
            stream_window=params.pop("stream_window") * KIB,
            max_stream_window=params.pop("max_stream_window") * KIB,
            session_memory=params.pop("session_memory") * KIB * KIB,
            keepalive_interval=params.pop("keepalive_interval"),
            keepalive_timeout=params.pop("keepalive_timeout"),
            probe_floor=params.pop("probe_after"),
            resets_per_second=params.pop("resets_per_second"),
            pings_per_second=params.pop("pings_per_second"),
        )
    except ValueError as exc:
        raise ConfigError(f"bad limits: {exc}") from None


def config_file_of(argv: list[str]) -> str | None:
    """The --config file named in ``argv`` or AMBASSADOR_CONFIG, to watch for changes."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.partition("=")[2]
    return os.environ.get("AMBASSADOR_CONFIG")


def reparse(command: click.Command, prog: str, ctx: click.Context) -> dict[str, Any]:
    """The process's arguments parsed again (flags, environment, config file), for a reload.

    A mistake in them is a ConfigError, so the reload keeps the running configuration.
    """
    argv: list[str] = (ctx.obj or {}).get("argv", [])
    try:
        again = command.make_context(prog, list(argv), obj=ctx.obj)
    except click.ClickException as exc:
        name_the_source(exc)
        raise ConfigError(exc.format_message()) from None
    return again.params


def watched_config_file(ctx: click.Context) -> str | None:
    return config_file_of((ctx.obj or {}).get("argv", []))


def name_the_source(exc: click.ClickException) -> None:
    """Name a bad value after where it came from: a value read from AMBASSADOR_DIAL_TIMEOUT or
    the config file is reported as that, not as the --dial-timeout the user never typed."""
    if not isinstance(exc, click.BadParameter) or exc.param_hint is not None:
        return
    param, ctx = exc.param, exc.ctx
    if not isinstance(param, click.Option) or param.name is None or ctx is None:
        return
    source = ctx.get_parameter_source(param.name)
    if source is ParameterSource.ENVIRONMENT:
        where = source_of(ctx, param.name, None).removeprefix("environment ")
        exc.param_hint = f"environment variable {where}"
    elif source is ParameterSource.DEFAULT_MAP:
        key = param.name.replace("_", "-")
        exc.param_hint = f"{key} in config file {watched_config_file(ctx) or ''}".rstrip()


def run_cli(
    group: click.Command,
    prog: str,
    argv: list[str] | None = None,
    fixes: Mapping[str, str] | None = None,
) -> int:
    """Run a click command; turn every user error into one line and an exit code.

    ``fixes``: for options of the other program given here, what to give instead (any other
    option of the other program is named as its without one).
    """
    try:
        args = list(sys.argv[1:] if argv is None else argv)
        # The arguments travel in ctx.obj so that a reload can parse them again.
        result = group.main(args=args, prog_name=prog, standalone_mode=False, obj={"argv": args})
    except click.exceptions.Abort:
        return 130
    except click.NoSuchOption as exc:
        line = wrong_role_line(exc, prog, fixes or {})
        print(f"{prog}: error: {line or exc.format_message()}", file=sys.stderr)
        return exc.exit_code
    except click.ClickException as exc:
        name_the_source(exc)
        print(f"{prog}: error: {exc.format_message()}", file=sys.stderr)
        return exc.exit_code
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return result if isinstance(result, int) else 0
