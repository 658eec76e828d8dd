"""Dialing a target through an egress proxy: a connected socket, or one line saying why not.

The proxy is reached over TCP, then the handshake machine of its kind
(:mod:`tunnel.protocol.httpconnect`, :mod:`tunnel.protocol.socks5`) runs over the socket,
all within one deadline. The proxy's bytes are peeked and only those its machine uses are
taken, so bytes that follow its answer (the target's) stay in the socket for whoever owns it
next: the tunnel's transport, or TLS, which thus runs inside the proxy's tunnel with the
target's name; the proxy sees only ciphertext.
"""

from __future__ import annotations

import asyncio
import socket

from tunnel.errors import EgressFailed
from tunnel.protocol.egress import EgressHandshake, Kind
from tunnel.protocol.httpconnect import HttpConnect, authority
from tunnel.protocol.socks5 import Socks5Connect
from tunnel.settings.proxy import Proxy

PEEK = 4096  # bytes looked at per read; the machines bound what they keep

_CREDENTIALS_FIX = "put USER:PASSWORD in a file and give --proxy-credentials-file FILE"
_HINTS = {
    Kind.FORBIDDEN: "ask the proxy's administrator to allow this target and port "
    "(tinyproxy: ConnectPort; squid: the CONNECT ports ACL; dante: a socks pass rule)",
    Kind.TARGET: "check that the server runs and that the proxy's network can reach it",
    Kind.REFUSED: "check the proxy's logs and that it allows CONNECT",
    Kind.PROTOCOL: "check the proxy URL's scheme (http:// or socks5://) and port",
    Kind.CLOSED: "check the proxy URL's scheme (http:// or socks5://) and the proxy's logs",
    Kind.TIMEOUT: "check the proxy URL's scheme (http:// or socks5://) and port, "
    "or raise --connect-timeout",
}


def handshake_for(proxy: Proxy, host: str, port: int) -> EgressHandshake:
    """The handshake machine that asks ``proxy`` for ``host:port``."""
    if proxy.scheme == "socks5":
        return Socks5Connect(host, port, proxy.credentials)
    return HttpConnect(host, port, proxy.credentials)


async def dial_through(proxy: Proxy, host: str, port: int, timeout: float) -> socket.socket:
    """A non-blocking socket to ``host:port`` through ``proxy``, its handshake done within
    ``timeout`` seconds in all; EgressFailed, one line with the fix, otherwise."""
    where = f"cannot reach {authority(host, port)} through proxy {proxy}"
    try:
        machine = handshake_for(proxy, host, port)
    except ValueError as exc:
        raise EgressFailed(f"{where}: {exc}", Kind.REFUSED) from None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        async with asyncio.timeout_at(deadline):
            sock = await _reach(loop, proxy)
    except TimeoutError:
        raise EgressFailed(
            f"{where}: the proxy did not accept the connection within {timeout:g}s", Kind.TIMEOUT
        ) from None
    except OSError as exc:
        raise EgressFailed(f"{where}: {_os_reason(exc)}", Kind.UNREACHABLE) from None
    try:
        async with asyncio.timeout_at(deadline):
            await _handshake(loop, sock, machine)
    except TimeoutError:
        sock.close()
        text = f"the proxy did not finish its handshake within {timeout:g}s"
        raise EgressFailed(f"{where}: {text}; {_HINTS[Kind.TIMEOUT]}", Kind.TIMEOUT) from None
    except EgressFailed as exc:
        sock.close()
        kind = Kind(exc.label)
        if kind is Kind.AUTH:
            hint = "check the credentials file" if proxy.credentials else _CREDENTIALS_FIX
        else:
            hint = _HINTS[kind]
        raise EgressFailed(f"{where}: the proxy {exc}; {hint}", kind) from None
    except OSError as exc:
        sock.close()
        text = f"the proxy closed the connection during its handshake ({_os_reason(exc)})"
        raise EgressFailed(f"{where}: {text}; {_HINTS[Kind.CLOSED]}", Kind.CLOSED) from None
    except BaseException:
        sock.close()
        raise
    return sock


async def _reach(loop: asyncio.AbstractEventLoop, proxy: Proxy) -> socket.socket:
    """A TCP connection to the proxy, trying each of its addresses in turn."""
    infos = await loop.getaddrinfo(proxy.host, proxy.port, type=socket.SOCK_STREAM)
    error: OSError = OSError(f"{proxy.host} has no address")
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise error


async def _handshake(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, machine: EgressHandshake
) -> None:
    await loop.sock_sendall(sock, machine.start())
    while True:
        await _readable(loop, sock)
        data = sock.recv(PEEK, socket.MSG_PEEK)
        if not data:
            raise ConnectionResetError("end of stream")
        step = machine.receive(data)
        _take(sock, step.consumed)  # peeked, so already there
        if step.send:
            await loop.sock_sendall(sock, step.send)
        if step.done:
            return


def _take(sock: socket.socket, count: int) -> None:
    while count > 0:
        chunk = sock.recv(count)
        if not chunk:
            raise ConnectionResetError("end of stream")
        count -= len(chunk)


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    """Wait until ``sock`` has bytes (or an end) to read."""
    ready: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()
    loop.add_reader(fd, _settle, ready)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "the proxy refused the connection (is it running there, on that port?)"
    if isinstance(exc, socket.gaierror):
        return f"the proxy's name does not resolve ({exc.strerror})"
    return exc.strerror or str(exc)


def _settle(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)
