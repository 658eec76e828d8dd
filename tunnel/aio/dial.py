"""Dialling an endpoint: a TCP address or a unix socket's path, one call for either."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from tunnel.settings.links import Endpoint
from tunnel.settings.unixpath import UnixPath

__all__ = ["connect"]


def connect(
    loop: asyncio.AbstractEventLoop,
    protocol: Callable[[], asyncio.BaseProtocol],
    target: Endpoint,
) -> Coroutine[Any, Any, tuple[asyncio.BaseTransport, asyncio.BaseProtocol]]:
    """The coroutine that connects ``protocol`` to ``target`` (a task's worth, not awaited
    here, so that a caller can run it as a bare task with its own timer)."""
    if isinstance(target, UnixPath):
        return loop.create_unix_connection(protocol, target.path)
    return loop.create_connection(protocol, target.host, target.port)
