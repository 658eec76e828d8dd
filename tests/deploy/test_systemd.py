"""deploy/systemd: hardened units that start the right program with real flags, reload with
SIGHUP, and pass ``systemd-analyze verify`` where it is installed."""

from __future__ import annotations

import contextlib
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import pytest

from tests.deploy.support import DEPLOY, ROLES, console_scripts, echo_server, unknown_flags
from tunnel.settings.config import default_map_for

SYSTEMD = DEPLOY / "systemd"
UNITS = {
    "server": SYSTEMD / "ambassador-server.service",
    "client": SYSTEMD / "ambassador-client.service",
}
VENV_BIN = Path(sys.executable).parent

Unit = dict[str, dict[str, list[str]]]

HARDENING = {
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "Restart": "on-failure",
    "RestartSec": "2",
}


def parse_unit(text: str) -> Unit:
    """Sections -> keys -> every value given (systemd keys may repeat), continuations joined."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"{line!r} before any [Section]"
        key, equals, value = line.partition("=")
        assert equals, f"not KEY=VALUE: {line!r}"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def service(role: str) -> dict[str, list[str]]:
    return parse_unit(UNITS[role].read_text())["Service"]


def exec_start(role: str) -> list[str]:
    (line,) = service(role)["ExecStart"]
    return shlex.split(line)


def example_config(role: str) -> Path:
    """The example TOML beside the units that ExecStart's --config names."""
    words = exec_start(role)
    config = PurePosixPath(words[words.index("--config") + 1])
    assert config.parent == PurePosixPath("/etc/ambassador")
    return SYSTEMD / config.name


@pytest.mark.parametrize("role", UNITS)
def test_unit_has_the_three_sections(role: str) -> None:
    unit = parse_unit(UNITS[role].read_text())
    assert {"Unit", "Service", "Install"} <= unit.keys()
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.parametrize("role", UNITS)
def test_unit_is_hardened(role: str) -> None:
    settings = service(role)
    for key, value in HARDENING.items():
        assert settings.get(key, [None])[-1] == value, f"{key}={value}"
    families = set(settings["RestrictAddressFamilies"][-1].split())
    assert families == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert "@system-service" in settings["SystemCallFilter"][-1].split()
    assert settings.get("DynamicUser") == ["yes"] or settings.get("User") == ["ambassador"]
    reads = " ".join(settings.get("ReadOnlyPaths", []) + settings.get("LoadCredential", []))
    assert "/etc/ambassador" in reads, "the configuration and keys are readable, read-only"


@pytest.mark.parametrize("role", UNITS)
def test_exec_start_runs_the_role_with_real_flags(role: str) -> None:
    program, *args = exec_start(role)
    assert program == f"/usr/local/bin/ambassador-{role}"
    assert PurePosixPath(program).name in console_scripts()
    assert unknown_flags(ROLES[role], args) == []
    assert example_config(role).is_file(), "an example of the config file sits beside the unit"


