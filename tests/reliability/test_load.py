"""Load that goes on for a while: a stalled consumer beside bulk streams, thousands of short
streams, hundreds of reconnects, and a slow, long link. Memory and descriptors must come back
to where they were, and nothing may be declared dead that is only slow."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from tests.reliability.conftest import EchoPair
from tests.reliability.faultproxy import FaultProxy
from tests.reliability.support import (
    CHUNK,
    KIB,
    MIB,
    Transfer,
    chunks,
    echo_transfer,
    fd_count,
    log_count,
    round_trip,
    rss,
    run,
    settle,
    wait_for_log_sync,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

FD_SLACK = 2


class RssWatch:
    """Baseline and peak VmRSS of some processes, sampled while a scenario runs."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.baseline = {name: rss(pid) for name, pid in pids.items()}
        self.peak = dict(self.baseline)

    def sample(self) -> None:
        for name, pid in self.pids.items():
            self.peak[name] = max(self.peak[name], rss(pid))

    async def run(self, period: float = 0.1) -> None:
        while True:
            self.sample()
            await asyncio.sleep(period)

    def growth(self, now: bool = False) -> dict[str, float]:
        """MiB over the baseline, at the peak (or now)."""
        values = {name: rss(pid) for name, pid in self.pids.items()} if now else self.peak
        return {name: (values[name] - self.baseline[name]) / MIB for name in self.pids}


async def bulk(port: int, seeds: range, size: int) -> tuple[float, list[Transfer]]:
    """Echo transfers of ``size`` bytes in parallel; (seconds for all, the transfers)."""
    start = time.monotonic()
    transfers = await asyncio.gather(
        *(echo_transfer(port, Transfer(size, seed), timeout=60) for seed in seeds)
    )
    return time.monotonic() - start, list(transfers)


def test_slow_consumer_keeps_others_at_speed_and_memory_bounded(
    echo_pair: Callable[..., EchoPair],
) -> None:
    pair = echo_pair()
    size, budget = 32 * MIB, 64
    assert run(echo_transfer(pair.port, Transfer(MIB, seed=99))).exact
    watch = RssWatch({"client": pair.client.pid, "server": pair.server.process.pid})

    async def slow_consumer(writer: asyncio.StreamWriter, reader: asyncio.StreamReader) -> bytes:
        """Writes as much as the tunnel takes; reads about 1 KiB a second."""

        async def write() -> None:
            for data in chunks(1000, 64 * MIB):
                writer.write(data)
                await writer.drain()

        writing = asyncio.ensure_future(write())
        received = b""
        try:
            for _ in range(400):  # cancelled long before: the bulk streams take seconds
                received += await reader.read(256)
                await asyncio.sleep(0.25)
        except asyncio.CancelledError:
            pass
        writing.cancel()
        return received

    async def scenario() -> dict[str, float]:
        sampling = asyncio.ensure_future(watch.run())
        alone_seconds, alone = await bulk(pair.port, range(3), size)
        reader, writer = await asyncio.open_connection("127.0.0.1", pair.port)
        slow = asyncio.ensure_future(slow_consumer(writer, reader))
        await asyncio.sleep(1.0)  # its stream backs up through every buffer on the way
        with_seconds, beside = await bulk(pair.port, range(10, 13), size)
        slow.cancel()
        received = await slow
        writer.transport.abort()
        sampling.cancel()
        assert all(t.exact for t in alone + beside), [t for t in alone + beside if not t.exact]
        assert received == b"".join(chunks(1000, CHUNK))[: len(received)]
        return {"alone": alone_seconds, "beside": with_seconds, "slow": len(received)}

    out = run(scenario(), timeout=80)
    alone_rate = 3 * size / out["alone"] / MIB
    beside_rate = 3 * size / out["beside"] / MIB
    growth = watch.growth()
    print(
        f"alone {alone_rate:.0f} MiB/s, beside a stalled consumer {beside_rate:.0f} MiB/s; "
        f"slow consumer read {out['slow']:.0f} B; RSS growth MiB {growth}"
    )
    assert beside_rate >= 0.5 * alone_rate, (alone_rate, beside_rate)
    assert 1 * KIB <= out["slow"] <= 8 * KIB, out["slow"]
    assert max(growth.values()) < budget, growth


def test_ten_thousand_short_streams_leave_no_descriptor_or_memory_behind(
    echo_pair: Callable[..., EchoPair],
) -> None:
    pair = echo_pair()
    batches, concurrent = 50, 200
    pids = {"client": pair.client.pid, "server": pair.server.process.pid}
    assert run(round_trip(pair.port, b"warm up")) == b"warm up"
    fds = {name: fd_count(pid) for name, pid in pids.items()}
    watch = RssWatch(pids)

    async def one(index: int) -> bool:
        payload = f"stream {index:05d} ".encode() * 4
        return await round_trip(pair.port, payload) == payload

    async def scenario() -> int:
        sampling = asyncio.ensure_future(watch.run(0.2))
        exact = 0
        for batch in range(batches):
            results = await asyncio.gather(
                *(one(batch * concurrent + i) for i in range(concurrent))
            )
            exact += sum(results)
        sampling.cancel()
        return exact

    start = time.monotonic()
    exact = run(scenario(), timeout=80)
    seconds = time.monotonic() - start
    assert exact == batches * concurrent
    after = {
        name: settle(lambda p=pid: fd_count(p), fds[name] + FD_SLACK) for name, pid in pids.items()
    }
    growth = watch.growth(now=True)
    print(
        f"{exact} streams in {seconds:.1f}s; fds {fds} -> {after}; RSS growth MiB now {growth}, "
        f"peak {watch.growth()}"
    )
    assert all(after[name] <= fds[name] + FD_SLACK for name in pids), (fds, after)
    assert max(growth.values()) < 32, growth


