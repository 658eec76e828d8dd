"""The status page on ``/``: what a person opening the endpoint in a browser reads. Parsed
with html.parser always; loaded in headless Chromium as well when it is installed."""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.environment import missing
from tests.observability.conftest import CLIENT_NAME, SERVER_NAME, MeteredPair
from tests.observability.support import http_get

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_TIMEOUT = 30.0
SESSION_COLUMNS = ["peer", "state", "rtt_ms", "streams", "bytes_in", "bytes_out", "last_error"]


class StatusPage(HTMLParser):
    """The facts of the page: its title, the text of each element with an id, and the rows
    of each table (by table id; the header row first)."""

    def __init__(self, markup: str) -> None:
        super().__init__()
        self.title = ""
        self.by_id: dict[str, str] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self._open: list[tuple[str, str | None]] = []
        self._table: str | None = None
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("meta", "br", "link"):
            return
        element_id = dict(attrs).get("id")
        self._open.append((tag, element_id))
        if element_id is not None:
            self.by_id[element_id] = ""
        if tag == "table" and element_id is not None:
            self._table = element_id
            self.tables[element_id] = []
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


def check_client_page(page: StatusPage, pair: MeteredPair) -> None:
    assert page.title.strip() == f"ambassador-client {CLIENT_NAME}"
    assert page.by_id["state"].startswith("ready, up ")
    assert page.tables["sessions"][0] == SESSION_COLUMNS
    [remote] = page.rows("sessions")
    assert remote["peer"] == f"127.0.0.1:{pair.server.port}"
    assert remote["state"] == "up"
    assert int(remote["bytes_in"]) > 0 and int(remote["bytes_out"]) > 0
    services = {row["service"]: row for row in page.rows("services")}
    redis = services[f"redis on 127.0.0.1:{pair.redis_port}"]
    assert int(redis["streams_total"]) >= pair.redis_connections
    assert int(redis["bytes_in"]) > 0 and int(redis["bytes_out"]) > 0
    assert services[f"dead on 127.0.0.1:{pair.dead_port}"]["refused"] == "1"


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


def test_status_page_in_headless_chromium(metered_pair: MeteredPair, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        missing(f"{CHROMIUM} is not installed (Debian: apt-get install chromium)")
    url = f"http://127.0.0.1:{metered_pair.client_metrics}/"
    screenshot = tmp_path / "status.png"
    # The DOM and the screenshot are taken by two browsers at once.
    dom = chromium(tmp_path / "profile-dom", "--dump-dom", url)
    shot = chromium(
        tmp_path / "profile-shot", f"--screenshot={screenshot}", "--window-size=1000,700", url
    )
    try:
        markup = finish(dom).decode()
        finish(shot)
    finally:
        for browser in (dom, shot):
            if browser.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(browser.pid, signal.SIGKILL)
                browser.wait(timeout=5)

    check_client_page(StatusPage(markup), metered_pair)
    assert screenshot.stat().st_size > 5000, "the screenshot is (nearly) blank"
    assert png_size(screenshot) == (1000, 700)
