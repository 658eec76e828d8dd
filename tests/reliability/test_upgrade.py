"""A server is replaced without downtime: the new process binds the same port beside the old
one (--reuse-port), the old one drains (SIGTERM), and steady redis traffic through the client
never sees a refusal, a reset or a truncated answer (docs/operations.md, "Upgrading a server
without downtime").
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import pytest

from tests.integration.support import AmbassadorServer, Redis, Started
from tests.reliability.redistraffic import Tally, steady
from tests.reliability.support import run, wait_for_log

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def test_a_server_is_upgraded_in_place_under_steady_redis_traffic(
    redis_server: Redis,
    start_server: Callable[..., AmbassadorServer],
    start_client: Callable[..., Started],
    free_port: Callable[..., int],
) -> None:
    link = f"redis=127.0.0.1:{redis_server.port}"
    args = ("--reuse-port", "--drain-timeout", "20")
    old = start_server(link, args=args)
    local = free_port()
    client = start_client(
        f"--remote=127.0.0.1:{old.port}",
        f"--expose=127.0.0.1:{local}=redis",
        listens=[("127.0.0.1", local)],
    )
    new: list[AmbassadorServer] = []

    async def scenario() -> tuple[Tally, float]:
        tally, stop = Tally(), asyncio.Event()
        traffic = asyncio.ensure_future(steady(local, stop, tally))
        await asyncio.sleep(1.5)
        before = tally.completed
        # The upgrade: the new process listens beside the old one, then the old one drains.
        new.append(await asyncio.to_thread(start_server, link, port=old.port, args=args))
        await wait_for_log(new[0].process, "listening on ", 10)
        old.process.popen.send_signal(signal.SIGTERM)
        started = time.monotonic()
        await wait_for_log(new[0].process, "session up with ", 10)
        await asyncio.to_thread(old.process.popen.wait, 25)
        drained = time.monotonic() - started
        await asyncio.sleep(1.5)  # and it carries on on the new process alone
        stop.set()
        await asyncio.wait_for(traffic, 30)
        assert tally.completed > before
        return tally, drained

    tally, drained = run(scenario(), timeout=80)
    print(f"upgrade: {tally.completed} transfers completed, old process drained in {drained:.1f}s")
    assert not tally.corrupted, tally.corrupted
    assert not tally.failed, tally.failed
    assert old.process.popen.returncode == 0
    assert "drain ended with" not in old.process.stderr()
    assert "tunnel up to" in client.stderr()
    assert client.stderr().count("tunnel up to ") == 2
    assert "refused" not in client.stderr() and "dropped" not in client.stderr()
