"""Running a role: the event loop (uvloop where installed) and logging."""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import platform
import sys
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Any:
    """uvloop's loop when installed: it moves more requests per second on the same core."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        return None
    return uvloop.new_event_loop


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def keep_heap() -> bool:
    """Keep freed memory in the heap instead of handing it back to the kernel at once.

    Every read of a bulk transfer allocates a buffer of up to 256 KiB and frees it moments
    later. With glibc's defaults those come from mmap or from the top of the heap, which is
    trimmed as soon as they are freed, so each new buffer is fresh memory that page-faults in:
    that cost more CPU than the copies themselves. Up to 32 MiB of free heap is kept instead.
    Does nothing (False) where the C library is not glibc.
    """
    if platform.libc_ver()[0] != "glibc":  # pragma: no cover - musl, macOS
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):  # pragma: no cover
        return False
    settings = ((_M_MMAP_THRESHOLD, 1 << 20), (_M_TRIM_THRESHOLD, 32 << 20), (_M_TOP_PAD, 1 << 20))
    return all(mallopt(option, value) == 1 for option, value in settings)


def give_back_heap() -> bool:
    """Hand the heap's free pages back to the kernel now (glibc's ``malloc_trim``).

    :func:`keep_heap` keeps up to 32 MiB of freed memory for the next bulk read; after a crowd
    of connections that never authenticated has gone, that memory is theirs, not the next
    read's, and an operator reads it as held. Called at most once a second, after such
    connections close (it walks the free lists: about a millisecond for a 100 MiB heap).
    """
    if platform.libc_ver()[0] != "glibc":  # pragma: no cover - musl, macOS
        return False
    try:
        return bool(ctypes.CDLL(None).malloc_trim(0))
    except (OSError, AttributeError):  # pragma: no cover
        return False


def run(main: Coroutine[Any, Any, T]) -> T:
    keep_heap()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
