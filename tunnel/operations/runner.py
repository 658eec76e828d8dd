"""Running a role: signals, the status endpoint, reloads, worker processes, ordered teardown.

Every role runs the same way: SIGTERM or SIGINT stop it (after a drain, where it has one),
SIGHUP and a changed file reload it, ``--metrics-listen`` serves its status, ``--workers``
starts helper processes, and stopping undoes all of it in the reverse order. :func:`serve`
owns that; a :class:`Role` brings only what is its own. The worker pool is made first
(:func:`worker_processes`) and handed to the role's constructor and to :func:`serve`, so
each part that uses it has it from the start.

It lives in operations/ with what it drives (the status endpoint, the reloader, the worker
pool); it needs nothing of aio/ or security/, since each role passes itself in.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from tunnel.errors import ConfigError
from tunnel.operations.httpd import StatusServer
from tunnel.operations.oserrors import listen_error
from tunnel.operations.reload import Reloader
from tunnel.operations.workers.channel import helper_channel_fd, helper_index
from tunnel.operations.workers.logtag import tag_logs
from tunnel.operations.workers.pool import WorkerPool, helper_command, reload_all
from tunnel.settings.wording import hostport

HELPER_STOP_TIMEOUT = 5.0  # seconds helpers have to finish after SIGTERM, where no drain says

C = TypeVar("C")
C_contra = TypeVar("C_contra", contravariant=True)


class Role(Protocol[C_contra]):
    """What a role brings to :func:`serve`."""

    log: logging.Logger  # where "stopping" and the second signal are logged

    @property
    def drain_timeout(self) -> float | None:
        """Seconds open streams may finish after the first signal (a second one cuts it
        short); None: the role stops at the first signal, with nothing to drain."""

    async def open(self, stop: Callable[[], None]) -> None:
        """What comes before the status endpoint (the server's listener, or a helper's
        channel to its main process, which calls ``stop`` once that process is gone)."""

    async def start(self) -> None:
        """What may take its time once all is up (the client's first catalog); a stop
        signal meanwhile cancels it."""

    async def drain(self, now: asyncio.Event) -> None:
        """Let open streams finish, until ``drain_timeout`` or until ``now`` is set."""

    async def stop(self) -> None: ...

    def reload(self, new: C_contra) -> Awaitable[Any] | None: ...

    def status(self) -> dict[str, Any]: ...

    def ready(self) -> bool: ...

    def unready_reason(self) -> str: ...


@dataclass(frozen=True)
class Reload(Generic[C]):
    """How to build the configuration again, the files it was read from, and the running
    configuration (whose files' times a change is measured against)."""

    load: Callable[[], C]
    files: Callable[[C], Iterable[str | None]]
    config: C


async def serve(
    role: Role[C],
    reload: Reload[C] | None = None,
    metrics: tuple[str, int] | None = None,
    pool: WorkerPool | None = None,
) -> None:
    """Run ``role`` until SIGINT or SIGTERM; reload on SIGHUP and changed files.

    ``pool`` (the helper processes, not started yet) makes this the main process of
    several: it starts them, and the signals it takes it passes on to them.
    """
    loop = asyncio.get_running_loop()
    stop, now = asyncio.Event(), asyncio.Event()
    helpers: WorkerPool | None = None  # the pool, once it is started
    drains = role.drain_timeout is not None

    def on_signal() -> None:
        if stop.is_set() and drains:
            role.log.info("second signal: closing at once")
            now.set()
        stop.set()
        if helpers is not None and drains:
            helpers.signal_all(signal.SIGTERM)  # each helper drains as it would alone

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    endpoint = StatusServer(role.status, role.ready, role.unready_reason, pool)
    watcher: asyncio.Task[None] | None = None
    stopping = asyncio.ensure_future(stop.wait())
    started = False
    try:
        await role.open(stop.set)
        if metrics is not None:
            try:
                await endpoint.start(*metrics)
            except OSError as exc:
                raise ConfigError(listen_error(hostport(*metrics), exc)) from None
        if reload is not None:
            # Installed before the role has started: SIGHUP must never end the process.
            reloading = Reloader(reload.load, role.reload, reload.files, reload.config)
            watcher = reloading.install()
        if pool is not None:
            helpers = pool  # a pool that fails to start is stopped with what it started
            await helpers.start()
            if watcher is not None:
                loop.add_signal_handler(signal.SIGHUP, reload_all, reloading, pool)
        starting = asyncio.ensure_future(role.start())
        done, _ = await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
        if starting not in done:
            starting.cancel()
            return
        starting.result()
        started = True
        await stop.wait()
        await role.drain(now)
    finally:
        stopping.cancel()
        if started:
            role.log.info("stopping")
        if watcher is not None:
            watcher.cancel()
        if helpers is not None:
            timeout = role.drain_timeout
            await helpers.stop(HELPER_STOP_TIMEOUT if timeout is None else timeout)
        await endpoint.stop()
        await role.stop()


def worker_processes(
    kind: str, argv: list[str], workers: int
) -> tuple[int | None, WorkerPool | None]:
    """This process's place among ``workers`` processes: in a helper, the channel to its
    main process (and its logs tagged with its number); in the main process of several, its
    pool of helpers (started by :func:`serve`); alone, neither."""
    channel = helper_channel_fd()
    if channel is not None:
        tag_logs(helper_index())
        return channel, None
    if workers > 1:
        return None, WorkerPool(kind, helper_command(kind, argv), workers - 1)
    return None, None
