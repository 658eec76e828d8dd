"""``--check-config``: the effective configuration from flags, AMBASSADOR_* variables, link
variables and a TOML file, printed without starting anything as a config file the program takes
back, each value with its source; token secrets never shown; a broken file is one line and exit
2."""

from __future__ import annotations

import socket
import tomllib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.integration.support import ambassador, run_program
from tests.pki import loopback_pki

pytestmark = pytest.mark.integration

SECRET = "s3cret-never-printed-0123456789"


def effective(stdout: str) -> dict[str, Any]:
    """The printed configuration, read as the TOML file it is."""
    return tomllib.loads(stdout)


def sources(stdout: str) -> dict[str, str]:
    """Each key's source: the comment at the end of its line (a list's first line)."""
    found = {}
    for line in stdout.splitlines():
        if line.startswith("# ") and " is not set  # " in line:
            key, _, source = line[2:].partition(" is not set  # ")
        elif " = " in line and "  # " in line:
            key, source = line.partition(" = ")[0], line.rpartition("  # ")[2]
        else:
            continue
        found[key] = source
    return found


def check_config(
    role: str, args: list[str], env: Mapping[str, str] | None = None
) -> tuple[str, dict[str, Any]]:
    result = run_program([*ambassador(role), *args, "--check-config"], env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout, effective(result.stdout)


def assert_round_trip(
    role: str, stdout: str, tmp_path: Path, env: Mapping[str, str] | None = None
) -> None:
    """The printed text, given back as the only configuration, prints the same values."""
    again = tmp_path / f"{role}-effective.toml"
    again.write_text(stdout)
    _, reread = check_config(role, [f"--config={again}"], env)
    assert reread == effective(stdout)


@pytest.fixture
def held_ports(free_port: Callable[..., int]) -> Iterator[list[socket.socket]]:
    """Two loopback ports with our own listeners on them: a program that tried to listen
    there would fail with "address in use" (SO_REUSEADDR does not share a listening port)."""
    held = []
    try:
        for _ in range(2):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen(1)
            sock.setblocking(False)
            held.append(sock)
        yield held
    finally:
        for sock in held:
            sock.close()


def port_of(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def assert_untouched(held: list[socket.socket]) -> None:
    for sock in held:
        with pytest.raises(BlockingIOError):
            sock.accept()  # nobody connected either


def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(f"# who may connect\nalice:{SECRET}\n")
    path.chmod(0o600)
    return path


def test_server_prints_flag_over_env_over_file_and_starts_nothing(
    tmp_path: Path, held_ports: list[socket.socket]
) -> None:
    config = tmp_path / "server.toml"
    config.write_text(
        'name = "from-file"\n'
        "dial-timeout = 1.5\n"
        "handshake-timeout = 3\n"
        'log-level = "warning"\n'
        "[links]\n"
        'redis = "127.0.0.1:6379"\n'
    )
    listen, metrics = (port_of(sock) for sock in held_ports)
    env = {
        "AMBASSADOR_NAME": "from-env",
        "AMBASSADOR_DIAL_TIMEOUT": "2.5",
        "AMBASSADOR_LINK": "db=127.0.0.1:5432 cache=127.0.0.1:11211",
    }
    result = run_program(
        [
            *ambassador("server"),
            f"--config={config}",
            "--name=from-flag",
            f"--listen=127.0.0.1:{listen}",
            f"--metrics-listen=127.0.0.1:{metrics}",
            f"--token-file={token_file(tmp_path)}",
            "--check-config",
        ],
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    shown = effective(result.stdout)
    assert shown["name"] == "from-flag"  # flag > environment > file
    assert shown["dial-timeout"] == 2.5  # environment > file
    assert shown["handshake-timeout"] == 3.0  # file > default
    assert shown["log-level"] == "warning"
    assert shown["link"] == ["db=127.0.0.1:5432", "cache=127.0.0.1:11211"]  # env > file
    assert shown["drain-timeout"] == 30.0  # the default
    assert shown["listen"] == f"127.0.0.1:{listen}"
    assert "# token-file holds the tokens alice:*** (secrets not shown)" in result.stdout
    assert SECRET not in result.stdout + result.stderr
    said = sources(result.stdout)
    assert said["name"] == "flag --name"
    assert said["dial-timeout"] == "environment AMBASSADOR_DIAL_TIMEOUT"
    assert said["link"] == "environment AMBASSADOR_LINK"
    assert said["handshake-timeout"] == f"config file {config}"
    assert said["log-level"] == f"config file {config}"
    assert said["drain-timeout"] == "default"
    assert said["tls-ca"] == "default"  # not set, shown as a comment
    assert "# TLS: off" in result.stdout
    assert_untouched(held_ports)  # exit 0 although both ports were taken: nothing listened


def test_client_masks_its_token_and_starts_nothing(
    tmp_path: Path, held_ports: list[socket.socket]
) -> None:
    local, metrics = (port_of(sock) for sock in held_ports)
    config = tmp_path / "client.toml"
    config.write_text('remote = "127.0.0.1:1"\nconnect-timeout = 7\n')
    result = run_program(
        [
            *ambassador("client"),
            f"--config={config}",
            f"--expose=127.0.0.1:{local}=redis",
            f"--metrics-listen=127.0.0.1:{metrics}",
            f"--token-file={token_file(tmp_path)}",
            "--check-config",
        ],
        env={"AMBASSADOR_CONNECT_TIMEOUT": "4"},
    )
    assert result.returncode == 0, result.stderr
    shown = effective(result.stdout)
    assert shown["remote"] == ["127.0.0.1:1"]
    assert shown["connect-timeout"] == 4.0
    assert shown["expose"] == [f"127.0.0.1:{local}=redis"]
    assert "alice:***" in result.stdout
    assert SECRET not in result.stdout + result.stderr
    said = sources(result.stdout)
    assert said["remote"] == f"config file {config}"
    assert said["connect-timeout"] == "environment AMBASSADOR_CONNECT_TIMEOUT"
    assert said["expose"] == "flag --expose"
    assert said["token-file"] == "flag --token-file"
    assert_untouched(held_ports)


def test_server_output_is_a_config_file_giving_the_same_configuration(tmp_path: Path) -> None:
    server, _ = loopback_pki(tmp_path)
    config = tmp_path / "server.toml"
    config.write_text(
        'handshake-timeout = 3\naccess = ["alice=db"]\n[links]\nredis = "127.0.0.1:6379"\n'
    )
    env = {"AMBASSADOR_DIAL_TIMEOUT": "2.5", "AMBASSADOR_LOG_LEVEL": "warning"}
    args = [
        f"--config={config}",
        "--name=from-flag",
        "--link=db=127.0.0.1:5432",
        f"--tls-cert={server.cert}",
        f"--tls-key={server.key}",
        f"--tls-ca={tmp_path / 'ca.pem'}",
        f"--token-file={token_file(tmp_path)}",
        "--workers=auto",
    ]
    stdout, shown = check_config("server", args, env)
    assert shown["workers"] == "auto"
    assert shown["tls-ca"] == str(tmp_path / "ca.pem")
    assert "# TLS: on; client certificates signed by tls-ca required (mutual TLS)" in stdout
    assert SECRET not in stdout
    assert_round_trip("server", stdout, tmp_path)


def test_server_shows_the_links_read_from_link_variables(tmp_path: Path) -> None:
    env = {
        "REDIS_PORT_6379_TCP": "tcp://10.0.0.5:6379",
        "REDIS_PORT_6379_TCP_ADDR": "10.0.0.5",
        "DB_PORT_5432_TCP": "tcp://10.0.0.6:5432",
    }
    stdout, shown = check_config(
        "server", ["--link=cache=127.0.0.1:11211", "--links-from-env"], env
    )
    assert shown["link"] == ["cache=127.0.0.1:11211", "db=10.0.0.6:5432", "redis=10.0.0.5:6379"]
    assert shown["links-from-env"] is True
    assert '  "db=10.0.0.6:5432",  # link variable DB_PORT_5432_TCP' in stdout.splitlines()
    assert '  "cache=127.0.0.1:11211",  # flag --link' in stdout.splitlines()
    assert_round_trip("server", stdout, tmp_path, env)  # read again: no repeats
    assert_round_trip("server", stdout, tmp_path)  # or without the variables: the same links


def test_client_shows_exposes_and_remote_from_link_variables(tmp_path: Path) -> None:
    env = {"REDIS_PORT_6379_TCP": "tcp://10.0.0.5:6379", "DB_PORT_5432_TCP": "tcp://10.0.0.5:5432"}
    stdout, shown = check_config("client", ["--links-from-env", "--expose=16379=redis"], env)
    assert shown["expose"] == [
        "16379=redis",
        "DB_PORT_5432_TCP=tcp://10.0.0.5:5432",
        "REDIS_PORT_6379_TCP=tcp://10.0.0.5:6379",
    ]
    assert shown["remote"] == ["10.0.0.5:7700"]
    said = sources(stdout)
    assert said["remote"] == "the host link variable DB_PORT_5432_TCP names"
    assert (
        '  "REDIS_PORT_6379_TCP=tcp://10.0.0.5:6379",  # link variable REDIS_PORT_6379_TCP'
        in stdout.splitlines()
    )
    assert_round_trip("client", stdout, tmp_path, env)
    assert_round_trip("client", stdout, tmp_path)


def test_client_with_a_ca_shows_tls_on_and_round_trips(tmp_path: Path) -> None:
    _, client = loopback_pki(tmp_path)
    args = [f"--tls-ca={client.ca}", "--remote=127.0.0.1:1", f"--token-file={token_file(tmp_path)}"]
    stdout, shown = check_config("client", args, {"AMBASSADOR_BIND": "0.0.0.0"})
    assert shown["tls"] is True
    assert sources(stdout)["tls"] == "implied by tls-ca"
    assert sources(stdout)["bind"] == "environment AMBASSADOR_BIND"
    assert SECRET not in stdout
    assert_round_trip("client", stdout, tmp_path)


@pytest.mark.parametrize(
    ("role", "content", "says"),
    [
        ("server", "listen = \n", "is not valid TOML"),
        ("server", 'lisen = "127.0.0.1:7700"\n', "unknown key 'lisen'"),
        ("client", 'remote = "127.0.0.1:7700"\nconnect-timeout = "soon"\n', "must be a number"),
    ],
)
def test_broken_config_file_is_one_line(role: str, content: str, says: str, tmp_path: Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text(content)
    result = run_program(
        [*ambassador(role), f"--config={config}", "--link=a=127.0.0.1:1", "--check-config"]
        if role == "server"
        else [*ambassador(role), f"--config={config}", "--check-config"]
    )
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"ambassador-{role}: error: ")
    assert str(config) in line
    assert says in line


def test_check_config_rejects_a_metrics_address_the_run_would_reject(
    free_port: Callable[..., int],
) -> None:
    argv = [*ambassador("server"), "--link=a=127.0.0.1:1", "--metrics-listen=nowhere:port"]
    run = run_program([*argv, f"--listen=127.0.0.1:{free_port()}"])
    assert run.returncode == 2, run.stderr  # the real run refuses it at once
    checked = run_program([*argv, "--check-config"])
    assert checked.returncode == 2, checked.stdout
    assert "bad --metrics-listen" in checked.stderr
