"""The tunnel inside a WebSocket, through real HTTP reverse proxies.

redis-cli talks to redis-server through client, proxy and server:

* nginx (``proxy_http_version 1.1`` and the Upgrade/Connection headers) and HAProxy in HTTP
  mode carry plaintext ``ws://`` with a token; a wrong path and a route that drops the
  Upgrade headers each give the client one line saying so;
* HAProxy in TCP mode passes ``wss://`` through to the server, which terminates TLS;
* mutual TLS over ``wss://`` with no proxy, where a client without a certificate is refused;
* an egress HTTP CONNECT proxy (tinyproxy) carries ``ws://`` out;
* hostile connections to a WebSocket listener each cost one line while a tunnel keeps working.

Every proxy listens on a loopback port the test picked and is stopped by its pid.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.environment import missing
from tests.integration.support import (
    AmbassadorServer,
    Processes,
    Redis,
    Started,
    clean_environ,
    redis_cli,
)
from tests.integration.test_egress_proxy import Egress, start_tinyproxy
from tests.pki import HOST, loopback_pki

pytestmark = pytest.mark.integration

NGINX = "/usr/sbin/nginx"
HAPROXY = "/usr/sbin/haproxy"
PATH = "/ambassador"
TOKEN = "alice:" + "s3cret" * 6
FreePort = Callable[..., int]
WaitForPort = Callable[..., None]

__all__ = ["start_tinyproxy"]  # a fixture of this module too


def nginx(
    processes: Processes, tmp_path: Path, free_port: FreePort, wait_for_port: WaitForPort,
    upstream: int,
) -> int:  # fmt: skip
    """nginx proxying PATH (with the upgrade) to ``upstream``; its port."""
    if not Path(NGINX).exists():
        missing("nginx (Debian package nginx-light)")
    port = free_port()
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    user = "user root;\n" if os.geteuid() == 0 else ""
    temps = "".join(
        f"  {kind}_temp_path {prefix}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (prefix / "nginx.conf").write_text(
        f"{user}worker_processes 1;\nevents {{ worker_connections 64; }}\n"
        f"http {{\n  access_log off;\n{temps}"
        f"  server {{\n    listen 127.0.0.1:{port};\n"
        f"    location = {PATH} {{\n      proxy_pass http://127.0.0.1:{upstream};\n"
        "      proxy_http_version 1.1;\n"
        "      proxy_set_header Upgrade $http_upgrade;\n"
        '      proxy_set_header Connection "upgrade";\n'
        "      proxy_read_timeout 60s;\n    }\n"
        # A route that forgets the upgrade headers, as a misconfigured ingress does.
        f"    location = /no-upgrade {{\n      proxy_pass http://127.0.0.1:{upstream}{PATH};\n"
        "      proxy_http_version 1.1;\n    }\n"
        "    location / { return 404; }\n  }\n}\n"
    )
    globals_ = f"daemon off; pid {prefix}/nginx.pid; error_log stderr;"
    process = processes.start(
        "nginx", [NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", globals_]
    )
    wait_for_port("127.0.0.1", port, alive=process.alive)
    return port


def haproxy(
    processes: Processes, tmp_path: Path, free_port: FreePort, wait_for_port: WaitForPort,
    upstream: int, mode: str,
) -> int:  # fmt: skip
    """HAProxy in ``mode`` (http: it sees the upgrade; tcp: TLS passes through); its port."""
    if not Path(HAPROXY).exists():
        missing("haproxy (Debian package haproxy)")
    port = free_port()
    config = tmp_path / f"haproxy-{mode}.cfg"
    config.write_text(
        f"global\n  log stderr format raw local0 info\n"
        f"defaults\n  mode {mode}\n  log global\n"
        "  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n  timeout tunnel 1h\n"
        f"frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n"
        f"backend be\n  server ambassador 127.0.0.1:{upstream}\n"
    )
    process = processes.start("haproxy", [HAPROXY, "-db", "-f", str(config)])
    wait_for_port("127.0.0.1", port, alive=process.alive)
    return port


def token_args(tmp_path: Path) -> list[str]:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return ["--token-file", str(path)]


def exposing(
    start_client: Callable[..., Started], free_port: FreePort, remote: str, *args: str
) -> tuple[int, Started]:
    port = free_port()
    client = start_client(
        f"--remote={remote}", f"--expose=127.0.0.1:{port}=redis", *args,
        listens=[("127.0.0.1", port)],
    )  # fmt: skip
    return port, client


def assert_redis_works(port: int) -> None:
    assert redis_cli(port, "PING") == "PONG"
    assert redis_cli(port, "SET", "through", "websocket") == "OK"
    assert redis_cli(port, "GET", "through") == "websocket"


def test_plaintext_ws_through_nginx_with_a_token(
    tmp_path: Path,
    processes: Processes,
    redis_server: Redis,
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    free_port: FreePort,
    wait_for_port: WaitForPort,
) -> None:
    tokens = token_args(tmp_path)
    server = start_server(
        f"redis=127.0.0.1:{redis_server.port}", args=["--websocket-path", PATH, *tokens]
    )
    front = nginx(processes, tmp_path, free_port, wait_for_port, server.port)
    port, client = exposing(start_client, free_port, f"ws://127.0.0.1:{front}{PATH}", *tokens)
    assert_redis_works(port)
    server.process.wait_for_stderr(r"session up with 127\.0\.0\.1:\d+ \(alice\) as alice")
    assert "listening on" in server.process.stderr()
    assert "inside a WebSocket at /ambassador" in server.process.stderr()

    # A wrong path stops at nginx; a route without the upgrade headers reaches the server as
    # plain HTTP. Each is one line on the client, who keeps retrying.
    wrong = start_client(
        f"--remote=ws://127.0.0.1:{front}/elsewhere", f"--expose=127.0.0.1:{free_port()}=1",
        *tokens, wait_tunnel=False,
    )  # fmt: skip
    line = wrong.wait_for_stderr(r"WARNING .*retrying").group(0)
    assert line.endswith(
        f"WebSocket upgrade with ws://127.0.0.1:{front}/elsewhere failed: answered HTTP 404 "
        "Not Found instead of upgrading to WebSocket: nothing serves WebSockets at this path: "
        "check it against the ingress's routes and the server's --websocket-path; retrying"
    ), line
    dropped = start_client(
        f"--remote=ws://127.0.0.1:{front}/no-upgrade", f"--expose=127.0.0.1:{free_port()}=1",
        *tokens, wait_tunnel=False,
    )  # fmt: skip
    line = dropped.wait_for_stderr(r"WARNING .*retrying").group(0)
    assert "answered HTTP 426 Upgrade Required instead of upgrading to WebSocket: the " in line
    assert "proxy_set_header Upgrade $http_upgrade" in line
    server.process.wait_for_stderr(
        r"refused connection from 127\.0\.0\.1:\d+: an HTTP request without a WebSocket upgrade"
    )
    assert_redis_works(port)  # the tunnel was never disturbed
    assert "Traceback" not in server.process.stderr() + client.stderr()


def test_plaintext_ws_through_haproxy_in_http_mode(
    tmp_path: Path,
    processes: Processes,
    redis_server: Redis,
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    free_port: FreePort,
    wait_for_port: WaitForPort,
) -> None:
    tokens = token_args(tmp_path)
    server = start_server(
        f"redis=127.0.0.1:{redis_server.port}", args=["--websocket-path", PATH, *tokens]
    )
    front = haproxy(processes, tmp_path, free_port, wait_for_port, server.port, "http")
    port, _ = exposing(start_client, free_port, f"ws://127.0.0.1:{front}{PATH}", *tokens)
    assert_redis_works(port)
    # A value bigger than one WebSocket message crosses whole.
    assert redis_cli(port, "SETRANGE", "big", "699999", "v") == "700000"
    assert len(redis_cli(port, "GET", "big")) == 700_000


def test_wss_through_a_tcp_passthrough_proxy_with_a_bound_token(
    tmp_path: Path,
    processes: Processes,
    redis_server: Redis,
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    free_port: FreePort,
    wait_for_port: WaitForPort,
) -> None:
    tls, client_tls = loopback_pki(tmp_path)
    tokens = token_args(tmp_path)
    server = start_server(
        f"redis=127.0.0.1:{redis_server.port}",
        args=["--websocket-path", PATH, f"--tls-cert={tls.cert}", f"--tls-key={tls.key}",
              *tokens],
    )  # fmt: skip
    front = haproxy(processes, tmp_path, free_port, wait_for_port, server.port, "tcp")
    port, _ = exposing(
        start_client, free_port, f"wss://{HOST}:{front}{PATH}", f"--tls-ca={client_tls.ca}",
        *tokens,
    )  # fmt: skip
    assert_redis_works(port)
    server.process.wait_for_stderr(r"session up with .* as alice")
    # The same server refuses plaintext ws at once, in one line.
    plain = start_client(
        f"--remote=ws://{HOST}:{server.port}{PATH}", f"--expose=127.0.0.1:{free_port()}=1",
        wait_tunnel=False,
    )  # fmt: skip
    plain.wait_for_stderr(r"WARNING .*retrying")
    assert "Traceback" not in server.process.stderr()


def certs(tmp_path: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client 'alice', by the certs commands."""
    env = clean_environ()
    for args in (["init", "pki", "--san", HOST], ["client", "alice", "--dir", "pki"]):
        subprocess.run(
            [sys.executable, "-m", "server", "certs", *args],
            cwd=tmp_path, env=env, check=True, capture_output=True, timeout=30,
        )  # fmt: skip
    return tmp_path / "pki"


