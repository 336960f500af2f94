"""Shared by the model-based tests (tests/test_lifecycle_model.py, tests/test_pool_model.py)."""

from __future__ import annotations

import logging
import os


class ErrorLog(logging.Handler):
    """Collects the library's error logs: a failed background task is a failed test.

    ``expected``: message prefixes that are not failures in that model.
    """

    def __init__(self, *expected: str) -> None:
        super().__init__(logging.ERROR)
        self.expected = expected
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not record.getMessage().startswith(self.expected):
            self.records.append(record)


def open_fds() -> int:
    """This process's open file descriptors (sockets included)."""
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0
