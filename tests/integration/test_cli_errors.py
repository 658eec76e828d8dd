"""Mistakes a user can make end in one line that says what to fix, exit code 2, no traceback;
an unreachable remote is not a mistake but a wait, and the client keeps trying."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest

from tests.integration.support import (
    AmbassadorServer,
    Started,
    ambassador,
    run_program,
)

pytestmark = pytest.mark.integration

USAGE_ERROR = 2


@pytest.fixture
def busy_port(free_port: Callable[..., int]) -> Iterator[int]:
    """A loopback port another program is listening on for the whole test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))
        sock.listen()
        yield sock.getsockname()[1]


def assert_one_line_error(
    result: subprocess.CompletedProcess[str], program: str, *fix: str, first: bool = True
) -> str:
    """The run failed with exit code 2 and exactly one error line naming the fix; returns it.

    ``first``: that line is also the first line on stderr, before any log line.
    """
    assert result.returncode == USAGE_ERROR, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith(f"{program}: error: ")]
    assert len(errors) == 1, result.stderr
    for words in fix:
        assert words in errors[0], errors[0]
    if first:
        assert lines[0] == errors[0], f"the first line is not the error:\n{result.stderr}"
    return errors[0]


@pytest.mark.parametrize(
    ("args", "fix"),
    [
        pytest.param([], ["nothing to offer", "give --link ALIAS=HOST:PORT"], id="no-links"),
        pytest.param(["--link", "redis"], ["bad link 'redis'", "use ALIAS=TARGET"], id="no-="),
        pytest.param(
            ["--link", "redis=127.0.0.1:99999"], ["port 99999 is outside 1..65535"], id="port"
        ),
        pytest.param(["--link", "redis=:6379"], ["bad link", "use ALIAS=TARGET"], id="no-host"),
        pytest.param(
            ["--link", "r=127.0.0.1:1", "--accept-proxy-from", "10.0.0.0/8"],
            ["--accept-proxy-from applies only with --accept-proxy-protocol"],
            id="accept-proxy-from-alone",
        ),
        pytest.param(
            ["--link", "r=127.0.0.1:1", "--accept-proxy-protocol", "--accept-proxy-from", "10.1/8"],
            ["bad --accept-proxy-from '10.1/8'", "use a CIDR"],
            id="accept-proxy-from-bad",
        ),
    ],
)
def test_server_usage_error(args: list[str], fix: list[str], free_port: Callable[..., int]) -> None:
    listen = ["--listen", f"127.0.0.1:{free_port()}"]
    result = run_program([*ambassador("server"), *listen, *args])
    assert_one_line_error(result, "ambassador-server", *fix)


def test_accept_proxy_protocol_beyond_loopback_needs_the_balancers_named(
    free_port: Callable[..., int],
) -> None:
    """Beyond loopback anyone who reaches the port could claim any address: the start stops
    until --accept-proxy-from names who may send a header."""
    argv = [*ambassador("server"), "--listen", f"0.0.0.0:{free_port()}", "--link", "r=127.0.0.1:1"]
    result = run_program([*argv, "--accept-proxy-protocol"])
    assert_one_line_error(
        result, "ambassador-server", "0.0.0.0:", "beyond loopback, needs --accept-proxy-from CIDR"
    )


def test_server_listen_port_in_use(busy_port: int) -> None:
    argv = [*ambassador("server"), "--listen", f"127.0.0.1:{busy_port}", "--link", "r=127.0.0.1:1"]
    result = run_program(argv)
    assert_one_line_error(
        result, "ambassador-server", f"127.0.0.1:{busy_port}", "already in use", "pick another port"
    )


