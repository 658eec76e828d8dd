"""A listener's first look at a connection: a PROXY protocol header, accepted or refused.

Behind a load balancer every connection comes from the balancer's address. One that speaks the
PROXY protocol (haproxy's ``send-proxy``/``send-proxy-v2``, AWS NLB, GCP, ...) writes the
client's real endpoints in front of the first byte; with ``accept=True`` a :class:`ProxyAccept`
reads that header (strictly: :mod:`tunnel.protocol.proxyheader`) before anything else happens,
and the connection's protocol then sees the real client wherever it asks the transport for its
``peername``: logs, admission, allowlists and status all name the real address.

Reading the header is bounded: the header's own size (107 bytes for v1, ``V2_MAX`` for v2), a
deadline, and a ceiling on connections waiting for theirs (:class:`Pending`). A connection over
any bound, or with a malformed header, is closed and ``refuse`` is told why, in one line.

Only a peer in ``trusted`` (``--accept-proxy-from``: the balancers' own addresses) may send a
header: anyone else who reached the port could otherwise claim any address, and so pass the
allowlists and per-address limits as someone else. A connection from elsewhere is served as if
``accept`` were off: judged by its socket's own address, and closed if it sends a header.

With ``accept=False`` (or an untrusted peer) a header is refused instead: the connection's
protocol starts at once (its own timers run), and only its first read passes through here, to
recognise a balancer that sends a header nobody asked for (or a peer claiming an address it may
not), which would otherwise show as a confusing protocol or TLS error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from tunnel.aio.transport import format_peer
from tunnel.operations.admission import address_key
from tunnel.operations.loglimit import LogBudget
from tunnel.operations.logonce import Throttled
from tunnel.operations.metrics import CONNECTIONS_REJECTED
from tunnel.protocol.origin import Family, Origin
from tunnel.protocol.proxyheader import ProxyHeaderError, ProxyHeaderParser, starts_like_proxy
from tunnel.security.allowlist import Allowlist

# What a load balancer in front must do, said with every malformed or missing header.
_FIX = "the load balancer in front must send PROXY v1 or v2 (haproxy: send-proxy or send-proxy-v2)"

# A header sent to a listener without --accept-proxy-protocol. With the flag off no ProxyAccept
# stands in front (its cost per connection was measured: tests/bench/sessionrate.py): the
# session notices the header when its first read fails to decode (Session.proxy_header), and the
# role says this, with this count.
UNEXPECTED = "proxy_header_unexpected"
UNEXPECTED_TEXT = (
    "the connection starts with a PROXY protocol header, but this listener does not accept "
    "one; add --accept-proxy-protocol if a load balancer in front sends it, or stop it "
    "sending one"
)

# How a refusal is reported: (the connection's peer as its socket names it, a reason label for
# the metrics, one line saying what happened and what to do).
Refuse = Callable[[object, str, str], None]


def reporter(budget: LogBudget, throttled: Throttled) -> Refuse:
    """How a listening role (either) reports a connection refused here: counted by reason,
    and one line, within the strangers' ``budget``; a source claiming addresses it may not,
    once per source per interval (``throttled``)."""

    def refuse(peername: object, reason: str, text: str) -> None:
        CONNECTIONS_REJECTED.labels(reason).inc()
        if reason == "proxy_header_untrusted":
            key = f"{reason}:{address_key(peername)}"
            throttled.warning(key, "refused connection from %s: %s", format_peer(peername), text)
            return
        budget.warning("refused connection from %s: %s", format_peer(peername), text)

    return refuse


class Pending:
    """Connections waiting for their PROXY header, at most ``limit`` at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0


class Readdressed:
    """A transport that names the real client as its peer; everything else is the socket's.

    Attributes are looked up on the socket's transport once and then kept here, so the data
    path calls the transport's own bound methods, not a forwarding function per write.
    """

    def __init__(self, transport: asyncio.Transport, origin: Origin) -> None:
        self._transport = transport
        if origin.family is Family.UNIX:
            self._peername: Any = origin.source
            self._sockname: Any = origin.destination
        else:
            self._peername = (origin.source, origin.source_port)
            self._sockname = (origin.destination, origin.destination_port)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peername
        if name == "sockname":
            return self._sockname
        return self._transport.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._transport, name)
        setattr(self, name, value)
        return value


