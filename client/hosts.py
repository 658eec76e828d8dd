"""The offering hosts a listening client knows, each by its identity, and how services name them.

With ``--listen``, servers dial in (``ambassador-server --connect``) and each is a *host*, named
by its identity: its certificate's name under mutual TLS, else the name of the token it proved,
else ``anonymous``. A consumer reaches a host's service as ``HOST/SERVICE`` (``edge1/redis``);
a plain ``redis`` goes to the one host connected, and is refused while there are several.

A :class:`HostLink` is to a host what the :class:`~client.connector.Connector` is to the one
server of forward mode: the consumer streams ask it for the tunnel, the catalog and whether a
service is offered. A host that is not connected refuses its consumers at once, with the reason
logged and counted (``link_down``): a consumer waiting for a site that may be gone for hours
helps nobody.

A second session under the identity of a host already up *replaces* the first. A site behind
NAT whose old TCP connection died silently can only come back this way: refusing it would keep
the site out until keepalive noticed (up to ``--keepalive-timeout``). The cost is that two live
hosts sharing an identity would take turns; so each replacement is logged, and several within
a minute are an error line naming the fix (give each host its own certificate or token).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace

from client.config import ClientConfig
from client.connector import find_service
from tunnel.aio.transport import TunnelConnection
from tunnel.operations import metrics
from tunnel.protocol.messages import HEADER_VERSION, CatalogChanged, GoingAway, Message, ServiceInfo
from tunnel.protocol.peertext import NAME_LIMIT, quoted, shown

log = logging.getLogger("ambassador.client")

SEPARATOR = "/"
FIGHT_WINDOW = 60.0  # seconds over which replacements of one identity are counted
FIGHT_REPLACEMENTS = 3  # that many in the window: two live hosts share the identity


class HostLink:
    """One offering host, as its consumers see it (what ConsumerStream asks a connector)."""

    def __init__(
        self,
        identity: str,
        config: ClientConfig,
        why_down: str = "",
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.identity = identity
        self.on_change = on_change  # told when its catalog changes
        self.config = replace(config, link_wait_timeout=0.0)  # refused at once while down
        self.tunnel: TunnelConnection | None = None
        self.catalog: tuple[ServiceInfo, ...] | None = None
        # The stream header version its server asked for (2: with the consumer's origin).
        self.stream_header = HEADER_VERSION
        self.peer = ""
        self.last_error = why_down or f"host {quoted(identity)} is not connected"
        self.error_at: float | None = None  # when the last session was lost (for /status)
        # What Connector.refusal says of a server that refused this client: a host dials in,
        # so no answer of its ever refuses the listening client as a whole.
        self.refusal = ""
        self._offered: dict[str, bool] = {}
        self._replaced: deque[float] = deque()

    @property
    def who(self) -> str:
        """The identity, quoted, escaped and bounded for logs, labels and /status."""
        return quoted(self.identity, NAME_LIMIT)

    def offers(self, service: str) -> bool:
        known = self._offered.get(service)
        if known is None:
            catalog = self.catalog
            known = catalog is None or find_service(catalog, service) is not None
            self._offered[service] = known
        return known

    async def wait_tunnel(self, timeout: float) -> TunnelConnection | None:
        tunnel = self.tunnel
        return tunnel if tunnel is not None and tunnel.accepts_streams else None

    def rotate_if_exhausted(self, tunnel: TunnelConnection) -> None:
        """A dialed session cannot be replaced from this side: when it runs out of stream
        ids it is closed, and the host dials again."""
        if tunnel.session.streams_left < 10_000 and tunnel is self.tunnel:
            metrics.LIMIT_HITS.labels("stream_ids").inc()
            tunnel.close("out of stream ids")

    def on_message(self, message: Message) -> None:
        if isinstance(message, CatalogChanged):
            self.catalog = message.catalog
            self.stream_header = message.stream_header
            self._offered.clear()
            if self.on_change is not None:
                self.on_change()
        elif isinstance(message, GoingAway):
            self.last_error = f"host {self.who} is going away: {shown(message.text)}"

    def take(
        self,
        tunnel: TunnelConnection,
        peer: str,
        catalog: tuple[ServiceInfo, ...],
        stream_header: int = HEADER_VERSION,
    ) -> None:
        """A new session of this host; the one it replaces, if any, is closed."""
        old = self.tunnel
        if old is not None and old.is_open:
            self._replacing(old, peer)
        self.tunnel, self.peer, self.catalog = tunnel, peer, catalog
        self.stream_header = stream_header
        self._offered.clear()
        self.last_error = ""

    def _replacing(self, old: TunnelConnection, peer: str) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        times = self._replaced
        times.append(now)
        while times and now - times[0] > FIGHT_WINDOW:
            times.popleft()
        metrics.SESSION_ENDS.labels("client", "replaced").inc()
        log.warning(
            "host %s connected again from %s while its session from %s was up; the new "
            "session replaces the old one",
            self.who, peer, self.peer,
        )  # fmt: skip
        if len(times) >= FIGHT_REPLACEMENTS:
            log.error(
                "host %s replaced its session %d times within %gs (from %s and %s): two live "
                "hosts seem to share this identity; give each its own certificate "
                "(certs client NAME) or token",
                self.who, len(times), FIGHT_WINDOW, self.peer, peer,
            )  # fmt: skip
        old.close("replaced by a new session of the same host")

    def lost(self, tunnel: TunnelConnection, reason: str) -> bool:
        """The session ``tunnel`` ended; True if it was this host's current one."""
        if tunnel is not self.tunnel:
            return False
        self.tunnel = None
        self.last_error = f"host {self.who} disconnected: {shown(reason)}"
        self.error_at = time.time()
        return True


def split_service(service: str) -> tuple[str | None, str]:
    """``edge1/redis`` as (``edge1``, ``redis``); a plain name names no host."""
    host, separator, name = service.rpartition(SEPARATOR)
    return (host, name) if separator else (None, service)


def combined_catalog(links: list[HostLink]) -> tuple[ServiceInfo, ...]:
    """What the connected hosts offer, each entry named ``HOST/NAME`` (and, with one host
    connected, by its plain name too)."""
    up = [link for link in links if link.tunnel is not None and link.catalog is not None]
    entries: list[ServiceInfo] = []
    for link in up:
        for info in link.catalog or ():
            entries.append(
                ServiceInfo(f"{link.identity}{SEPARATOR}{info.name}", info.port, info.transport)
            )
    if len(up) == 1:
        entries.extend(up[0].catalog or ())
    return tuple(entries)
