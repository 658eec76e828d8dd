"""The options of a client's tunnel listener (--listen) from every source a role reads: the
flag, its AMBASSADOR_* variable and the config file key, as --check-config shows them."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.integration.support import ambassador, clean_environ


def check_config(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ambassador("client"), *args, "--check-config"],
        capture_output=True, text=True, env={**clean_environ(), **(env or {})}, timeout=30,
    )  # fmt: skip


def test_allow_from_is_read_from_the_config_file_key_and_the_variable(tmp_path: Path) -> None:
    config = tmp_path / "client.toml"
    config.write_text('listen = "127.0.0.1:7700"\nallow-from = ["10.0.0.0/8", "192.0.2.7"]\n')
    from_file = check_config(f"--config={config}")
    assert from_file.returncode == 0, from_file.stderr
    assert "10.0.0.0/8" in from_file.stdout and "192.0.2.7" in from_file.stdout
    from_env = check_config("--listen=127.0.0.1:7700", env={"AMBASSADOR_ALLOW_FROM": "10.1.0.0/16"})
    assert from_env.returncode == 0, from_env.stderr
    assert "10.1.0.0/16" in from_env.stdout


def test_a_bad_allow_from_is_one_line_naming_the_option() -> None:
    result = check_config("--listen=127.0.0.1:7700", "--allow-from=10.0.0.1/8")
    assert result.returncode != 0
    assert "bad --allow-from '10.0.0.1/8': it has host bits set" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_shared_environment_with_the_servers_listener_variables_starts_a_dialing_client() -> None:
    """One env file often serves both roles: the listening server's AMBASSADOR_ALLOW_FROM,
    AMBASSADOR_ACCEPT_PROXY_PROTOCOL and AMBASSADOR_INSECURE_PLAINTEXT mean nothing to a client
    without --listen, so they do not stop it; the same options typed on its command line do."""
    shared = {
        "AMBASSADOR_ALLOW_FROM": "10.0.0.0/8",
        "AMBASSADOR_ACCEPT_PROXY_PROTOCOL": "true",
        "AMBASSADOR_INSECURE_PLAINTEXT": "true",
    }
    dialing = check_config("--remote=127.0.0.1", "--expose=6379", env=shared)
    assert dialing.returncode == 0, dialing.stderr
    typed = check_config("--remote=127.0.0.1", "--expose=6379", "--allow-from=10.0.0.0/8")
    assert typed.returncode == 2
    assert "--allow-from applies to --listen" in typed.stderr