@pytest.mark.parametrize(
    ("args", "fix"),
    [
        pytest.param(["--expose", "6379"], ["no server to connect to", "--remote"], id="no-remote"),
        pytest.param(
            ["--remote", "127.0.0.1:http", "--expose", "6379"], ["bad --remote"], id="bad-remote"
        ),
        pytest.param(
            ["--remote", "127.0.0.1", "--expose", "127.0.0.1:99999=redis"],
            ["bad expose", "outside 1..65535"],
            id="bad-expose",
        ),
        pytest.param(
            [
                "--expose=REDIS_PORT_6379_TCP=tcp://10.0.0.1:6379",
                "--expose=DB_PORT_5432_TCP=tcp://10.0.0.2:5432",
            ],
            ["different hosts", "10.0.0.1", "10.0.0.2"],
            id="seed-hosts-differ",
        ),
        pytest.param(
            [
                "--remote=127.0.0.1",
                "--expose=6379",
                "--expose=web",
                "--expose-allow=redis=10.0.0.0/8",
            ],
            ["--expose-allow names 'redis', which no --expose exposes", "use one of 6379, web"],
            id="expose-allow-unexposed",
        ),
    ],
)
def test_client_usage_error(args: list[str], fix: list[str]) -> None:
    result = run_program([*ambassador("client"), *args])
    assert_one_line_error(result, "ambassador-client", *fix)


REVERSE_MODE = (
    "the server dials with `ambassador-server --connect HOST:PORT` to a client started with "
    "`ambassador-client --listen ADDR`"
)


@pytest.mark.parametrize(
    ("role", "args", "line"),
    [
        pytest.param(
            "client",
            ["--connect", "127.0.0.1:7001"],
            f"ambassador-client has no --connect: {REVERSE_MODE}",
            id="client-connect",
        ),
        pytest.param(
            "client",
            ["--expose", "6379", "--connect=127.0.0.1:7001"],
            f"ambassador-client has no --connect: {REVERSE_MODE}",
            id="client-connect=",
        ),
        pytest.param(
            "client",
            ["--remote", "127.0.0.1", "--link", "redis=127.0.0.1:6379"],
            "ambassador-client has no --link: backends are offered by `ambassador-server --link "
            "ALIAS=HOST:PORT`; this client listens for them with --expose PORT|ALIAS",
            id="client-link",
        ),
        pytest.param(
            "server",
            ["--link", "redis=127.0.0.1:6379", "--remote", "127.0.0.1"],
            "ambassador-server has no --remote: a client dials a server with `ambassador-client "
            "--remote HOST`; for this server to dial out instead, give `ambassador-server "
            "--connect HOST:PORT` to a client started with `ambassador-client --listen ADDR`",
            id="server-remote",
        ),
        pytest.param(
            "server",
            ["--expose", "6379"],
            "ambassador-server has no --expose: ambassador-client opens the local listeners "
            "(`ambassador-client --expose PORT|ALIAS`); this server offers its backends with "
            "--link ALIAS=HOST:PORT",
            id="server-expose",
        ),
        # Any other option of the other program, read from its own command line.
        pytest.param(
            "server",
            ["--sessions", "all"],
            "ambassador-server has no --sessions: it is an option of ambassador-client "
            "(see ambassador-client --help)",
            id="server-sessions",
        ),
        pytest.param(
            "client",
            ["--remote", "127.0.0.1", "--reuse-port"],
            "ambassador-client has no --reuse-port: it is an option of ambassador-server "
            "(see ambassador-server --help)",
            id="client-reuse-port",
        ),
    ],
)
def test_an_option_of_the_other_program_names_it(role: str, args: list[str], line: str) -> None:
    program = f"ambassador-{role}"
    result = run_program([*ambassador(role), *args])
    assert assert_one_line_error(result, program) == f"{program}: error: {line}"


@pytest.mark.parametrize(
    ("role", "option", "suggestion"),
    [
        ("client", "--conect", "Did you mean one of: '--config', '--connect-timeout'?"),
        ("server", "--lnk", "Did you mean one of: '--link', '--listen'?"),
    ],
)
def test_a_typo_keeps_the_suggestion(role: str, option: str, suggestion: str) -> None:
    result = run_program([*ambassador(role), option, "x"])
    line = assert_one_line_error(result, f"ambassador-{role}", f"No such option '{option}'")
    assert suggestion in line
    assert "has no" not in line