def test_mutual_tls_over_wss_directly(
    tmp_path: Path,
    redis_server: Redis,
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    free_port: FreePort,
) -> None:
    pki = certs(tmp_path)
    server = start_server(
        f"redis=127.0.0.1:{redis_server.port}",
        args=["--websocket-path", PATH, f"--tls-cert={pki / 'server.pem'}",
              f"--tls-key={pki / 'server-key.pem'}", f"--tls-ca={pki / 'ca.pem'}"],
    )  # fmt: skip
    remote = f"wss://{HOST}:{server.port}{PATH}"
    port, _ = exposing(
        start_client, free_port, remote, f"--tls-ca={pki / 'ca.pem'}",
        f"--tls-cert={pki / 'alice.pem'}", f"--tls-key={pki / 'alice-key.pem'}",
    )  # fmt: skip
    assert_redis_works(port)
    server.process.wait_for_stderr(r"session up with .* as alice")
    stranger = start_client(
        f"--remote={remote}", f"--tls-ca={pki / 'ca.pem'}", f"--expose=127.0.0.1:{free_port()}=1",
        wait_tunnel=False,
    )  # fmt: skip
    stranger.wait_for_stderr(r"WARNING .*retrying")
    server.process.wait_for_stderr(r"refused connection from .*certificate")
    assert_redis_works(port)


