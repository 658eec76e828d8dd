"""What the container tests share: waiting, talking to redis, a terminal for ``docker run -it``,
the two-host layout on one engine, and certificates made by the project's own ``certs``."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from tests.containers.engine import DOCKER, Engine
from tests.deploy.support import code_blocks

T = TypeVar("T")
SERVER_CLI = str(Path(sys.executable).parent / "ambassador-server")


def wait_for(probe: Callable[[], T | None], what: str, timeout: float = 40) -> T:
    """Call ``probe`` until it returns something other than None; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(0.5)


def redis_ping(port: int) -> bool:
    """Whether a redis answers PING on 127.0.0.1:port (the RESP reply +PONG)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def cli(engine: Engine, *args: str) -> str | None:
    """The output of a ``docker run``/``exec`` of redis-cli when it succeeded, else None."""
    result = engine.docker(*args, check=False, timeout=60)
    output = result.stdout.strip()
    if result.returncode != 0 or not output or output.startswith(("Could not", "Error")):
        return None
    return output


def run_in_terminal(engine: Engine, argv: list[str], send: str, expect: str) -> str:
    """Run ``argv`` (a ``docker run -i -t``) at a terminal: at the prompt (``> ``) type ``send``,
    wait for ``expect``, then ``quit``. Returns what the terminal showed.

    ``-t`` needs a terminal on stdin, so the command gets a pseudo-terminal, and this function
    plays the terminal: redis-cli's line editor asks where the cursor is (ESC [6n) and waits
    for the answer.
    """
    assert argv[0] == "docker"
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [str(DOCKER), *argv[1:]],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=engine.env(),
        start_new_session=True,
    )
    os.close(terminal)
    seen = b""
    lines = [send, "quit"]  # typed one at each prompt
    try:
        deadline = time.monotonic() + 60  # a container's start is slow on a loaded machine
        while time.monotonic() < deadline and process.poll() is None:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the command ended
                break
            seen += chunk
            if b"\x1b[6n" in chunk:
                os.write(controller, b"\x1b[1;1R")
            # A prompt, and the answer to what was typed before it (if anything was).
            if lines and chunk.rstrip(b"\x1b[6n").endswith(b"> "):
                if len(lines) == 1 and expect.encode() not in seen:
                    break
                os.write(controller, lines.pop(0).encode() + b"\r")
        with contextlib.suppress(subprocess.TimeoutExpired):
            # Still at a prompt: what it showed so far is the caller's to judge (the finally
            # below ends it), not a timeout traceback.
            process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(controller)
    return seen.decode(errors="replace")


def readme_block(markdown: str, after: str) -> list[list[str]]:
    """The shell commands of the first code block after the text ``after``, as words."""
    at = markdown.index(after)
    block = next(code_blocks(markdown[at:]))
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words:
            commands.append(words)
    return commands


def make_pki(directory: Path, *sans: str) -> Path:
    """A CA, a server certificate for ``sans`` and client1's, owned by the image's user."""
    names = [arg for san in sans for arg in ("--san", san)]
    subprocess.run(
        [SERVER_CLI, "certs", "init", str(directory), *names], check=True, capture_output=True
    )
    subprocess.run(
        [SERVER_CLI, "certs", "client", "client1", "--dir", str(directory)],
        check=True,
        capture_output=True,
    )
    # The keys are 0600; the containers run as uid 10001 (README: chown -R 10001:10001 pki).
    for path in [directory, *directory.iterdir()]:
        os.chown(path, 10001, 10001)
    return directory


SERVER_TLS = ["--tls-cert", "/pki/server.pem", "--tls-key", "/pki/server-key.pem"]
CLIENT_TLS = ["--tls-cert", "/pki/client1.pem", "--tls-key", "/pki/client1-key.pem"]


def two_hosts(
    engine: Engine,
    image: str,
    client_env: str,
    pki: Path | None,
    server_args: Sequence[str],
    server_opts: Sequence[str] = (),
    client_opts: Sequence[str] = (),
) -> None:
    """The seed's two hosts on one engine, as containers and networks.

    big-server: its containers on the default bridge (where ``--link`` sets the link
    variables) and, for the ambassador, also on ``wan``. The client host: the network
    ``client-host``, whose ambassador is also on ``wan`` and reaches big-server there by name.
    """
    mount = ["-v", f"{pki}:/pki:ro"] if pki else []
    ca = ["--tls-ca", "/pki/ca.pem"] if pki else []
    engine.docker(
        *("run", "-d", "--name", "big-server", *server_opts, *mount, image),
        *("server", *server_args, *(SERVER_TLS + ca if pki else [])),
    )
    engine.docker("network", "create", "wan")
    engine.docker("network", "connect", "wan", "big-server")
    engine.docker("network", "create", "client-host")
    engine.docker(
        *("run", "-d", "--name", "redis_ambassador", "--network", "client-host"),
        *("--expose", client_env.split("_")[2], "-e", client_env, *client_opts, *mount, image),
        *("client", "--links-from-env", *(CLIENT_TLS + ca if pki else [])),
    )
    engine.docker("network", "connect", "wan", "redis_ambassador")


def logs(engine: Engine, name: str) -> str:
    result = engine.docker("logs", name, check=False)
    return (result.stdout + result.stderr)[-3000:]
