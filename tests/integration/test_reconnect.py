"""The server dies and comes back: the client reconnects by itself, nobody restarts it."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest

from tests.integration.support import (
    AmbassadorServer,
    Processes,
    Redis,
    Started,
    redis_cli,
)

pytestmark = pytest.mark.integration

RECOVERY_DEADLINE = 15.0  # the client's backoff is capped at 10 s; recovery takes far less


def test_killed_server_is_rejoined_by_the_same_client(
    redis_server: Redis,
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    processes: Processes,
    free_port: Callable[..., int],
) -> None:
    link = f"redis=127.0.0.1:{redis_server.port}"
    server = start_server(link)
    local = free_port()
    client = start_client(
        f"--remote=127.0.0.1:{server.port}",
        f"--expose=127.0.0.1:{local}=redis",
        listens=[("127.0.0.1", local)],
    )
    assert redis_cli(local, "PING") == "PONG"
    client_pid = client.pid

    # A consumer connection that is open when the server dies is reset, not left hanging.
    held = socket.create_connection(("127.0.0.1", local), timeout=2)
    held.sendall(b"PING\r\n")
    assert held.recv(64) == b"+PONG\r\n"

    server.process.kill()  # SIGKILL: no Go Away, the connection just ends
    client.wait_for_stderr(r"tunnel to \S+ lost", timeout=5)
    with held, pytest.raises(ConnectionResetError):
        held.recv(64)

    # A consumer that connects while the tunnel is down is held until it is back.
    waiting = processes.start("redis-cli-while-down", ["redis-cli", "-p", str(local), "PING"])
    time.sleep(0.3)
    assert waiting.alive(), f"the consumer was not held: {waiting.stdout()}{waiting.stderr()}"

    started = time.monotonic()
    start_server(link, port=server.port)
    answer = ""
    while time.monotonic() - started < RECOVERY_DEADLINE and answer != "PONG":
        answer = redis_cli(local, "PING")
        time.sleep(0.05)
    recovered = time.monotonic() - started
    assert answer == "PONG", f"no PONG within {RECOVERY_DEADLINE:g}s of the restart: {answer!r}"
    waiting.popen.wait(timeout=RECOVERY_DEADLINE)
    assert waiting.stdout().strip() == "PONG"

    # The same client process did it all, on its second session.
    assert client.pid == client_pid and client.alive()
    assert client.stderr().count("tunnel up to ") == 2
    print(f"service restored {recovered:.1f} s after the server restarted")
