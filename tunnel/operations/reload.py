"""Reloading a running role: on SIGHUP, and when a file it was started from changes.

The new configuration is built exactly as at start (flags, environment, config file), then
applied. Anything wrong with it (a broken certificate, a bad link, an unreadable file, a port
that cannot be bound) keeps the running configuration and logs one line saying why, so a typo
never takes a tunnel down. An ``apply`` that has to wait (binding listeners) returns an
awaitable; "reloaded" is logged only once it has succeeded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Generic, TypeVar

from tunnel.errors import ConfigError

T = TypeVar("T")
log = logging.getLogger("ambassador.reload")


class Reloader(Generic[T]):
    def __init__(
        self,
        load: Callable[[], T],
        apply: Callable[[T], Awaitable[Any] | None],
        files: Callable[[T], Iterable[str | None]],
        current: T,
        interval: float = 1.0,
    ) -> None:
        self._load = load
        self._apply = apply
        self._files = files
        self._interval = interval
        self._stamps = self._stamp(current)
        self.reloads = 0
        self.failures = 0
        self._applying: set[asyncio.Task[None]] = set()

    def install(self) -> asyncio.Task[None]:
        """SIGHUP handler plus the file watcher; cancel the returned task to stop watching."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.reload, "SIGHUP")
        return loop.create_task(self._watch())

    def reload(self, why: str) -> bool:
        """Load and apply; False when the new configuration was refused. An apply that has
        to wait finishes in the background and logs its own outcome."""
        try:
            config = self._load()
            pending = self._apply(config)
        except ConfigError as exc:
            self._failed(why, exc)
            return False
        if pending is None:
            self._succeeded(why, config)
        else:
            task = asyncio.get_running_loop().create_task(self._finish(why, config, pending))
            self._applying.add(task)
            task.add_done_callback(self._applying.discard)
        return True

    async def _finish(self, why: str, config: T, pending: Awaitable[Any]) -> None:
        try:
            await pending
        except ConfigError as exc:
            self._failed(why, exc)
        else:
            self._succeeded(why, config)

    def _succeeded(self, why: str, config: T) -> None:
        self.reloads += 1
        self._stamps = self._stamp(config)
        log.info("reloaded (%s)", why)

    def _failed(self, why: str, exc: ConfigError) -> None:
        self.failures += 1
        log.error("reload (%s) failed, keeping the running configuration: %s", why, exc)
        # Remember the files as they are now, so the watcher does not report the same
        # broken file again; the next change (or SIGHUP) tries once more.
        self._stamps = {path: _mtime(path) for path in self._stamps}

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            changed = [path for path, stamp in self._stamps.items() if _mtime(path) != stamp]
            if changed:
                # Remember the new stamps even if the reload fails: one log line per change.
                self._stamps.update({path: _mtime(path) for path in changed})
                self.reload(f"{', '.join(changed)} changed")

    def _stamp(self, config: T) -> dict[str, float | None]:
        return {path: _mtime(path) for path in self._files(config) if path}


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None
