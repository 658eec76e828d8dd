"""Each role's --help (and -h) reads as a manual: options in sections by concern, each with
its default and its AMBASSADOR_* variable, and how to set up shell completion, which works."""

from __future__ import annotations

import re

import pytest

from tests.integration.support import ambassador, clean_environ, run_program

pytestmark = pytest.mark.integration

SECTIONS = {
    "server": ["Tunnel", "Services", "TLS", "Access", "Limits", "Observability", "Logging"],
    "client": ["Tunnel", "Services", "TLS", "Access", "Limits", "Observability", "Logging"],
}
# An option of each section, with the default and variable its line must show.
SHOWN = {
    "server": [
        ("Tunnel", "--listen", "AMBASSADOR_LISTEN", "0.0.0.0:7700"),
        ("Services", "--dial-timeout", "AMBASSADOR_DIAL_TIMEOUT", "5.0"),
        ("TLS", "--tls-crl", "AMBASSADOR_TLS_CRL", None),
        ("Access", "--access", "AMBASSADOR_ACCESS", None),
        ("Limits", "--max-streams", "AMBASSADOR_MAX_STREAMS", "8192"),
        ("Observability", "--metrics-listen", "AMBASSADOR_METRICS_LISTEN", None),
        ("Logging", "--log-level", "AMBASSADOR_LOG_LEVEL", "info"),
    ],
    "client": [
        ("Tunnel", "--backoff-max", "AMBASSADOR_BACKOFF_MAX", "10.0"),
        ("Services", "--bind", "AMBASSADOR_BIND", "127.0.0.1"),
        ("TLS", "--pin", "AMBASSADOR_PIN", None),
        ("Access", "--token-file", "AMBASSADOR_TOKEN_FILE", None),
        ("Limits", "--session-memory", "AMBASSADOR_SESSION_MEMORY", "256"),
        ("Observability", "--metrics-listen", "AMBASSADOR_METRICS_LISTEN", None),
        ("Logging", "--log-format", "AMBASSADOR_LOG_FORMAT", "text"),
    ],
}


def sections(text: str) -> dict[str, dict[str, str]]:
    """The help's option sections by heading ("Tunnel options:" is "Tunnel"), each mapping
    an option (its first flag) to its entry's text, wrapped lines joined."""
    found: dict[str, dict[str, str]] = {}
    entries: dict[str, str] | None = None
    option = ""
    for line in text.splitlines():
        heading = re.fullmatch(r"(\S.*?) options:", line)
        if heading:
            entries = found[heading[1]] = {}
        elif not line.startswith(" "):
            entries = None
        elif entries is not None and re.match(r"  -", line):
            option = line.split()[0].rstrip(",")
            entries[option] = line.strip()
        elif entries is not None:
            # click wraps at a hyphen too ("AMBASSADOR_FORWARD_-" / "BIND"): join those whole.
            joiner = "" if entries[option].endswith("-") else " "
            entries[option] += joiner + line.strip()
    return found


@pytest.mark.parametrize("role", ["server", "client"])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_is_in_sections_with_defaults_and_variables(role: str, flag: str) -> None:
    result = run_program([*ambassador(role), flag], env=clean_environ({"COLUMNS": "100"}))
    assert result.returncode == 0, result.stderr
    found = sections(result.stdout)
    order = [name for name in found if name in SECTIONS[role]]
    assert order == SECTIONS[role], f"sections {list(found)}"
    for section, option, variable, default in SHOWN[role]:
        assert option in found[section], f"{option} not under {section}"
        entry = found[section][option]
        assert f"env var: {variable}" in entry
        if default is not None:
            assert f"default: {default}" in entry
    assert "Other options" not in result.stdout
    assert f"_AMBASSADOR_{role.upper()}_COMPLETE=bash_source ambassador-{role}" in result.stdout


@pytest.mark.parametrize("role", ["server", "client"])
def test_subcommand_help_takes_h(role: str) -> None:
    result = run_program([*ambassador(role), "status", "-h"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: ambassador-{role} status")


def test_the_documented_completion_completes_options() -> None:
    variable = "_AMBASSADOR_SERVER_COMPLETE"
    script = run_program([*ambassador("server")], env=clean_environ({variable: "bash_source"}))
    assert script.returncode == 0, script.stderr
    assert "complete -o nosort -F _ambassador_server_completion" in script.stdout
    words = {"COMP_WORDS": "ambassador-server --tls-c", "COMP_CWORD": "1"}
    result = run_program(
        [*ambassador("server")], env=clean_environ({variable: "bash_complete", **words})
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["plain,--tls-cert", "plain,--tls-ca", "plain,--tls-crl"]
