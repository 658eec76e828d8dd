"""Reverse mode end to end, feature by feature: what works with ``ambassador-client --remote``
works as well when ``ambassador-server --connect`` dials an ``ambassador-client --listen``.
Unix sockets on either end, PROXY protocol headers toward a backend, the client's
--expose-allow, reloads and drains of either side, dead peers found by keepalive, and the
dialing server's pooled health checks and warnings at start."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import stat
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_until_accepting
from tests.environment import missing
from tests.integration.conftest import FreePort
from tests.integration.haproxy import haproxy
from tests.integration.support import Processes, Redis, Started, ambassador, redis_cli
from tests.integration.test_reverse import start_listening_client
from tests.integration.unixsockets import Postgres, psql, redis_cli_s

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def start_dialer(processes: Processes, listen: int, *args: str,
                 name: str = "ambassador-server") -> Started:  # fmt: skip
    """An ambassador-server that dials the listening client on ``listen``."""
    return processes.start(name, [*ambassador("server"), f"--connect=127.0.0.1:{listen}", *args])


def host_up(client: Started) -> None:
    client.wait_for_stderr(r"tunnel up from 127\.0\.0\.1:\d+ as host ")


def test_unix_sockets_at_both_ends_of_a_dialed_tunnel(
    processes: Processes, postgres: Postgres, redis_server: Redis, free_port: FreePort,
    tmp_path: Path,
) -> None:  # fmt: skip
    """The dialing server reaches PostgreSQL on its unix socket only; the listening client
    exposes a unix socket of its own, with the mode asked for, to a redis on TCP."""
    listen, pg_port = free_port(), free_port()
    exposed = tmp_path / "redis.sock"
    local = tmp_path / "pg"
    local.mkdir()
    client = start_listening_client(
        processes, listen, f"--expose=unix:{exposed}=redis", "--expose-socket-mode=0660",
        f"--expose=unix:{local}/.s.PGSQL.5432=pg", f"--expose=127.0.0.1:{pg_port}=pg",
    )  # fmt: skip
    start_dialer(processes, listen, f"--link=pg=unix:{postgres.directory}/.s.PGSQL.5432",
                 f"--link=redis=127.0.0.1:{redis_server.port}")  # fmt: skip
    host_up(client)
    client.wait_for_stderr(rf"exposing '[^']*' on {re.escape(f'unix:{exposed}')}(?!\S)")
    assert stat.S_IMODE(os.lstat(exposed).st_mode) == 0o660
    assert redis_cli_s(exposed, "SET", "k", "unix, reversed") == "OK"
    assert redis_cli_s(exposed, "GET", "k") == "unix, reversed"
    # psql -h DIR uses DIR/.s.PGSQL.5432: unix to unix, then TCP to the same unix backend.
    assert psql("-h", str(local), "-p", "5432") == "through a unix socket"
    assert psql("-h", "127.0.0.1", "-p", str(pg_port)) == "through a unix socket"
    assert client.stop() == 0
    assert not exposed.exists(), "a clean stop removes the socket file"
    assert "waiting for it to dial again" not in client.stderr(), "no host is awaited any more"


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("consumer_host", ["127.0.0.1", "::1"])
def test_proxy_protocol_toward_a_backend_names_the_consumer_of_the_listening_client(
    processes: Processes, free_port: FreePort, tmp_path: Path, version: int, consumer_host: str
) -> None:
    """haproxy with accept-proxy behind the dialing server logs the address and port of the
    consumer that connected to the listening client's port, not the server's own."""
    if consumer_host == "::1" and not socket.has_ipv6:
        missing("no IPv6")
    with socket.socket() as sink:
        sink.bind(("127.0.0.1", 0))
        sink.listen()
        port, listen, local = free_port(), free_port(), free_port(consumer_host)
        proxy = haproxy(processes, tmp_path, f"bind 127.0.0.1:{port} accept-proxy",
                        f"server s1 127.0.0.1:{sink.getsockname()[1]}")  # fmt: skip
        wait_until_accepting("127.0.0.1", port)
        where = f"[{consumer_host}]" if ":" in consumer_host else consumer_host
        client = start_listening_client(processes, listen, f"--expose={where}:{local}=svc")
        start_dialer(processes, listen, f"--link=svc=127.0.0.1:{port}",
                     f"--proxy-protocol=svc=v{version}")  # fmt: skip
        host_up(client)
        family = socket.AF_INET6 if ":" in consumer_host else socket.AF_INET
        with socket.socket(family) as consumer:
            consumer.settimeout(5)
            consumer.connect((consumer_host, local))
            consumer.sendall(b"hello")
            source = consumer.getsockname()
            proxy.wait_for_stderr(rf"src={re.escape(source[0])}:{source[1]}\b")
    assert len(re.findall(r"src=", proxy.stderr())) == 1, "one connection, named once"


def consume(port: int, source: str, request: bytes = b"PING\r\n") -> bytes:
    """What a consumer bound to ``source`` reads back for ``request`` (b"" when closed, within
    5 s either way)."""
    try:
        # A refusal may reset the connection before connect() itself has returned.
        with socket.create_connection(("127.0.0.1", port), timeout=5,
                                      source_address=(source, 0)) as sock:  # fmt: skip
            sock.sendall(request)
            return sock.recv(4096)
    except (ConnectionResetError, BrokenPipeError):
        return b""


def scrape(metrics_port: int, pattern: str) -> list[tuple[str, ...]]:
    """The matches of ``pattern`` in the program's /metrics."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        return re.findall(pattern, response.read().decode())


