"""Shared by the model-based tests (tests/test_lifecycle_model.py, tests/test_pool_model.py)."""

from __future__ import annotations

import asyncio
import logging
import os

from hypothesis import HealthCheck, Phase, settings


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


def our_tasks(loop: asyncio.AbstractEventLoop) -> list[asyncio.Task[object]]:
    """The library's tasks (named ``dreamgen-...``) still running in ``loop``."""
    return [
        t for t in asyncio.all_tasks(loop) if t.get_name().startswith("dreamgen-") and not t.done()
    ]


def model_settings(default_examples: int) -> settings:
    """Hypothesis settings of a model test over real servers.

    ``DREAMGEN_MODEL_EXAMPLES`` overrides how many runs (``default_examples`` in CI).
    Shrinking a failure re-runs real servers for minutes: in CI the first one found is
    reported (with its seed); ``DREAMGEN_MODEL_SHRINK=1`` minimises it.
    """
    return settings(
        max_examples=int(os.environ.get("DREAMGEN_MODEL_EXAMPLES", str(default_examples))),
        stateful_step_count=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        phases=[Phase.explicit, Phase.reuse, Phase.generate]
        + ([Phase.shrink] if os.environ.get("DREAMGEN_MODEL_SHRINK") else []),
        print_blob=True,
    )
