"""An exposed service the server does not offer, as a sidecar needs it handled: the client keeps
running and keeps its listener, consumers are refused at once, the reason is logged (once, then
rate-limited), /readyz says which service is missing, and once the server offers it (a reload of
the server, or a reconnect to a server that has it) the listener works without a restart. The
same holds whether the service goes missing at start, on the client's reload or on the
server's; a client reload that cannot bind a port keeps the running configuration."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.support import Processes, Started, ambassador
from tests.observability.support import http_get, wait_for

pytestmark = pytest.mark.integration

MISSING_WARNING = r"the server does not offer 'nosuch' to this client[^(]*\(offered: echo\)"
PROMPT = 2.0  # seconds a refused consumer may wait for its connection to end


def write_toml(path: Path, lines: list[str]) -> None:
    """Replace the file in one step, so a watcher never reads half of it."""
    scratch = path.with_suffix(".new")
    scratch.write_text("\n".join(lines) + "\n")
    scratch.replace(path)


def refused_promptly(port: int) -> float:
    """Connect as a consumer and send a request; seconds until the connection ended without an
    answer (fails if it was answered or still open after PROMPT)."""
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=PROMPT) as sock:
            sock.sendall(b"hello\n")
            assert sock.recv(64) == b"", "a consumer of a missing service was answered"
    except (ConnectionResetError, BrokenPipeError):
        pass
    except TimeoutError:
        pytest.fail(f"a consumer of a missing service still hung after {PROMPT:g}s")
    return time.monotonic() - started


def echoes(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"hello\n")
        return sock.recv(64) == b"hello\n"


def readyz(port: int) -> tuple[int, str]:
    response = http_get(port, "/readyz")
    return response.status, response.text


def warnings_about_nosuch(client: Started) -> int:
    return sum(1 for line in client.stderr().splitlines() if "WARNING" in line and "nosuch" in line)


@pytest.fixture
def echo_server(
    tmp_path: Path,
    processes: Processes,
    start_backend: Callable[[str], int],
    free_port: Callable[..., int],
    wait_for_port: Callable[..., None],
) -> Callable[..., tuple[Started, Path]]:
    """``echo_server(*extra_links, port=None)``: a server from a config file offering echo."""
    backend = start_backend("echo")

    def start(*extra: str, port: int | None = None) -> tuple[Started, Path]:
        tunnel = port or free_port()
        config = tmp_path / f"server-{tunnel}.toml"
        head = [f'listen = "127.0.0.1:{tunnel}"', "[links]", f'echo = "127.0.0.1:{backend}"']
        write_toml(config, [*head, *(f'{name} = "127.0.0.1:{backend}"' for name in extra)])
        server = processes.start(
            "ambassador-server", [*ambassador("server"), "--config", str(config)]
        )
        wait_for_port("127.0.0.1", tunnel, alive=server.alive)
        return server, config

    return start


def server_port(config: Path) -> int:
    return int(config.read_text().split('"')[1].rpartition(":")[2])


def test_missing_at_start_is_refused_then_served_after_the_server_reload(
    echo_server: Callable[..., tuple[Started, Path]],
    start_client: Callable[..., Started],
    free_port: Callable[..., int],
    wait_for_port: Callable[..., None],
) -> None:
    server, config = echo_server()
    local, metrics = free_port(), free_port()
    client = start_client(
        f"--remote=127.0.0.1:{server_port(config)}",
        f"--expose=127.0.0.1:{local}=nosuch",
        f"--metrics-listen=127.0.0.1:{metrics}",
        listens=[("127.0.0.1", local)],
    )
    client.wait_for_stderr(MISSING_WARNING, 5)
    wait_for_port("127.0.0.1", metrics, alive=client.alive)
    status, body = readyz(metrics)
    assert status == 503 and "'nosuch'" in body, body

    # Many consumers: each refused at once, the reason logged once and then rate-limited.
    times = [refused_promptly(local) for _ in range(20)]
    assert max(times) < 1.0, times
    client.wait_for_stderr(r"connection to 'nosuch' refused: the server does not offer it", 2)
    assert warnings_about_nosuch(client) <= 2, client.stderr()
    assert client.alive()

    # The server learns the service: the same listener serves it, /readyz turns ready.
    lines = config.read_text().splitlines()
    write_toml(config, [*lines, lines[-1].replace("echo =", "nosuch =")])
    server.popen.send_signal(signal.SIGHUP)
    client.wait_for_stderr(r"the server now offers 'nosuch'", 10)
    wait_for("/readyz ready", lambda: readyz(metrics)[0] == 200, timeout=5)
    assert echoes(local)
    assert client.stderr().count("tunnel up to ") == 1  # no reconnect, no restart


def test_missing_without_a_local_port_waits_for_a_server_that_has_it(
    echo_server: Callable[..., tuple[Started, Path]],
    start_client: Callable[..., Started],
    free_port: Callable[..., int],
    wait_for_port: Callable[..., None],
) -> None:
    """``--expose nosuch`` takes its port from the catalog: nothing to bind until a server
    offers it; a restarted server that does is found by the reconnect."""
    server, config = echo_server()
    tunnel, metrics = server_port(config), free_port()
    client = start_client(
        f"--remote=127.0.0.1:{tunnel}",
        "--expose=nosuch",
        f"--metrics-listen=127.0.0.1:{metrics}",
        "--backoff-max=0.5",
    )
    client.wait_for_stderr(MISSING_WARNING, 5)
    wait_for_port("127.0.0.1", metrics, alive=client.alive)
    assert readyz(metrics)[0] == 503
    server.stop()
    offered = free_port()  # the port the new server offers it at, so the client's too
    server, config = echo_server(f'"nosuch:{offered}"', port=tunnel)
    client.wait_for_stderr(rf"exposing 'nosuch' on 127\.0\.0\.1:{offered}\b", 10)
    wait_for("/readyz ready", lambda: readyz(metrics)[0] == 200, timeout=5)
    assert echoes(offered)
    assert client.alive()


def test_missing_after_a_client_reload_behaves_as_at_start(
    tmp_path: Path,
    echo_server: Callable[..., tuple[Started, Path]],
    processes: Processes,
    free_port: Callable[..., int],
    wait_for_port: Callable[..., None],
) -> None:
    _server, config = echo_server()
    echo_local, local, metrics = free_port(), free_port(), free_port()
    client_file = tmp_path / "client.toml"
    head = [
        f'remote = "127.0.0.1:{server_port(config)}"',
        f'metrics-listen = "127.0.0.1:{metrics}"',
    ]
    echo_expose = f'"127.0.0.1:{echo_local}=echo"'
    write_toml(client_file, [*head, f"expose = [{echo_expose}]"])
    client = processes.start(
        "ambassador-client", [*ambassador("client"), "--config", str(client_file)]
    )
    client.wait_for_stderr("tunnel up to ", 10)
    wait_for_port("127.0.0.1", metrics, alive=client.alive)
    assert readyz(metrics)[0] == 200

    write_toml(client_file, [*head, f'expose = [{echo_expose}, "127.0.0.1:{local}=nosuch"]'])
    client.popen.send_signal(signal.SIGHUP)
    client.wait_for_stderr(MISSING_WARNING, 5)
    client.wait_for_stderr(r"reloaded \(SIGHUP\)", 5)
    assert refused_promptly(local) < 1.0
    status, body = readyz(metrics)
    assert status == 503 and "'nosuch'" in body, body
    assert echoes(echo_local)
    assert warnings_about_nosuch(client) <= 2, client.stderr()


def test_a_reload_that_cannot_bind_keeps_the_running_configuration(
    tmp_path: Path,
    echo_server: Callable[..., tuple[Started, Path]],
    processes: Processes,
    free_port: Callable[..., int],
) -> None:
    _server, config = echo_server()
    echo_local, other_local = free_port(), free_port()
    client_file = tmp_path / "client.toml"
    head = [f'remote = "127.0.0.1:{server_port(config)}"']
    write_toml(client_file, [*head, f'expose = ["127.0.0.1:{echo_local}=echo"]'])
    client = processes.start(
        "ambassador-client", [*ambassador("client"), "--config", str(client_file)]
    )
    client.wait_for_stderr("tunnel up to ", 10)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", free_port()))
        busy.listen()
        taken = busy.getsockname()[1]
        write_toml(
            client_file,
            [*head, f'expose = ["127.0.0.1:{other_local}=echo", "127.0.0.1:{taken}=echo"]'],
        )
        client.popen.send_signal(signal.SIGHUP)
        client.wait_for_stderr(
            rf"reload \(SIGHUP\) failed, keeping the running configuration: "
            rf"cannot listen on 127\.0\.0\.1:{taken}: the port is already in use",
            5,
        )
    time.sleep(0.3)
    assert "reloaded" not in client.stderr()
    assert echoes(echo_local), "the running listener was closed by the failed reload"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", other_local), timeout=2).close()
    assert client.alive()