def test_a_subcommands_unknown_option_is_not_blamed_on_the_other_program() -> None:
    result = run_program([*ambassador("client"), "status", "--link", "x"])
    line = assert_one_line_error(result, "ambassador-client")
    assert line == "ambassador-client: error: No such option '--link'."


LISTENER_ONLY = (
    "applies to the connections a listening server accepts; with --connect this server dials "
    "out: drop it"
)


@pytest.mark.parametrize(
    ("role", "args", "line"),
    [
        *(
            pytest.param(
                "server",
                ["--connect", "127.0.0.1:7001", *option],
                f"{option[0]} {LISTENER_ONLY}",
                id=f"connect-with-{option[0].lstrip('-')}",
            )
            for option in (
                ["--allow-from", "10.0.0.0/8"],
                ["--websocket-path", "/tunnel"],
                ["--reuse-port"],
                ["--accept-proxy-protocol"],
            )
        ),
        pytest.param(
            "server",
            ["--connect", "127.0.0.1:7001", "--listen", "127.0.0.1:7002"],
            "--connect dials out instead of listening: give --connect or --listen, not both",
            id="connect-with-listen",
        ),
        pytest.param(
            "server",
            ["--listen", "127.0.0.1:7002", "--server-name", "edge1"],
            "--server-name applies to --connect with TLS (the name the client's certificate must "
            "carry): drop it, or dial with --connect",
            id="server-name-without-connect",
        ),
        pytest.param(
            "client",
            ["--listen", "127.0.0.1:7003", "--proxy", "http://127.0.0.1:3128"],
            "--proxy carries this client's dial to a --remote; with --listen the servers dial "
            "in: drop --proxy",
            id="listen-with-proxy",
        ),
        # Refused as given, whether or not the environment names a proxy.
        pytest.param(
            "client",
            ["--listen", "127.0.0.1:7003", "--proxy-from-env"],
            "--proxy-from-env carries this client's dial to a --remote; with --listen the "
            "servers dial in: drop --proxy-from-env",
            id="listen-with-proxy-from-env",
        ),
        pytest.param(
            "client",
            ["--listen", "127.0.0.1:7003", "--sessions", "all"],
            "--sessions all keeps a session to every --remote; with --listen the servers dial "
            "in, each its own session already: drop --sessions all",
            id="listen-with-sessions-all",
        ),
    ],
)
def test_reverse_mode_refusals_name_the_fix(role: str, args: list[str], line: str) -> None:
    program = f"ambassador-{role}"
    link = ["--link", "redis=127.0.0.1:6379"] if role == "server" else []
    result = run_program([*ambassador(role), *link, *args])
    assert assert_one_line_error(result, program) == f"{program}: error: {line}"
    assert result.stderr == f"{program}: error: {line}\n"


def client_with_busy_expose_port(busy_port: int, free_port: Callable[..., int]) -> list[str]:
    remote = f"127.0.0.1:{free_port()}"  # never contacted: the listener fails first
    return [*ambassador("client"), "--remote", remote, "--expose", f"127.0.0.1:{busy_port}=redis"]


def test_client_expose_port_in_use(busy_port: int, free_port: Callable[..., int]) -> None:
    result = run_program(client_with_busy_expose_port(busy_port, free_port))
    assert_one_line_error(
        result,
        "ambassador-client",
        f"127.0.0.1:{busy_port}",
        "already in use",
        "pick another port",
        first=False,
    )


def test_client_expose_port_in_use_error_comes_first(
    busy_port: int, free_port: Callable[..., int]
) -> None:
    result = run_program(client_with_busy_expose_port(busy_port, free_port))
    assert_one_line_error(result, "ambassador-client", "already in use", first=True)


