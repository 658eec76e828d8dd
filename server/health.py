"""An active health check of one target: connect, optionally send a request and read the start
of the answer, all within the check's timeout.

A check that hangs (a backend that accepts and never answers, a blackholed address) ends at
its timeout and counts as failed; nothing it receives is kept beyond what ``expect`` needs, and
what it received is shown bounded and escaped in the reason.
"""

from __future__ import annotations

import asyncio

from tunnel.operations.oserrors import dial_error
from tunnel.protocol.peertext import shown
from tunnel.settings.links import Endpoint
from tunnel.settings.pooling import HealthCheck
from tunnel.settings.unixpath import UnixPath


async def probe(target: Endpoint, check: HealthCheck) -> str | None:
    """Why ``target`` fails ``check``, in one line; None when it passes."""
    try:
        async with asyncio.timeout(check.timeout):
            return await _probe(target, check)
    except TimeoutError:
        return f"health check timed out after {check.timeout:g}s"
    except OSError as exc:
        return dial_error(target, exc, check.timeout)[1]


async def _probe(target: Endpoint, check: HealthCheck) -> str | None:
    if isinstance(target, UnixPath):
        reader, writer = await asyncio.open_unix_connection(target.path)
    else:
        reader, writer = await asyncio.open_connection(target.host, target.port)
    try:
        if check.send:
            writer.write(check.send)
            await writer.drain()
        if not check.expect:
            return None
        answer = b""
        while len(answer) < len(check.expect):
            more = await reader.read(len(check.expect) - len(answer))
            if not more:
                break
            answer += more
        if answer != check.expect:
            got = shown(answer.decode("latin-1")) if answer else "nothing (closed)"
            return f"health check expected {shown(check.expect.decode('latin-1'))}, got {got}"
        return None
    finally:
        writer.close()
