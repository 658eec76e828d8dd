"""What a layer in front of the tunnel (TLS, a WebSocket) shows the protocol inside it as its
transport: flow control and socket details pass through to the real transport below."""

from __future__ import annotations

import asyncio
from typing import Any, cast


class Layer(asyncio.BufferedProtocol):
    """A protocol to the transport below (``transport``) and a transport to ``inner``."""

    def __init__(self, inner: asyncio.BufferedProtocol) -> None:
        self.inner = inner
        self.transport: asyncio.Transport | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if self.transport is None:
            return default
        return self.transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def is_reading(self) -> bool:
        return self.transport is not None and self.transport.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self.transport is not None:
            self.transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.inner = cast(asyncio.BufferedProtocol, protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.inner
