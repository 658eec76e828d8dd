"""deploy/entrypoint.sh: a POSIX script that picks a role and execs a console script, with the
seed's drop-in forwarding when given no arguments."""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from server.cli import cli as server_cli
from tests.deploy import dockerfile
from tests.deploy.support import (
    DEPLOY,
    DOCKERFILE,
    console_scripts,
    echo_server,
    healthcheck_argv,
    last_line,
    run_healthcheck,
    unknown_flags,
)

ENTRYPOINT = DEPLOY / "entrypoint.sh"
VENV_BIN = Path(sys.executable).parent


def test_entrypoint_is_an_executable_posix_script() -> None:
    assert ENTRYPOINT.stat().st_mode & stat.S_IXUSR, "chmod +x deploy/entrypoint.sh"
    lines = ENTRYPOINT.read_text().splitlines()
    assert lines[0] == "#!/bin/sh", "python:3.11-slim has /bin/sh (dash), not necessarily bash"
    assert "set -eu" in (line.strip() for line in lines)
    for shell in ("sh", "dash", "bash"):
        path = shutil.which(shell)
        if path is None:
            continue
        options = ["--posix", "-n"] if shell == "bash" else ["-n"]
        result = subprocess.run([path, *options, ENTRYPOINT], capture_output=True, text=True)
        assert result.returncode == 0, f"{shell} -n: {result.stderr}"


def test_entrypoint_execs_only_console_scripts_of_this_package() -> None:
    programs = re.findall(r"^\s*exec\s+(\S+)", ENTRYPOINT.read_text(), flags=re.MULTILINE)
    assert programs, "the entrypoint execs its role, so that it gets the signals as PID 1"
    scripts = console_scripts()
    for program in programs:
        assert program in scripts, f"exec {program}: not in pyproject.toml [project.scripts]"


@pytest.fixture
def stub_path(tmp_path: Path) -> str:
    """A PATH whose ambassador-server/-client print their name, pid and arguments."""
    for name in console_scripts():
        stub = tmp_path / name
        stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "{name}" "$$" "$@"\n')
        stub.chmod(0o755)
    return f"{tmp_path}{os.pathsep}/usr/bin{os.pathsep}/bin"


def run_entrypoint(path: str, *args: str) -> tuple[subprocess.Popen[str], str, str]:
    process = subprocess.Popen(
        [ENTRYPOINT, *args],
        env={"PATH": path},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = process.communicate(timeout=10)
    return process, out, err


SERVER, CLIENT = "ambassador-server", "ambassador-client"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), [SERVER, "--links-from-env", "--forward"]),
        (("server", "--link", "redis=10.0.0.5:6379"), [SERVER, "--link", "redis=10.0.0.5:6379"]),
        (("server", "certs", "init", "pki"), [SERVER, "certs", "init", "pki"]),
        (("client", "--remote", "big-server"), [CLIENT, "--remote", "big-server"]),
        (("client", "--name", "two words"), [CLIENT, "--name", "two words"]),
        (("--link", "redis=redis:6379"), [SERVER, "--link", "redis=redis:6379"]),
    ],
)
def test_entrypoint_runs_the_role_it_is_given(
    stub_path: str, args: tuple[str, ...], expected: list[str]
) -> None:
    process, out, err = run_entrypoint(stub_path, *args)
    assert process.returncode == 0, err
    program, pid, *argv = out.splitlines()
    assert [program, *argv] == expected
    assert int(pid) == process.pid, "the role replaces the shell (exec), it is not its child"


def test_entrypoint_refuses_an_unknown_role_in_one_line(stub_path: str) -> None:
    process, out, err = run_entrypoint(stub_path, "sevrer", "--link", "x=y:1")
    assert process.returncode == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and "sevrer" in err


def test_drop_in_mode_uses_flags_the_server_has(stub_path: str) -> None:
    _, out, _ = run_entrypoint(stub_path)
    program, _, *argv = out.splitlines()
    assert program == "ambassador-server"
    assert unknown_flags(server_cli, argv) == []


@pytest.fixture
def echo_backend() -> Iterator[int]:
    with echo_server() as port:
        yield port


