"""Reverse mode end to end: ambassador-server --connect dials ambassador-client --listen, and
redis-cli on the client's host reaches redis-server on the server's, in plaintext, TLS, mutual
TLS and with tokens; hosts are named by identity; several --connect targets fail over."""

from __future__ import annotations

import contextlib
import os
import re
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.integration.conftest import FreePort
from tests.integration.support import Processes, Redis, Started, ambassador, redis_cli
from tests.pki import loopback_pki
from tests.security import attack
from tunnel.security.certs import issue_client_cert, make_ca
from tunnel.security.pemfiles import cert_pem, key_pem, write_private, write_public

pytestmark = pytest.mark.timeout(90)


def start_listening_client(
    processes: Processes, listen: int, *args: str, name: str = "ambassador-client"
) -> Started:
    argv = [*ambassador("client"), "--listen", f"127.0.0.1:{listen}", *args]
    process = processes.start(name, argv)
    process.wait_for_stderr(r"listening for hosts on ")
    return process


def start_dialing_server(
    processes: Processes, redis: Redis, *args: str, name: str = "ambassador-server"
) -> Started:
    argv = [*ambassador("server"), "--link", f"redis=127.0.0.1:{redis.port}", *args]
    return processes.start(name, argv)


def pki(tmp_path: Path, *hosts: str) -> dict[str, str]:
    """A CA, the listening client's server certificate for 127.0.0.1, and a client
    certificate per offering host (its identity), all from the project's own issuing code."""
    server, client = loopback_pki(tmp_path)
    files = {"ca": str(client.ca), "cert": server.cert, "key": server.key}
    now = datetime.now(UTC)
    ca_key, ca_cert = make_ca("hosts CA", 1, now=now)
    write_public(tmp_path / "hosts-ca.pem", cert_pem(ca_cert))
    files["hosts_ca"] = str(tmp_path / "hosts-ca.pem")
    for host in hosts:
        key, cert = issue_client_cert(ca_key, ca_cert, host, 1, now=now)
        write_public(tmp_path / f"{host}.pem", cert_pem(cert))
        write_private(tmp_path / f"{host}-key.pem", key_pem(key))
        files[host] = str(tmp_path / f"{host}.pem")
        files[f"{host}_key"] = str(tmp_path / f"{host}-key.pem")
    return files


def token_file(path: Path, *lines: str) -> str:
    path.write_text("".join(f"{line}\n" for line in lines))
    os.chmod(path, 0o600)
    return str(path)


def test_plaintext_on_loopback_redis_through_a_dialed_tunnel(
    processes: Processes, redis_server: Redis, free_port: FreePort
) -> None:
    listen, local = free_port(), free_port()
    client = start_listening_client(processes, listen, f"--expose=127.0.0.1:{local}=redis")
    server = start_dialing_server(processes, redis_server, f"--connect=127.0.0.1:{listen}")
    client.wait_for_stderr(r"tunnel up from 127\.0\.0\.1:\d+ as host 'anonymous'")
    assert redis_cli(local, "SET", "k", "reverse") == "OK"
    assert redis_cli(local, "GET", "k") == "reverse"
    server.wait_for_stderr(r"session up with 127\.0\.0\.1:\d+ \(dialed\)")


def test_mutual_tls_names_the_host_by_its_certificate(
    processes: Processes, redis_server: Redis, free_port: FreePort, tmp_path: Path
) -> None:
    """The dialing server verifies the listener's certificate, the listener requires and
    verifies the host's; the host's service is reached as edge1/redis."""
    files = pki(tmp_path, "edge1")
    listen, local, plain = free_port(), free_port(), free_port()
    client = start_listening_client(
        processes, listen, f"--tls-cert={files['cert']}", f"--tls-key={files['key']}",
        f"--tls-ca={files['hosts_ca']}", f"--expose=127.0.0.1:{local}=edge1/redis",
        f"--expose=127.0.0.1:{plain}=edge2/redis",
    )  # fmt: skip
    start_dialing_server(
        processes, redis_server, f"--connect=127.0.0.1:{listen}", f"--tls-ca={files['ca']}",
        f"--tls-cert={files['edge1']}", f"--tls-key={files['edge1_key']}",
    )  # fmt: skip
    client.wait_for_stderr(r"tunnel up from \S+ as host 'edge1' \(.*\), protocol 2")
    assert redis_cli(local, "PING") == "PONG"
    # A host that is not connected: the consumer is reset at once, and the line says why.
    assert "reset" in redis_cli(plain, "PING").lower()
    client.wait_for_stderr(r"connection to 'edge2/redis' dropped: .*host 'edge2' is not connected")


