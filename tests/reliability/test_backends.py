"""Backends and consumers that fail: each failure reaches the other end as a reset, promptly,
and no other stream notices."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from tests.reliability.backends import EchoBackend
from tests.reliability.conftest import EchoPair
from tests.reliability.support import (
    KIB,
    MIB,
    Transfer,
    digest,
    echo_transfer,
    reset_close,
    run,
    wait_for_log_sync,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@contextlib.contextmanager
def silent_backend() -> Iterator[int]:
    """The port of a listener that never accepts, with its accept queue already full: the
    kernel drops further SYNs, so a dial to it neither succeeds nor fails until it times out."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(0)
    port = silent.getsockname()[1]
    fillers = []
    try:
        for _ in range(2):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        time.sleep(0.2)
        yield port
    finally:
        for sock in (*fillers, silent):
            sock.close()


def test_refusing_backend_resets_the_consumer_with_reason_backend_refused(
    echo_pair: Callable[..., EchoPair], free_port: Callable[..., int]
) -> None:
    pair = echo_pair(backend_port=free_port())  # nothing listens there
    transfer = run(echo_transfer(pair.port, Transfer(64 * KIB, seed=1), timeout=5))
    assert transfer.outcome == "reset", transfer
    assert transfer.received == 0
    assert transfer.seconds < 1.0, transfer.seconds
    wait_for_log_sync(
        pair.client, r"connection to 'echo' refused by the server \(backend_refused\)", 2
    )


def test_silent_backend_resets_the_consumer_after_the_dial_timeout(
    echo_pair: Callable[..., EchoPair],
) -> None:
    with silent_backend() as port:
        pair = echo_pair(backend_port=port, server_args=["--dial-timeout", "0.5"])
        transfer = run(echo_transfer(pair.port, Transfer(4 * KIB, seed=2), timeout=10))
        assert transfer.outcome == "reset", transfer
        assert transfer.received == 0
        assert 0.4 < transfer.seconds < 3.0, transfer.seconds
        wait_for_log_sync(
            pair.server.process, r"\(backend_timeout\): .* did not answer within 0.5s", 2
        )
        # The timed-out dial left nothing behind: the next stream is refused the same way.
        again = run(echo_transfer(pair.port, Transfer(4 * KIB, seed=3), timeout=10))
        assert again.outcome == "reset", again


def test_dials_beyond_max_pending_dials_wait_their_turn(
    echo_pair: Callable[..., EchoPair],
) -> None:
    pair = echo_pair(server_args=["--max-pending-dials", "1"])

    async def burst() -> list[Transfer]:
        return await asyncio.gather(
            *(echo_transfer(pair.port, Transfer(64 * KIB, seed=n), timeout=10) for n in range(12))
        )

    transfers = run(burst(), timeout=20)
    assert all(t.outcome == "complete" and t.exact for t in transfers), transfers


def test_a_stream_that_waits_out_the_dial_timeout_for_a_slot_is_refused(
    echo_pair: Callable[..., EchoPair],
) -> None:
    # One slot, held for the whole dial timeout by a dial to a silent backend.
    # The second stream gets the slot when that dial times out, and times out dialing in turn;
    # the third waited 1 s for a slot without one coming free, and is refused for that.
    with silent_backend() as port:
        pair = echo_pair(
            backend_port=port, server_args=["--dial-timeout", "1", "--max-pending-dials", "1"]
        )

        async def staggered() -> list[Transfer]:
            async def after(delay: float, seed: int) -> Transfer:
                await asyncio.sleep(delay)
                return await echo_transfer(pair.port, Transfer(4 * KIB, seed), timeout=10)

            return await asyncio.gather(after(0.0, 1), after(0.2, 2), after(0.4, 3))

        first, second, third = run(staggered(), timeout=20)
        assert [t.outcome for t in (first, second, third)] == ["reset"] * 3
        assert 0.8 < first.seconds < 1.6, first.seconds  # its own dial timed out
        assert 1.4 < second.seconds < 2.6, second.seconds  # waited ~0.8 s, then dialed for 1 s
        assert 0.8 < third.seconds < 1.6, third.seconds  # gave up waiting after 1 s
        # (The second timeout is not logged again: refusals of one kind are logged once a while.)
        wait_for_log_sync(pair.server.process, r"\(backend_timeout\): .* within 1s", 3)
        wait_for_log_sync(
            pair.server.process,
            r"\(limit_exceeded\): waited 1s for one of 1 backend dial slots",
            2,
        )


