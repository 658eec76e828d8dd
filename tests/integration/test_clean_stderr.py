"""What a user sees on stderr is ours alone: no warning from a library, no traceback, before or
among the program's own lines, for ``--help``, a usage error and a normal start of each role.

A dependency's deprecation (cryptography 51 deprecating DSA, for one) printed a block of
library text above every command; these runs catch the next one with whatever releases are
installed, and the test suite's filterwarnings turn deprecations raised from our packages into
errors.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from tests.integration.support import Processes, ambassador, run_program

pytestmark = pytest.mark.integration

OUR_LINE = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ambassador\.\S+: .*"
    r"|ambassador-(server|client): error: .*"
)


def assert_only_our_lines(stderr: str) -> None:
    strangers = [line for line in stderr.splitlines() if not OUR_LINE.fullmatch(line)]
    assert not strangers, "lines on stderr that are not the program's own:\n" + stderr


@pytest.mark.parametrize("role", ["server", "client"])
def test_help_prints_nothing_on_stderr(role: str) -> None:
    result = run_program([*ambassador(role), "--help"])
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith(f"Usage: ambassador-{role}")


@pytest.mark.parametrize("role", ["server", "client"])
def test_usage_error_is_our_one_line(role: str) -> None:
    result = run_program([*ambassador(role), "--no-such-flag"])
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"ambassador-{role}: error: No such option '--no-such-flag'."
    ]


def test_a_normal_start_of_both_roles_prints_only_our_lines(
    processes: Processes, free_port: Callable[..., int], wait_for_port: Callable[..., None]
) -> None:
    tunnel, local = free_port(), free_port()
    server = processes.start(
        "server",
        [*ambassador("server"), "--listen", f"127.0.0.1:{tunnel}", "--link", "r=127.0.0.1:9"],
    )
    server.wait_for_stderr("listening on")
    client = processes.start(
        "client",
        [
            *ambassador("client"),
            *("--remote", f"127.0.0.1:{tunnel}", "--expose", f"127.0.0.1:{local}=r"),
        ],
    )
    client.wait_for_stderr("tunnel up")
    wait_for_port("127.0.0.1", local)
    assert client.stop() == 0
    assert server.stop() == 0
    assert_only_our_lines(server.stderr())
    assert_only_our_lines(client.stderr())
