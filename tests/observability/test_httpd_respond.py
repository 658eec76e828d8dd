"""StatusServer.respond(): the status line, content type and body of each endpoint, with no
sockets: what a Prometheus scraper, a probe and a browser each get back."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from prometheus_client import CONTENT_TYPE_LATEST

from tests.observability.support import Metrics
from tunnel.operations.httpd import StatusServer
from tunnel.operations.statusview import render_text

STATUS: dict[str, Any] = {
    "role": "ambassador-client",
    "name": "unit",
    "uptime": 12.5,
    "ready": True,
    "remotes": [
        {"peer": "10.0.0.5:7700", "state": "up", "rtt_ms": 1.25, "streams": 2,
         "bytes_in": 10, "bytes_out": 20, "last_error": ""},
    ],
    "services": [
        {"service": "redis on 127.0.0.1:6379", "open_streams": 1, "streams_total": 4,
         "bytes_in": 10, "bytes_out": 20, "refused": 0},
    ],
}  # fmt: skip


class Ready:
    """A readiness callback the test flips."""

    def __init__(self) -> None:
        self.value = False

    def __call__(self) -> bool:
        return self.value


@pytest.fixture
def ready() -> Ready:
    return Ready()


@pytest.fixture
def endpoint(ready: Ready) -> StatusServer:
    return StatusServer(lambda: STATUS, ready)


def test_unknown_path_is_404(endpoint: StatusServer) -> None:
    assert endpoint.respond("GET", "/nothing-here") == (
        "404 Not Found",
        "text/plain",
        b"not found\n",
    )
    assert endpoint.respond("GET", "/metrics/")[0] == "404 Not Found"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", ""])
def test_methods_other_than_get_and_head_are_405(endpoint: StatusServer, method: str) -> None:
    status, content_type, _ = endpoint.respond(method, "/metrics")
    assert status == "405 Method Not Allowed"
    assert content_type == "text/plain"


def test_metrics_are_prometheus_text(endpoint: StatusServer) -> None:
    status, content_type, body = endpoint.respond("GET", "/metrics")
    assert status == "200 OK"
    assert content_type == CONTENT_TYPE_LATEST
    assert content_type.startswith("text/plain")
    families = Metrics(body.decode()).families
    for name in (
        "ambassador_sessions_open",
        "ambassador_streams",
        "ambassador_bytes",
        "ambassador_stream_refusals",
        "ambassador_reconnects",
        "ambassador_rtt_seconds",
    ):
        assert name in families, name  # fmt: skip


def test_healthz_is_200_even_when_not_ready(endpoint: StatusServer) -> None:
    assert endpoint.respond("GET", "/healthz") == ("200 OK", "text/plain", b"ok\n")


def test_readyz_follows_the_callback(endpoint: StatusServer, ready: Ready) -> None:
    assert endpoint.respond("GET", "/readyz")[0] == "503 Service Unavailable"
    ready.value = True
    assert endpoint.respond("GET", "/readyz") == ("200 OK", "text/plain", b"ready\n")
    assert endpoint.respond("HEAD", "/readyz")[0] == "200 OK"
    ready.value = False
    assert endpoint.respond("GET", "/readyz")[0] == "503 Service Unavailable"


def test_status_is_the_callbacks_dict_as_json(endpoint: StatusServer) -> None:
    status, content_type, body = endpoint.respond("GET", "/status")
    assert status == "200 OK"
    assert content_type == "application/json"
    served = json.loads(body)
    assert abs(served.pop("time") - time.time()) < 60  # the page's clock for error ages
    # Each row with its rate; none yet, before the history has sampled twice.
    assert served == {
        **STATUS,
        **{which: [dict(row, rate_in=None, rate_out=None) for row in STATUS[which]]
           for which in ("remotes", "services")},
    }  # fmt: skip


def test_status_values_json_cannot_encode_are_shown_as_text() -> None:
    endpoint = StatusServer(lambda: {"role": "x", "since": object}, lambda: True)
    assert json.loads(endpoint.respond("GET", "/status")[2])["since"] == str(object)


def test_page_is_html_of_the_same_status(endpoint: StatusServer) -> None:
    for path in ("/", "/index.html"):
        status, content_type, body = endpoint.respond("GET", path)
        assert status == "200 OK"
        assert content_type == "text/html; charset=utf-8"
        page = body.decode()
        assert "<title>ambassador-client unit</title>" in page
        assert "10.0.0.5:7700" in page
        assert "redis on 127.0.0.1:6379" in page


def test_page_escapes_what_peers_and_configs_name() -> None:
    status = {**STATUS, "name": "<script>alert(1)</script>"}
    status["remotes"] = [{**STATUS["remotes"][0], "last_error": "<img src=x onerror=alert(1)>"}]
    endpoint = StatusServer(lambda: status, lambda: True)
    page = endpoint.respond("GET", "/")[2].decode()
    assert page.count("<script>") == 1  # the page's own, at its end
    markup = page[: page.index("<script>")]
    assert "<script>" not in markup and "<img" not in markup
    assert "&lt;script&gt;" in markup and "&lt;img src=x" in markup


HELPER_REPORT: dict[str, Any] = {
    "metrics": [
        {"name": "ambassador_streams", "documentation": "Streams opened", "type": "counter",
         "samples": [["ambassador_streams_total", {"role": "client", "service": "redis"}, 3.0]]},
    ],
    "status": {
        "remotes": [
            {"peer": "10.0.0.5:7700", "state": "up", "rtt_ms": 2.0, "streams": 1,
             "bytes_in": 5, "bytes_out": 6, "last_error": ""},
        ],
        "services": [
            {"service": "redis", "open_streams": 1, "streams_total": 3, "bytes_in": 5,
             "bytes_out": 6},
        ],
    },
}  # fmt: skip


def test_helpers_reports_are_merged_into_metrics_and_status() -> None:
    server = StatusServer(lambda: STATUS, Ready())
    status, content_type, body = server.respond("GET", "/metrics", [(1, HELPER_REPORT)])
    assert (status, content_type) == ("200 OK", CONTENT_TYPE_LATEST)
    page = Metrics(body.decode())
    assert page.value("ambassador_streams_total", service="redis", worker="1") == 3
    # Every series says which process it came from: this one's are worker 0.
    assert all(sample.labels.get("worker") in ("0", "1") for sample in page.samples)

    _, _, body = server.respond("GET", "/status", [(1, HELPER_REPORT)])
    merged = json.loads(body)
    assert merged["workers"] == 2
    assert [(row["worker"], row["rtt_ms"]) for row in merged["remotes"]] == [(0, 1.25), (1, 2.0)]
    (service,) = merged["services"]
    assert service["service"] == "redis on 127.0.0.1:6379"
    assert (service["open_streams"], service["streams_total"]) == (2, 7)
    assert (service["bytes_in"], service["bytes_out"]) == (15, 26)
    _, _, html = server.respond("GET", "/", [(1, HELPER_REPORT)])
    assert html.count(b"10.0.0.5:7700") >= 2


def test_merged_status_names_the_worker_of_each_remote() -> None:
    server = StatusServer(lambda: STATUS, Ready())
    _, _, body = server.respond("GET", "/status", [(1, HELPER_REPORT)])
    lines = render_text(json.loads(body)).splitlines()
    header = lines.index("REMOTES") + 1
    assert lines[header].split()[:2] == ["WORKER", "PEER"]
    assert [line.split()[0] for line in lines[header + 1 : header + 3]] == ["0", "1"]
    # One process: no worker column.
    assert "WORKER" not in render_text(STATUS)
