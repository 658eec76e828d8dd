"""An option of the other program, given to this one, named as such in one line.

The two programs share many options, and the rest are easy to mix up: reverse mode is
``ambassador-server --connect`` dialing an ``ambassador-client --listen``, so a user who
types ``ambassador-client --connect`` meant the other program. Click's own answer ("No such
option '--connect'. Did you mean '--connect-timeout'?") points the wrong way; this names the
program that has the option and, for the options people reach for, how to do it instead.

Neither role's command line imports the other's, so each role's own options are written
down here once; tests/tunnel/settings/test_cli.py holds the table to the two commands.
"""

from __future__ import annotations

from collections.abc import Mapping

import click

# The options only one role has (their first spelling; ``--no-X`` is the other side of ``--X``).
# The variables only one role reads (tunnel.settings.cli) are derived from it.
ROLE_ONLY_OPTIONS = {
    "ambassador-server": frozenset(
        ("--access", "--connect", "--dial-timeout", "--drain-timeout", "--forward",
         "--forward-bind", "--health-check", "--link", "--links-from-env-in-pod",
         "--max-pending-dials", "--max-streams-per-identity", "--pool-strategy",
         "--proxy-protocol", "--resolve-interval", "--reuse-port", "--tls-crl",
         "--websocket-path")
    ),
    "ambassador-client": frozenset(
        ("--backoff-max", "--backoff-min", "--bind", "--connect-timeout", "--expose",
         "--expose-allow", "--expose-socket-mode", "--expose-socket-owner",
         "--link-wait-timeout", "--pin", "--proxy", "--proxy-credentials-file",
         "--proxy-from-env", "--remote", "--sessions", "--spread", "--tls",
         "--udp-idle-timeout", "--udp-max-flows")
    ),
}  # fmt: skip


def other_role(prog: str) -> str:
    return next(role for role in ROLE_ONLY_OPTIONS if role != prog)


def wrong_role_line(exc: click.NoSuchOption, prog: str, fixes: Mapping[str, str]) -> str | None:
    """One line for an option that belongs to the other program; None for a plain typo,
    which keeps click's "Did you mean".

    ``fixes``: the role's own words for the usual mix-ups, what to give instead.
    """
    if exc.ctx is None or exc.ctx.parent is not None or prog not in ROLE_ONLY_OPTIONS:
        return None  # a subcommand's (status, certs) options are not the role's
    other = other_role(prog)
    option = exc.option_name
    primary = option if option in ROLE_ONLY_OPTIONS[other] else "--" + option.removeprefix("--no-")
    if primary not in ROLE_ONLY_OPTIONS[other]:
        return None
    fix = fixes.get(option) or f"it is an option of {other} (see {other} --help)"
    return f"{prog} has no {option}: {fix}"
