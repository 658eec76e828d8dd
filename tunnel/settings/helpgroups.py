"""``--help`` as a manual: the options in sections by concern, each with its default and the
AMBASSADOR_* variable it is also read from, then how to configure and complete the command.

The sections are data: :data:`OPTION_GROUPS` maps an option's name (the click parameter name,
``tls_cert`` for ``--tls-cert``) to its section. An option not in it is shown under
:data:`DEFAULT_GROUP`, so a new option never breaks the help; a test holds every option of both
roles to a named section, so it does not stay there. Done with click's own formatter: what
rich-click or click-option-group would add is colour and a dependency, not information.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import click

TUNNEL = "Tunnel"
SERVICES = "Services"
TLS = "TLS"
ACCESS = "Access"
LIMITS = "Limits"
OBSERVABILITY = "Observability"
LOGGING = "Logging"
GENERAL = "General"
DEFAULT_GROUP = "Other"

# The order the sections are printed in.
GROUP_ORDER: Sequence[str] = (
    TUNNEL, SERVICES, TLS, ACCESS, LIMITS, OBSERVABILITY, LOGGING, GENERAL, DEFAULT_GROUP
)  # fmt: skip

OPTION_GROUPS: Mapping[str, str] = {
    # where the tunnel runs and how its connection is kept
    "listen": TUNNEL,
    "remote": TUNNEL,
    "connect": TUNNEL,
    "name": TUNNEL,
    "connect_timeout": TUNNEL,
    "handshake_timeout": TUNNEL,
    "backoff_min": TUNNEL,
    "backoff_max": TUNNEL,
    "keepalive_interval": TUNNEL,
    "keepalive_timeout": TUNNEL,
    "proxy": TUNNEL,
    "proxy_credentials_file": TUNNEL,
    "proxy_from_env": TUNNEL,
    "accept_proxy_protocol": TUNNEL,
    "websocket_path": TUNNEL,
    "reuse_port": TUNNEL,
    "probe_after": TUNNEL,
    "sessions": TUNNEL,
    "spread": TUNNEL,
    "workers": TUNNEL,
    "drain_timeout": TUNNEL,
    # what is offered or exposed, and where
    "link": SERVICES,
    "links_from_env": SERVICES,
    "links_from_env_in_pod": SERVICES,
    "expose": SERVICES,
    "bind": SERVICES,
    "expose_socket_mode": SERVICES,
    "expose_socket_owner": SERVICES,
    "link_wait_timeout": SERVICES,
    "dial_timeout": SERVICES,
    "forward": SERVICES,
    "forward_bind": SERVICES,
    "proxy_protocol": SERVICES,
    "pool_strategy": SERVICES,
    "health_check": SERVICES,
    "resolve_interval": SERVICES,
    "udp_idle_timeout": SERVICES,
    "udp_max_flows": LIMITS,
    # encryption and whose certificate is trusted
    "tls": TLS,
    "tls_cert": TLS,
    "tls_key": TLS,
    "tls_ca": TLS,
    "tls_crl": TLS,
    "server_name": TLS,
    "pin": TLS,
    "insecure_plaintext": TLS,
    # who may reach what
    "access": ACCESS,
    "token_file": ACCESS,
    "allow_from": ACCESS,
    "accept_proxy_from": ACCESS,
    "expose_allow": ACCESS,
    # bounds on what a peer may cost
    "max_pending_dials": LIMITS,
    "max_unauthenticated": LIMITS,
    "max_unauthenticated_per_address": LIMITS,
    "max_streams_per_identity": LIMITS,
    "max_streams": LIMITS,
    "stream_window": LIMITS,
    "max_stream_window": LIMITS,
    "session_memory": LIMITS,
    "resets_per_second": LIMITS,
    "pings_per_second": LIMITS,
    # what the running process tells
    "metrics_listen": OBSERVABILITY,
    "check_config": OBSERVABILITY,
    "log_level": LOGGING,
    "log_format": LOGGING,
    "config": GENERAL,
    "version": GENERAL,
}

HELP_OPTIONS = ["-h", "--help"]


def group_of(param: click.Parameter) -> str:
    if isinstance(param, click.Option) and "--help" in param.opts:
        return GENERAL  # click names its help option as it likes
    return OPTION_GROUPS.get(param.name or "", DEFAULT_GROUP)


def _manual_record(param: click.Parameter, ctx: click.Context) -> tuple[str, str] | None:
    """The option's help line with its variable, and its default where it has one worth
    showing. Set for this line alone: click also names the variable in a bad value's error,
    where the role already names the source itself."""
    if not isinstance(param, click.Option):
        return param.get_help_record(ctx)
    shown = param.show_envvar, param.show_default
    param.show_envvar = bool(param.envvar)
    if param.show_default is None and not param.is_flag and param.default not in (None, "", ()):
        param.show_default = True
    try:
        return param.get_help_record(ctx)
    finally:
        param.show_envvar, param.show_default = shown


class GroupedHelp(click.Group):
    """A role's top command whose help is in sections (see the module's doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = dict(kwargs.pop("context_settings", None) or {})
        settings.setdefault("help_option_names", HELP_OPTIONS)
        super().__init__(*args, context_settings=settings, **kwargs)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = _manual_record(param, ctx)
            if record is not None:
                sections.setdefault(group_of(param), []).append(record)
        for name in GROUP_ORDER:
            if name in sections:
                with formatter.section(f"{name} options"):
                    formatter.write_dl(sections[name])
        self.format_commands(ctx, formatter)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        prog = ctx.command_path
        variable = "_" + prog.replace("-", "_").upper() + "_COMPLETE"
        with formatter.section("Configuration"):
            formatter.write_text(
                "Each option is read, in this order of precedence, from the command line, from "
                "its AMBASSADOR_* environment variable (shown as 'env var'; a repeatable option "
                "takes several values separated by spaces), then from the --config TOML file "
                "(the key is the long option without '--')."
            )
        with formatter.section("Shell completion (add the line to the shell's startup file)"):
            # \b: click keeps the lines as they are, so each can be copied whole.
            formatter.write_text(
                "\b\n"
                f'bash: eval "$({variable}=bash_source {prog})"\n'
                f'zsh:  eval "$({variable}=zsh_source {prog})"\n'
                f"fish: {variable}=fish_source {prog} | source"
            )
        with formatter.section("More"):
            formatter.write_text(
                f"'{prog} COMMAND -h' for a command; docs/operations.md and "
                "docs/troubleshooting.md for running it and for what its warnings mean."
            )