@pytest.mark.parametrize("role", UNITS)
def test_reload_is_sighup(role: str) -> None:
    assert service(role)["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


def test_reload_never_kills_a_client_whose_tunnel_is_down(
    free_port: Callable[..., int], wait_for_port: Callable[..., None]
) -> None:
    local = free_port()
    client = subprocess.Popen(
        [VENV_BIN / "ambassador-client", "--remote", f"127.0.0.1:{free_port()}",
         "--expose", f"127.0.0.1:{local}=redis"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port("127.0.0.1", local, timeout=15, alive=lambda: client.poll() is None)
        client.send_signal(signal.SIGHUP)  # what ExecReload does
        time.sleep(1)
        assert client.poll() is None, f"systemctl reload ended the client ({client.returncode})"
    finally:
        client.terminate()
        client.wait(timeout=10)


def test_the_user_is_declared_for_sysusers() -> None:
    if service("server").get("DynamicUser") == ["yes"]:
        pytest.skip("DynamicUser: no user to declare")
    lines = (SYSTEMD / "sysusers.conf").read_text().splitlines()
    declared = [shlex.split(line)[:2] for line in lines if line and not line.startswith("#")]
    assert ["u", "ambassador"] in declared


@pytest.mark.parametrize("role", UNITS)
def test_example_config_loads_and_its_files_are_readable_by_the_unit(role: str) -> None:
    settings = default_map_for(ROLES[role], example_config(role))
    for key in ("tls_cert", "tls_key", "tls_ca", "tls_crl", "token_file"):
        if key in settings:
            path = PurePosixPath(str(settings[key]))
            assert path.is_relative_to("/etc/ambassador"), f"{key}: ReadOnlyPaths covers it"


def test_server_is_given_time_to_drain() -> None:
    drain = default_map_for(ROLES["server"], example_config("server")).get("drain_timeout", 30.0)
    assert float(service("server")["TimeoutStopSec"][-1]) > drain


def test_both_roles_can_share_a_host() -> None:
    server = default_map_for(ROLES["server"], example_config("server"))
    client = default_map_for(ROLES["client"], example_config("client"))
    assert server["metrics_listen"] != client["metrics_listen"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify also checks that ExecStart's program exists: point it at this venv's.
    for role, unit in UNITS.items():
        program = VENV_BIN / f"ambassador-{role}"
        assert program.exists(), program
        text = unit.read_text().replace(f"/usr/local/bin/ambassador-{role}", str(program))
        (tmp_path / unit.name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / u.name) for u in UNITS.values())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Unknown keys and bad values are only warnings to verify: any mention of a unit fails.
    complaints = [line for line in result.stderr.splitlines() if "ambassador-" in line]
    assert result.returncode == 0 and not complaints, result.stderr


# Runs a command with the kernel's W^X switch on (prctl PR_SET_MDWE, Linux 6.3+); exit 77
# when the kernel does not have it. The switch is inherited across fork and exec.
MDWE_LAUNCHER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit(77)
os.execv(sys.argv[1], sys.argv[1:])
"""
WRITE_AND_EXECUTE = (
    "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)"
)


def under_mdwe(*command: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", MDWE_LAUNCHER, *map(str, command)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_both_roles_run_with_memory_deny_write_execute(
    tmp_path: Path,
    free_port: Callable[..., int],
    wait_for_port: Callable[..., None],
) -> None:
    """MemoryDenyWriteExecute=yes must not break cryptography, ssl or uvloop.

    The kernel's own W^X switch stands in for systemd's filter: both refuse memory that is
    writable and executable, which is what a JIT or a libffi trampoline would need. Under it:
    the certificates are made, and a mutual-TLS pair carries bytes to a backend and back.
    """
    probe = under_mdwe(sys.executable, "-c", WRITE_AND_EXECUTE)
    if probe.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    assert probe.returncode != 0, "the switch is on: a writable, executable mapping is refused"
    pki = tmp_path / "pki"
    for command in (["init", pki, "--san", "127.0.0.1"], ["client", "client1", "--dir", pki]):
        made = under_mdwe(VENV_BIN / "ambassador-server", "certs", *command)
        assert made.returncode == 0, made.stderr
    tunnel, local = free_port(), free_port()
    with echo_server() as backend, contextlib.ExitStack() as running:
        server = running.enter_context(start_under_mdwe(
            VENV_BIN / "ambassador-server", "--listen", f"127.0.0.1:{tunnel}",
            "--link", f"echo=127.0.0.1:{backend}", "--tls-cert", pki / "server.pem",
            "--tls-key", pki / "server-key.pem", "--tls-ca", pki / "ca.pem",
        ))  # fmt: skip
        wait_for_port("127.0.0.1", tunnel, timeout=15, alive=lambda: server.poll() is None)
        client = running.enter_context(start_under_mdwe(
            VENV_BIN / "ambassador-client", "--remote", f"127.0.0.1:{tunnel}",
            "--expose", f"127.0.0.1:{local}=echo", "--tls-ca", pki / "ca.pem",
            "--tls-cert", pki / "client1.pem", "--tls-key", pki / "client1-key.pem",
        ))  # fmt: skip
        wait_for_port("127.0.0.1", local, timeout=15, alive=lambda: client.poll() is None)
        with socket.create_connection(("127.0.0.1", local), timeout=10) as conn:
            conn.sendall(b"hello through TLS")
            assert conn.recv(100) == b"hello through TLS"


@contextlib.contextmanager
def start_under_mdwe(*command: str | Path) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-c", MDWE_LAUNCHER, *map(str, command)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        process.terminate()
        try:
            _, err = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
    assert process.returncode in (0, -15), f"{Path(str(command[0])).name}: {err[-2000:]}"
