"""``--check-config``: the effective configuration from flags, AMBASSADOR_* variables and a
TOML file, printed without starting anything; token secrets never shown; a broken file is one
line and exit 2."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.support import ambassador, run_program

pytestmark = pytest.mark.integration

SECRET = "s3cret-never-printed-0123456789"


def effective(stdout: str) -> dict[str, str]:
    """``key = value`` lines as a dict (values as printed, Python literals)."""
    pairs = (line.partition(" = ") for line in stdout.splitlines())
    return {key: value for key, sep, value in pairs if sep}


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
    assert shown["name"] == "'from-flag'"  # flag > environment > file
    assert shown["dial-timeout"] == "2.5"  # environment > file
    assert shown["handshake-timeout"] == "3.0"  # file > default
    assert shown["log-level"] == "'warning'"
    assert shown["link"] == "['db=127.0.0.1:5432', 'cache=127.0.0.1:11211']"  # env > file
    assert shown["drain-timeout"] == "30.0"  # the default
    assert shown["listen"] == f"'127.0.0.1:{listen}'"
    assert shown["tokens"] == "['alice:***']"
    assert SECRET not in result.stdout + result.stderr
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
    assert shown["remote"] == "['127.0.0.1:1']"
    assert shown["connect-timeout"] == "4.0"
    assert shown["expose"] == f"['127.0.0.1:{local}=redis']"
    assert shown["tokens"] == "['alice:***']"
    assert SECRET not in result.stdout + result.stderr
    assert_untouched(held_ports)


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