def test_a_listener_with_tls_refuses_a_host_without_a_certificate_it_trusts(
    processes: Processes, redis_server: Redis, free_port: FreePort, tmp_path: Path
) -> None:
    files = pki(tmp_path)
    listen = free_port()
    tls = [f"--tls-cert={files['cert']}", f"--tls-key={files['key']}"]
    start_listening_client(processes, listen, *tls, f"--tls-ca={files['hosts_ca']}")
    server = start_dialing_server(processes, redis_server, f"--connect=127.0.0.1:{listen}",
                                  f"--tls-ca={files['ca']}")  # fmt: skip
    found = server.wait_for_stderr(
        r"127\.0\.0\.1:\d+ ended the session during the hello "
        r"\(no client certificate was presented.*; retrying"
    )
    assert server.stderr().count("client certificate") == 1, "one line per target and reason"
    assert found


def test_tokens_name_each_host_and_bind_to_the_listeners_certificate(
    processes: Processes, redis_server: Redis, free_port: FreePort, tmp_path: Path
) -> None:
    files = pki(tmp_path)
    tokens = token_file(tmp_path / "hosts.tokens", "edge1:" + "a" * 32, "edge2:" + "b" * 32)
    own = token_file(tmp_path / "edge1.token", "edge1:" + "a" * 32)
    wrong = token_file(tmp_path / "edge3.token", "edge3:" + "c" * 32)
    listen, local = free_port(), free_port()
    client = start_listening_client(
        processes, listen, f"--tls-cert={files['cert']}", f"--tls-key={files['key']}",
        f"--token-file={tokens}", f"--expose=127.0.0.1:{local}=edge1/redis",
    )  # fmt: skip
    start_dialing_server(processes, redis_server, f"--connect=127.0.0.1:{listen}",
                         f"--tls-ca={files['ca']}", f"--token-file={own}")  # fmt: skip
    client.wait_for_stderr(r"tunnel up from \S+ as host 'edge1'")
    assert redis_cli(local, "PING") == "PONG"
    stranger = start_dialing_server(
        processes, redis_server, f"--connect=127.0.0.1:{listen}", f"--tls-ca={files['ca']}",
        f"--token-file={wrong}", name="unknown-host",
    )  # fmt: skip
    client.wait_for_stderr(r"refused host at \S+: it proves the token 'edge3', which "
                           r"--token-file does not hold")  # fmt: skip
    stranger.wait_for_stderr(r"ended the session during the hello")


def test_failover_between_two_listening_clients(
    processes: Processes, redis_server: Redis, free_port: FreePort
) -> None:
    first, second = free_port(), free_port()
    local_a, local_b = free_port(), free_port()
    client_a = start_listening_client(processes, first, f"--expose=127.0.0.1:{local_a}=redis",
                                      name="client-a")  # fmt: skip
    client_b = start_listening_client(processes, second, f"--expose=127.0.0.1:{local_b}=redis",
                                      name="client-b")  # fmt: skip
    start_dialing_server(processes, redis_server, f"--connect=127.0.0.1:{first}",
                         f"--connect=127.0.0.1:{second}")  # fmt: skip
    client_a.wait_for_stderr(r"tunnel up from ")
    assert redis_cli(local_a, "PING") == "PONG"
    client_a.kill()
    client_b.wait_for_stderr(r"tunnel up from ", timeout=20)
    assert redis_cli(local_b, "PING") == "PONG"


