"""Accepting a TLS tunnel connection: the handshake, its failures, then the session.

Each accepted socket gets a :class:`~tunnel.aio.tlslayer.TlsLayer` in front of its session. A failed
handshake is put here in words a person can act on, and the connection says it once and counts
it; only a completed handshake reaches the session, which then learns the client's identity (its
certificate's name). The connection is told through :class:`TlsAccepting`, not written to.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Protocol

from tunnel.aio.proxyaccept import UNEXPECTED, UNEXPECTED_TEXT
from tunnel.aio.tlslayer import TlsLayer
from tunnel.aio.transport import TunnelConnection, format_peer
from tunnel.security.tls import peer_certificate, peer_common_name
from tunnel.security.tlserrors import describe_tls_error

log = logging.getLogger("ambassador.server")


class TlsAccepting(Protocol):
    """What a connection behind a TLS handshake is told of it (a
    :class:`~server.connection.ServerConnection`)."""

    tunnel: TunnelConnection
    refused: bool  # refused already (before the handshake), and said so

    def admit(self, transport: asyncio.BaseTransport) -> bool: ...

    def tls_established(self, cert_name: str | None, cert: bytes | None, binding: bytes) -> None:
        """The handshake completed: the client certificate's name and DER, if it gave one,
        and the channel binding of the server's certificate."""

    def tls_refused(self, peer: str, why: str, rejected: str | None = None) -> None:
        """The handshake failed, for ``why``: say so once, count it (as a connection
        ``rejected`` for that reason, if given), close."""


def accept_tls(
    connection: TlsAccepting,
    context: ssl.SSLContext,
    binding: bytes,
    timeout: float,
    inner: asyncio.BufferedProtocol | None = None,
) -> TlsLayer:
    """The protocol for one accepted socket: TLS first, then ``inner`` (a WebSocket layer) or
    the tunnel session.

    ``binding`` is the channel binding of the certificate ``context`` presents; both are taken
    together at accept time, so a reload in the middle of a handshake cannot mix them up.
    """

    def on_handshake(layer: TlsLayer, exc: BaseException | None) -> None:
        timer.cancel()
        if exc is None:
            ssl_object = layer.ssl_object
            connection.tls_established(
                peer_common_name(ssl_object), peer_certificate(ssl_object), binding
            )
            return
        if not connection.refused:  # else refused before the handshake, and said so
            _refused(connection, layer, exc)

    layer = TlsLayer(
        context, inner or connection.tunnel, server_side=True, on_handshake=on_handshake,
        on_connect=connection.admit,
    )  # fmt: skip
    timer = asyncio.get_running_loop().call_later(
        timeout, _expire, layer, f"no TLS handshake within {timeout:g}s"
    )
    return layer


def _expire(layer: TlsLayer, why: str) -> None:
    if not layer.handshake_done.done():
        layer.fail(TimeoutError(why))


def _refused(connection: TlsAccepting, layer: TlsLayer, exc: BaseException) -> None:
    peer = format_peer(layer.get_extra_info("peername"))
    if layer.proxy_header:
        connection.tls_refused(peer, UNEXPECTED_TEXT, UNEXPECTED)
        return
    if isinstance(exc, TimeoutError):
        why = str(exc)
    elif isinstance(exc, ConnectionError) and not isinstance(exc, ssl.SSLError):
        why = "the peer closed the connection during the TLS handshake"
    else:
        why = describe_tls_error(exc, server_side=True)
    connection.tls_refused(peer, why)
