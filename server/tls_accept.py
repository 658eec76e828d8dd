"""Accepting a TLS tunnel connection: the handshake, its failures, then the session.

Each accepted socket gets a :class:`~tunnel.aio.tlslayer.TlsLayer` in front of its session. A failed
handshake is logged once here, in words a person can act on, and counted; only a completed
handshake reaches the session, which then learns the client's identity (its certificate's name).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING

from server.admission import stranger_log
from tunnel.aio.tlslayer import TlsLayer
from tunnel.aio.transport import format_peer
from tunnel.operations import metrics
from tunnel.security.tls import peer_certificate, peer_common_name
from tunnel.security.tlserrors import describe_tls_error

if TYPE_CHECKING:
    from server.app import Server
    from server.connection import ServerConnection

log = logging.getLogger("ambassador.server")


def accept_tls(server: Server, context: ssl.SSLContext, binding: bytes) -> TlsLayer:
    """The protocol for one accepted socket: TLS first, then the tunnel session.

    ``binding`` is the channel binding of the certificate ``context`` presents; both are taken
    together at accept time, so a reload in the middle of a handshake cannot mix them up.
    """
    connection = server.make_connection(tls=True)
    timeout = server.config.handshake_timeout

    def on_handshake(layer: TlsLayer, exc: BaseException | None) -> None:
        timer.cancel()
        if exc is None:
            connection.tls_done = True
            connection.cert_name = peer_common_name(layer.ssl_object)
            connection.peer_cert = peer_certificate(layer.ssl_object)
            connection.channel_binding = binding
            return
        if not connection.refused:  # else refused before the handshake, and said so
            _refused(connection, layer, exc)

    layer = TlsLayer(
        context, connection.tunnel, server_side=True, on_handshake=on_handshake,
        on_connect=connection.admit,
    )  # fmt: skip
    timer = asyncio.get_running_loop().call_later(
        timeout, _expire, layer, f"no TLS handshake within {timeout:g}s"
    )
    return layer


def _expire(layer: TlsLayer, why: str) -> None:
    if not layer.handshake_done.done():
        layer.fail(TimeoutError(why))


def _refused(connection: ServerConnection, layer: TlsLayer, exc: BaseException) -> None:
    peer = format_peer(layer.get_extra_info("peername"))
    if isinstance(exc, TimeoutError):
        why = str(exc)
    elif isinstance(exc, ConnectionError) and not isinstance(exc, ssl.SSLError):
        why = "the peer closed the connection during the TLS handshake"
    else:
        why = describe_tls_error(exc, server_side=True)
    stranger_log.warning("refused connection from %s: %s", peer, why)
    connection.refused = True
    metrics.SESSION_ENDS.labels("server", "tls_handshake").inc()
    connection.tunnel.close(why)