def source_refusals(metrics_port: int) -> dict[str, float]:
    found = scrape(metrics_port, r"ambassador_stream_refusals_total\{([^}]*)\} (\S+)")
    counts = {}
    for labels, value in found:
        if 'reason="source_not_allowed"' in labels and 'role="client"' in labels:
            service = re.search(r'service="([^"]*)"', labels)
            assert service is not None
            counts[service.group(1)] = float(value)
    return counts


def test_expose_allow_on_the_listening_client(
    processes: Processes, redis_server: Redis, free_port: FreePort
) -> None:
    """A consumer from an allowed source reaches the dialing server's redis; one from another
    source is closed at once, counted and logged, and no stream is opened for it."""
    listen, plain, named, metrics_port, served = (free_port() for _ in range(5))
    client = start_listening_client(
        processes, listen, f"--expose=127.0.0.1:{plain}=redis",
        f"--expose=127.0.0.1:{named}=anonymous/redis", "--expose-allow=redis=127.0.0.2",
        "--expose-allow=anonymous/redis=127.0.0.2/32,::1",
        f"--metrics-listen=127.0.0.1:{metrics_port}",
    )  # fmt: skip
    start_dialer(processes, listen, f"--link=redis=127.0.0.1:{redis_server.port}",
                 f"--metrics-listen=127.0.0.1:{served}")  # fmt: skip
    host_up(client)
    for port in (plain, named):
        assert consume(port, "127.0.0.2") == b"+PONG\r\n"
        began = time.monotonic()
        assert consume(port, "127.0.0.3") == b""
        assert time.monotonic() - began < 2.0, "closed at once, not after a timeout"
    assert source_refusals(metrics_port) == {"redis": 1, "anonymous/redis": 1}
    client.wait_for_stderr(r"refused a connection to 'redis' from 127\.0\.0\.3:\d+: not in "
                           r"--expose-allow for it \(127\.0\.0\.2/32\)")  # fmt: skip
    # Two consumers served, two refused before any stream: the server saw two streams.
    streams = r'ambassador_streams_total\{role="server",service="redis"\} (\S+)'
    assert scrape(served, streams) == ["2.0"]


