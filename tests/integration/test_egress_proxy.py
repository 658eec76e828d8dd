"""The client reaches its server through real egress proxies: tinyproxy (HTTP CONNECT, with and
without BasicAuth), dante (SOCKS5, no authentication) and a strict SOCKS5 proxy of the tests'
own for the username method (dante checks usernames against the system's users, which a test
should not add to). redis-cli talks to redis-server through client, proxy and server, in
plaintext and over TLS; the TLS runs inside the proxy's tunnel, verified for the target's
name. Each proxy listens on a loopback port the test picked and is stopped by its pid."""

from __future__ import annotations

import shutil
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.environment import missing
from tests.integration.support import (
    AmbassadorServer,
    Processes,
    Redis,
    Started,
    ambassador,
    run_program,
)
from tests.integration.test_cli_errors import assert_one_line_error
from tests.pki import HOST, loopback_pki

pytestmark = pytest.mark.integration

SOCKS5_SERVER = Path(__file__).with_name("socks5server.py")
FreePort = Callable[..., int]
WaitForPort = Callable[..., None]


@dataclass(frozen=True)
class Egress:
    url: str  # --proxy
    credentials: str | None  # the USER:PASSWORD the proxy wants, if any
    process: Started


def program(path: str, package: str) -> str:
    found = shutil.which(path) or (path if Path(path).exists() else None)
    if found is None:
        missing(f"{Path(path).name} (Debian package {package})")
    return found


@pytest.fixture
def start_tinyproxy(
    processes: Processes, free_port: FreePort, wait_for_port: WaitForPort, tmp_path: Path
) -> Callable[..., Egress]:
    """``start_tinyproxy(allowed_port, basic_auth=None)``: tinyproxy allowing CONNECT to
    ``allowed_port`` only, asking for ``basic_auth`` (USER, PASSWORD) when given."""
    binary = program("/usr/bin/tinyproxy", "tinyproxy")

    def start(allowed_port: int, basic_auth: tuple[str, str] | None = None) -> Egress:
        port = free_port()
        lines = [f"Port {port}", "Listen 127.0.0.1", "Timeout 30", "LogLevel Info",
                 "MaxClients 20", "Allow 127.0.0.1", f"ConnectPort {allowed_port}"]  # fmt: skip
        if basic_auth is not None:
            lines.append(f"BasicAuth {basic_auth[0]} {basic_auth[1]}")
        config = tmp_path / f"tinyproxy-{port}.conf"
        config.write_text("\n".join(lines) + "\n")
        process = processes.start("tinyproxy", [binary, "-d", "-c", str(config)])
        wait_for_port("127.0.0.1", port, alive=process.alive)
        credentials = ":".join(basic_auth) if basic_auth else None
        # localhost, not 127.0.0.1: were the proxy's name used for TLS, the server's
        # certificate (made for 127.0.0.1) would not verify.
        return Egress(f"http://localhost:{port}", credentials, process)

    return start


@pytest.fixture
def start_dante(
    processes: Processes, free_port: FreePort, wait_for_port: WaitForPort, tmp_path: Path
) -> Callable[[int], Egress]:
    """``start_dante(allowed_port)``: dante as a SOCKS5 proxy without authentication, letting
    loopback clients reach 127.0.0.1 on ``allowed_port`` only."""
    binary = program("/usr/sbin/danted", "dante-server")

    def start(allowed_port: int) -> Egress:
        port = free_port()
        config = tmp_path / f"danted-{port}.conf"
        config.write_text(
            f"logoutput: stderr\ninternal: 127.0.0.1 port = {port}\nexternal: 127.0.0.1\n"
            "clientmethod: none\nsocksmethod: none\n"
            "user.privileged: root\nuser.unprivileged: nobody\n"
            "client pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }\n"
            f"socks pass {{ from: 127.0.0.0/8 to: 127.0.0.1/32 port = {allowed_port} "
            "log: connect }\n"
            "socks block { from: 0.0.0.0/0 to: 0.0.0.0/0 log: connect error }\n"
        )
        pidfile = tmp_path / f"danted-{port}.pid"
        argv = [binary, "-f", str(config), "-p", str(pidfile), "-N", "1"]
        process = processes.start("danted", argv)
        wait_for_port("127.0.0.1", port, alive=process.alive)
        return Egress(f"socks5://localhost:{port}", None, process)

    return start


@pytest.fixture
def start_socks5(processes: Processes, tmp_path: Path) -> Callable[..., Egress]:
    """``start_socks5(credentials=None)``: the tests' strict SOCKS5 proxy, which takes only
    the username method (and only these USER:PASSWORD) when given credentials."""

    def start(credentials: str | None = None) -> Egress:
        argv = [sys.executable, str(SOCKS5_SERVER)]
        if credentials is not None:
            path = tmp_path / "socks5-users"
            path.write_text(credentials + "\n")
            argv += ["--credentials", str(path)]
        process = processes.start("socks5server", argv)
        port = int(process.stdout_line())
        return Egress(f"socks5://localhost:{port}", credentials, process)

    return start


