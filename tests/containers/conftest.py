"""The container tests' engine and images, made once per session and removed after it.

The session starts a private dockerd (tests/containers/engine.py), then builds, without any
registry: a Debian bookworm base with Python (debootstrap, cached under /var/cache between
runs), redis and redis-cli images on it (Debian's redis-server), and the project's image from
deploy/Dockerfile exactly as the README's offline build says: ``BASE`` set to that local base,
``OFFLINE=1`` with a wheelhouse made from requirements.lock. Where no engine can start (not
root, no docker.io, no cgroups), every test here is skipped with the reason.

After each test every container and network of the engine is removed (the engine is this
session's alone); after the session, the engine with its images and everything it made.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.containers import engine as engines
from tests.containers.engine import Engine

REPO = Path(__file__).resolve().parents[2]
CACHE = Path("/var/cache/ambassador-tests")
#: The base image, named as the README's offline build names it.
BASE = "debian-python3:bookworm"
#: What the seed's commands run, here made locally: the README's names map to these.
REDIS = "ambassador-test/redis"
REDIS_CLI = "ambassador-test/redis-cli"
IMAGE = "ambassador"
#: The files of the checkout an image build and the compose example need.
CHECKOUT = ("pyproject.toml", "README.md", "requirements.lock", "tunnel", "server", "client")

REDIS_DOCKERFILE = f"""\
FROM {BASE}
RUN apt-get update -qq \\
    && apt-get install -y -qq --no-install-recommends redis-server redis-tools >/dev/null \\
    && rm -rf /var/lib/apt/lists/*
USER redis
EXPOSE 6379
CMD ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--save", ""]
"""
# As relateiq/redis-cli: a redis-cli that talks to the host named redis (a link's alias).
REDIS_CLI_DOCKERFILE = f"""\
FROM {REDIS}
ENTRYPOINT ["redis-cli", "-h", "redis"]
"""

#: Seconds each setup step took and the images' sizes, printed after the run.
REPORT: dict[str, str] = {}


@dataclass(frozen=True)
class Images:
    checkout: Path  # a copy of the checkout (with the wheelhouse) the image was built from
    base: str = BASE
    redis: str = REDIS
    redis_cli: str = REDIS_CLI
    ambassador: str = IMAGE


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    reason = engines.unavailable()
    if reason:
        pytest.skip(f"no Docker engine: {reason}")
    started = time.monotonic()
    try:
        running = engines.start()
    except RuntimeError as error:
        pytest.skip(f"no Docker engine: {error}")
    REPORT["engine start"] = f"{time.monotonic() - started:.1f} s"
    try:
        yield running
    finally:
        engines.stop(running)


def _timed(step: str, started: float) -> None:
    REPORT[step] = f"{time.monotonic() - started:.1f} s"


def _copy_checkout(target: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.whl", "pki", ".env")
    for name in (*CHECKOUT, "deploy"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=ignore)
        else:
            shutil.copy2(source, target / name)


def _build(engine: Engine, tag: str, dockerfile: str, workdir: Path) -> None:
    context = workdir / tag.replace("/", "-")
    context.mkdir()
    (context / "Dockerfile").write_text(dockerfile)
    # --network=host: apt-get reaches Debian's mirror the way the machine does, since this
    # engine forwards nothing.
    engine.docker("build", "-q", "--network=host", "-t", tag, str(context), timeout=600)


@pytest.fixture(scope="session")
def images(engine: Engine) -> Iterator[Images]:
    work = Path(tempfile.mkdtemp(prefix="amb-images-"))
    try:
        started = time.monotonic()
        cache = CACHE if CACHE.parent.is_dir() else None
        tar = engines.base_rootfs_tar(cache, work)
        # As `tar -C rootfs -c . | docker import - NAME`, from the tarball of rootfs.
        engine.docker("import", str(tar), BASE, timeout=300)
        _timed("base image (debootstrap or cache, import)", started)

        started = time.monotonic()
        _build(engine, REDIS, REDIS_DOCKERFILE, work)
        _build(engine, REDIS_CLI, REDIS_CLI_DOCKERFILE, work)
        _timed("redis images (Debian's redis-server)", started)

        started = time.monotonic()
        checkout = work / "checkout"
        checkout.mkdir()
        _copy_checkout(checkout)
        # The README's offline build: the wheelhouse from the lock, then the image from it.
        engines.run(
            [
                *(sys.executable, "-m", "pip", "wheel", "-q", "--require-hashes"),
                *("-r", "requirements.lock", "-w", "deploy/wheelhouse"),
            ],
            cwd=checkout,
            timeout=300,
        )
        engine.docker(
            *("build", "-q", "-f", "deploy/Dockerfile", "--build-arg", f"BASE={BASE}"),
            *("--build-arg", "OFFLINE=1", "-t", IMAGE, "."),
            cwd=checkout,
            timeout=600,
        )
        _timed("ambassador image (wheelhouse, offline build)", started)
        yield Images(checkout)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(autouse=True)
def _remove_containers_and_networks(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test, remove every container and network it left in the session's engine."""
    yield
    if "engine" not in request.fixturenames:
        return
    running: Engine = request.getfixturevalue("engine")
    ids = running.docker("ps", "-aq", check=False).stdout.split()
    if ids:
        running.docker("rm", "-f", "-v", *ids, check=False)
    running.docker("network", "prune", "-f", check=False)
    running.docker("volume", "prune", "-f", check=False)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT:
        terminalreporter.section("container tests: setup time and image sizes")
        for step, value in REPORT.items():
            terminalreporter.write_line(f"{step}: {value}")
