"""Bounded redis traffic through a running pair, in a thread, for views that show rates."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType

VALUE = b"v" * 65536
COMMAND = b"*3\r\n$3\r\nSET\r\n$7\r\nrolling\r\n$%d\r\n%s\r\n" % (len(VALUE), VALUE)


class RedisTraffic:
    """SET commands of 64 KiB, one at a time, to the redis behind ``port`` until stopped or
    ``seconds`` have passed; ``sent`` counts the bytes sent."""

    def __init__(self, port: int, seconds: float = 20.0) -> None:
        self.port, self.seconds, self.sent = port, seconds, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RedisTraffic:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        deadline = time.monotonic() + self.seconds
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            while not self._stop.is_set() and time.monotonic() < deadline:
                sock.sendall(COMMAND)
                assert sock.recv(16).startswith(b"+OK")
                self.sent += len(COMMAND)
                time.sleep(0.002)  # a steady stream, not a flood