def test_ws_through_an_egress_connect_proxy(
    redis_server: Redis,
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    start_tinyproxy: Callable[..., Egress],
    free_port: FreePort,
) -> None:
    server = start_server(f"redis=127.0.0.1:{redis_server.port}", args=["--websocket-path", PATH])
    egress = start_tinyproxy(server.port)
    port, _ = exposing(
        start_client, free_port, f"ws://127.0.0.1:{server.port}{PATH}", f"--proxy={egress.url}"
    )
    assert_redis_works(port)
    # The proxy carried it: it logs the target it was asked for (the tunnel port).
    assert f"CONNECT 127.0.0.1:{server.port} " in egress.process.stdout() + egress.process.stderr()


def test_hostile_connections_cost_one_line_each_and_the_tunnel_carries_on(
    redis_server: Redis,
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    free_port: FreePort,
) -> None:
    server = start_server(
        f"redis=127.0.0.1:{redis_server.port}",
        args=["--websocket-path", PATH, "--handshake-timeout", "1"],
    )
    port, client = exposing(start_client, free_port, f"ws://127.0.0.1:{server.port}{PATH}")
    assert_redis_works(port)
    upgrade = (
        f"GET {PATH} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: ambassador\r\n\r\n"
    ).encode()
    masked = b"\x00\x00\x00\x00"  # a zero mask: the payload is sent as is
    sends = {
        "text": upgrade + b"\x81\x85" + masked + b"hello",
        "too big": upgrade + b"\x82\xff" + (1 << 40).to_bytes(8, "big") + masked,
        "wrong path": upgrade.replace(PATH.encode(), b"/x", 1),
        "garbage": b"\x00\x01\x02 not http\r\n\r\n",
        "slow": b"GET " + PATH.encode(),
    }
    for data in sends.values():
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(data)
            sock.settimeout(5)
            while sock.recv(65536):  # the server closes each one
                pass
    log = server.process.stderr()
    assert "'/x', but this listener's --websocket-path is /ambassador" in log
    assert "not an HTTP request; this listener takes WebSocket upgrades only" in log
    assert "no WebSocket upgrade within 1s" in log
    # The two that upgraded end before their hello, each saying why.
    assert "the peer sent a text message; the tunnel takes binary messages only" in log
    assert "the peer sent a WebSocket message over 524288 bytes (closed with 1009)" in log
    assert_redis_works(port)
    assert client.alive() and "tunnel to" not in client.stderr().split("tunnel up to")[-1]
    assert "no hello within" not in log  # the slow one is said once, by the upgrade's deadline
    assert "Traceback" not in log
