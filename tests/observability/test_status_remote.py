"""The status endpoint bound beyond loopback, as the Kubernetes manifests bind it for the
kubelet's probes: a peer that is not on loopback gets /healthz, /readyz and /metrics, and a 403
for /status and the page, which name backends, client addresses and identities.

A non-loopback peer, honestly: the server runs in a network namespace this test creates
(``unshare -rn``, no privileges needed) whose loopback device also carries 10.200.0.1. A request
to 10.200.0.1 comes from 10.200.0.1, an address outside 127.0.0.0/8, exactly as the kubelet's
would come from the node's address; nothing leaves the namespace.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.integration.support import Processes, Started, ambassador

pytestmark = pytest.mark.integration

OUTSIDE = "10.200.0.1"  # in the test's own namespace only
BACKEND = "10.0.0.5:6379"  # never dialed: it only has to appear in the catalog
SETUP = f'ip link set lo up && ip addr add {OUTSIDE}/32 dev lo && exec "$@"'
GET = """
import json, sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
        code, body = r.status, r.read()
except urllib.error.HTTPError as e:
    code, body = e.code, e.read()
print(json.dumps([code, body.decode(errors="replace")]))
"""


def namespaces_work() -> bool:
    if not all(shutil.which(p) for p in ("unshare", "nsenter", "ip")):
        return False
    probe = subprocess.run(
        ["unshare", "-rn", "sh", "-c", SETUP, "sh", "true"], capture_output=True, timeout=10
    )
    return probe.returncode == 0


def get(server: Started, url: str) -> tuple[int, str]:
    """GET ``url`` from inside the server's network namespace."""
    done = subprocess.run(
        ["nsenter", "-t", str(server.pid), "-U", "-n", "--preserve-credentials",
         sys.executable, "-c", GET, url],
        capture_output=True, text=True, timeout=15,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    code, body = json.loads(done.stdout)
    return code, body


def test_status_is_served_to_loopback_only(
    processes: Processes, free_port: Callable[..., int]
) -> None:
    if not namespaces_work():
        pytest.skip("unprivileged network namespaces (unshare -rn) are not available here")
    metrics = free_port()
    server = processes.start(
        "ambassador-server",
        ["unshare", "-rn", "sh", "-c", SETUP, "sh", *ambassador("server"),
         "--listen", f"127.0.0.1:{free_port()}", "--link", f"secret={BACKEND}",
         "--metrics-listen", f"0.0.0.0:{metrics}"],
    )  # fmt: skip
    server.wait_for_stderr(r"metrics and status on", timeout=15)

    code, body = get(server, f"http://127.0.0.1:{metrics}/status")
    assert code == 200 and BACKEND in body, body  # the host still sees everything

    for path in ("/status", "/status/history", "/", "/index.html"):
        code, body = get(server, f"http://{OUTSIDE}:{metrics}{path}")
        assert code == 403, (path, code, body)
        assert BACKEND not in body and "secret" not in body, body
        assert "ambassador-server status" in body, body
    for path, expected in (("/healthz", "ok"), ("/readyz", "ready"), ("/metrics", "ambassador_")):
        code, body = get(server, f"http://{OUTSIDE}:{metrics}{path}")
        assert code == 200 and expected in body, (path, code, body)