def credentials_file(tmp_path: Path, text: str, mode: int = 0o600) -> str:
    path = tmp_path / "proxy-credentials"
    path.write_text(text + "\n")
    path.chmod(mode)
    return str(path)


def redis_ping(port: int) -> str:
    return run_program(["redis-cli", "-p", str(port), "PING"]).stdout.strip()


@pytest.fixture
def server_port(free_port: FreePort) -> int:
    return free_port()


@pytest.fixture
def tunnel_to_redis(
    server_port: int,
    redis_server: Redis,
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    free_port: FreePort,
    tmp_path: Path,
) -> Callable[..., int]:
    """``tunnel_to_redis(egress, tls)``: a server offering redis-server, and a client reaching
    it through ``egress``; the client's local redis port, once the tunnel is up."""

    def start(egress: Egress, tls: bool) -> int:
        server_args: list[str] = []
        client_args = ["--proxy", egress.url]
        if tls:
            server_tls, client_tls = loopback_pki(tmp_path)
            server_args = [f"--tls-cert={server_tls.cert}", f"--tls-key={server_tls.key}"]
            client_args.append(f"--tls-ca={client_tls.ca}")
        if egress.credentials is not None:
            path = credentials_file(tmp_path, egress.credentials)
            client_args.append(f"--proxy-credentials-file={path}")
        start_server(f"redis=127.0.0.1:{redis_server.port}", port=server_port, args=server_args)
        local = free_port()
        client = start_client(
            f"--remote={HOST}:{server_port}",
            f"--expose=127.0.0.1:{local}=redis",
            *client_args,
            listens=[("127.0.0.1", local)],
        )
        assert "Traceback" not in client.stderr()
        return local

    return start


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
@pytest.mark.parametrize("kind", ["tinyproxy", "tinyproxy-basic-auth", "dante", "socks5-username"])
def test_redis_through_each_proxy(
    kind: str,
    tls: bool,
    server_port: int,
    tunnel_to_redis: Callable[..., int],
    start_tinyproxy: Callable[..., Egress],
    start_dante: Callable[[int], Egress],
    start_socks5: Callable[..., Egress],
) -> None:
    if kind == "tinyproxy":
        egress = start_tinyproxy(server_port)
    elif kind == "tinyproxy-basic-auth":
        egress = start_tinyproxy(server_port, ("alice", "s3cret-pass"))
    elif kind == "dante":
        egress = start_dante(server_port)
    else:
        egress = start_socks5("alice:s3cret-pass")
    local = tunnel_to_redis(egress, tls)
    for _ in range(3):  # each its own consumer connection, its own stream
        assert redis_ping(local) == "PONG"
    set_get = run_program(["redis-cli", "-p", str(local), "SET", "k", "through the proxy"])
    assert set_get.stdout.strip() == "OK"
    got = run_program(["redis-cli", "-p", str(local), "GET", "k"]).stdout.strip()
    assert got == "through the proxy"
    # The proxy carried the tunnel: each logs the target it was asked for.
    seen = {
        "tinyproxy": f"CONNECT 127.0.0.1:{server_port} ",
        "tinyproxy-basic-auth": f"CONNECT 127.0.0.1:{server_port} ",
        "dante": f" 127.0.0.1.{server_port}\n",  # "pass(1): tcp/connect [: ... -> FROM TO"
        "socks5-username": f"request 1 127.0.0.1 {server_port}",
    }
    process = egress.process
    assert seen[kind] in process.stderr() + process.stdout()


def client_log_says(
    start_client: Callable[..., Started],
    server_port: int,
    *args: str,
    env: dict[str, str] | None = None,
) -> Started:
    """A client that will not get its tunnel up: its log says why."""
    argv = [f"--remote={HOST}:{server_port}", "--connect-timeout=1", *args]
    return start_client(*argv, env=env, wait_tunnel=False)


def test_tinyproxy_wants_credentials_and_refuses_wrong_ones(
    start_tinyproxy: Callable[..., Egress],
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    tmp_path: Path,
) -> None:
    server = start_server("redis=127.0.0.1:6379")
    egress = start_tinyproxy(server.port, ("alice", "s3cret-pass"))
    client = client_log_says(start_client, server.port, "--proxy", egress.url)
    line = client.wait_for_stderr(r"WARNING .*retrying").group(0)
    assert (
        "the proxy wants credentials (407 Proxy Authentication Required; it offers Basic)" in line
    )
    assert "put USER:PASSWORD in a file and give --proxy-credentials-file FILE" in line
    wrong = credentials_file(tmp_path, "alice:wrong-pass")
    client = client_log_says(start_client, server.port, "--proxy", egress.url,
                             f"--proxy-credentials-file={wrong}")  # fmt: skip
    line = client.wait_for_stderr(r"WARNING .*retrying").group(0)
    assert "the proxy refused the credentials (401 Unauthorized); check the credentials" in line


