"""A reload that moves the client's token file: the file watched is the new one, so rotating
the token there is picked up, and the next session authenticates with the new token."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.support import AmbassadorServer, Processes, ambassador

pytestmark = pytest.mark.integration

ALICE = "alice:" + "a1" * 16
BOB = "bob:" + "b2" * 16


def write(path: Path, text: str) -> None:
    """Replace the file in one step (owner-only, as token files must be)."""
    scratch = path.with_suffix(".new")
    scratch.write_text(text)
    scratch.chmod(0o600)
    scratch.replace(path)


def test_rotating_a_token_file_the_reload_moved_to(
    tmp_path: Path,
    processes: Processes,
    start_server: Callable[..., AmbassadorServer],
    free_port: Callable[..., int],
) -> None:
    server_tokens = tmp_path / "server-tokens"
    write(server_tokens, f"{ALICE}\n{BOB}\n")
    server = start_server(
        f"echo=127.0.0.1:{free_port()}", args=["--token-file", str(server_tokens)]
    )
    first, moved, config = tmp_path / "first-token", tmp_path / "moved-token", tmp_path / "c.toml"
    write(first, ALICE + "\n")
    write(moved, ALICE + "\n")
    head = f'remote = "127.0.0.1:{server.port}"\nexpose = ["127.0.0.1:{free_port()}=echo"]\n'
    write(config, head + f'token-file = "{first}"\n')
    client = processes.start("ambassador-client", [*ambassador("client"), "--config", str(config)])
    client.wait_for_stderr("tunnel up to ", 10)
    server.process.wait_for_stderr(r"session up with .* as alice", 5)

    # The configuration moves the token file; then the token is rotated in the new file.
    write(config, head + f'token-file = "{moved}"\n')
    client.popen.send_signal(signal.SIGHUP)
    client.wait_for_stderr(r"reloaded \(SIGHUP\)", 5)
    write(moved, BOB + "\n")
    client.wait_for_stderr(rf"reloaded \({moved} changed\)", 5)

    # The server withdraws alice: the session ends, and the client comes back as bob.
    write(server_tokens, BOB + "\n")
    server.process.wait_for_stderr(r"its token was withdrawn", 5)
    server.process.wait_for_stderr(r"session up with .* as bob", 15)
    assert client.alive()