@pytest.mark.parametrize("expose", ["nosuch", "LOCAL=nosuch"])
def test_unknown_service_is_one_warning_and_the_client_keeps_running(
    expose: str,
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    free_port: Callable[..., int],
) -> None:
    """Not a usage error: the server may offer it later (its reload, or another server), so
    a sidecar keeps running and says once what is missing (tests/integration/
    test_missing_service.py follows what happens next)."""
    server = start_server(f"redis=127.0.0.1:{free_port()}")
    expose = expose.replace("LOCAL", f"127.0.0.1:{free_port()}")
    client = start_client(f"--remote=127.0.0.1:{server.port}", f"--expose={expose}")
    warning = client.wait_for_stderr(r"WARNING .*'nosuch'.*", 5).group(0)
    for words in ("does not offer", "offered: redis", "fix --expose"):
        assert words in warning, warning
    time.sleep(0.5)
    assert client.alive()
    assert "error" not in client.stderr().lower() and "Traceback" not in client.stderr()


def test_unreachable_remote_is_retried_with_one_warning(
    start_client: Callable[..., Started],
    start_server: Callable[..., AmbassadorServer],
    free_port: Callable[..., int],
) -> None:
    backend = free_port()
    remote = free_port()  # nothing listens there yet
    local = free_port()
    client = start_client(
        f"--remote=127.0.0.1:{remote}",
        f"--expose=127.0.0.1:{local}=redis",
        "--link-wait-timeout=0.5",
        listens=[("127.0.0.1", local)],  # bound although the tunnel is not up
        wait_tunnel=False,
    )
    client.wait_for_stderr("cannot reach", timeout=5)
    time.sleep(2.0)  # several retries (backoff starts at 0.1 s)
    assert client.alive()
    warnings = re.findall(r".* WARNING .*", client.stderr())
    assert len(warnings) == 1, client.stderr()
    assert f"cannot reach 127.0.0.1:{remote}: connection refused" in warnings[0]
    assert warnings[0].endswith("retrying")

    # The listener is bound all the while: a consumer is accepted and held for
    # --link-wait-timeout, then reset, with a log line saying why.
    started = time.monotonic()
    with (
        socket.create_connection(("127.0.0.1", local), timeout=5) as sock,
        pytest.raises(ConnectionResetError),
    ):
        sock.recv(64)
    assert 0.4 < time.monotonic() - started < 3.0
    client.wait_for_stderr(r"'redis' dropped: the tunnel has been down for 0.5s", timeout=2)

    # It kept trying: once a server appears there, the tunnel comes up on its own.
    start_server(f"redis=127.0.0.1:{backend}", port=remote)
    client.wait_for_stderr("tunnel up to ", timeout=15)
    assert "Traceback" not in client.stderr()
    assert client.stop() == 0, "SIGTERM should stop the client cleanly"


def test_each_dead_remote_is_warned_about_once_and_keeps_its_own_error(
    start_client: Callable[..., Started],
    free_port: Callable[..., int],
    wait_for_port: Callable[..., None],
) -> None:
    """Two remotes tried in turn, both closed ports: one warning per remote (not one per
    attempt), and /status gives each remote its own last error."""
    first, second, metrics = free_port(), free_port(), free_port()  # nothing listens there
    client = start_client(
        f"--remote=127.0.0.1:{first}",
        f"--remote=127.0.0.1:{second}",
        f"--metrics-listen=127.0.0.1:{metrics}",
        "--backoff-max=0.2",  # many attempts within the test's few seconds
        wait_tunnel=False,
    )
    wait_for_port("127.0.0.1", metrics, alive=client.alive)
    client.wait_for_stderr(f"cannot reach 127.0.0.1:{second}", timeout=5)
    time.sleep(3.0)
    attempts = client.stderr()
    warnings = re.findall(r".* WARNING .*", attempts)
    for port in (first, second):
        about = [line for line in warnings if f"127.0.0.1:{port}:" in line]
        assert len(about) == 1, attempts
    assert len(warnings) == 2, attempts

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/status", timeout=5) as response:
        remotes = {row["peer"]: row for row in json.load(response)["remotes"]}
    for port, other in ((first, second), (second, first)):
        error = remotes[f"127.0.0.1:{port}"]["last_error"]
        assert f"cannot reach 127.0.0.1:{port}: connection refused" in error, remotes
        assert str(other) not in error, remotes
    assert client.alive()
