"""deploy/monitoring: the Prometheus rules pass promtool (syntax and their unit tests), and
every metric the rules and the Grafana dashboard name is one a running TLS pair exports on its
/metrics, the certificate expiry gauge among them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.environment import missing
from tests.integration.support import AmbassadorServer, Started
from tests.observability.support import http_get
from tests.pki import loopback_pki

pytestmark = pytest.mark.integration

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
RULES = MONITORING / "alerts.yml"
RULE_TESTS = MONITORING / "alerts.test.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
METRIC = re.compile(r"\bambassador_[a-z0-9_]+")
# What a family of each type is sampled as (prometheus_client's exposition).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        missing("promtool (Debian package prometheus)")
    assert tool is not None
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)


def test_the_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_rules_fire_on_what_they_name() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def expressions(node: Any) -> Iterator[str]:
    """Every ``expr`` and templating ``query`` string in the dashboard."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            elif key == "query" and isinstance(value, dict | str):
                yield from ([value] if isinstance(value, str) else expressions(value))
            else:
                yield from expressions(value)
    elif isinstance(node, list):
        for item in node:
            yield from expressions(item)


def test_the_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels:
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert METRIC.search(target["expr"]), (panel["title"], target["expr"])
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    for expr in expressions(panels):
        for used in re.findall(r"\$(\w+)", expr):
            assert used in variables | {"__rate_interval", "__range", "__interval"}, expr


@pytest.fixture
def exported(
    tmp_path: Path,
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    free_port: Callable[..., int],
    wait_for_port: Callable[..., None],
) -> tuple[set[str], str, str]:
    """The sample names a TLS pair's two /metrics pages export, and the two pages."""
    server_tls, client_tls = loopback_pki(tmp_path)
    server_metrics, client_metrics = free_port(), free_port()
    server = start_server("redis=127.0.0.1:9", args=[
        f"--tls-cert={server_tls.cert}", f"--tls-key={server_tls.key}",
        f"--metrics-listen=127.0.0.1:{server_metrics}",
    ])  # fmt: skip
    wait_for_port("127.0.0.1", server_metrics, alive=server.process.alive)
    client = start_client(f"--remote=127.0.0.1:{server.port}", f"--tls-ca={client_tls.ca}",
                          f"--metrics-listen=127.0.0.1:{client_metrics}")  # fmt: skip
    wait_for_port("127.0.0.1", client_metrics, alive=client.alive)
    pages = [http_get(port, "/metrics").text for port in (server_metrics, client_metrics)]
    names = set()
    for page in pages:
        for family in text_string_to_metric_families(page):
            names.update(family.name + suffix for suffix in SUFFIXES[family.type])
            names.update(sample.name for sample in family.samples)
    return names, pages[0], pages[1]


def test_every_metric_named_is_one_the_roles_export(exported: tuple[set[str], str, str]) -> None:
    names, _, _ = exported
    named = set(METRIC.findall(RULES.read_text()))
    named |= {
        m for expr in expressions(json.loads(DASHBOARD.read_text())) for m in METRIC.findall(expr)
    }
    assert named, "no metric named"
    unknown = sorted(named - names)
    assert not unknown, f"named in deploy/monitoring but not exported: {unknown}"


def test_certificate_expiry_is_exported_in_days(exported: tuple[set[str], str, str]) -> None:
    _, server_page, client_page = exported
    pattern = r'ambassador_certificate_expiry_days\{certificate="(own|peer)",role="(\w+)"\} (\S+)'
    server = re.findall(pattern, server_page)
    client = re.findall(pattern, client_page)
    # loopback_pki's certificates are valid for a day.
    assert [(c, r) for c, r, _ in server] == [("own", "server")]
    assert [(c, r) for c, r, _ in client] == [("peer", "client")]
    for _, _, days in server + client:
        assert 0.9 < float(days) <= 1.0, days
