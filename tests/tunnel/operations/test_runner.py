"""The runner's order: what a role does before and after a stop signal, and what it undoes."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import Any

import pytest

from tunnel.errors import ConfigError
from tunnel.operations.runner import serve

log = logging.getLogger("ambassador.test-runner")


class Recorder:
    """A role that writes down what the runner asks of it."""

    log = log

    def __init__(self, drain_timeout: float | None, start_blocks: bool = False) -> None:
        self.drain_timeout = drain_timeout
        self.calls: list[str] = []
        self.started = asyncio.Event()
        self.start_blocks = start_blocks

    async def open(self, stop: Callable[[], None]) -> None:
        self.calls.append("open")

    async def start(self) -> None:
        self.calls.append("start")
        self.started.set()
        if self.start_blocks:
            await asyncio.Event().wait()

    async def drain(self, now: asyncio.Event) -> None:
        self.calls.append("drain")
        await asyncio.wait_for(now.wait(), 5)  # only a second signal ends it in time
        self.calls.append("cut short")

    async def stop(self) -> None:
        self.calls.append("stop")

    def reload(self, new: object) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {}

    def ready(self) -> bool:
        return True

    def unready_reason(self) -> str:
        return ""


def test_a_second_signal_cuts_the_drain_short(caplog: pytest.LogCaptureFixture) -> None:
    role = Recorder(drain_timeout=30.0)

    async def main() -> None:
        running = asyncio.ensure_future(serve(role))
        await role.started.wait()
        os.kill(os.getpid(), signal.SIGTERM)
        while "drain" not in role.calls:
            await asyncio.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(running, 5)

    with caplog.at_level(logging.INFO, logger=log.name):
        asyncio.run(main())
    assert role.calls == ["open", "start", "drain", "cut short", "stop"]
    said = [record.getMessage() for record in caplog.records]
    assert said == ["second signal: closing at once", "stopping"]


def test_a_signal_while_starting_stops_without_a_drain(caplog: pytest.LogCaptureFixture) -> None:
    role = Recorder(drain_timeout=None, start_blocks=True)

    async def main() -> None:
        running = asyncio.ensure_future(serve(role))
        await role.started.wait()
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.wait_for(running, 5)

    with caplog.at_level(logging.INFO, logger=log.name):
        asyncio.run(main())
    assert role.calls == ["open", "start", "stop"]  # never started: nothing said of stopping
    assert caplog.records == []


def test_a_taken_metrics_port_is_one_line_and_the_role_still_stops() -> None:
    role = Recorder(drain_timeout=None)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}"):
            asyncio.run(serve(role, metrics=("127.0.0.1", port)))
    assert role.calls == ["open", "stop"]
