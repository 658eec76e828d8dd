"""The tunnel inside one WebSocket connection, with the ``websockets`` library's sans-IO core.

:class:`WebSocketLayer` sits where :class:`~tunnel.aio.tlslayer.TlsLayer` does: it is the
socket's protocol (or, for ``wss``, the TLS layer's inner protocol) and, towards the tunnel
it wraps, a transport. It first performs the HTTP upgrade (the client's request, or the
server's check of the path and answer), then carries the tunnel's bytes in binary messages:
each write of the tunnel (one per loop turn, all its frames) becomes one message (cut at
``SEND_MESSAGE``), and each binary frame received is copied into the tunnel's own receive
buffer. The library parses frames, masks (with its C speedups), answers pings and echoes
close frames; this layer adds the deadline of the upgrade, refuses text messages and messages
over ``MAX_MESSAGE``, and turns every failure and close code into one line.

Flow control passes straight through, as in the TLS layer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

from websockets.client import ClientProtocol
from websockets.exceptions import (
    InvalidHandshake,
    InvalidMessage,
    InvalidStatus,
    InvalidUpgrade,
    NegotiationError,
    PayloadTooBig,
    ProtocolError,
)
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import CLOSED, OPEN, SEND_EOF
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from tunnel.aio.layer import Layer
from tunnel.protocol.peertext import quoted, shown
from tunnel.protocol.proxyheader import starts_like_proxy
from tunnel.protocol.websocket import (
    MAX_MESSAGE,
    MESSAGE_TOO_BIG,
    NORMAL,
    SEND_MESSAGE,
    SUBPROTOCOL,
    UNSUPPORTED_DATA,
    close_words,
    status_words,
)
from tunnel.settings.websocket import WebSocketAddress

READ_SIZE = 256 * 1024  # the most one read of the socket takes
FIRST_SIZE = 4 * 1024  # until the upgrade is done: a request fits, a silent peer costs little
_EMPTY = memoryview(b"")
_GET = b"GET "  # how every upgrade request starts
_PROTOCOLS = [Subprotocol(SUBPROTOCOL)]

# The library says "connection open" and the like at INFO for every connection; the roles
# say what matters themselves, in their words.
_library_log = logging.getLogger("ambassador.websocket")
_library_log.setLevel(logging.WARNING)


class WebSocketError(ConnectionError):
    """The WebSocket connection failed or was closed; the text says why in one clause."""


class WebSocketLayer(Layer):
    """One WebSocket connection; ``inner`` starts once the upgrade is complete.

    Made with :meth:`client` or :meth:`server`. ``handshake_done`` resolves when the upgrade
    is complete, or fails with a :class:`WebSocketError` (or ``TimeoutError``) saying why.
    """

    def __init__(
        self,
        codec: ClientProtocol | ServerProtocol,
        inner: asyncio.BufferedProtocol,
        timeout: float,
        path: str = "",
        on_connect: Callable[[asyncio.BaseTransport], bool] | None = None,
        on_refused: Callable[[WebSocketLayer, str | None], None] | None = None,
        on_upgraded: Callable[[], None] | None = None,
    ) -> None:
        self._codec = codec
        self.inner = inner
        self._timeout = timeout
        self._path = path  # the server's: the only path it upgrades
        self._on_connect = on_connect  # False from it: refused, before any upgrade
        # The server's: told once that an upgrade failed, and why (None: nothing worth a line).
        self._on_refused = on_refused
        self._on_upgraded = on_upgraded  # the server's: told when the upgrade is complete
        self.handshake_done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport = None
        self._timer: asyncio.TimerHandle | None = None
        self._established = False
        self._closing = False
        self._inner_lost = False
        self._heard = False  # a byte came: a close from now on is worth a line
        self.proxy_header = False  # the first read began with a PROXY protocol header
        self.error: BaseException | None = None
        self._received = memoryview(bytearray(FIRST_SIZE))

    @classmethod
    def client(
        cls, inner: asyncio.BufferedProtocol, remote: WebSocketAddress, timeout: float
    ) -> WebSocketLayer:
        codec = ClientProtocol(
            parse_uri(remote.url), subprotocols=_PROTOCOLS, max_size=MAX_MESSAGE,
            logger=_library_log,
        )  # fmt: skip
        return cls(codec, inner, timeout)

    @classmethod
    def server(
        cls,
        inner: asyncio.BufferedProtocol,
        path: str,
        timeout: float,
        on_connect: Callable[[asyncio.BaseTransport], bool] | None = None,
        on_refused: Callable[[WebSocketLayer, str | None], None] | None = None,
        on_upgraded: Callable[[], None] | None = None,
    ) -> WebSocketLayer:
        codec = ServerProtocol(subprotocols=_PROTOCOLS, max_size=MAX_MESSAGE, logger=_library_log)
        return cls(codec, inner, timeout, path, on_connect, on_refused, on_upgraded)

    # ----------------------------------------------------------- socket side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        on_connect, self._on_connect = self._on_connect, None
        if on_connect is not None and not on_connect(transport):
            self._fail(ConnectionRefusedError("refused before the WebSocket upgrade"), told=True)
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._timeout, self._expire)
        codec = self._codec
        if isinstance(codec, ClientProtocol):
            codec.send_request(codec.connect())
            self._flush()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._received

    def buffer_updated(self, nbytes: int) -> None:
        received = self._received
        if not self._heard:
            self._heard = True
            if self._path and not _GET.startswith(bytes(received[: min(nbytes, 4)])):
                # A PROXY header nobody asked for: the role names the fix (ProxyAccept's line).
                self.proxy_header = starts_like_proxy(bytes(received[: min(nbytes, 16)]))
                self._fail(WebSocketError(_not_http(received[0])))  # say it now, not at timeout
                return
        # The codec copies what it is given into its own buffer: a view of ours is enough.
        self._codec.receive_data(cast(bytes, received[:nbytes]))
        self._process()
        if nbytes == len(received) and nbytes < READ_SIZE and self._established:
            self._received = memoryview(bytearray(2 * nbytes))  # reads fill it: double it

    def eof_received(self) -> bool | None:
        codec = self._codec
        if self._established and codec.close_rcvd is None and not self._closing:
            self._fail(WebSocketError("the connection ended without a WebSocket close"))
        elif not self._established:
            # A connection closed without a byte is a port probe (a balancer's health check):
            # not worth a line. One that closes inside its upgrade is.
            why = WebSocketError("the peer closed the connection during the WebSocket upgrade")
            self._fail(why, told=not self._heard)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if not self._established:
            why = WebSocketError("the connection closed during the WebSocket upgrade")
            self._finish_handshake(self.error or why)
        self._lose_inner(self.error or exc)
        self._received = _EMPTY
        self._closing = True
        self._on_refused = self._on_upgraded = None
        if self.error is not None:
            self.error.__traceback__ = None  # it holds the frames that raised it: a cycle

    def pause_writing(self) -> None:
        if self._established:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self._established:
            self.inner.resume_writing()

    # -------------------------------------------- transport, for the inner protocol

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._closing and self._established:
            self._send(data)

    def writelines(self, chunks: list[bytes | bytearray | memoryview]) -> None:
        if not self._closing and self._established:
            # One message for the whole turn's frames: one header (and one mask) for all.
            self._send(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def can_write_eof(self) -> bool:
        return False  # a WebSocket cannot half-close; the tunnel's own FIN does that job

    def write_eof(self) -> None:
        raise NotImplementedError("WebSocket connections cannot be half-closed")

    def is_closing(self) -> bool:
        return self._closing or self.transport is None or self.transport.is_closing()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._established and self._codec.state is OPEN:
            self._codec.send_close(NORMAL)
            self._flush()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.abort()

    # ------------------------------------------------------------- internals

    def _send(self, data: bytes | bytearray | memoryview) -> None:
        codec = self._codec
        if len(data) <= SEND_MESSAGE:
            codec.send_binary(data)
        else:
            view = memoryview(data)
            for start in range(0, len(view), SEND_MESSAGE):
                codec.send_binary(view[start : start + SEND_MESSAGE])
        self._flush()

    def _process(self) -> None:
        codec = self._codec
        for event in codec.events_received():
            if self._closing:
                break
            if isinstance(event, Frame):
                self._frame(event)
            elif isinstance(event, Request):
                self._request(event)
            elif isinstance(event, Response):
                self._response(event)
        self._flush()
        if self._closing:
            return
        if not self._established and codec.handshake_exc is not None:
            server = isinstance(codec, ServerProtocol)
            self._fail(WebSocketError(_upgrade_failure(codec.handshake_exc, server)))
        elif codec.parser_exc is not None:
            self._fail(WebSocketError(_stream_failure(codec.parser_exc)))
        elif codec.state is CLOSED or (self._established and codec.close_expected()):
            self._closed_by_peer()

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.BINARY or opcode is Opcode.CONT:
            self._deliver(frame.data)
        elif opcode is Opcode.TEXT:
            self._codec.fail(UNSUPPORTED_DATA, "binary messages only")
            self._fail(
                WebSocketError(
                    "the peer sent a text message; the tunnel takes binary messages only "
                    f"(closed with {UNSUPPORTED_DATA})"
                )
            )
        elif opcode is Opcode.CLOSE:
            self._closed_by_peer()
        # Pings are answered by the codec (its pong is in data_to_send); pongs need nothing.

    def _deliver(self, data: bytes | bytearray | memoryview) -> None:
        # Into the tunnel's own receive buffer, as the TLS layer does: the tunnel parses in
        # place. A frame bigger than its room (it is bounded by MAX_MESSAGE) takes several.
        inner = self.inner
        view = memoryview(data)
        while view:
            room = memoryview(inner.get_buffer(len(view)))
            size = min(len(room), len(view))
            if not size:
                return  # the tunnel is closed and gave its buffer back
            room[:size] = view[:size]
            inner.buffer_updated(size)
            view = view[size:]

    def _request(self, request: Request) -> None:
        codec = cast(ServerProtocol, self._codec)
        path = request.path.partition("?")[0]
        if path != self._path:
            codec.send_response(codec.reject(404, "Not Found\n"))
            self._refuse(
                f"a WebSocket upgrade asked for {quoted(path, 80)}, but this listener's "
                f"--websocket-path is {self._path}"
            )
            return
        response = codec.accept(request)
        codec.send_response(response)
        if response.status_code == 101:
            self._establish()
            return
        self._refuse(_upgrade_failure(codec.handshake_exc, server=True))

    def _response(self, response: Response) -> None:
        if self._codec.handshake_exc is None and response.status_code == 101:
            self._establish()

    def _establish(self) -> None:
        self._cancel_timer()
        self._established = True
        self._finish_handshake(None)
        on_upgraded, self._on_upgraded = self._on_upgraded, None
        if on_upgraded is not None:
            on_upgraded()
        if not self._closing:
            self.inner.connection_made(cast(asyncio.Transport, self))

    def _refuse(self, why: str) -> None:
        """The server refused an upgrade (its answer is queued): say so, then close."""
        self._flush()
        self._fail(WebSocketError(why))

    def _closed_by_peer(self) -> None:
        close = self._codec.close_rcvd
        if close is None or close.code == NORMAL:
            error = WebSocketError("the peer closed the WebSocket")
        else:
            error = WebSocketError(
                f"the peer closed the WebSocket with {close_words(close.code, close.reason)}"
            )
        self._flush()
        self._fail(error, told=True)

    def _expire(self) -> None:
        self._timer = None
        if not self._established:
            self._fail(TimeoutError(f"no WebSocket upgrade within {self._timeout:g}s"))

    def _fail(self, exc: BaseException, told: bool = False) -> None:
        """End the connection because of ``exc``; unless ``told``, a server says why once."""
        if self.error is not None:
            return
        self.error = exc
        self._cancel_timer()
        on_refused, self._on_refused = self._on_refused, None
        if not self._established and on_refused is not None:
            on_refused(self, None if told else str(exc))
        self._finish_handshake(exc)
        self._closing = True
        if self.transport is not None:
            self._flush()
            self.transport.close()
        self._lose_inner(exc)

    def _flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        writes = self._codec.data_to_send()
        if not writes:
            return
        if SEND_EOF in writes:  # the codec's half-close: the transport's close follows
            writes = [chunk for chunk in writes if chunk]
        transport.writelines(writes)

    def _finish_handshake(self, exc: BaseException | None) -> None:
        if self.handshake_done.done():
            return
        if exc is None:
            self.handshake_done.set_result(None)
        else:
            self.handshake_done.set_exception(exc.with_traceback(None))
            self.handshake_done.exception()  # retrieved: callers may not be waiting

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _lose_inner(self, exc: BaseException | None) -> None:
        if self._established and not self._inner_lost:
            self._inner_lost = True
            self.inner.connection_lost(cast(Exception | None, exc))


def _not_http(first: int) -> str:
    """What a server was sent instead of an upgrade request, by its first byte."""
    if first == 0x16:
        return (
            "the connection starts with a TLS handshake, but this listener takes a plaintext "
            "WebSocket; give the server --tls-cert and --tls-key for wss://"
        )
    return (
        "not an HTTP request; this listener takes WebSocket upgrades only (--websocket-path), "
        "so the client must use --remote ws://HOST:PORT/PATH (or wss://)"
    )


def _upgrade_failure(exc: Exception | None, server: bool = False) -> str:
    """A failed upgrade in one clause; ``server``: a client's request was refused."""
    if server:
        if isinstance(exc, NegotiationError):
            return (
                f"a WebSocket upgrade without the {SUBPROTOCOL!r} subprotocol "
                "(not an ambassador-client?)"
            )
        if isinstance(exc, InvalidMessage):
            return (
                "not an HTTP request; this listener takes WebSocket upgrades only "
                "(--websocket-path), so the client must use --remote ws:// or wss://"
            )
        text = shown(str(exc), 120) if exc is not None else "a bad request"
        if isinstance(exc, InvalidUpgrade):
            return (
                f"an HTTP request without a WebSocket upgrade ({text}); if a proxy is in front, "
                "it must pass the Upgrade and Connection headers"
            )
        return f"not a WebSocket upgrade request ({text})"
    if isinstance(exc, InvalidStatus):
        response = exc.response
        return status_words(response.status_code, response.reason_phrase)
    if isinstance(exc, InvalidMessage):
        return (
            "did not answer the upgrade with HTTP: is it an ambassador-server with "
            "--websocket-path (and with TLS, if so use wss://)?"
        )
    if isinstance(exc, InvalidHandshake):
        return f"answered the upgrade wrongly: {shown(str(exc), 120)}"
    return f"the upgrade failed: {shown(str(exc), 120)}"


def _stream_failure(exc: Exception) -> str:
    """The codec stopped on bad input once the tunnel was running."""
    if isinstance(exc, PayloadTooBig):
        return (
            f"the peer sent a WebSocket message over {MAX_MESSAGE} bytes "
            f"(closed with {MESSAGE_TOO_BIG})"
        )
    if isinstance(exc, EOFError):
        return "the connection ended without a WebSocket close"
    if isinstance(exc, ProtocolError):
        return f"WebSocket protocol error: {shown(str(exc), 120)}"
    return f"WebSocket error: {shown(str(exc), 120)}"
