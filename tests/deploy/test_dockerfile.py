"""The image: two stages, only the venv in the final one, a fixed non-root user, a health check
that works without curl, and the drop-in entrypoint."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.deploy import dockerfile
from tests.deploy.support import (
    DEPLOY,
    DOCKERFILE,
    REPO,
    healthcheck_argv,
    last_line,
    run_healthcheck,
)
from tunnel.settings.links import DEFAULT_TUNNEL_PORT

BUILD_TOOLS = re.compile(
    r"\b(build-essential|gcc|g\+\+|clang|make|python3?-dev|libssl-dev|libffi-dev|cargo|rustc)\b"
)


@pytest.fixture(scope="module")
def stages() -> list[dockerfile.Stage]:
    return dockerfile.parse(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final(stages: list[dockerfile.Stage]) -> dockerfile.Stage:
    return stages[-1]


def test_reader_joins_continuations_drops_comments_and_splits_stages() -> None:
    text = (
        "# syntax=docker/dockerfile:1\n"
        "ARG BASE=python:3.11-slim\n"
        "FROM python:3.11-slim AS builder\n"
        "RUN a \\\n"
        "    # a comment inside the continuation\n"
        "    && b\n"
        "\n"
        "FROM python:3.11-slim\n"
        'COPY --from=builder --chmod=0755 /x /y\nENTRYPOINT ["/y"]\n'
    )
    first, second = dockerfile.parse(text)
    assert (first.base, first.name) == ("python:3.11-slim", "builder")
    assert [(i.keyword, i.args, i.line) for i in first.instructions] == [("RUN", "a && b", 4)]
    assert second.name is None
    copy, entrypoint = second.instructions
    assert copy.options() == ({"from": "builder", "chmod": "0755"}, "/x /y")
    assert entrypoint.words() == ["/y"]
    with pytest.raises(ValueError, match="heredoc"):
        dockerfile.parse("FROM x\nRUN <<EOF\necho\nEOF\n")


def test_builder_and_final_stage_are_python_311_slim(stages: list[dockerfile.Stage]) -> None:
    assert len(stages) >= 2, "the image is built in two stages"
    builder, final = stages[0], stages[-1]
    # Both stages from the build argument BASE, so that a local image can replace the default
    # where no registry is reachable; both the same, since the venv points at its Python.
    assert (builder.base, builder.name) == ("${BASE}", "builder")
    assert final.base == "${BASE}"
    assert dockerfile.global_args(DOCKERFILE.read_text()) == {"BASE": "python:3.11-slim"}


def test_the_legacy_builder_and_an_offline_buildkit_can_build_it(
    stages: list[dockerfile.Stage],
) -> None:
    # A `# syntax=` line makes BuildKit fetch its frontend from a registry; the legacy builder
    # refuses COPY --chmod.
    assert dockerfile.directives(DOCKERFILE.read_text()) == []
    for stage in stages:
        for copy in stage.all("COPY"):
            assert "chmod" not in copy.options()[0], f"line {copy.line}: COPY --chmod"


def test_offline_builds_install_only_from_the_wheelhouse(stages: list[dockerfile.Stage]) -> None:
    builder = stages[0]
    assert [a.args for a in builder.all("ARG")] == ["OFFLINE="], "off unless asked for"
    (install,) = [r.args for r in builder.all("RUN") if "requirements.lock" in r.args]
    assert '[ -n "$OFFLINE" ]' in install
    assert "--no-index --find-links /src/deploy/wheelhouse" in install
    copies = [c.words() for c in builder.all("COPY")]
    assert ["deploy/wheelhouse", "./deploy/wheelhouse"] in copies
    assert (DEPLOY / "wheelhouse").is_dir(), "the directory exists in a fresh checkout"


def test_builder_installs_this_repository_into_a_venv(stages: list[dockerfile.Stage]) -> None:
    builder = stages[0]
    runs = " ".join(i.args for i in builder.all("RUN"))
    assert re.search(r"python3? -m venv (\S+)", runs), "the builder makes a venv"
    assert re.search(r"/bin/pip install (\"\$@\" )?--require-hashes -r requirements\.lock", runs), (
        "the builder installs the locked versions, each checked against its hash"
    )
    assert re.search(r"/bin/pip install --no-deps [^&]*\.(\s|$)", runs), (
        "and the checked-out source with nothing beyond the lock"
    )
    sources = [word for copy in builder.all("COPY") for word in copy.words()[:-1]]
    for needed in ("pyproject.toml", "requirements.lock", "tunnel", "server", "client"):
        assert needed in sources, f"the builder copies {needed}"
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"


def test_final_stage_takes_only_the_venv_and_no_build_tools(
    stages: list[dockerfile.Stage], final: dockerfile.Stage
) -> None:
    venv = re.search(r"python3? -m venv (\S+)", " ".join(i.args for i in stages[0].all("RUN")))
    assert venv is not None
    from_builder = [c for c in final.all("COPY") if c.options()[0].get("from") == "builder"]
    assert [c.words() for c in from_builder] == [[venv[1], venv[1]]], (
        "the final stage copies the builder's venv, and nothing else of it"
    )
    assert not final.all("ADD")
    for instruction in final.all("RUN"):
        assert not BUILD_TOOLS.search(instruction.args), f"line {instruction.line}: build tools"
        assert "pip install" not in instruction.args, f"line {instruction.line}: installs in final"
        assert "apt-get install" not in instruction.args, f"line {instruction.line}: apt-get"
    assert final.env()["PATH"].startswith(f"{venv[1]}/bin:"), "the venv's commands come first"


def test_final_stage_runs_as_a_fixed_non_root_user(final: dockerfile.Stage) -> None:
    users = final.all("USER")
    assert users, "the final stage sets USER"
    user = users[-1].args.split(":")
    assert user[0] not in ("root", "0"), "the image must not run as root"
    assert user[0].isdigit(), "a numeric uid lets Kubernetes' runAsNonRoot check it"
    created = " ".join(i.args for i in final.all("RUN"))
    made = re.search(r"useradd .*--uid (\d+) .*\bambassador\b", created)
    assert made, "the user 'ambassador' is created with a fixed --uid"
    assert user[0] == made[1]
    if len(user) > 1:
        group = re.search(r"groupadd .*--gid (\d+) .*\bambassador\b", created)
        assert group and user[1] == group[1]


def test_entrypoint_port_and_environment(final: dockerfile.Stage) -> None:
    (entrypoint,) = final.all("ENTRYPOINT")
    assert entrypoint.words() == ["/app/deploy/entrypoint.sh"]
    copied = [c.words() for c in final.all("COPY") if "from" not in c.options()[0]]
    assert ["deploy/entrypoint.sh", "/app/deploy/entrypoint.sh"] in copied
    exposed = [word for e in final.all("EXPOSE") for word in e.args.split()]
    assert exposed == [str(DEFAULT_TUNNEL_PORT)], "EXPOSE the tunnel port, and only it"
    env = final.env()
    assert env["AMBASSADOR_METRICS_LISTEN"] == "127.0.0.1:9700"
    assert env["AMBASSADOR_BIND"] == "0.0.0.0", "client listeners must be reachable from links"


def test_healthcheck_asks_readyz_with_urllib(final: dockerfile.Stage) -> None:
    argv = healthcheck_argv(final)
    text = " ".join(argv)
    assert "curl" not in text and "wget" not in text, "slim images have neither"
    assert argv[0] == final.env()["PATH"].split(":")[0] + "/python"
    # /readyz: a client whose tunnel is down turns unhealthy (tests/containers checks it).
    assert argv[1] == "-c" and "urllib" in argv[2] and "/readyz" in argv[2]
    assert "AMBASSADOR_METRICS_LISTEN" in argv[2], "it follows the metrics address of the image"
    compile(argv[2], "HEALTHCHECK", "exec")


def test_build_context_lets_through_what_the_image_copies(stages: list[dockerfile.Stage]) -> None:
    # deploy/Dockerfile.dockerignore is BuildKit's ignore file for this Dockerfile: an
    # allowlist, so that .venv, .git and keys never reach the builder.
    lines = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    rules = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert rules[0] == "*", "everything is excluded unless listed"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    for stage in stages:
        for copy in stage.all("COPY"):
            if "from" in copy.options()[0]:
                continue
            for source in copy.words()[:-1]:
                assert source.rstrip("/") in allowed, (
                    f"COPY {source} is excluded by the ignore file"
                )


def test_healthcheck_passes_against_a_running_server_and_fails_without_one(
    final: dockerfile.Stage, free_port: Callable[..., int]
) -> None:
    argv = healthcheck_argv(final)
    metrics = f"127.0.0.1:{free_port()}"
    assert run_healthcheck(argv, metrics).returncode != 0, "nothing listens there yet"
    server = subprocess.Popen(
        [
            Path(sys.executable).parent / "ambassador-server",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--link",
            "redis=127.0.0.1:6379",
            "--metrics-listen",
            metrics,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while (result := run_healthcheck(argv, metrics)).returncode != 0:
            assert server.poll() is None, f"the server exited: {server.stderr.read()}"
            assert time.monotonic() < deadline, f"unhealthy for 15 s: {last_line(result.stderr)}"
            time.sleep(0.1)
    finally:
        server.terminate()
        server.wait(timeout=10)
