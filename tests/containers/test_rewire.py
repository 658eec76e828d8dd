"""Rewiring without restarting the consumer: big-server's links change (a second redis) and
are reloaded with SIGHUP; the consumer container, never restarted, reaches the new backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.containers.conftest import Images
from tests.containers.engine import Engine
from tests.containers.support import cli, logs, two_hosts, wait_for

pytestmark = pytest.mark.timeout(600)

CONFIG = 'listen = "0.0.0.0:7700"\n\n[links]\nredis = "{backend}:6379"\n'


def test_sighup_moves_the_consumer_to_a_second_redis(
    engine: Engine, images: Images, tmp_path: Path
) -> None:
    engine.docker("network", "create", "big-host")
    for backend in ("redis1", "redis2"):
        engine.docker("run", "-d", "--name", backend, "--network", "big-host", images.redis)
        engine.docker("exec", backend, "redis-cli", "SET", "backend", backend)
    config = tmp_path / "conf"
    config.mkdir()
    (config / "server.toml").write_text(CONFIG.format(backend="redis1"))
    two_hosts(
        engine,
        images.ambassador,
        "REDIS_PORT_6379_TCP=tcp://big-server:6379",
        None,
        server_args=["--config", "/conf/server.toml"],
        server_opts=["--network", "big-host", "-v", f"{config}:/conf:ro"],
    )
    engine.docker(
        *("run", "-d", "--name", "consumer", "--network", "client-host"),
        *("--link", "redis_ambassador:redis", "--entrypoint", "sleep", images.redis_cli, "3600"),
    )
    started = engine.docker("inspect", "-f", "{{.State.StartedAt}}", "consumer").stdout

    def backend() -> str | None:
        return cli(engine, "exec", "consumer", "redis-cli", "-h", "redis", "GET", "backend")

    try:
        assert wait_for(backend, "the first backend") == "redis1"
        (config / "server.toml").write_text(CONFIG.format(backend="redis2"))
        engine.docker("kill", "-s", "HUP", "big-server")
        wait_for(lambda: "redis2" if backend() == "redis2" else None, "the second backend")
    except AssertionError:
        print(logs(engine, "big-server"), logs(engine, "redis_ambassador"))
        raise
    after = engine.docker("inspect", "-f", "{{.State.StartedAt}}", "consumer").stdout
    assert after == started, "the consumer was never restarted"
    assert engine.docker("inspect", "-f", "{{.RestartCount}}", "consumer").stdout.strip() == "0"