def test_flapping_backend_gives_exact_answers_or_clean_resets(
    echo_pair: Callable[..., EchoPair], make_echo: Callable[..., EchoBackend]
) -> None:
    echo = make_echo()
    pair = echo_pair(backend_port=echo.port)
    flaps = 12
    workers = 4

    async def flap() -> None:
        for _ in range(flaps):
            await asyncio.sleep(0.15)
            await asyncio.to_thread(echo.crash)
            await asyncio.sleep(0.1)
            await asyncio.to_thread(echo.start, echo.port)

    async def consume(worker: int, flapping: asyncio.Future[None]) -> list[Transfer]:
        done: list[Transfer] = []
        for attempt in range(500):  # bounded; ends with the flapping
            if flapping.done():
                break
            seed = worker * 1000 + attempt
            done.append(await echo_transfer(pair.port, Transfer(256 * KIB, seed), timeout=5))
        return done

    async def scenario() -> list[Transfer]:
        flapping = asyncio.ensure_future(flap())
        results = await asyncio.gather(*(consume(w, flapping) for w in range(workers)))
        await flapping
        return [t for per_worker in results for t in per_worker]

    transfers = run(scenario(), timeout=40)
    good = [t for t in transfers if t.outcome == "complete"]
    bad = [t for t in transfers if t.outcome != "complete"]
    assert all(t.exact for t in good), [t for t in good if not t.exact]
    assert all(t.outcome == "reset" for t in bad), [t for t in bad if t.outcome != "reset"]
    # What came back before a reset is still the start of what was sent.
    assert all(t.received_digest == digest(t.seed, t.size, t.received) for t in bad), [
        t for t in bad if t.received_digest != digest(t.seed, t.size, t.received)
    ]
    assert len(good) >= 10 and len(bad) >= flaps // 2, (len(good), len(bad))
    assert echo.accepted >= len(good)


def test_backend_reset_mid_transfer_reaches_the_consumer_as_a_reset(
    echo_pair: Callable[..., EchoPair], make_echo: Callable[..., EchoBackend]
) -> None:
    echo = make_echo(reset_after=256 * KIB)
    pair = echo_pair(backend_port=echo.port)
    transfer = run(echo_transfer(pair.port, Transfer(8 * MIB, seed=5), timeout=10))
    assert transfer.outcome == "reset", transfer  # ECONNRESET, not an EOF
    assert "ConnectionResetError" in transfer.error
    assert transfer.received <= 256 * KIB
    assert transfer.received_digest == digest(5, transfer.size, transfer.received)
    assert [e.how for e in echo.endings] == ["aborted"]


def test_consumer_reset_reaches_the_backend_promptly_and_spares_other_streams(
    echo_pair: Callable[..., EchoPair], make_echo: Callable[..., EchoBackend]
) -> None:
    echo = make_echo()
    pair = echo_pair(backend_port=echo.port)

    async def resetting_consumer() -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", pair.port)
        writer.write(bytes(512 * KIB))
        await reader.readexactly(256 * KIB)
        reset_close(writer)
        return time.monotonic()

    async def scenario() -> tuple[list[Transfer], float]:
        others = [Transfer(8 * MIB, seed) for seed in range(3)]
        tasks = [asyncio.ensure_future(echo_transfer(pair.port, t, rate=4 * MIB)) for t in others]
        await asyncio.sleep(0.3)
        reset_at = await resetting_consumer()
        await asyncio.gather(*tasks)
        return others, reset_at

    others, reset_at = run(scenario())
    assert all(t.exact for t in others), others
    resets = [e for e in echo.endings if e.how == "reset"]
    assert len(resets) == 1, echo.endings
    assert resets[0].at - reset_at < 1.0, resets[0].at - reset_at
    assert sorted(e.how for e in echo.endings) == ["eof", "eof", "eof", "reset"]