def test_tinyproxy_forbids_a_port_it_does_not_allow(
    start_tinyproxy: Callable[..., Egress],
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
) -> None:
    server = start_server("redis=127.0.0.1:6379")
    egress = start_tinyproxy(server.port + 1)
    client = client_log_says(start_client, server.port, "--proxy", egress.url)
    line = client.wait_for_stderr(r"WARNING .*retrying").group(0)
    assert "the proxy does not allow it (403 Access violation)" in line
    assert "tinyproxy: ConnectPort" in line


def test_dante_refusal_is_named_by_its_reply_code(
    start_dante: Callable[[int], Egress],
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
) -> None:
    server = start_server("redis=127.0.0.1:6379")
    egress = start_dante(server.port + 1)
    client = client_log_says(start_client, server.port, "--proxy", egress.url)
    line = client.wait_for_stderr(r"WARNING .*retrying").group(0)
    assert "the proxy refused it: connection not allowed by ruleset (SOCKS5 reply 2)" in line


@pytest.fixture
def silent_proxy() -> Iterator[int]:
    """A test-owned socket that accepts connections and says nothing, ever."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        accepted: list[socket.socket] = []
        stop = threading.Event()

        def accept() -> None:
            listener.settimeout(0.1)
            while not stop.is_set() and len(accepted) < 50:
                try:
                    accepted.append(listener.accept()[0])
                except TimeoutError:
                    continue

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        yield listener.getsockname()[1]
        stop.set()
        thread.join(5)
        for conn in accepted:
            conn.close()


@pytest.mark.parametrize("scheme", ["http", "socks5"])
def test_a_proxy_that_says_nothing_meets_the_connect_deadline(
    scheme: str, silent_proxy: int, start_client: Callable[..., Started]
) -> None:
    client = client_log_says(start_client, 7, "--proxy", f"{scheme}://127.0.0.1:{silent_proxy}")
    line = client.wait_for_stderr(r"WARNING .*retrying", timeout=5).group(0)
    assert "the proxy did not finish its handshake within 1s" in line
    assert "raise --connect-timeout" in line


def client_argv(*args: str) -> list[str]:
    return [*ambassador("client"), "--remote=127.0.0.1:1", "--expose=6379", *args]


NO_CREDENTIALS_FILE = "/nonexistent/creds"


@pytest.mark.parametrize(
    ("args", "fix"),
    [
        (
            ["--proxy", "http://alice:s3cret@proxy:3128"],
            "remove them and put USER:PASSWORD in a file given by --proxy-credentials-file",
        ),
        (["--proxy", "proxy:3128"], "write http://HOST:PORT or socks5://HOST:PORT"),
        (
            ["--proxy", "http://p:1", f"--proxy-credentials-file={NO_CREDENTIALS_FILE}"],
            "no such file; create it with one USER:PASSWORD line",
        ),
        (
            ["--proxy-credentials-file=/etc/hostname"],
            "--proxy-credentials-file needs --proxy or --proxy-from-env",
        ),
        (["--proxy", "http://p:1", "--proxy-from-env"], "give one"),
    ],
)
def test_proxy_mistakes_are_one_line(args: list[str], fix: str) -> None:
    line = assert_one_line_error(run_program(client_argv(*args)), "ambassador-client", fix)
    assert "s3cret" not in line


def test_credentials_in_https_proxy_are_refused_naming_the_variable() -> None:
    result = run_program(client_argv("--proxy-from-env"), env={"HTTPS_PROXY": "http://u:pw@p:1"})
    assert_one_line_error(result, "ambassador-client", "environment variable HTTPS_PROXY")


def test_a_credentials_file_others_may_read_is_warned_about(
    start_client: Callable[..., Started], tmp_path: Path
) -> None:
    path = credentials_file(tmp_path, "alice:s3cret-pass", 0o644)
    client = client_log_says(start_client, 7, "--proxy=http://127.0.0.1:1",
                             f"--proxy-credentials-file={path}")  # fmt: skip
    line = client.wait_for_stderr(r"WARNING .*can be read by other users.*").group(0)
    assert f"proxy credentials file {path} can be read by other users; chmod 600 {path}" in line
    assert "s3cret" not in client.stderr()


def test_proxy_from_env_takes_https_proxy_and_honours_no_proxy(
    silent_proxy: int, start_client: Callable[..., Started]
) -> None:
    env = {"HTTPS_PROXY": f"http://127.0.0.1:{silent_proxy}"}
    client = client_log_says(start_client, 7, "--proxy-from-env", env=env)
    client.wait_for_stderr(f"through proxy http://127.0.0.1:{silent_proxy}")
    env["NO_PROXY"] = "localhost,127.0.0.0/8"
    client = client_log_says(start_client, 7, "--proxy-from-env", env=env)
    line = client.wait_for_stderr(r"WARNING .*retrying").group(0)
    assert "cannot reach 127.0.0.1:7: connection refused" in line
