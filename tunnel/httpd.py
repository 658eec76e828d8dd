"""The observability endpoint of a role: metrics, health, readiness and a status page.

A deliberately small HTTP/1.1 server on asyncio (GET only, one request per connection), so that
it shares the role's event loop and reads the role's live state without locks:

    /metrics   Prometheus text, rendered by prometheus-client from tunnel.metrics.REGISTRY
    /healthz   200 while the process runs
    /readyz    200 when the role can serve (client: tunnel up and catalog received;
               server: listening), 503 otherwise
    /status    the role's state as JSON (what ``ambassador-* status`` prints)
    /          the same facts as a small HTML page
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tunnel.metrics import REGISTRY
from tunnel.statusview import render_html

log = logging.getLogger("ambassador.httpd")

MAX_REQUEST = 8192


class StatusServer:
    def __init__(self, status: Callable[[], dict[str, Any]], ready: Callable[[], bool]) -> None:
        self._status = status
        self._ready = ready
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._handle, host, port)
        sockname = self._server.sockets[0].getsockname()
        log.info("metrics and status on http://%s:%d/", host, sockname[1])
        return sockname[0], sockname[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            writer.close()
            return
        except ConnectionError:
            return
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split()
        method, path = (parts[0], parts[1]) if len(parts) >= 2 else ("", "")
        status, content_type, body = self.respond(method, path.split("?", 1)[0])
        header = (
            f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n"
            "Cache-Control: no-store\r\n\r\n"
        )
        with contextlib.suppress(ConnectionError):
            writer.write(header.encode() + (body if method != "HEAD" else b""))
            await writer.drain()
        writer.close()

    def respond(self, method: str, path: str) -> tuple[str, str, bytes]:
        """Status line, content type and body for one request (no I/O; easy to test)."""
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"only GET\n"
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(REGISTRY)
        if path == "/healthz":
            return "200 OK", "text/plain", b"ok\n"
        if path == "/readyz":
            if self._ready():
                return "200 OK", "text/plain", b"ready\n"
            return "503 Service Unavailable", "text/plain", b"not ready\n"
        if path == "/status":
            body = json.dumps(self._status(), indent=2, default=str).encode()
            return "200 OK", "application/json", body
        if path in ("/", "/index.html"):
            html = render_html(self._status())
            return "200 OK", "text/html; charset=utf-8", html.encode()
        return "404 Not Found", "text/plain", b"not found\n"
