"""The messages for mistakes that used to reach the user in a library's words: swapped TLS files,
a server certificate given to a client, a bad value from an environment variable, a misspelt
variable or config key, a log level in capitals. Each is one line that says what to do."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.support import AmbassadorServer, Processes, ambassador, run_program
from tests.integration.test_cli_errors import assert_one_line_error
from tests.pki import HOST, loopback_pki

pytestmark = pytest.mark.integration

LINK = "--link=redis=127.0.0.1:6379"


def client_argv(*args: str) -> list[str]:
    return [*ambassador("client"), "--remote=127.0.0.1:1", "--expose=6379", *args]


@pytest.mark.parametrize("role", ["server", "client"])
def test_swapped_certificate_and_key_say_swap_them(role: str, tmp_path: Path) -> None:
    server, _ = loopback_pki(tmp_path)
    swapped = [f"--tls-cert={server.key}", f"--tls-key={server.cert}", "--check-config"]
    argv = [*ambassador("server"), LINK, *swapped] if role == "server" else client_argv(*swapped)
    line = assert_one_line_error(
        run_program(argv),
        f"ambassador-{role}",
        f"--tls-cert {server.key} holds a private key and --tls-key {server.cert} a certificate: "
        "swap them",
    )
    assert "PEM lib" not in line


def test_a_certificate_for_the_key_names_the_file_that_is_wrong(tmp_path: Path) -> None:
    server, client = loopback_pki(tmp_path)
    assert client.ca is not None
    result = run_program(
        [*ambassador("server"), LINK, f"--tls-cert={server.cert}", f"--tls-key={client.ca}"]
    )
    assert_one_line_error(
        result,
        "ambassador-server",
        f"--tls-key {client.ca} holds a certificate, not a private key",
    )
    other = tmp_path / "other"
    other.mkdir()
    stranger, _ = loopback_pki(other)
    result = run_program(
        [*ambassador("server"), LINK, f"--tls-cert={server.cert}", f"--tls-key={stranger.key}"]
    )
    assert_one_line_error(
        result,
        "ambassador-server",
        f"--tls-key {stranger.key} is not the private key of --tls-cert {server.cert}",
    )


def test_client_refuses_a_server_certificate_as_its_own(tmp_path: Path) -> None:
    server, client = loopback_pki(tmp_path)
    argv = client_argv(
        f"--tls-ca={client.ca}", f"--tls-cert={server.cert}", f"--tls-key={server.key}"
    )
    assert_one_line_error(
        run_program(argv),
        "ambassador-client",
        f"--tls-cert {server.cert} is a server certificate",
        "ambassador-server certs client NAME",
    )


def test_server_says_what_a_server_certificate_from_a_client_means(
    tmp_path: Path, start_server: Callable[..., AmbassadorServer]
) -> None:
    tls, _ = loopback_pki(tmp_path)
    ca = str(tmp_path / "ca.pem")
    server = start_server(
        "redis=127.0.0.1:6379",
        args=[f"--tls-cert={tls.cert}", f"--tls-key={tls.key}", f"--tls-ca={ca}"],
    )
    # A client that does not check its certificate, as another TLS program might be.
    context = ssl.create_default_context(cafile=ca)
    context.load_cert_chain(tls.cert, tls.key)
    with (
        socket.create_connection((HOST, server.port), timeout=5) as raw,
        pytest.raises((ssl.SSLError, ConnectionError)),
        context.wrap_socket(raw, server_hostname=HOST) as conn,
    ):
        conn.recv(1)  # TLS 1.3: the server's verdict arrives after the handshake
    # (start_server's probe of the port was refused first, as a closed handshake.)
    line = server.process.wait_for_stderr(r"refused connection from .*certificate.*").group(0)
    assert "not made for a client" in line, line
    assert "ambassador-server certs client NAME" in line, line


def test_a_bad_value_from_the_environment_names_the_variable() -> None:
    result = run_program(
        [*ambassador("server"), LINK, "--check-config"], env={"AMBASSADOR_DIAL_TIMEOUT": "abc"}
    )
    line = assert_one_line_error(result, "ambassador-server", "AMBASSADOR_DIAL_TIMEOUT", "'abc'")
    assert "'--dial-timeout'" not in line
    # From the command line it is still the flag.
    result = run_program([*ambassador("server"), LINK, "--dial-timeout=abc", "--check-config"])
    assert_one_line_error(result, "ambassador-server", "'--dial-timeout'", "'abc'")


def test_a_bad_value_from_the_config_file_names_the_key_and_file(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text('log-level = "loud"\n')
    result = run_program([*ambassador("server"), LINK, f"--config={config}", "--check-config"])
    assert_one_line_error(
        result, "ambassador-server", f"Invalid value for log-level in config file {config}: 'loud'"
    )


@pytest.mark.parametrize("role", ["server", "client"])
def test_an_unknown_variable_is_warned_about_once_naming_the_nearest(role: str) -> None:
    argv = [*ambassador("server"), LINK] if role == "server" else client_argv()
    env = {
        "AMBASSADOR_DIAL_TIMOUT": "3",  # misspelt
        "AMBASSADOR_BIND": "0.0.0.0",  # the client's, set for both roles by the image
        "AMBASSADOR_UID": "10001",  # read by compose
        "AMBASSADOR_PORT_7700_TCP": "tcp://172.17.0.9:7700",  # a link to a container "ambassador"
        "AMBASSADOR_SERVICE_HOST": "10.96.0.7",  # a Kubernetes Service "ambassador"
    }
    result = run_program([*argv, "--check-config"], env=env)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, result.stderr
    nearest = "AMBASSADOR_DIAL_TIMEOUT"
    if role == "client":
        nearest += " (an ambassador-server setting)"
    assert warnings[0].endswith(
        f"unknown variable AMBASSADOR_DIAL_TIMOUT ignored; did you mean {nearest}?"
    ), warnings[0]


def test_helper_processes_do_not_warn_again(
    processes: Processes, free_port: Callable[..., int], wait_for_port: Callable[..., None]
) -> None:
    port = free_port()
    argv = [*ambassador("server"), LINK, f"--listen=127.0.0.1:{port}", "--workers=2"]
    server = processes.start("server", argv, env={"AMBASSADOR_DIAL_TIMOUT": "3"})
    server.wait_for_stderr("1 helper process started")
    wait_for_port("127.0.0.1", port, alive=server.alive)
    time.sleep(1.5)  # the helper logs nothing once it has parsed: give it time to start
    assert server.stop() == 0
    assert "worker 1: stopping" in server.stderr()  # the helper ran, parsed and stopped
    assert server.stderr().count("unknown variable AMBASSADOR_DIAL_TIMOUT") == 1, server.stderr()


@pytest.mark.parametrize("level", ["DEBUG", "Warning"])
def test_log_level_in_any_case(level: str) -> None:
    result = run_program([*ambassador("server"), LINK, f"--log-level={level}", "--check-config"])
    assert result.returncode == 0, result.stderr
    assert f'log-level = "{level.lower()}"' in result.stdout


def test_an_unknown_config_key_names_the_nearest(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text("dial_timout = 3\n")
    result = run_program([*ambassador("server"), LINK, f"--config={config}", "--check-config"])
    line = assert_one_line_error(
        result, "ambassador-server", "unknown key 'dial_timout'", "did you mean 'dial-timeout'?"
    )
    assert "valid keys" not in line
    config.write_text('colour = "blue"\n')
    result = run_program([*ambassador("server"), LINK, f"--config={config}", "--check-config"])
    line = assert_one_line_error(result, "ambassador-server", "unknown key 'colour'", "--help")
    assert len(line) < 150 + len(str(config)), line  # a hint, not the 29 keys
