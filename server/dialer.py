"""The server dialing out: one session to the first ``ambassador-client --listen`` that answers.

With ``--connect`` the server offers its backends over a connection it dials itself, for a host
behind NAT or an outbound-only firewall. Only the transport's direction changes: this side is
still the yamux server (even stream ids), answers the hello and offers the catalog
(:mod:`server.connection`); the client still speaks first and opens every stream. Under TLS
this side is the TLS client: it verifies the listener's certificate against ``--tls-ca`` (its
SAN must name the host dialed) and presents its own certificate, when it has one, for a
listener that requires it. The channel binding its token proof covers is then the listener's
certificate, which it has from the handshake.

Several targets are tried in turn, as the client tries several ``--remote``: after a loss the
first is tried again first, with the same backoff (exponential, full jitter) and the same rule
that a session lost soon after it came up counts as a failure.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Callable

from server.connection import ServerConnection
from tunnel.aio.tlslayer import TlsLayer
from tunnel.operations import metrics
from tunnel.operations.oserrors import connect_error
from tunnel.protocol.peertext import shown
from tunnel.security.binding import server_end_point
from tunnel.security.tls import peer_certificate, peer_common_name
from tunnel.security.tlserrors import describe_tls_error
from tunnel.settings.links import Address

log = logging.getLogger("ambassador.server")

STABLE_SESSION = 10.0  # seconds a session must last for the backoff to start over
BACKOFF_MIN = 0.1
BACKOFF_MAX = 10.0


class DialFailed(Exception):
    """One attempt failed; the message says why in one line."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(text)
        self.reason = reason


class Dialer:
    """Keeps one dialed session up, failing over across the ``--connect`` targets."""

    def __init__(
        self,
        targets: Callable[[], tuple[Address, ...]],
        make_connection: Callable[[str, bool], ServerConnection],
        context: Callable[[], tuple[ssl.SSLContext | None, str | None]],
        timeouts: Callable[[], tuple[float, float]],
    ) -> None:
        """``targets``, ``context`` (the TLS client context and the name to check, or None)
        and ``timeouts`` (connect, handshake) are read on every attempt: a reload changes
        them for the next one."""
        self._targets = targets
        self._make_connection = make_connection
        self._context = context
        self._timeouts = timeouts
        self.connection: ServerConnection | None = None  # the session up, if any
        self.target: Address | None = None
        self.errors: dict[Address, str] = {}  # each target's last error, until it is up
        self._failing: dict[Address, str] = {}  # target -> reason last logged for it
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run())

    def stop(self) -> None:
        """Dial no more (a drain or a stop); the session up, if any, is the server's to end."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def run(self) -> None:
        failures = 0
        index = 0
        while True:
            targets = self._targets()
            target = targets[index % len(targets)]
            if failures:
                metrics.RECONNECTS.labels(str(target)).inc()
            try:
                connection = await self._dial(target)
            except DialFailed as exc:
                metrics.CONNECT_FAILURES.labels(str(target), exc.reason).inc()
                if self._failing.get(target) != exc.reason:
                    log.warning("%s; retrying", exc)
                self._failing[target] = exc.reason
                self.errors[target] = str(exc)
                failures += 1
                index += 1
                await asyncio.sleep(random.uniform(0, _bound(failures)))
                continue
            self._failing.pop(target, None)
            self.errors.pop(target, None)
            self.connection, self.target = connection, target
            loop = asyncio.get_running_loop()
            up_since = loop.time()
            # Shielded: cancelling this task (a drain or a stop) must not cancel the session's
            # own ``closed`` future, which the connection and the server still wait on.
            reason = await asyncio.shield(connection.tunnel.closed)
            self.connection = None
            self.errors[target] = f"session with {target} lost: {reason}"
            index = 0  # the first target is preferred again
            if loop.time() - up_since >= STABLE_SESSION:
                failures = 0
            else:
                failures += 1
                await asyncio.sleep(random.uniform(0, _bound(failures)))

    async def _dial(self, target: Address) -> ServerConnection:
        loop = asyncio.get_running_loop()
        context, server_name = self._context()
        connect_timeout, handshake_timeout = self._timeouts()
        connection = self._make_connection(str(target), context is not None)
        protocol: asyncio.BaseProtocol = connection.tunnel
        layer: TlsLayer | None = None
        if context is not None:

            def on_handshake(layer: TlsLayer, exc: BaseException | None) -> None:
                # Said at once, before the client's hello can arrive behind the handshake.
                if exc is None:
                    der = peer_certificate(layer.ssl_object)
                    name = peer_common_name(layer.ssl_object)
                    connection.tls_established(name, der, server_end_point(der))

            layer = TlsLayer(context, connection.tunnel, server_side=False,
                             server_hostname=server_name or target.host,
                             on_handshake=on_handshake)  # fmt: skip
            protocol = layer
        try:
            async with asyncio.timeout(connect_timeout):
                await loop.create_connection(lambda: protocol, target.host, target.port)
        except (OSError, TimeoutError) as exc:
            connection.refused = True  # said here
            connection.tunnel.close("dial failed")
            text, reason = connect_error(str(target), exc, connect_timeout)
            text = text.replace("ambassador-server running", "ambassador-client --listen running")
            raise DialFailed(text, reason) from None
        if layer is not None:
            await _tls_done(target, layer, connection, handshake_timeout)
        closed = connection.tunnel.closed
        done, _ = await asyncio.wait((connection.up, closed), return_when=asyncio.FIRST_COMPLETED)
        if connection.up not in done:
            turned_away = connection.turned_away
            if turned_away is not None:
                raise DialFailed(
                    f"{target} refused this server: {shown(turned_away.text)}",
                    turned_away.reason.label,
                )
            raise DialFailed(
                f"{target} ended the session during the hello ({closed.result()}); is it an "
                "ambassador-client --listen?",
                "handshake_closed",
            )
        log.info("session up with %s (dialed)", target)
        return connection


async def _tls_done(
    target: Address, layer: TlsLayer, connection: ServerConnection, timeout: float
) -> None:
    try:
        async with asyncio.timeout(timeout):
            await layer.handshake_done
    except TimeoutError:
        layer.abort()
        connection.refused = True
        raise DialFailed(
            f"TLS with {target} failed: no handshake within {timeout:g}s", "tls"
        ) from None
    except (ssl.SSLError, ssl.CertificateError) as exc:
        connection.refused = True
        connection.tunnel.close("tls failed")
        raise DialFailed(f"TLS with {target} failed: {describe_tls_error(exc)}", "tls") from None
    except ConnectionError:
        connection.refused = True
        connection.tunnel.close("tls failed")
        raise DialFailed(
            f"TLS with {target} failed: it closed the connection during the handshake (does "
            "it require a client certificate, then give --tls-cert/--tls-key; or is it "
            "running without TLS?)",
            "tls",
        ) from None


def _bound(failures: int) -> float:
    return float(min(BACKOFF_MAX, BACKOFF_MIN * 2**failures))
