"""What the observability tests share: a bounded HTTP GET, Prometheus text read back into
samples, bounded polling, and the listening sockets of a process (from /proc).

Every network call here has a timeout, and every wait has a deadline.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")

HTTP_TIMEOUT = 5.0


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


def http_get(port: int, path: str, host: str = "127.0.0.1") -> Response:
    """One GET to host:port (bounded); the status, content type and body."""
    connection = http.client.HTTPConnection(host, port, timeout=HTTP_TIMEOUT)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return Response(response.status, response.getheader("Content-Type", ""), response.read())
    finally:
        connection.close()


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.05
) -> T:
    """Poll ``probe`` until it returns something other than None or False; fail at ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
        except OSError:
            value = None
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:g}s")
        time.sleep(interval)


# ------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


class Metrics:
    """A /metrics page read with prometheus_client's own parser."""

    def __init__(self, text: str) -> None:
        self.families = {family.name: family for family in text_string_to_metric_families(text)}
        self.samples = [
            Sample(sample.name, dict(sample.labels), sample.value)
            for family in self.families.values()
            for sample in family.samples
        ]

    def find(self, name: str, **labels: str) -> list[Sample]:
        """The samples called ``name`` whose labels include all of ``labels``."""
        return [
            sample
            for sample in self.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the matching samples (0 when there is none: a series not touched yet)."""
        return sum(sample.value for sample in self.find(name, **labels))


def scrape(port: int) -> Metrics:
    response = http_get(port, "/metrics")
    assert response.status == 200, response.text
    return Metrics(response.text)


# ------------------------------------------------------------------- sockets


def consumer_refused(port: int, timeout: float = 5.0) -> bool:
    """Connect as a consumer, send a byte, and report whether the connection ended (reset or
    EOF) without an answer, as it must when the backend refuses."""
    # The pair may refuse before the first byte is even sent: the reset can arrive while
    # connect() returns, or on send.
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


_SOCKET_LINK = re.compile(r"socket:\[(\d+)\]")
_LISTEN = "0A"


def listening_ports(pid: int) -> set[int]:
    """The TCP ports the process ``pid`` listens on (Linux /proc; skips elsewhere)."""
    fd_dir = Path(f"/proc/{pid}/fd")
    if not fd_dir.is_dir():
        pytest.skip("needs Linux /proc to list a process's sockets")
    inodes = set()
    for entry in fd_dir.iterdir():
        try:
            found = _SOCKET_LINK.fullmatch(os.readlink(entry))
        except OSError:
            continue
        if found is not None:
            inodes.add(found[1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == _LISTEN and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


# ------------------------------------------------------------------- tables


def table_rows(text: str, heading: str) -> list[dict[str, str]]:
    """The rows of one table of ``ambassador-* status`` output, keyed by lower-case column.

    A table follows its heading line (``REMOTES``, ``SESSIONS``, ``SERVICES``); columns are
    separated by two or more spaces and the table ends at a blank line.
    """
    lines = text.splitlines()
    assert heading in lines, f"no {heading} table in:\n{text}"
    start = lines.index(heading) + 1
    block = []
    for line in lines[start:]:
        if not line.strip():
            break
        block.append(line)
    header, *rows = block
    columns = [column.lower() for column in re.split(r"\s{2,}", header.strip())]
    return [dict(zip(columns, re.split(r"\s{2,}", row.strip()), strict=True)) for row in rows]