class ProxyAccept(asyncio.Protocol):
    """The first protocol of an accepted connection; the real one follows (``inner``)."""

    def __init__(
        self,
        inner: Callable[[], asyncio.BaseProtocol],
        *,
        accept: bool,
        trusted: Allowlist,
        timeout: float,
        refuse: Refuse,
        pending: Pending,
    ) -> None:
        self._inner_factory = inner
        self._accept = accept
        self._trusted = trusted
        self._timeout = timeout
        self._refuse = refuse
        self._pending = pending
        self._parser = ProxyHeaderParser()
        self._transport: asyncio.Transport | None = None
        self._inner: asyncio.BaseProtocol | None = None  # made at once when not accepting
        self._timer: asyncio.TimerHandle | None = None
        self._counted = False
        self._done = False
        self._untrusted = False  # accepting, but not from this peer (see above)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = cast(asyncio.Transport, transport)  # uvloop's too
        if self._accept and not self._trusted.allows(transport.get_extra_info("peername")):
            self._accept = False
            self._untrusted = True
        if not self._accept:
            self._inner = inner = self._inner_factory()
            inner.connection_made(transport)
            return
        if self._pending.count >= self._pending.limit:
            self._fail(
                "max_unauthenticated",
                f"{self._pending.limit} connections are waiting for their PROXY header "
                "(--max-unauthenticated); raise it if the load balancer needs more",
            )
            return
        self._pending.count += 1
        self._counted = True
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._timeout, self._expire)

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        if self._inner is not None:  # not accepting: only this first read is looked at
            if starts_like_proxy(data):
                self._inner.connection_lost(None)
                if self._untrusted:
                    self._fail(
                        "proxy_header_untrusted",
                        "the connection starts with a PROXY protocol header, but its address "
                        f"is not in --accept-proxy-from ({self._trusted}); add the load "
                        "balancer's address there if it is one",
                    )
                    return
                self._fail(UNEXPECTED, UNEXPECTED_TEXT)
                return
            self._hand_over(self._inner, data)
            return
        try:
            header, rest = self._parser.feed(data)
        except ProxyHeaderError as exc:
            self._fail(
                "proxy_header_invalid",
                f"bad PROXY protocol header: {exc}; {_FIX}",
            )
            return
        if header is None:
            return
        self._release()
        transport = self._transport
        assert transport is not None
        seen: asyncio.Transport = transport
        if header.origin is not None:
            seen = cast(asyncio.Transport, Readdressed(transport, header.origin))
        inner = self._inner_factory()
        self._hand_over(inner, rest, seen)

    def _hand_over(
        self, inner: asyncio.BaseProtocol, data: bytes, seen: asyncio.Transport | None = None
    ) -> None:
        """Make ``inner`` the connection's protocol, and give it what was read past the header."""
        self._done = True
        transport = self._transport
        assert transport is not None
        # uvloop picks its read callbacks when reading starts: restart it around the change
        # (unless the protocol has paused reading itself).
        reading = transport.is_reading()
        transport.pause_reading()
        transport.set_protocol(inner)
        if seen is not None:
            inner.connection_made(seen)
            reading = True
        if transport.is_closing():
            return
        if data:
            _feed(inner, data)
        if reading and not transport.is_closing():
            transport.resume_reading()

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            self._done = True
            assert self._transport is not None
            self._transport.set_protocol(self._inner)  # its connection_lost goes to it too
            return cast(asyncio.Protocol, self._inner).eof_received()
        self._fail("proxy_header_invalid", f"the connection ended inside its PROXY header; {_FIX}")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        if self._inner is not None and not self._done:
            self._done = True
            self._inner.connection_lost(exc)
        self._done = True

    def _expire(self) -> None:
        self._timer = None
        self._fail(
            "proxy_header_timeout",
            f"no complete PROXY protocol header within {self._timeout:g}s; {_FIX}",
        )

    def _release(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._counted:
            self._counted = False
            self._pending.count -= 1

    def _fail(self, reason: str, text: str) -> None:
        if self._done:
            return
        self._done = True
        self._release()
        transport = self._transport
        assert transport is not None
        self._refuse(transport.get_extra_info("peername"), reason, text)
        transport.abort()


def _feed(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    """Give ``data`` to a protocol as if the socket had just read it."""
    if isinstance(protocol, asyncio.BufferedProtocol):
        buffered = protocol
        view = memoryview(data)
        while view:
            buffer = memoryview(buffered.get_buffer(len(view)))
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            buffered.buffer_updated(size)
            view = view[size:]
        return
    cast(asyncio.Protocol, protocol).data_received(data)