def test_a_second_session_of_one_identity_replaces_the_first_and_a_fight_is_named(
    processes: Processes, redis_server: Redis, free_port: FreePort, tmp_path: Path
) -> None:
    tokens = token_file(tmp_path / "hosts.tokens", "edge1:" + "a" * 32)
    listen, local = free_port(), free_port()
    client = start_listening_client(processes, listen, f"--token-file={tokens}",
                                    f"--expose=127.0.0.1:{local}=edge1/redis")  # fmt: skip
    for name in ("site-a", "site-b"):
        start_dialing_server(processes, redis_server, f"--connect=127.0.0.1:{listen}",
                             f"--token-file={tokens}", name=name)  # fmt: skip
    client.wait_for_stderr(r"host 'edge1' connected again from \S+ while its session from "
                           r"\S+ was up; the new session replaces the old one")  # fmt: skip
    client.wait_for_stderr(r"two live hosts seem to share this identity; give each its own",
                           timeout=60)  # fmt: skip
    assert redis_cli(local, "PING") in ("PONG", "Error: Connection reset by peer")


@pytest.mark.parametrize(
    ("role", "args", "line"),
    [
        ("client", ["--listen", "127.0.0.1:1", "--remote", "127.0.0.1:2"],
         "--listen waits for servers to dial in and --remote dials a server: give one of them"),
        ("client", ["--listen", "0.0.0.0:7700"],
         "--listen 0.0.0.0:7700 without TLS would let anyone who reaches it offer services"),
        ("server", ["--link", "r=127.0.0.1:1", "--connect", "192.0.2.1:7700"],
         "--connect 192.0.2.1:7700 without TLS would offer this host's services"),
        ("client", ["--remote", "127.0.0.1:1", "--allow-from", "10.0.0.0/8"],
         "--allow-from applies to --listen (the servers that dial this client); a client that "
         "dials a --remote has no tunnel listener: add --listen or drop it"),
        ("client", ["--listen", "0.0.0.0:7700", "--insecure-plaintext",
                    "--accept-proxy-protocol"],
         "--accept-proxy-protocol on 0.0.0.0:7700, beyond loopback, needs --accept-proxy-from "
         "CIDR naming the load balancers' addresses"),
        ("client", ["--remote", "127.0.0.1:1", "--accept-proxy-protocol"],
         "--accept-proxy-protocol applies to --listen"),
    ],
    # The other refusals of reverse mode: tests/integration/test_cli_errors.py.
    ids=["listen-and-remote", "client-plaintext", "server-plaintext",
         "allow-from-without-listen", "proxy-beyond-loopback", "proxy-without-listen"],
)  # fmt: skip
def test_bad_reverse_configurations_are_one_line_naming_the_fix(
    role: str, args: list[str], line: str
) -> None:
    import subprocess

    from tests.integration.support import clean_environ

    result = subprocess.run(
        [*ambassador(role), *args], capture_output=True, text=True, timeout=30,
        env=clean_environ(),
    )  # fmt: skip
    assert result.returncode != 0
    assert line in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3, result.stderr


def test_plaintext_beyond_loopback_is_allowed_with_the_explicit_flag(
    processes: Processes, free_port: FreePort
) -> None:
    port = free_port("0.0.0.0")
    process = processes.start("ambassador-client", [*ambassador("client"), "--listen",
                              f"0.0.0.0:{port}", "--insecure-plaintext"])  # fmt: skip
    process.wait_for_stderr(r"listening for hosts on 0\.0\.0\.0:\d+ \(plaintext\)")


