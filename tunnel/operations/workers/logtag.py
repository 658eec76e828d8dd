"""A helper's log lines, each starting with its worker number."""

from __future__ import annotations

import logging


class _WorkerTag(logging.Filter):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.prefix = f"worker {index}: "

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and not record.msg.startswith(self.prefix):
            record.msg = self.prefix + record.msg
        return True


def tag_logs(index: int) -> None:
    """Start every log line of this helper with its worker number."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerTag(index))
