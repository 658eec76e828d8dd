"""A hand-driven tunnel client on a plain socket, for floods and protocol versions.

Frames are built with ``struct`` from the yamux layout (``>BBHII``: version, type, flags,
stream id, length), independently of ``tunnel.protocol.frames``, and the hello is written as the
protocol document describes it: a 4-byte big-endian length, then a JSON object, as Data on
stream 1.
"""

from __future__ import annotations

import asyncio
import json
import struct
from dataclasses import dataclass
from typing import Any

HEADER = struct.Struct(">BBHII")
MESSAGE_LENGTH = struct.Struct(">I")
DATA, WINDOW_UPDATE, PING, GO_AWAY = 0, 1, 2, 3
SYN, ACK, FIN, RST = 0x1, 0x2, 0x4, 0x8
GO_AWAY_NORMAL, GO_AWAY_PROTOCOL_ERROR = 0, 1
INITIAL_WINDOW = 256 * 1024
CONTROL_STREAM = 1


def frame(type_: int, flags: int, stream_id: int, length: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(0, type_, flags, stream_id, length) + payload


def data(stream_id: int, payload: bytes, flags: int = 0) -> bytes:
    return frame(DATA, flags, stream_id, len(payload), payload)


def open_stream(stream_id: int) -> bytes:
    """Window Update with SYN and no delta: the peer may send us 256 KiB."""
    return frame(WINDOW_UPDATE, SYN, stream_id, 0)


def message(obj: dict[str, Any]) -> bytes:
    body = json.dumps(obj).encode()
    return MESSAGE_LENGTH.pack(len(body)) + body


def hello(versions: list[int], name: str = "x", **extra: Any) -> dict[str, Any]:
    return {"type": "hello", "versions": versions, "name": name, **extra}


@dataclass(frozen=True)
class Frame:
    type: int
    flags: int
    stream_id: int
    length: int
    payload: bytes = b""


class RawPeer:
    """One connection to an ambassador-server, driven frame by frame."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.frames: list[Frame] = []  # every frame received, in order
        self._buffer = b""
        self._control = b""
        self.closed = False  # the server closed the connection

    @classmethod
    async def connect(cls, host: str, port: int) -> RawPeer:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        return cls(reader, writer)

    @property
    def local(self) -> str:
        """Our end, as the server's log names the peer."""
        host, port = self.writer.get_extra_info("sockname")[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def send(self, payload: bytes) -> None:
        self.writer.write(payload)

    async def say_hello(self, obj: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        """Open the control stream with ``obj`` as the hello; the server's first message."""
        self.send(open_stream(CONTROL_STREAM) + data(CONTROL_STREAM, message(obj)))
        async with asyncio.timeout(timeout):
            while True:
                messages = self.control_messages()
                if messages:
                    return messages[0]
                if not await self._read():
                    raise AssertionError(f"closed before answering the hello: {self.frames}")

    def control_messages(self) -> list[dict[str, Any]]:
        """Every complete message the server sent on the control stream so far."""
        out, buffer = [], self._control
        while len(buffer) >= 4:
            (length,) = MESSAGE_LENGTH.unpack_from(buffer)
            if len(buffer) < 4 + length:
                break
            out.append(json.loads(buffer[4 : 4 + length]))
            buffer = buffer[4 + length :]
        return out

    async def read_until_closed(self, timeout: float) -> list[Frame]:
        """Read until the server closes (AssertionError after ``timeout``); all frames."""
        try:
            async with asyncio.timeout(timeout):
                while await self._read():
                    pass
        except TimeoutError:
            raise AssertionError(
                f"the server kept the connection open for {timeout:g}s; last frames: "
                f"{self.frames[-5:]}"
            ) from None
        return self.frames

    async def read_for(self, seconds: float) -> list[Frame]:
        """Read whatever arrives within ``seconds``; the frames so far."""
        with_deadline = asyncio.get_running_loop().time() + seconds
        try:
            async with asyncio.timeout_at(with_deadline):
                while await self._read():
                    pass
        except TimeoutError:
            pass
        return self.frames

    def close(self) -> None:
        self.writer.transport.abort()

    async def _read(self) -> bool:
        try:
            chunk = await self.reader.read(65536)
        except ConnectionError:
            chunk = b""
        if not chunk:
            self.closed = True
            return False
        self._buffer += chunk
        while len(self._buffer) >= HEADER.size:
            _, type_, flags, stream_id, length = HEADER.unpack_from(self._buffer)
            size = HEADER.size + (length if type_ == DATA else 0)
            if len(self._buffer) < size:
                break
            payload = self._buffer[HEADER.size : size]
            self._buffer = self._buffer[size:]
            self.frames.append(Frame(type_, flags, stream_id, length, payload))
            if type_ == DATA and stream_id == CONTROL_STREAM:
                self._control += payload
        return True


def go_aways(frames: list[Frame]) -> list[int]:
    """The codes of the Go Away frames among ``frames``."""
    return [f.length for f in frames if f.type == GO_AWAY]
