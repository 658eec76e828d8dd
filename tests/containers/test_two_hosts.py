"""The seed's two-host example with the tunnel, in containers: big-server's redis and
ambassador-server on one network, an ambassador-client on another configured by the seed's
link variable, and a consumer linked to it; plaintext and mutual TLS."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.containers.conftest import Images
from tests.containers.engine import Engine
from tests.containers.support import cli, logs, make_pki, two_hosts, wait_for

pytestmark = pytest.mark.timeout(600)

CONSUMER = ["run", "--rm", "--network", "client-host", "--link", "redis_ambassador:redis"]


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "mutual-tls"])
@pytest.mark.parametrize(
    ("variable", "port"),
    [
        # The seed's own line: listen on 6379, big-server's redis on 6379.
        ("REDIS_PORT_6379_TCP=tcp://big-server:6379", "6379"),
        # Its other form: listen locally on 1234 for big-server's redis on 6379.
        pytest.param(
            "REDIS_PORT_1234_TCP=tcp://big-server:6379",
            "1234",
        ),
    ],
    ids=["6379", "1234-to-6379"],
)
def test_consumer_reaches_big_servers_redis_through_the_tunnel(
    engine: Engine, images: Images, tmp_path: Path, tls: bool, variable: str, port: str
) -> None:
    engine.docker("run", "-d", "--name", "redis", images.redis)
    pki = make_pki(tmp_path / "pki", "big-server") if tls else None
    two_hosts(
        engine,
        images.ambassador,
        variable,
        pki,
        server_args=["--links-from-env"],
        server_opts=["--link", "redis:redis"],
    )
    consumer = [*CONSUMER, images.redis_cli, "-p", port]

    def ping() -> str | None:
        running = engine.docker("inspect", "-f", "{{.State.Running}}", "redis_ambassador")
        assert running.stdout.strip() == "true", "the client ambassador exited"
        return cli(engine, *consumer, "PING")

    try:
        assert wait_for(ping, "PONG through the tunnel") == "PONG"
        assert cli(engine, *consumer, "SET", "seed", "2013") == "OK"
        assert cli(engine, *consumer, "GET", "seed") == "2013"
    except AssertionError:
        print(logs(engine, "redis_ambassador"), logs(engine, "big-server"))
        raise
    state = "TLS, client certificates required" if tls else "plaintext"
    assert state in logs(engine, "big-server")
