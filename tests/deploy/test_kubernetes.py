"""deploy/kubernetes: the server beside its backends, the client as a sidecar, links from a
mounted TOML file and never from the environment, probes on the metrics port, locked-down
containers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from tests.deploy.support import (
    DEPLOY,
    LINK_VARIABLE,
    OPERATIONS,
    ROLES,
    option_value,
    unknown_flags,
)
from tunnel.settings.config import default_map_for

MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")


def documents() -> list[dict[str, Any]]:
    found = []
    for path in MANIFESTS:
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                found.append(document)
    return found


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for document in documents():
        kind, name = document["kind"], document["metadata"]["name"]
        if kind in WORKLOADS:
            yield f"{kind}/{name}", document["spec"]["template"]["spec"]
        elif kind == "CronJob":
            yield f"{kind}/{name}", document["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif kind == "Pod":
            yield f"{kind}/{name}", document["spec"]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def ambassador_containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, pod spec, container) for each container running the ambassador image."""
    for where, spec in pod_specs():
        for container in containers(spec):
            if container["image"].split("/")[-1].startswith("ambassador"):
                yield f"{where}/{container['name']}", spec, container


def config_maps() -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d["data"] for d in documents() if d["kind"] == "ConfigMap"}


def volume_for(
    spec: dict[str, Any], container: dict[str, Any], path: str
) -> tuple[dict[str, Any], str]:
    """The pod volume holding ``path`` in ``container``, and the path inside it."""
    for mount in container.get("volumeMounts", []):
        inside = PurePosixPath(path)
        if inside.is_relative_to(mount["mountPath"]):
            assert "subPath" not in mount, "subPath mounts do not see updates: no reload"
            (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
            return volume, str(inside.relative_to(mount["mountPath"]))
    raise AssertionError(f"{path} is on no volume of {container['name']}")


def config_of(spec: dict[str, Any], container: dict[str, Any], tmp_path: Path) -> tuple[str, Path]:
    """The role of an ambassador container, and its config file, copied out of its ConfigMap."""
    role, *args = container["args"]
    config = option_value(args, "--config")
    assert config, f"{container['name']}: its configuration comes from a --config file"
    volume, key = volume_for(spec, container, config)
    assert "configMap" in volume, f"{config} must come from a ConfigMap"
    data = config_maps()[volume["configMap"]["name"]]
    assert key in data, f"ConfigMap {volume['configMap']['name']} has no {key}"
    copy = tmp_path / f"{role}-{key}"
    copy.write_text(data[key])
    return role, copy


def test_manifests_load_and_name_their_objects() -> None:
    names = {path.name for path in MANIFESTS}
    assert {"backend-redis.yaml", "consumer.yaml", "server.yaml"} <= names
    for document in documents():
        assert {"apiVersion", "kind", "metadata"} <= document.keys()
        assert document["metadata"]["name"]
    kinds = [d["kind"] for d in documents()]
    assert kinds.count("Deployment") >= 3 and kinds.count("Service") >= 2


def test_every_pod_turns_service_links_off() -> None:
    specs = list(pod_specs())
    assert len(specs) >= 3
    for where, spec in specs:
        assert spec.get("enableServiceLinks") is False, f"{where}: enableServiceLinks: false"


def test_every_container_is_locked_down() -> None:
    for where, spec in pod_specs():
        pod = spec.get("securityContext", {})
        for container in containers(spec):
            context = container.get("securityContext", {})
            name = f"{where}/{container['name']}"
            assert context.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, name
            assert context.get("readOnlyRootFilesystem") is True, name
            assert context.get("allowPrivilegeEscalation") is False, name
            assert "ALL" in context.get("capabilities", {}).get("drop", []), name
            user = context.get("runAsUser", pod.get("runAsUser"))
            assert user is None or user != 0, name


def test_no_container_gets_docker_link_variables() -> None:
    for where, spec in pod_specs():
        for container in containers(spec):
            names = [variable["name"] for variable in container.get("env", [])]
            assert not [n for n in names if LINK_VARIABLE.fullmatch(n)], where
            assert "AMBASSADOR_LINK" not in names and "AMBASSADOR_LINKS_FROM_ENV" not in names
            assert "envFrom" not in container, f"{where}: envFrom could bring link variables"


def test_ambassador_flags_exist_and_links_come_from_the_config_map(tmp_path: Path) -> None:
    found = list(ambassador_containers())
    assert sorted(c["args"][0] for _, _, c in found) == ["client", "server"]
    for where, spec, container in found:
        role, *args = container["args"]
        assert unknown_flags(ROLES[role], args) == [], where
        assert "--links-from-env" not in args and "--link" not in args, where
        role, config = config_of(spec, container, tmp_path)
        settings = default_map_for(ROLES[role], config)  # the real loader: it must accept it
        assert not settings.get("links_from_env"), f"{where}: links never from the environment"
        if role == "server":
            assert settings.get("link"), f"{where}: the catalog is the config file's [links]"


def test_probes_ask_the_metrics_port() -> None:
    for where, _, container in ambassador_containers():
        listen = option_value(container["args"][1:], "--metrics-listen")
        assert listen, f"{where}: --metrics-listen as a flag (the image's variable beats a file)"
        host, _, port = listen.rpartition(":")
        assert host in ("0.0.0.0", "[::]"), f"{where}: the kubelet probes the pod's address"
        ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = container[probe]["httpGet"]
            assert get["path"] == path, f"{where}: {probe} on {path}"
            target = ports.get(get["port"], get["port"])
            assert target == int(port), f"{where}: {probe} must ask port {port}"


def test_certificates_come_from_secrets_documented_with_kubectl(tmp_path: Path) -> None:
    operations = OPERATIONS.read_text()
    for where, spec, container in ambassador_containers():
        _, config = config_of(spec, container, tmp_path)
        settings = default_map_for(ROLES[container["args"][0]], config)
        files = [settings[key] for key in ("tls_cert", "tls_key", "tls_ca")]
        assert all(files), f"{where}: mutual TLS"
        secrets = set()
        for file in files:
            volume, key = volume_for(spec, container, str(file))
            assert "secret" in volume, f"{where}: {file} must come from a Secret"
            assert volume["secret"].get("defaultMode", 0o644) & 0o007 == 0, "not world-readable"
            secrets.add(volume["secret"]["secretName"])
            assert f"--from-file=pki/{key}" in operations, f"document how {key} gets in"
        for secret in secrets:
            assert f"kubectl create secret generic {secret}" in operations, secret


def test_server_service_reaches_the_server_pods() -> None:
    services = {d["metadata"]["name"]: d for d in documents() if d["kind"] == "Service"}
    server = next(d for d in documents() if d["kind"] == "Deployment"
                  and d["metadata"]["name"] == "ambassador-server")  # fmt: skip
    service = services["ambassador-server"]["spec"]
    labels = server["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    (port,) = service["ports"]
    assert port["port"] == 7700
    (container,) = server["spec"]["template"]["spec"]["containers"]
    assert port["targetPort"] in {p.get("name") for p in container["ports"]} | {7700}


def test_server_pods_have_time_to_drain(tmp_path: Path) -> None:
    for where, spec, container in ambassador_containers():
        role, config = config_of(spec, container, tmp_path)
        if role != "server":
            continue
        drain = default_map_for(ROLES[role], config).get("drain_timeout", 30.0)
        assert spec.get("terminationGracePeriodSeconds", 30) > drain, where
