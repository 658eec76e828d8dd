"""A listener's allowlist, checked the moment a connection is accepted.

:class:`SourceGate` stands in front of a connection's real protocol only where a list applies
(an exposed port with ``--expose-allow``): a peer the list allows gets the real protocol at once
(which may hand the socket to a helper process, having read nothing); any other is closed with
a reset before a byte is read or a stream is opened, and ``refuse`` is told, to count it and say
it (once per source per interval: the caller's throttle).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from tunnel.aio.relay import abort_with_reset
from tunnel.security.allowlist import Allowlist


class SourceGate(asyncio.Protocol):
    def __init__(
        self,
        allowlist: Allowlist,
        inner: Callable[[], asyncio.BaseProtocol],
        refuse: Callable[[object], None],
    ) -> None:
        self._allowlist = allowlist
        self._inner = inner
        self._refuse = refuse

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peername = transport.get_extra_info("peername")
        if not self._allowlist.allows(peername):
            self._refuse(peername)
            abort_with_reset(transport)
            return
        protocol = self._inner()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
