"""deploy/compose: the seed's two-host example as compose files, TLS on, with every flag a real
one and every mounted file documented."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from tests.deploy.support import (
    DEPLOY,
    LINK_VARIABLE,
    REPO,
    ROLES,
    ambassador_invocations,
    option_value,
    unknown_flags,
)

COMPOSE = DEPLOY / "compose"
README = COMPOSE / "README.md"
FILES = sorted(COMPOSE.glob("compose.*.yml"))


def load(name: str) -> dict[str, Any]:
    document = yaml.safe_load((COMPOSE / name).read_text())
    assert isinstance(document, dict) and isinstance(document.get("services"), dict)
    return document


def ambassadors(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run this project's image."""
    return {
        name: service
        for name, service in document["services"].items()
        if "ambassador" in str(service.get("image", "")) or "build" in service
    }


def test_both_halves_are_there() -> None:
    assert {"compose.client.yml", "compose.server.yml"} <= {path.name for path in FILES}


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.name)
def test_every_flag_in_a_command_exists_on_its_role(path: Path) -> None:
    found = ambassadors(load(path.name))
    assert found, "no service runs the ambassador image"
    for name, service in found.items():
        command = service["command"]
        assert isinstance(command, list), f"{name}: give command: as a list, one word each"
        role, *args = (str(word) for word in command)
        assert role in ("server", "client"), f"{name}: the entrypoint's first argument is a role"
        assert unknown_flags(ROLES[role], args) == [], f"{name}: flags its role does not have"


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.name)
def test_compose_v1_reads_the_file(path: Path) -> None:
    # Debian 12 packages compose v1 (docker-compose 1.29), which refuses a top-level name.
    assert set(load(path.name)) <= {"services", "networks", "volumes"}


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.name)
def test_the_image_is_built_from_this_repository(path: Path) -> None:
    for name, service in ambassadors(load(path.name)).items():
        build = service["build"]
        context = (COMPOSE / build["context"]).resolve()
        assert context == REPO, f"{name}: the build context is the repository root"
        assert (context / build["dockerfile"]) == DEPLOY / "Dockerfile"


def test_server_offers_redis_over_mutual_tls() -> None:
    document = load("compose.server.yml")
    assert "redis" in document["services"]
    service = document["services"]["ambassador-server"]
    args = [str(word) for word in service["command"]]
    assert option_value(args, "--link") == "redis=redis:6379"
    assert "--links-from-env" not in args, "compose networks set no link variables"
    for flag in ("--tls-cert", "--tls-key", "--tls-ca"):
        assert option_value(args, flag), f"TLS on: {flag}"
    assert "${AMBASSADOR_PUBLISH:-7700}:7700" in service["ports"]
    grace = int(str(service["stop_grace_period"]).removesuffix("s"))
    drain = float(option_value(args, "--drain-timeout") or 30)
    assert grace > drain, "compose must leave the server time to drain before killing it"


def test_client_exposes_redis_to_a_redis_cli_over_tls() -> None:
    document = load("compose.client.yml")
    client = document["services"]["ambassador-client"]
    args = [str(word) for word in client["command"]]
    assert "${SERVER_HOST" in (option_value(args, "--remote") or "")
    assert option_value(args, "--expose") == "0.0.0.0:6379=redis"
    for flag in ("--tls-ca", "--tls-cert", "--tls-key"):
        assert option_value(args, flag), f"TLS on: {flag}"
    cli = document["services"]["redis-cli"]
    assert "ambassador-client" in cli["depends_on"]
    words = [*cli.get("entrypoint", []), *cli.get("command", [])]
    assert option_value(words, "-h") == "ambassador-client", "redis-cli uses the ambassador"
    assert option_value(words, "-p") == "6379"


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.name)
def test_every_mounted_file_is_documented(path: Path) -> None:
    readme = README.read_text()
    for name, service in ambassadors(load(path.name)).items():
        mounts: dict[str, str] = {}
        for volume in service.get("volumes", []):
            source, target, *_ = volume.split(":")
            assert source.startswith("./"), f"{name}: bind-mount a directory of this example"
            mounts[target] = source.removeprefix("./")
            assert f"`{mounts[target]}" in readme, f"{source} is not described in README.md"
        args = [str(word) for word in service["command"]]
        used = [word for word in args if word.startswith("/")]
        assert used, f"{name}: expected TLS files in the command"
        for file in used:
            path_in = PurePosixPath(file)
            target = next((t for t in mounts if path_in.is_relative_to(t)), None)
            assert target is not None, f"{name}: {file} is not under a mounted directory"
            on_host = f"{mounts[target]}/{path_in.relative_to(target)}"
            assert f"`{on_host}`" in readme, f"{name}: {on_host} is not described in README.md"


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.name)
def test_no_service_is_given_docker_link_variables(path: Path) -> None:
    for name, service in load(path.name)["services"].items():
        environment = service.get("environment", {})
        names = environment if isinstance(environment, dict) else [
            item.split("=", 1)[0] for item in environment
        ]  # fmt: skip
        assert not [n for n in names if LINK_VARIABLE.fullmatch(n)], name


def test_readme_gives_the_commands_in_order() -> None:
    readme = README.read_text()
    steps = [
        "ambassador-server certs init pki --san",
        "ambassador-server certs client client1 --dir pki",
        "docker compose -f compose.server.yml up -d",
        "scp -p pki/ca.pem pki/client1.pem pki/client1-key.pem",
        "docker compose -f compose.client.yml up -d",
        "docker compose -f compose.client.yml run --rm redis-cli PING",
    ]
    positions = [readme.find(step) for step in steps]
    assert -1 not in positions, [s for s, p in zip(steps, positions, strict=True) if p == -1]
    assert positions == sorted(positions)


def test_readme_commands_use_real_flags() -> None:
    invocations = list(ambassador_invocations(README.read_text()))
    assert len(invocations) >= 4
    for program, args in invocations:
        assert unknown_flags(ROLES[program], args) == [], f"{program} {' '.join(args)}"


def test_variables_the_files_need_are_documented() -> None:
    readme = README.read_text()
    for path in FILES:
        for variable in set(re.findall(r"\$\{([A-Z_]+)", path.read_text())):
            assert variable in readme, f"{path.name} uses ${{{variable}}}; README.md must say it"


def test_every_compose_up_builds_the_image() -> None:
    """The compose files build the image from the checkout; an `up -d` without `--build`
    would start a stale image where one was built before, so every guide says `--build`."""
    root = COMPOSE.parents[1]
    for path in (root / "README.md", root / "docs" / "operations.md", README):
        text = " ".join(path.read_text().split())
        ups = re.findall(r"docker compose -f compose\.\w+\.yml up -d[^`\n]*", text)
        assert ups, path
        for up in ups:
            assert up.startswith(up.split(" up -d")[0] + " up -d --build"), f"{path}: {up}"
