"""The channel between the main process and one helper, helper's side.

A ``SOCK_SEQPACKET`` socket pair, one end inherited by the helper (its descriptor number in
``AMBASSADOR_WORKER_FD``). Messages, main to helper: ``C<tag>`` with one descriptor (a
connection; the tag names what it is for), ``?`` (report). Helper to main: ``-`` (a
connection handed over has ended), then report chunks ``+<json>``... ending with ``.<json>``.
The main process's side is :class:`tunnel.operations.workers.pool.Helper`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Callable
from typing import Any

from tunnel.operations import metrics
from tunnel.operations.load import BulkPriority, RateMeter
from tunnel.settings.cli import WORKER_FD_ENV, WORKER_INDEX_ENV

MAX_MESSAGE = 60_000  # one report chunk; well under a socket pair's buffer


def helper_channel_fd(environ: dict[str, str] | os._Environ[str] = os.environ) -> int | None:
    """The channel descriptor when this process is a helper, else None."""
    text = environ.get(WORKER_FD_ENV)
    return int(text) if text and text.isdigit() else None


def helper_index(environ: dict[str, str] | os._Environ[str] = os.environ) -> int:
    text = environ.get(WORKER_INDEX_ENV, "0")
    return int(text) if text.isdigit() else 0


class HelperChannel:
    """A helper's side of the channel: connections arrive, reports leave."""

    def __init__(
        self,
        fd: int,
        on_connection: Callable[[socket.socket, str], None],
        report: Callable[[], dict[str, Any]],
        on_lost: Callable[[], None],
        role: str,
    ) -> None:
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(False)
        self._on_connection = on_connection
        self._report = report
        self._on_lost = on_lost
        self.priority = BulkPriority(role, RateMeter(metrics.relayed_bytes))
        self._following: asyncio.Task[None] | None = None

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.sock.fileno(), self._readable)
        self._following = loop.create_task(self.priority.follow())

    def close(self) -> None:
        if self._following is not None:
            self._following.cancel()
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()

    def ended(self) -> None:
        """Tell the main process that one connection it handed over has ended."""
        with contextlib.suppress(OSError):
            self.sock.send(b"-")

    def _readable(self) -> None:
        for _ in range(64):
            try:
                message, fds, _, _ = socket.recv_fds(self.sock, 1024, 4)
            except BlockingIOError:
                return
            except OSError:
                message, fds = b"", []
            if not message and not fds:
                self.close()
                self._on_lost()  # the main process is gone
                return
            if message[:1] == b"C" and fds:
                for extra in fds[1:]:
                    os.close(extra)
                self._on_connection(socket.socket(fileno=fds[0]), message[1:].decode())
            elif message == b"?":
                self._send_report()
            else:
                for fd in fds:
                    os.close(fd)

    def _send_report(self) -> None:
        body = json.dumps(self._report(), default=str).encode()
        chunks = [body[i : i + MAX_MESSAGE] for i in range(0, len(body), MAX_MESSAGE)] or [b""]
        self.sock.setblocking(True)  # the main process is reading; a report is small
        try:
            for chunk in chunks[:-1]:
                self.sock.sendall(b"+" + chunk)
            self.sock.sendall(b"." + chunks[-1])
        except OSError:
            pass
        finally:
            self.sock.setblocking(False)
