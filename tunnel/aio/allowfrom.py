"""``--allow-from`` at a tunnel listener, whichever role listens.

The listener is the server's ``--listen`` or the client's ``--listen`` (reverse mode), and the
rule is the same for both: a source outside the list is refused the moment its connection is
accepted, before TLS or a hello cost anything; counted in
``ambassador_connections_rejected_total{reason="allow_from"}``; logged once per source per
interval (:class:`~tunnel.operations.logonce.Throttled`, keyed by the source, never by what it
sent). Over plaintext the peer is told why first (a Refusal, then a Go Away:
:func:`~tunnel.protocol.handshake.refusal_before_hello`), so that it says so in its own log
rather than retrying blind; under TLS nothing can be said before the handshake, and it is only
closed. What it is told names the address the listener saw, never the list.
"""

from __future__ import annotations

import asyncio

from tunnel.aio.transport import TunnelConnection, format_peer, linger_and_close
from tunnel.errors import Reason
from tunnel.operations import metrics
from tunnel.operations.admission import address_key
from tunnel.operations.logonce import Throttled
from tunnel.protocol.handshake import refusal_before_hello
from tunnel.security.allowlist import Allowlist

REASON = "allow_from"  # the count's label and the tunnel's close reason


def refuse_unlisted(
    tunnel: TunnelConnection,
    transport: asyncio.BaseTransport,
    allow_from: Allowlist,
    throttled: Throttled,
    *,
    role: str,
    plaintext: bool,
) -> bool:
    """True, with ``tunnel`` closed and the refusal counted, logged and (over plaintext)
    said, when the peer is not in ``allow_from``; False when it may go on.

    ``role`` is the listening side, ``server`` or ``client``: the peer is told which one
    refused it, and the listening client speaks as the yamux client it still is."""
    peername = transport.get_extra_info("peername")
    if allow_from.allows(peername):
        return False
    metrics.CONNECTIONS_REJECTED.labels(REASON).inc()
    throttled.warning(
        f"{REASON}:{address_key(peername)}",
        "refused connection from %s: not in --allow-from (%s); add its address there "
        "if it should connect",
        format_peer(peername), allow_from,
    )  # fmt: skip
    if plaintext:
        peer = "server" if role == "client" else "client"
        host = peername[0] if isinstance(peername, tuple) and peername else "?"
        text = (
            f"this {role} takes tunnel connections only from the addresses its --allow-from "
            f"lists, and it sees this {peer} as {host}"
        )
        # Written at once, then the peer's own first bytes are read and dropped: closing on
        # them unread would reset the connection, and the peer would lose the refusal.
        last_word = refusal_before_hello(
            Reason.NOT_ALLOWED, text, listening_client=role == "client"
        )
        linger_and_close(transport, last_word)
        tunnel.lingering = True
    tunnel.close(REASON)
    return True