def rejected(metrics_port: int) -> dict[str, float]:
    """ambassador_connections_rejected_total by reason, from /metrics."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    found = re.findall(r'ambassador_connections_rejected_total\{reason="(\w+)"\} (\S+)', text)
    return {reason: float(value) for reason, value in found}


def test_the_listening_client_bounds_connections_that_have_not_said_hello(
    processes: Processes, free_port: FreePort
) -> None:
    """--max-unauthenticated and its per-address bound hold on --listen as on a server's
    port: a connection over either is closed as soon as it is accepted, and counted."""
    listen, metrics_port = free_port(), free_port()
    client = start_listening_client(
        processes, listen, "--max-unauthenticated=3", "--max-unauthenticated-per-address=2",
        f"--metrics-listen=127.0.0.1:{metrics_port}",
    )  # fmt: skip
    # Two from 127.0.0.1 are held (each gets the client's hello and never answers); a third
    # from there is over the per-address bound. One from 127.0.0.2 fills the total, and a
    # second from there is over it.
    from_one, one_closed = attack.open_half_hellos(listen, 3, b"")
    other = [attack.connect(listen, "127.0.0.2") for _ in range(2)]
    time.sleep(0.5)  # closed at once: well within the 10 s handshake timeout
    from_other = [sock for sock in other if attack.is_open(sock)]
    try:
        assert (len(from_one), one_closed) == (2, 1)
        assert len(from_other) == 1
        assert rejected(metrics_port) == {
            "max_unauthenticated_per_address": 1,
            "max_unauthenticated": 1,
        }
        client.wait_for_stderr(
            r"refused connection from 127\.0\.0\.1:\d+: 2 connections that have not "
            r"authenticated yet \(--max-unauthenticated-per-address\)"
        )
    finally:
        attack.close_all([*from_one, *other])


@pytest.mark.parametrize(("allow", "admitted"), [("127.0.0.1", True), ("10.0.0.0/8", False)])
def test_allow_from_on_the_listening_client_admits_or_turns_away_the_dialing_server(
    processes: Processes, redis_server: Redis, free_port: FreePort, allow: str, admitted: bool
) -> None:
    """--allow-from holds on the client's --listen as on a server's: a dialing server from a
    listed address gets its session (redis-cli through the pair); one from elsewhere is closed
    at once, counted, logged once, and told why, which it says once and keeps retrying."""
    listen, local, metrics_port = free_port(), free_port(), free_port()
    client = start_listening_client(
        processes, listen, f"--allow-from={allow}", f"--expose=127.0.0.1:{local}=redis",
        f"--metrics-listen=127.0.0.1:{metrics_port}",
    )  # fmt: skip
    server = start_dialing_server(processes, redis_server, f"--connect=127.0.0.1:{listen}")
    if admitted:
        client.wait_for_stderr(r"tunnel up from 127\.0\.0\.1:\d+ as host 'anonymous'")
        assert redis_cli(local, "SET", "k", "allowed") == "OK"
        assert redis_cli(local, "GET", "k") == "allowed"
        assert "allow_from" not in rejected(metrics_port)
        return
    client.wait_for_stderr(
        r"refused connection from 127\.0\.0\.1:\d+: not in --allow-from \(10\.0\.0\.0/8\); "
        r"add its address there if it should connect"
    )
    server.wait_for_stderr(
        rf"127\.0\.0\.1:{listen} refused this server: this client takes tunnel connections "
        r"only from the addresses its --allow-from lists, and it sees this server as "
        r"127\.0\.0\.1; retrying"
    )
    deadline = time.monotonic() + 10
    while rejected(metrics_port).get("allow_from", 0) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)  # the server retries, with its backoff
    assert rejected(metrics_port).get("allow_from", 0) >= 3
    assert server.popen.poll() is None, "the refused server keeps running"
    assert server.stderr().count("refused this server") == 1, "one line per target and reason"
    assert client.stderr().count("not in --allow-from") == 1, "one line per source per 10 s"
    assert "Traceback" not in server.stderr() + client.stderr()
    assert "tunnel up" not in client.stderr()


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
@pytest.mark.parametrize("header", [b"PROXY TCP4 192.0.2.1 127.0.0.1 5555 7700\r\n",
                                    b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + bytes(12)],
                         ids=["v1", "v2"])  # fmt: skip
def test_a_proxy_header_to_a_listening_client_without_the_flag_is_one_line_naming_it(
    processes: Processes, free_port: FreePort, tmp_path: Path, header: bytes, tls: bool
) -> None:
    """A load balancer in front of --listen that sends a PROXY header the client was not told
    to read: one line naming --accept-proxy-protocol and a count, not a protocol or TLS error."""
    listen, metrics_port = free_port(), free_port()
    files = pki(tmp_path) if tls else {}
    args = [f"--tls-cert={files['cert']}", f"--tls-key={files['key']}"] if tls else []
    client = start_listening_client(
        processes, listen, f"--metrics-listen=127.0.0.1:{metrics_port}", *args
    )
    sock = attack.connect(listen, "127.0.0.1")
    try:
        sock.sendall(header)
        client.wait_for_stderr(
            r"refused connection from 127\.0\.0\.1:\d+: the connection starts with a PROXY "
            r"protocol header, but this listener does not accept one; add "
            r"--accept-proxy-protocol"
        )
        assert rejected(metrics_port).get("proxy_header_unexpected") == 1
        assert client.stderr().count("refused connection") == 1
    finally:
        attack.close_all([sock])


def test_each_side_checks_its_own_key_and_exports_its_certificate_expiry(
    processes: Processes, redis_server: Redis, free_port: FreePort, tmp_path: Path
) -> None:
    """The dialing server's own certificate is its client certificate: its key is checked
    for other readers and its expiry exported, as a listening server does with its own; the
    listening client checks its server key the same way."""
    files = pki(tmp_path, "edge1")
    os.chmod(files["edge1_key"], 0o644)
    os.chmod(files["key"], 0o644)
    listen, local, metrics_port = free_port(), free_port(), free_port()
    client = start_listening_client(
        processes, listen, f"--tls-cert={files['cert']}", f"--tls-key={files['key']}",
        f"--tls-ca={files['hosts_ca']}", f"--expose=127.0.0.1:{local}=edge1/redis",
    )  # fmt: skip
    client.wait_for_stderr(rf"TLS key {re.escape(files['key'])} can be read by other users")
    server = start_dialing_server(
        processes, redis_server, f"--connect=127.0.0.1:{listen}", f"--tls-ca={files['ca']}",
        f"--tls-cert={files['edge1']}", f"--tls-key={files['edge1_key']}",
        f"--metrics-listen=127.0.0.1:{metrics_port}",
    )  # fmt: skip
    server.wait_for_stderr(
        rf"TLS key {re.escape(files['edge1_key'])} can be read by other users; chmod 600"
    )
    client.wait_for_stderr(r"tunnel up from \S+ as host 'edge1'")
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    [days] = re.findall(
        r'^ambassador_certificate_expiry_days\{certificate="own",role="server"\} (\S+)$',
        text, re.MULTILINE,
    )  # fmt: skip
    assert 0 < float(days) <= 400, text


def test_a_hostile_listener_s_refusal_is_logged_escaped_and_cut_short(
    processes: Processes, redis_server: Redis, free_port: FreePort
) -> None:
    """Whatever listens where a server dials is a stranger until proven: its refusal text is
    shown escaped (no terminal escape reaches the log) and cut to a bounded length, and the
    server keeps dialing. (A larger one never gets that far: before the hello a frame is
    bounded at 16 KiB, and the session ends on it.)"""
    import socket
    import threading

    from tunnel.errors import Reason
    from tunnel.protocol.handshake import refusal_before_hello

    hostile = "\x1b[2J\x1b]0;owned\x07\nFAKE LOG LINE " + "A" * 10_000
    answer = refusal_before_hello(Reason.NOT_ALLOWED, hostile, listening_client=True)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.sendall(answer)
                conn.settimeout(1)
                with contextlib.suppress(OSError):
                    conn.recv(65536)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        port = listener.getsockname()[1]
        server = start_dialing_server(processes, redis_server, f"--connect=127.0.0.1:{port}")
        server.wait_for_stderr(rf"127\.0\.0\.1:{port} refused this server: ")
        time.sleep(0.5)
        log = server.stderr()
        [line] = [line for line in log.splitlines() if "refused this server" in line]
        assert "\x1b" not in log and "\x07" not in log
        assert "\\x1b[2J" in line and "FAKE LOG LINE" in line  # shown, escaped, on one line
        assert not any(row.startswith("FAKE LOG LINE") for row in log.splitlines())
        assert len(line) < 1000 and "chars)" in line
        assert server.popen.poll() is None, "the server keeps dialing"
    finally:
        stop.set()
        listener.close()
        thread.join(5)