def drop_in(link_port: int, backend: int, **extra: str) -> subprocess.Popen[str]:
    """The image run as the seed's: no arguments, a Docker link variable in the environment."""
    env = {
        "PATH": f"{VENV_BIN}{os.pathsep}/usr/bin{os.pathsep}/bin",
        f"REDIS_PORT_{link_port}_TCP": f"tcp://127.0.0.1:{backend}",
        # As Docker writes them beside it: they must not add a second service.
        f"REDIS_PORT_{link_port}_TCP_ADDR": "127.0.0.1",
        f"REDIS_PORT_{link_port}_TCP_PORT": str(backend),
        f"REDIS_PORT_{link_port}_TCP_PROTO": "tcp",
        "REDIS_NAME": "/redis_ambassador/redis",
        # 0.0.0.0 in the image; loopback is enough here.
        "AMBASSADOR_FORWARD_BIND": "127.0.0.1",
        **extra,
    }
    return subprocess.Popen(
        [ENTRYPOINT], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def stop(process: subprocess.Popen[str]) -> str:
    process.terminate()
    try:
        _, err = process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
    return err


def test_drop_in_mode_forwards_a_linked_service_like_the_seed(
    echo_backend: int,
    free_port: Callable[..., int],
    wait_for_port: Callable[..., None],
) -> None:
    port = free_port()
    process = drop_in(port, echo_backend)
    try:
        wait_for_port("127.0.0.1", port, timeout=15, alive=lambda: process.poll() is None)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"PING\r\n")
            assert conn.recv(100) == b"PING\r\n"
    finally:
        err = stop(process)
    assert "forwarding" in err, err


def test_drop_in_mode_is_healthy_for_the_image_healthcheck(
    echo_backend: int,
    free_port: Callable[..., int],
    wait_for_port: Callable[..., None],
) -> None:
    argv = healthcheck_argv(dockerfile.parse(DOCKERFILE.read_text())[-1])
    metrics = f"127.0.0.1:{free_port()}"
    port = free_port()
    # The image sets AMBASSADOR_METRICS_LISTEN; the drop-in mode must answer its HEALTHCHECK.
    process = drop_in(port, echo_backend, AMBASSADOR_METRICS_LISTEN=metrics)
    try:
        wait_for_port("127.0.0.1", port, timeout=15, alive=lambda: process.poll() is None)
        deadline = time.monotonic() + 3
        while (result := run_healthcheck(argv, metrics)).returncode != 0:
            assert time.monotonic() < deadline, (
                f"HEALTHCHECK fails in drop-in mode: {last_line(result.stderr)}"
            )
            time.sleep(0.1)
    finally:
        stop(process)


POD = {
    # What the kubelet puts in every pod, and, with enableServiceLinks (the default), the link
    # variables of every Service of the namespace: here a "payments" Service.
    "KUBERNETES_SERVICE_HOST": "10.96.0.1",
    "KUBERNETES_SERVICE_PORT": "443",
    "KUBERNETES_PORT_443_TCP": "tcp://10.96.0.1:443",
    "PAYMENTS_PORT_8443_TCP": "tcp://10.96.0.7:8443",
}


def test_drop_in_mode_refuses_a_kubernetes_pod_in_one_line(
    echo_backend: int, free_port: Callable[..., int]
) -> None:
    process = drop_in(free_port(), echo_backend, **POD)
    try:
        _, err = process.communicate(timeout=15)
    finally:
        stop(process)
    assert process.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "KUBERNETES_SERVICE_HOST" in lines[0]
    assert "--link" in lines[0] and "enableServiceLinks: false" in lines[0]
    assert "--links-from-env-in-pod" in lines[0]


@pytest.mark.parametrize(
    "opt_in",
    [
        {"AMBASSADOR_LINK": "echo:{port}=127.0.0.1:{backend}"},  # explicit links
        {"AMBASSADOR_LINKS_FROM_ENV_IN_POD": "true"},  # enableServiceLinks: false, said so
    ],
)
def test_drop_in_mode_starts_in_a_pod_when_told_what_to_forward(
    echo_backend: int,
    free_port: Callable[..., int],
    wait_for_port: Callable[..., None],
    opt_in: dict[str, str],
) -> None:
    port = free_port()
    extra = {k: v.format(port=port, backend=echo_backend) for k, v in opt_in.items()}
    pod = dict(POD)
    if "AMBASSADOR_LINKS_FROM_ENV_IN_POD" in extra:
        del pod["PAYMENTS_PORT_8443_TCP"]  # enableServiceLinks: false
    process = drop_in(port, echo_backend, **pod, **extra)
    try:
        wait_for_port("127.0.0.1", port, timeout=15, alive=lambda: process.poll() is None)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"PING\r\n")
            assert conn.recv(100) == b"PING\r\n"
    finally:
        err = stop(process)
    assert "forwarding" in err, err
    assert "payments" not in err.lower() and "8443" not in err, err