class RedisConnection:
    """One consumer connection kept open across a reload, speaking RESP by hand."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)

    def ask(self, *words: str) -> bytes:
        request = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
        self.sock.sendall(request.encode())
        return self.sock.recv(4096)

    def close(self) -> None:
        self.sock.close()


def refused_at_once(port: int) -> bool:
    """A consumer of ``port`` is closed without an answer within 2 s (b"" or a reset)."""
    began = time.monotonic()
    return consume(port, "127.0.0.1") == b"" and time.monotonic() - began < 2.0


def test_reloading_the_dialing_server_announces_new_links_and_keeps_the_session(
    processes: Processes, redis_server: Redis, free_port: FreePort, tmp_path: Path
) -> None:
    listen, redis_port, cache_port = free_port(), free_port(), free_port()
    client = start_listening_client(processes, listen, f"--expose=127.0.0.1:{redis_port}=redis",
                                    f"--expose=127.0.0.1:{cache_port}=cache")  # fmt: skip
    config = tmp_path / "server.toml"
    head = [f'connect = ["127.0.0.1:{listen}"]', "[links]"]
    redis_link = f'redis = "127.0.0.1:{redis_server.port}"'
    config.write_text("\n".join([*head, redis_link, ""]))
    server = processes.start("ambassador-server", [*ambassador("server"), f"--config={config}"])
    host_up(client)
    client.wait_for_stderr(r"the server does not offer 'cache'")
    assert refused_at_once(cache_port)
    held = RedisConnection(redis_port)
    try:
        assert held.ask("SET", "k", "before") == b"+OK\r\n"
        # A new link: announced to the listening client, reachable, nothing dropped.
        cache_link = f'cache = "127.0.0.1:{redis_server.port}"'
        config.write_text("\n".join([*head, redis_link, cache_link, ""]))
        server.popen.send_signal(signal.SIGHUP)
        server.wait_for_stderr(r"configuration reloaded: offering redis:\d+, cache:\d+ to "
                               r"1 session")  # fmt: skip
        client.wait_for_stderr(r"the server now offers 'cache'")
        assert consume(cache_port, "127.0.0.1") == b"+PONG\r\n"
        assert held.ask("GET", "k") == b"$6\r\nbefore\r\n", "the established connection"
        # A removed link: new streams to it are refused; the session stays.
        config.write_text("\n".join([*head, cache_link, ""]))
        server.popen.send_signal(signal.SIGHUP)
        server.wait_for_stderr(r"configuration reloaded: offering cache:\d+ to 1 session")
        client.wait_for_stderr(r"the server does not offer 'redis'")
        assert refused_at_once(redis_port)
        assert consume(cache_port, "127.0.0.1") == b"+PONG\r\n"
    finally:
        held.close()
    assert client.stderr().count("tunnel up from ") == 1, "no new session"
    assert server.stderr().count("session up with ") == 2, "one session (two lines say so)"
    assert server.stop() == 0
    assert "Traceback" not in server.stderr()


def test_reloading_the_listening_client_opens_and_closes_exposed_ports(
    processes: Processes, redis_server: Redis, free_port: FreePort, tmp_path: Path
) -> None:
    listen, first, second = free_port(), free_port(), free_port()
    config = tmp_path / "client.toml"
    head = f'listen = "127.0.0.1:{listen}"\n'
    config.write_text(head + f'expose = ["127.0.0.1:{first}=redis"]\n')
    client = processes.start("ambassador-client", [*ambassador("client"), f"--config={config}"])
    server = start_dialer(processes, listen, f"--link=redis=127.0.0.1:{redis_server.port}")
    host_up(client)
    held = RedisConnection(first)
    try:
        assert held.ask("PING") == b"+PONG\r\n"
        config.write_text(head + f'expose = ["127.0.0.1:{first}=redis", '
                          f'"127.0.0.1:{second}=redis"]\n')  # fmt: skip
        client.popen.send_signal(signal.SIGHUP)
        client.wait_for_stderr(rf"exposing 'redis' on 127\.0\.0\.1:{second}\b")
        client.wait_for_stderr(r"reloaded \(SIGHUP\)")
        assert consume(second, "127.0.0.1") == b"+PONG\r\n"
        config.write_text(head + f'expose = ["127.0.0.1:{second}=redis"]\n')
        client.popen.send_signal(signal.SIGHUP)
        client.wait_for_stderr(rf"no longer exposing 'redis' on 127\.0\.0\.1:{first}\b")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", first), timeout=2).close()
        assert consume(second, "127.0.0.1") == b"+PONG\r\n"
        assert held.ask("PING") == b"+PONG\r\n", "a connection accepted before carries on"
    finally:
        held.close()
    assert client.stderr().count("tunnel up from ") == 1, "no new session"
    assert "session with" not in server.stderr(), "the dialed session never ended"


def test_a_dialing_server_drains_a_blocked_redis_call_then_exits(
    processes: Processes, redis_server: Redis, free_port: FreePort
) -> None:
    """SIGTERM with a BLPOP in flight: the call is answered when its list gets an item, the
    server then exits 0 well within --drain-timeout; a newcomer meanwhile is refused at once."""
    listen, local = free_port(), free_port()
    client = start_listening_client(processes, listen, f"--expose=127.0.0.1:{local}=redis")
    server = start_dialer(processes, listen, f"--link=redis=127.0.0.1:{redis_server.port}",
                          "--drain-timeout=20")  # fmt: skip
    host_up(client)
    blocked = RedisConnection(local)
    try:
        blocked.sock.sendall(b"*3\r\n$5\r\nBLPOP\r\n$1\r\nq\r\n$1\r\n0\r\n")
        time.sleep(0.3)  # the call has reached redis and waits there
        server.popen.send_signal(signal.SIGTERM)
        server.wait_for_stderr(r"draining: 1 session, 1 open stream, up to 20s")
        assert refused_at_once(local), "a newcomer waits for nothing while the host drains"
        assert server.alive(), "the drain waits for the blocked call"
        assert redis_cli(redis_server.port, "RPUSH", "q", "done") == "1"
        assert blocked.sock.recv(4096) == b"*2\r\n$1\r\nq\r\n$4\r\ndone\r\n"
    finally:
        blocked.close()
    began = time.monotonic()
    assert server.popen.wait(timeout=10) == 0
    assert time.monotonic() - began < 5.0, "exits once its last stream ends"
    assert "drain ended with" not in server.stderr()
    assert "Traceback" not in server.stderr()
    client.wait_for_stderr(r"host 'anonymous' disconnected: .*; waiting for it to dial again")


def test_a_listening_client_stops_promptly_and_its_host_dials_again(
    processes: Processes, redis_server: Redis, free_port: FreePort
) -> None:
    """SIGTERM to the listening client (which, like a --remote client, has nothing to drain:
    its consumers' connections end with it): it exits 0 at once, a blocked consumer is closed
    rather than left hanging, and the dialing server goes back to dialing it."""
    listen, local = free_port(), free_port()
    client = start_listening_client(processes, listen, f"--expose=127.0.0.1:{local}=redis")
    server = start_dialer(processes, listen, f"--link=redis=127.0.0.1:{redis_server.port}")
    host_up(client)
    blocked = RedisConnection(local)
    try:
        blocked.sock.sendall(b"*3\r\n$5\r\nBLPOP\r\n$1\r\nq\r\n$1\r\n0\r\n")
        time.sleep(0.3)
        began = time.monotonic()
        client.popen.send_signal(signal.SIGTERM)
        assert client.popen.wait(timeout=10) == 0
        assert time.monotonic() - began < 3.0
        with contextlib.suppress(ConnectionResetError):  # closed either way, not answered
            assert blocked.sock.recv(4096) == b""
    finally:
        blocked.close()
    server.wait_for_stderr(r"session with 127\.0\.0\.1:\d+ ended: ")
    server.wait_for_stderr(r"cannot reach 127\.0\.0\.1:\d+: connection refused.*; retrying")
    assert server.alive()
    assert "Traceback" not in client.stderr() + server.stderr()
    # Back again: the host dials the new client at once (its backoff is short after a loss).
    again = start_listening_client(processes, listen, f"--expose=127.0.0.1:{local}=redis",
                                   name="client-again")  # fmt: skip
    host_up(again)
    assert redis_cli(local, "PING") == "PONG"


@contextlib.contextmanager
def frozen(process: Started) -> Iterator[None]:
    """SIGSTOP ``process`` by its pid, and SIGCONT it on the way out, whatever happens."""
    os.kill(process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(process.pid, signal.SIGCONT)


FAST_KEEPALIVE = ("--keepalive-interval=0.5", "--keepalive-timeout=1", "--handshake-timeout=1")


def test_a_dialing_server_finds_a_frozen_client_dead_and_fails_over(
    processes: Processes, redis_server: Redis, free_port: FreePort
) -> None:
    """The listening client stops answering (SIGSTOP): the dialing server's keepalive declares
    it dead within seconds, and the server fails over to its second --connect target; the
    frozen one still accepts TCP connections (the kernel does), and answers no hello."""
    first, second, local_a, local_b = (free_port() for _ in range(4))
    client_a = start_listening_client(processes, first, f"--expose=127.0.0.1:{local_a}=redis",
                                      name="client-a")  # fmt: skip
    client_b = start_listening_client(processes, second, f"--expose=127.0.0.1:{local_b}=redis",
                                      name="client-b")  # fmt: skip
    server = start_dialer(processes, first, f"--connect=127.0.0.1:{second}", *FAST_KEEPALIVE,
                          f"--link=redis=127.0.0.1:{redis_server.port}")  # fmt: skip
    host_up(client_a)
    assert redis_cli(local_a, "PING") == "PONG"
    with frozen(client_a):
        began = time.monotonic()
        server.wait_for_stderr(r"session with 127\.0\.0\.1:\d+ ended: .*(ping|answer)", 5)
        client_b.wait_for_stderr(r"tunnel up from 127\.0\.0\.1:\d+ as host ", 10)
        assert time.monotonic() - began < 8.0
        assert redis_cli(local_b, "PING") == "PONG"
    # The frozen target, dialed again first, said no hello: one line, from the dialer, and
    # none speaking of a connection *from* the host it dialed.
    assert "closing connection from" not in server.stderr()


def status_of(metrics_port: int) -> dict[str, object]:
    url = f"http://127.0.0.1:{metrics_port}/status"
    with urllib.request.urlopen(url, timeout=5) as response:
        found: dict[str, object] = json.loads(response.read())
    return found


def test_a_listening_client_finds_a_frozen_host_dead_and_resets_its_consumer(
    processes: Processes, redis_server: Redis, free_port: FreePort
) -> None:
    """The dialing server stops answering (SIGSTOP): a consumer's stream open finds it silent,
    the probe goes unanswered, and the consumer is reset with the reason instead of hanging;
    the host shows as down in /status and the dead peer is counted."""
    listen, local, metrics_port = free_port(), free_port(), free_port()
    client = start_listening_client(
        processes, listen, f"--expose=127.0.0.1:{local}=redis", "--probe-after=0.5",
        f"--metrics-listen=127.0.0.1:{metrics_port}",
    )  # fmt: skip
    server = start_dialer(processes, listen, f"--link=redis=127.0.0.1:{redis_server.port}")
    host_up(client)
    assert redis_cli(local, "PING") == "PONG"
    with frozen(server):
        began = time.monotonic()
        answer = redis_cli(local, "PING")
        assert time.monotonic() - began < 5.0, "the consumer was held"
        assert "PONG" not in answer and ("reset" in answer or "closed" in answer), answer
        client.wait_for_stderr(r"host 'anonymous' disconnected: .*; waiting for it to dial again")
        rows = status_of(metrics_port)["remotes"]
        assert isinstance(rows, list) and [row["state"] for row in rows] == ["down"], rows
        assert scrape(metrics_port, r"(?m)^ambassador_unresponsive_peers_total (\S+)$") == ["1.0"]


def test_a_dialing_server_health_checks_its_pooled_backends(
    processes: Processes, redis_server: Redis, free_port: FreePort
) -> None:
    """A pooled link's health checks run on a dialing server as on a listening one: a target
    nobody listens on is marked down, the live one healthy, and consumers reach the live one."""
    listen, local, metrics_port, dead = free_port(), free_port(), free_port(), free_port()
    client = start_listening_client(processes, listen, f"--expose=127.0.0.1:{local}=redis")
    pooled = f"127.0.0.1:{dead},127.0.0.1:{redis_server.port}"
    start_dialer(
        processes, listen, f"--link=redis={pooled}", "--pool-strategy=redis=round-robin",
        r"--health-check=redis=send=PING\r\n,expect=+PONG,interval=0.2,timeout=0.2,rise=1,fall=1",
        f"--metrics-listen=127.0.0.1:{metrics_port}",
    )  # fmt: skip
    host_up(client)
    wanted = {f"127.0.0.1:{dead}": "down", f"127.0.0.1:{redis_server.port}": "healthy"}
    deadline = time.monotonic() + 5
    while (states := pool_states(metrics_port)) != wanted:
        assert time.monotonic() < deadline, f"health checks did not run: {states}"
        time.sleep(0.05)
    # Round-robin over the pool, the dead target skipped: every consumer is answered.
    assert [redis_cli(local, "PING") for _ in range(4)] == ["PONG"] * 4


def pool_states(metrics_port: int) -> dict[str, str]:
    status = status_of(metrics_port)
    services = status["services"]
    assert isinstance(services, list)
    [row] = services
    return {target["target"]: target["state"] for target in row["targets"]}


def test_a_dialing_server_warns_of_a_token_file_others_may_read_at_start(
    processes: Processes, free_port: FreePort, tmp_path: Path
) -> None:
    """As a listening server does at start, and either does on every reload."""
    tokens = tmp_path / "edge1.token"
    tokens.write_text("edge1:" + "a" * 32 + "\n")
    tokens.chmod(0o644)
    server = start_dialer(processes, free_port(), "--link=r=127.0.0.1:9",
                          f"--token-file={tokens}")  # fmt: skip
    server.wait_for_stderr(rf"token file {re.escape(str(tokens))} can be read by other users")