def test_five_hundred_cuts_five_hundred_reconnects(
    echo_pair: Callable[..., EchoPair], make_proxy: Callable[..., FaultProxy]
) -> None:
    cuts = 500
    proxies: list[FaultProxy] = []

    def through_proxy(port: int) -> int:
        proxies.append(make_proxy(port))
        return proxies[0].port

    # Sessions that die young back off like failed attempts; keep the bound small here.
    pair = echo_pair(
        client_args=("--connect-timeout", "1", "--backoff-max", "0.02"), remote=through_proxy
    )
    proxy = proxies[0]
    pids = {"client": pair.client.pid, "server": pair.server.process.pid}
    assert run(round_trip(pair.port, b"warm up")) == b"warm up"
    fds = {name: fd_count(pid) for name, pid in pids.items()}
    watch = RssWatch(pids)
    start = time.monotonic()
    for done in range(cuts):
        wait_for_log_sync(pair.client, "tunnel up to ", 5, count=done + 1)
        assert proxy.cut() == 1, f"cut {done + 1}"
        if done % 50 == 0:
            watch.sample()
    wait_for_log_sync(pair.client, "tunnel up to ", 5, count=cuts + 1)
    seconds = time.monotonic() - start
    assert run(echo_transfer(pair.port, Transfer(4 * MIB, seed=1))).exact
    assert log_count(pair.client, "tunnel up to ") == cuts + 1
    assert log_count(pair.server.process, "session up with ") == cuts + 1
    after = {
        name: settle(lambda p=pid: fd_count(p), fds[name] + FD_SLACK) for name, pid in pids.items()
    }
    growth = watch.growth(now=True)
    print(
        f"{cuts} cuts and reconnects in {seconds:.1f}s; fds {fds} -> {after}; "
        f"RSS growth MiB now {growth}"
    )
    assert all(after[name] <= fds[name] + FD_SLACK for name in pids), (fds, after)
    assert max(growth.values()) < 32, growth
    assert pair.client.alive() and pair.server.process.alive()


def test_slow_long_link_has_no_false_keepalive_failure(
    echo_pair: Callable[..., EchoPair], make_proxy: Callable[..., FaultProxy]
) -> None:
    """200 ms round trip, 1 MB/s each way, keepalive 1 s / 3 s, a bulk echo for ~10 s."""
    keepalive = ("--keepalive-interval", "1", "--keepalive-timeout", "3")
    proxies: list[FaultProxy] = []

    def through_slow_link(port: int) -> int:
        proxy = make_proxy(port, max_queue=256 * KIB, socket_buffer=64 * KIB)
        proxy.set_latency(up=0.1, down=0.1)
        proxy.set_bandwidth(up=1_000_000, down=1_000_000)
        proxies.append(proxy)
        return proxy.port

    pair = echo_pair(server_args=keepalive, client_args=keepalive, remote=through_slow_link)

    async def probe(stop: asyncio.Event) -> list[float]:
        """A small request on its own stream every half second: what a ping would wait."""
        delays = []
        for n in range(40):
            if stop.is_set():
                break
            start = time.monotonic()
            assert await round_trip(pair.port, b"probe %02d" % n) == b"probe %02d" % n
            delays.append(time.monotonic() - start)
            await asyncio.sleep(0.5)
        return delays

    async def scenario() -> tuple[Transfer, list[float]]:
        stop = asyncio.Event()
        probing = asyncio.ensure_future(probe(stop))
        transfer = await echo_transfer(pair.port, Transfer(9_500_000, seed=3), timeout=25)
        stop.set()
        return transfer, await probing

    transfer, delays = run(scenario(), timeout=40)
    rate = transfer.size / transfer.seconds
    print(
        f"{transfer.size} B echoed in {transfer.seconds:.1f}s ({rate / 1e6:.2f} MB/s); "
        f"probe round trips: max {max(delays):.2f}s, {len(delays)} probes"
    )
    assert transfer.exact, transfer
    assert transfer.seconds >= 9.5  # the cap held: the run lasted ten seconds
    for program in (pair.client, pair.server.process):
        assert log_count(program, "did not answer a ping") == 0
    assert log_count(pair.client, "tunnel up to ") == 1
    assert log_count(pair.server.process, "session up with ") == 1
    assert max(delays) < 3.0, delays  # a ping would have been answered within the timeout
