"""A hostile tunnel server: speaks the protocol, says whatever a test tells it to.

It accepts connections on loopback in a background thread and drives each with the project's
sans-IO session (:class:`tunnel.protocol.session.Session`, server role) over a blocking socket. To
the client's hello it answers with the control messages it was given, as raw JSON objects (so they
may hold what our own encoder would never produce: an alias with a newline, a megabyte of
refusal text). Every data stream gets the stream answer it was given, then an RST. It stops,
and joins its threads, within a bounded time.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tunnel.protocol.events import ConnectionTerminated, DataReceived
from tunnel.protocol.limits import Limits
from tunnel.protocol.messages import MessageReader
from tunnel.protocol.session import Role, Session

JOIN_WITHIN = 5.0


def control_message(obj: dict[str, Any]) -> bytes:
    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body


def stream_answer(code: int, text: str) -> bytes:
    raw = text.encode()[:1024]
    return struct.pack(">BH", code, len(raw)) + raw


@dataclass
class HostileServer:
    replies: list[dict[str, Any]]  # the control messages sent in answer to the hello
    answer: bytes = stream_answer(1, "no")  # the first bytes on every data stream
    listener: socket.socket = field(init=False)
    hellos: int = 0  # hellos received (one per connection the client made)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self._spawn(self._accept)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.listener.getsockname()[1]}"

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._spawn(self._serve, sock)

    def _serve(self, sock: socket.socket) -> None:
        session = Session(Role.SERVER, Limits(), time.monotonic())
        reader = MessageReader()
        control: int | None = None
        answered: set[int] = set()
        sock.settimeout(0.1)
        with sock:
            while not self._stopping.is_set():
                try:
                    data = sock.recv(256 * 1024)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                now = time.monotonic()
                for event in session.receive_data(data, now):
                    if isinstance(event, ConnectionTerminated):
                        return
                    if not isinstance(event, DataReceived):
                        continue
                    session.consumed(event.stream_id, len(event.data), now)
                    if control is None:
                        control = event.stream_id
                    if event.stream_id == control:
                        if reader.feed(event.data):
                            with self._lock:
                                self.hellos += 1
                            for reply in self.replies:
                                session.send_data(control, control_message(reply))
                    elif event.stream_id not in answered:
                        answered.add(event.stream_id)
                        session.send_data(event.stream_id, self.answer)
                        session.reset_stream(event.stream_id, after_data=True)
                with contextlib.suppress(OSError):
                    while out := session.data_to_send():
                        sock.sendall(out)

    def stop(self) -> None:
        self._stopping.set()
        self.listener.close()
        for thread in self._threads:
            thread.join(JOIN_WITHIN)
