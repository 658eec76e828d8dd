"""An asyncio event loop in a background thread, for test fixtures that must keep running
while the test itself blocks (waiting for a log line, a process, a socket).

Everything the loop runs is reached through :meth:`LoopThread.call`, which hands a coroutine to
the loop and waits (bounded) for its result in the calling thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

STOP_WITHIN = 5.0


class LoopThread:
    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, function: Callable[..., Awaitable[T]], *args: Any, timeout: float = 5.0) -> T:
        """Run ``function(*args)`` on the loop; its result, or its exception, here."""
        future = asyncio.run_coroutine_threadsafe(_awaited(function(*args)), self.loop)
        return future.result(timeout)

    def stop(self) -> None:
        """Cancel what still runs on the loop, stop it and join the thread (bounded)."""
        if self.loop.is_closed():
            return
        if self._thread.is_alive():
            self.call(_cancel_others, timeout=STOP_WITHIN)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(STOP_WITHIN)
        if not self._thread.is_alive():
            self.loop.close()


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


async def _cancel_others() -> None:
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), STOP_WITHIN)
