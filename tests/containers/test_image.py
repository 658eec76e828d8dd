"""The image as it runs: a non-root user, a HEALTHCHECK that follows the tunnel, a drain on
`docker stop` that exits 0, and its size (printed after the run)."""

from __future__ import annotations

import json

import pytest

from tests.containers.conftest import REPORT, Images
from tests.containers.engine import Engine
from tests.containers.support import cli, logs, two_hosts, wait_for

pytestmark = pytest.mark.timeout(600)

#: The image's own check, asked every second here instead of every 30 s.
FAST_HEALTH = ["--health-interval=1s", "--health-retries=2", "--health-start-period=0s"]


def health(engine: Engine, name: str) -> str:
    return engine.docker("inspect", "-f", "{{.State.Health.Status}}", name).stdout.strip()


def test_image_runs_as_its_own_non_root_user(engine: Engine, images: Images) -> None:
    config = json.loads(engine.docker("image", "inspect", images.ambassador).stdout)[0]["Config"]
    assert config["User"] == "10001:10001"
    whoami = engine.docker("run", "--rm", "--entrypoint", "id", images.ambassador).stdout
    assert whoami.startswith("uid=10001(ambassador) gid=10001(ambassador)")
    size = int(engine.docker("image", "inspect", "-f", "{{.Size}}", images.ambassador).stdout)
    base = int(engine.docker("image", "inspect", "-f", "{{.Size}}", images.base).stdout)
    REPORT["image size"] = f"{size / 1e6:.0f} MB ({base / 1e6:.0f} MB of it the Debian base)"
    print(f"image {images.ambassador}: {size} bytes")


def test_healthcheck_follows_the_tunnel_and_stop_drains(engine: Engine, images: Images) -> None:
    engine.docker("run", "-d", "--name", "redis", images.redis)
    two_hosts(
        engine,
        images.ambassador,
        "REDIS_PORT_6379_TCP=tcp://big-server:6379",
        None,
        server_args=["--links-from-env", "--drain-timeout", "5"],
        server_opts=["--link", "redis:redis", *FAST_HEALTH],
        client_opts=FAST_HEALTH,
    )
    try:
        wait_for(lambda: health(engine, "big-server") == "healthy" or None, "server healthy")
        wait_for(lambda: health(engine, "redis_ambassador") == "healthy" or None, "healthy")
        consumer = ["run", "--rm", "--network", "client-host", "--link", "redis_ambassador:redis"]
        assert cli(engine, *consumer, images.redis_cli, "PING") == "PONG"

        # docker stop: SIGTERM, the server drains and exits 0, well before docker's SIGKILL.
        engine.docker("stop", "-t", "40", "big-server", timeout=60)
        state = json.loads(engine.docker("inspect", "big-server").stdout)[0]["State"]
        assert (state["ExitCode"], state["OOMKilled"]) == (0, False)
        assert "draining" in logs(engine, "big-server")

        # With the tunnel down, the client turns unhealthy.
        wait_for(lambda: health(engine, "redis_ambassador") == "unhealthy" or None, "unhealthy")
    except AssertionError:
        print(logs(engine, "big-server"), logs(engine, "redis_ambassador"))
        raise
