"""deploy/compose/ brought up for real with TLS: big-server's project, the client host's
project, redis-cli through the tunnel, then both brought down. Debian 12 packages compose v1
(`docker-compose`); the README's `docker compose` is the same command in compose v2."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable

import pytest

from tests.containers.conftest import Images
from tests.containers.engine import Engine
from tests.containers.support import make_pki, wait_for

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(shutil.which("docker-compose") is None, reason="no docker-compose"),
]


def test_compose_example_answers_over_mutual_tls(
    engine: Engine, images: Images, free_port: Callable[..., int]
) -> None:
    here = images.checkout / "deploy" / "compose"
    make_pki(here / "pki", "big-server.example.com", "192.168.1.52")
    port = free_port()
    # As README.md's .env, for a pki/ owned by the image's user; published on loopback only.
    (here / ".env").write_text(
        "AMBASSADOR_UID=10001\nAMBASSADOR_GID=10001\nSERVER_HOST=big-server.example.com\n"
        f"AMBASSADOR_PUBLISH=127.0.0.1:{port}\n"
    )
    engine.docker("tag", images.redis, "redis:7-alpine")  # the compose files' redis

    def compose(project: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**engine.env(), "COMPOSE_PROJECT_NAME": project}
        env |= {"BASE": images.base, "OFFLINE": "1"}  # the offline build
        result = subprocess.run(
            ["docker-compose", *args], cwd=here, env=env, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        if check:
            assert result.returncode == 0, result.stderr[-3000:]
        return result

    server = ("ambassador-server", "-f", "compose.server.yml")
    client = ("ambassador-client", "-f", "compose.client.yml")
    try:
        compose(*server, "build")
        compose(*server, "up", "-d")
        wait_for(
            lambda: "listening on 0.0.0.0:7700" in compose(*server, "logs").stdout or None,
            "the server listening",
        )
        compose(*client, "up", "-d")
        # The two hosts' network, where the client host finds big-server by its name.
        (server_id,) = compose(*server, "ps", "-q", "ambassador-server").stdout.split()
        (client_id,) = compose(*client, "ps", "-q", "ambassador-client").stdout.split()
        engine.docker("network", "create", "wan")
        engine.docker("network", "connect", "--alias", "big-server.example.com", "wan", server_id)
        engine.docker("network", "connect", "wan", client_id)

        def ping() -> str | None:
            result = compose(*client, "run", "--rm", "redis-cli", "PING", check=False)
            return result.stdout.strip() if result.returncode == 0 else None

        assert wait_for(ping, "PONG from big-server's redis") == "PONG"
        assert "TLS, client certificates required" in compose(*server, "logs").stdout
    except AssertionError:
        print(compose(*server, "logs", check=False).stdout[-3000:])
        print(compose(*client, "logs", check=False).stdout[-3000:])
        raise
    finally:
        compose(*client, "down", check=False)
        compose(*server, "down", check=False)
    assert engine.docker("ps", "-aq").stdout.split() == []
