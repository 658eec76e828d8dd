"""The README's drop-in commands, run as written on a real engine (the local image names and a
loopback port aside): the seed's single-host ambassador pattern."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.containers.conftest import REPO, Images
from tests.containers.engine import Engine
from tests.containers.support import readme_block, redis_ping, run_in_terminal, wait_for

pytestmark = pytest.mark.timeout(600)


def test_readme_drop_in_commands(
    engine: Engine, images: Images, free_port: Callable[..., int]
) -> None:
    port = free_port()
    local = {
        "crosbymichael/redis": images.redis,
        "relateiq/redis-cli": images.redis_cli,
        "ambassador": images.ambassador,
        # Published on loopback only: nothing beyond this machine reaches the test's redis.
        "6379:6379": f"127.0.0.1:{port}:6379",
    }
    readme = (REPO / "README.md").read_text()
    commands = readme_block(readme, "**Docker image, drop-in for the seed's.**")
    assert [words[:3] for words in commands] == [["docker", "run", "-d"]] * 2 + [
        ["docker", "run", "-i"]
    ]
    redis, ambassador, consumer = ([local.get(w, w) for w in words] for words in commands)
    engine.docker(*redis[1:])
    engine.docker(*ambassador[1:])

    # The consumer, interactive as in the README: redis-cli at a prompt, through the ambassador.
    def answered() -> str | None:
        seen = run_in_terminal(engine, consumer, "PING", "PONG")
        return seen if "PONG" in seen else None

    wait_for(answered, "PONG from redis-cli linked to redis_ambassador")
    # And from this host, through the port the ambassador publishes.
    assert wait_for(lambda: redis_ping(port) or None, f"PONG on 127.0.0.1:{port}")
    assert "forwarding 0.0.0.0:6379" in engine.docker("logs", "redis_ambassador").stderr


def test_readme_offline_build_is_the_one_the_session_runs() -> None:
    from tests.containers.conftest import BASE, IMAGE

    readme = (REPO / "README.md").read_text()
    commands = readme_block(readme, "**Building without a registry or PyPI**")
    build = ["docker", "build", "-f", "deploy/Dockerfile", "--build-arg", f"BASE={BASE}"]
    assert [*build, "--build-arg", "OFFLINE=1", "-t", IMAGE, "."] in commands
    wheel = ["pip", "wheel", "--require-hashes", "-r", "requirements.lock"]
    assert [*wheel, "-w", "deploy/wheelhouse"] in commands
