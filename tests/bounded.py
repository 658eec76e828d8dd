"""Bounded waits on a consumer's connection, failing with what is missing.

A half-close or flow-control bug stops a stream without an error: the FIN never comes, or the
window never reopens, and the test would sit in a read or a drain until the suite's timeout
prints a traceback of the event loop. These waits give up after ``idle`` seconds without
progress (not a deadline for the whole transfer, so a slow machine only makes them slower)
and fail naming the stream and the event that did not happen.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

IDLE = 5.0  # seconds without a byte moving before a stream is declared stuck


async def read_to_eof(
    reader: asyncio.StreamReader,
    stream: str,
    expected: int | None = None,
    idle: float = IDLE,
) -> bytes:
    """Everything up to EOF; fail if ``idle`` seconds pass without a byte or the EOF."""
    got = bytearray()
    while True:
        try:
            data = await asyncio.wait_for(reader.read(1 << 20), idle)
        except TimeoutError:
            break  # failed below, outside the handler: no chained loop traceback
        if not data:
            return bytes(got)
        got += data
    if expected is None or len(got) >= expected:
        missing = "the FIN (EOF)"
    else:
        missing = (
            f"{expected - len(got)} more bytes, then the FIN (the stream stalled: no window "
            "update came back, or its bytes were dropped)"
        )
    of = f" of {expected}" if expected is not None else ""
    pytest.fail(
        f"{stream}: {len(got)}{of} bytes arrived, then nothing for {idle:g}s; missing: {missing}"
    )


async def expect_reset(reader: asyncio.StreamReader, stream: str, idle: float = IDLE) -> None:
    """The connection ends in a reset (RST), not an EOF, within ``idle`` seconds."""
    try:
        while await asyncio.wait_for(reader.read(1 << 20), idle):
            pass
    except ConnectionResetError:
        return
    except TimeoutError:
        timed_out = True
    else:
        timed_out = False
    pytest.fail(
        f"{stream}: no reset (RST) within {idle:g}s"
        if timed_out
        else f"{stream}: ended with a clean EOF where a reset (RST) was due"
    )


async def drain(writer: asyncio.StreamWriter, stream: str, sent: int, idle: float = IDLE) -> None:
    """``writer.drain()``, failing if the socket takes nothing for ``idle`` seconds."""
    try:
        await asyncio.wait_for(writer.drain(), idle)
        return
    except TimeoutError:
        pass
    pytest.fail(
        f"{stream}: after {sent} bytes the connection took nothing for {idle:g}s; "
        "missing: a window update (the stream's credit never came back)"
    )


def recv_to_eof(sock: socket.socket, stream: str, idle: float = IDLE) -> bytes:
    """The blocking form of :func:`read_to_eof`, for a plain socket."""
    parts: list[bytes] = []
    sock.settimeout(idle)
    try:
        while chunk := sock.recv(65536):
            parts.append(chunk)
        return b"".join(parts)
    except TimeoutError:
        pass
    pytest.fail(
        f"{stream}: {sum(map(len, parts))} bytes arrived, then nothing for {idle:g}s; "
        "missing: the FIN (EOF)"
    )
