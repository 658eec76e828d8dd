"""The status page on ``/``: what a person opening the endpoint in a browser reads. Parsed
with html.parser as served; loaded in headless Chromium as well when it is installed, where its
script redraws it from /status and /status/history: a transfer moves the rate and the chart, a
killed server turns the client's row red with the reason, and a hostile peer's text stays
text. With STATUS_SCREENSHOTS=DIR the screenshots are also written to DIR (docs/ holds them)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import time
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.environment import missing
from tests.integration.support import AmbassadorServer, Processes, Redis, Started, ambassador
from tests.observability.conftest import CLIENT_NAME, SERVER_NAME, MeteredPair
from tests.observability.support import http_get, wait_for
from tests.observability.traffic import RedisTraffic
from tests.security.hostileserver import HostileServer

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_TIMEOUT = 30.0
SESSION_COLUMNS = ["peer", "state", "rtt", "streams", "in/s", "out/s", "received", "sent",
                   "last error"]  # fmt: skip
SIZE = re.compile(r"\d+ B|\d+\.\d (KiB|MiB|GiB)")


class StatusPage(HTMLParser):
    """The facts of the page: its title, the text of each element with an id, and the rows
    of each table (by table id; the header row first)."""

    def __init__(self, markup: str) -> None:
        super().__init__()
        self.title = ""
        self.by_id: dict[str, str] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self.attrs: dict[str, list[dict[str, str | None]]] = {}  # tag -> each one's attributes
        self.attributes: dict[str, dict[str, str | None]] = {}  # id -> its attributes
        self.row_classes: dict[str, list[str]] = {}  # table id -> each row's class
        self._open: list[tuple[str, str | None]] = []
        self._table: str | None = None
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("meta", "br", "link"):
            return
        element_id = dict(attrs).get("id")
        self.attrs.setdefault(tag, []).append(dict(attrs))
        if element_id is not None:
            self.attributes[element_id] = dict(attrs)
        if tag == "tr" and self._table is not None:
            self.row_classes[self._table].append(dict(attrs).get("class") or "")
        self._open.append((tag, element_id))
        if element_id is not None:
            self.by_id[element_id] = ""
        if tag == "table" and element_id is not None:
            self._table = element_id
            self.tables[element_id] = []
            self.row_classes[element_id] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self.tables[self._table][-1].append("")

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            open_tag, _ = self._open.pop()
            if open_tag == tag:
                break
        if tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        tags = [tag for tag, _ in self._open]
        if tags and tags[-1] == "title":
            self.title += data
        for _, element_id in self._open:
            if element_id is not None:
                self.by_id[element_id] += data
        if self._table is not None and tags and tags[-1] in ("td", "th"):
            self.tables[self._table][-1][-1] += data

    def rows(self, table: str) -> list[dict[str, str]]:
        header, *rows = self.tables[table]
        return [dict(zip(header, row, strict=True)) for row in rows]

    def classes(self, table: str) -> list[str]:
        """The class of each body row of ``table`` (the header row's first)."""
        return self.row_classes[table][1:]


def check_client_page(page: StatusPage, pair: MeteredPair) -> None:
    assert page.title.strip() == f"ambassador-client {CLIENT_NAME}"
    assert page.by_id["state"].startswith("ready, up ")
    assert page.tables["sessions"][0] == SESSION_COLUMNS
    [remote] = page.rows("sessions")
    assert remote["peer"] == f"127.0.0.1:{pair.server.port}"
    assert remote["state"] == "up"
    assert page.classes("sessions") == ["ok"]
    for column in ("received", "sent"):
        assert SIZE.fullmatch(remote[column]) and remote[column] != "0 B", remote
    services = {row["service"]: row for row in page.rows("services")}
    redis = services[f"redis on 127.0.0.1:{pair.redis_port}"]
    assert int(redis["total"]) >= pair.redis_connections
    assert redis["to backend"] != "0 B" and redis["to consumer"] != "0 B"
    dead = services[f"dead on 127.0.0.1:{pair.dead_port}"]
    assert dead["refused"] == "1 (backend_refused 1)"
    assert re.fullmatch(r"backend_refused \(\d+ s ago\)", dead["last refusal"]), dead


def test_status_pages_show_state_sessions_and_services(metered_pair: MeteredPair) -> None:
    response = http_get(metered_pair.client_metrics, "/")
    assert response.status == 200
    assert response.content_type == "text/html; charset=utf-8"
    check_client_page(StatusPage(response.text), metered_pair)

    response = http_get(metered_pair.server_metrics, "/")
    assert response.status == 200
    page = StatusPage(response.text)
    assert page.title.strip() == f"ambassador-server {SERVER_NAME}"
    assert page.by_id["state"].startswith("ready, up ")
    [session] = page.rows("sessions")
    assert session["peer"].startswith("127.0.0.1:")
    assert session["state"] == "up"
    services = [row["service"] for row in page.rows("services")]
    assert f"redis:{metered_pair.redis.port} -> 127.0.0.1:{metered_pair.redis.port}" in services


def chromium(user_data: Path, *args: str) -> subprocess.Popen[bytes]:
    """Headless Chromium kept to loopback: no sync, updates or lookups of other hosts."""
    argv = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={user_data}",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", *args,
    ]  # fmt: skip
    # Its own session, so that on a timeout its helpers go with it (by the browser's pid).
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def finish(browser: subprocess.Popen[bytes]) -> bytes:
    try:
        stdout, _ = browser.communicate(timeout=CHROMIUM_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(browser.pid, signal.SIGKILL)
        browser.communicate(timeout=5)
        pytest.fail(f"chromium did not finish within {CHROMIUM_TIMEOUT:g}s")
    assert browser.returncode == 0, f"chromium exited with {browser.returncode}"
    return stdout


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk comes first
    return width, height


# Virtual time lets the page's script run its first ticks (each a fetch of /status and
# /status/history) before the DOM is dumped or the screenshot taken.
SCRIPT_TIME = "--virtual-time-budget=2500"


def browse(tmp_path: Path, url: str, shots: dict[str, tuple[int, int]] | None = None) -> StatusPage:
    """The page at ``url`` after its script has run, from headless Chromium; with ``shots``,
    also a screenshot per name at that window size (into tmp_path, and STATUS_SCREENSHOTS)."""
    if not CHROMIUM.exists():
        missing(f"{CHROMIUM} is not installed (Debian: apt-get install chromium)")
    profiles = iter(range(1000))
    run = lambda *args: chromium(tmp_path / f"profile-{next(profiles)}", SCRIPT_TIME, *args)  # noqa: E731
    browsers = [run("--dump-dom", url)]
    for name, (width, height) in (shots or {}).items():
        browsers.append(
            run(f"--screenshot={tmp_path / name}", f"--window-size={width},{height}", url)
        )
    try:
        markup = finish(browsers[0]).decode()
        for browser in browsers[1:]:
            finish(browser)
    finally:
        for browser in browsers:
            if browser.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(browser.pid, signal.SIGKILL)
                browser.wait(timeout=5)
    keep = os.environ.get("STATUS_SCREENSHOTS")
    for name, size in (shots or {}).items():
        shot = tmp_path / name
        assert shot.stat().st_size > 5000, f"{name} is (nearly) blank"
        assert png_size(shot) == size
        if keep:
            shutil.copy(shot, Path(keep) / name)
    return StatusPage(markup)


def test_status_page_in_headless_chromium(metered_pair: MeteredPair, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{metered_pair.client_metrics}/"
    page = browse(tmp_path, url, {"status-narrow.png": (400, 900)})
    check_client_page(page, metered_pair)
    assert page.by_id["updated"].startswith("updated "), "the script did not redraw the page"
    assert int(page.attributes["chart-throughput"]["data-points"] or 0) >= 1


def redis_row(page: StatusPage, pair: MeteredPair) -> dict[str, str]:
    services = {row["service"]: row for row in page.rows("services")}
    return services[f"redis on 127.0.0.1:{pair.redis_port}"]


def test_a_transfer_moves_the_rate_and_the_chart(metered_pair: MeteredPair, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{metered_pair.client_metrics}/"
    time.sleep(2.5)  # two idle samples after the fixture's traffic
    idle = browse(tmp_path / "idle", url)
    assert redis_row(idle, metered_pair)["in/s"] == "0 B/s"
    assert idle.attributes["chart-throughput"]["data-last"] == "0"
    with RedisTraffic(metered_pair.redis_port) as traffic:
        time.sleep(2.5)
        busy = browse(tmp_path / "busy", url, {"status-client.png": (1000, 640)})
    assert traffic.sent > 0
    rate = redis_row(busy, metered_pair)["in/s"]
    assert re.fullmatch(r"\d+\.\d (KiB|MiB|GiB)/s", rate), rate
    chart = busy.attributes["chart-throughput"]
    assert float(chart["data-last"] or 0) > 1024, chart
    assert float(chart["data-top"] or 0) >= float(chart["data-last"] or 0)
    [line, _] = [a for a in busy.attrs["polyline"] if a.get("class") in ("in", "out")][:2]
    assert len((line["points"] or "").split()) >= 3
    assert busy.by_id["now-throughput"].startswith("in ")


def test_a_killed_server_turns_the_clients_row_red_with_the_reason(
    metered_pair: MeteredPair, tmp_path: Path
) -> None:
    # The server's page with a backend refusing (the fixture's "dead" service).
    server = browse(tmp_path / "server", f"http://127.0.0.1:{metered_pair.server_metrics}/",
                    {"status-server-failing.png": (1000, 640)})  # fmt: skip
    assert server.classes("sessions") == ["ok"]
    assert server.classes("services") == ["ok", "bad"]
    metered_pair.server.process.kill()

    def remote_down() -> dict[str, str] | None:
        status = json.loads(http_get(metered_pair.client_metrics, "/status").text)
        remote = status["remotes"][0]
        return remote if remote["state"] == "down" and remote["last_error"] else None

    wait_for("the client's remote down", remote_down, timeout=15)
    time.sleep(1.2)  # a sample of the history after it
    url = f"http://127.0.0.1:{metered_pair.client_metrics}/"
    page = browse(tmp_path / "down", url, {"status-client-failing.png": (1000, 640)})
    [remote] = page.rows("sessions")
    assert page.classes("sessions") == ["bad"]
    assert remote["state"] == "down"
    assert re.search(r"(lost|cannot reach).*\(\d+ s ago\)$", remote["last error"]), remote
    assert page.by_id["state"].startswith("not ready")


def test_a_hostile_servers_text_stays_text_on_the_page(
    processes: Processes, free_port: Callable[..., int], tmp_path: Path
) -> None:
    forged = "<img src=x onerror=\"document.title='owned'\"><script>document.title='owned'</script>"
    server = HostileServer([{"type": "refusal", "reason": 12, "text": forged}])
    try:
        metrics_port = free_port()
        client = processes.start("ambassador-client", [
            *ambassador("client"), "--remote", server.address, "--name", forged,
            "--expose", f"127.0.0.1:{free_port()}=echo",
            "--metrics-listen", f"127.0.0.1:{metrics_port}",
        ])  # fmt: skip
        client.wait_for_stderr("refused this client")
        served = StatusPage(http_get(metrics_port, "/").text)
        page = browse(tmp_path, f"http://127.0.0.1:{metrics_port}/")
    finally:
        server.stop()
    for shown in (served, page):
        assert shown.title.startswith("ambassador-client <img src=x"), shown.title
        assert "img" not in shown.attrs, "markup from a peer became an element"
        assert len(shown.attrs["script"]) == 1, "a script from a peer became an element"
        [remote] = shown.rows("sessions")
        assert "<script>document.title='owned'</script>" in remote["last error"]


def test_the_server_page_during_a_transfer(
    redis_server: Redis,
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    free_port: Callable[..., int],
    wait_for_port: Callable[..., None],
    tmp_path: Path,
) -> None:
    metrics, local = free_port(), free_port()
    args = [f"--metrics-listen=127.0.0.1:{metrics}", f"--name={SERVER_NAME}"]
    server = start_server(f"redis=127.0.0.1:{redis_server.port}", args=args)
    wait_for_port("127.0.0.1", metrics, alive=server.process.alive)
    start_client(f"--remote=127.0.0.1:{server.port}", f"--expose=127.0.0.1:{local}=redis",
                 listens=[("127.0.0.1", local)])  # fmt: skip
    with RedisTraffic(local):
        time.sleep(3)
        page = browse(tmp_path, f"http://127.0.0.1:{metrics}/", {"status-server.png": (1000, 640)})
    assert page.classes("sessions") == ["ok"] and page.classes("services") == ["ok"]
    [session] = page.rows("sessions")
    assert re.fullmatch(r"\d+\.\d (KiB|MiB|GiB)/s", session["in/s"]), session
    assert float(page.attributes["chart-streams"]["data-last"] or 0) >= 1
