"""The observability endpoint of a role: metrics, health, readiness and a status page.

A deliberately small HTTP/1.1 server on asyncio (GET only, one request per connection), so that
it shares the role's event loop and reads the role's live state without locks:

    /metrics   Prometheus text, rendered by prometheus-client from metrics.REGISTRY
    /healthz   200 while the process runs
    /readyz    200 when the role can serve (client: tunnel up, catalog received and every
               exposed service in it; server: listening), 503 otherwise, saying why when the
               role knows
    /status    the role's state as JSON (what ``ambassador-* status`` prints)
    /          the same facts as a small HTML page

With helper processes (``--workers``), /metrics and /status first ask each helper for its own
(:mod:`tunnel.operations.workers`) and serve everything merged, each series labelled with its
worker.

/status and the page name backends, client addresses and identities, with no authentication, so
they are served only to loopback peers: a port bound beyond loopback (the kubelet's probes need
``0.0.0.0`` in a pod) answers others /healthz, /readyz and /metrics only, and 403 for the rest.
On the host, ``ambassador-* status`` (or ``kubectl port-forward``) still shows everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from tunnel.operations.metrics import REGISTRY
from tunnel.operations.statusview import render_html
from tunnel.operations.workers.merge import MergedMetrics, merge_status
from tunnel.operations.workers.pool import WorkerPool
from tunnel.settings.wording import hostport

log = logging.getLogger("ambassador.httpd")

STATUS_PATHS = ("/status", "/", "/index.html")
NOT_LOCAL = (
    b"the status names backends, client addresses and identities, so it is served to loopback "
    b"only; on the host run `ambassador-server status` (or `ambassador-client status`), or use "
    b"kubectl port-forward; /healthz, /readyz and /metrics are served to anyone\n"
)


def is_local_peer(peer: object) -> bool:
    """Whether a connection's peer address is loopback (a unix socket's counts as local)."""
    if not isinstance(peer, tuple) or not peer:
        return True
    try:
        address = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


class StatusServer:
    def __init__(
        self,
        status: Callable[[], dict[str, Any]],
        ready: Callable[[], bool],
        unready_reason: Callable[[], str] | None = None,
        pool: WorkerPool | None = None,
    ) -> None:
        self._status = status
        self._ready = ready
        self._unready_reason = unready_reason
        self._server: asyncio.Server | None = None
        self.pool = pool  # helpers whose metrics and status are merged in

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._handle, host, port)
        sockname = self._server.sockets[0].getsockname()
        log.info("metrics and status on http://%s/", hostport(host, sockname[1]))
        return sockname[0], sockname[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                # At most the reader's limit (asyncio's 64 KiB): past it, LimitOverrunError.
                head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            writer.close()
            return
        except ConnectionError:
            return
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split()
        method, path = (parts[0], parts[1]) if len(parts) >= 2 else ("", "")
        path = path.split("?", 1)[0]
        local = is_local_peer(writer.get_extra_info("peername"))
        reports = None
        if (
            self.pool is not None
            and path in ("/metrics", *STATUS_PATHS)
            and (local or path == "/metrics")
        ):
            reports = await self.pool.reports()
        status, content_type, body = self.respond(method, path, reports, local)
        header = (
            f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n"
            "Cache-Control: no-store\r\n\r\n"
        )
        with contextlib.suppress(ConnectionError):
            writer.write(header.encode() + (body if method != "HEAD" else b""))
            await writer.drain()
        writer.close()

    def respond(
        self,
        method: str,
        path: str,
        reports: list[tuple[int, dict[str, Any]]] | None = None,
        local: bool = True,
    ) -> tuple[str, str, bytes]:
        """Status line, content type and body for one request (no I/O; easy to test).

        ``reports`` are the helper processes' metrics and status, when there are helpers;
        ``local`` says the request came from loopback, the only peers shown /status.
        """
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"only GET\n"
        if path in STATUS_PATHS and not local:
            return "403 Forbidden", "text/plain", NOT_LOCAL
        if path == "/metrics":
            if reports is None:
                return "200 OK", CONTENT_TYPE_LATEST, generate_latest(REGISTRY)
            merged = CollectorRegistry(auto_describe=False)
            merged.register(MergedMetrics(reports))
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(merged)
        if path == "/healthz":
            return "200 OK", "text/plain", b"ok\n"
        if path == "/readyz":
            if self._ready():
                return "200 OK", "text/plain", b"ready\n"
            why = self._unready_reason() if self._unready_reason is not None else ""
            text = f"not ready: {why}\n" if why else "not ready\n"
            return "503 Service Unavailable", "text/plain", text.encode()
        if path in STATUS_PATHS:
            facts = self._status()
            if reports is not None:
                facts = merge_status(facts, reports)
            if path == "/status":
                body = json.dumps(facts, indent=2, default=str).encode()
                return "200 OK", "application/json", body
            return "200 OK", "text/html; charset=utf-8", render_html(facts).encode()
        return "404 Not Found", "text/plain", b"not found\n"
