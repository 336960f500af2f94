"""Stopping an application cleanly on SIGINT and SIGTERM.

``timeout 60 app``, ``systemctl stop``, ``docker stop`` and Kubernetes send SIGTERM, which by
default kills a Python process on the spot: the prompts it queued stay on the server and
keep its GPU busy. :func:`stop_on_signals` makes SIGTERM (and SIGINT) cancel the task that
runs the application instead, so every ``async with`` unwinds as on a cancellation: the
pending prompts of our jobs are deleted, the running one interrupted, a batch journal kept.
Then :class:`SignalExit` is raised (a :class:`SystemExit` with status ``128 + signal``, so
an uncaught one ends the process with 130 for SIGINT and 143 for SIGTERM). A second signal
during that cleanup ends the process at once, with the same status::

    from dreamgen_async.signals import stop_on_signals

    async def main() -> None:
        with stop_on_signals():
            async with DreamGenerator(url, output_dir="out") as gen:
                await gen.generate_many(requests)

    asyncio.run(main())  # SIGTERM: prompts taken back, then exit status 143

Signal handlers belong to the main thread's event loop (``loop.add_signal_handler``), so
this works in the main thread of a Unix process; elsewhere it raises ``RuntimeError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Iterable
from types import TracebackType

__all__ = ["SignalExit", "stop_on_signals"]

DEFAULT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class SignalExit(SystemExit):
    """The application was stopped by a signal, after its cleanup ran.

    ``code`` is ``128 + signum`` (130 for SIGINT, 143 for SIGTERM), the status a shell
    reports for a process ended by that signal; ``signum`` is the signal.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


class stop_on_signals:
    """While inside it, the first of ``signals`` cancels ``task`` and the second exits at once.

    Use it inside the coroutine that runs the application (``task`` defaults to the
    current task). When a signal cancelled the task, leaving the block raises
    :class:`SignalExit` instead of ``CancelledError`` (also when the code inside swallowed
    the cancellation). ``received`` is the first signal's number, else ``None``.

    Args:
        signals: The signals handled (default SIGINT and SIGTERM).
        task: The task to cancel (default: the one entering the block).
    """

    def __init__(
        self,
        signals: Iterable[signal.Signals] = DEFAULT_SIGNALS,
        *,
        task: asyncio.Task[object] | None = None,
    ) -> None:
        self.signals = tuple(signals)
        self.received: int | None = None
        self._task = task
        self._loop: asyncio.AbstractEventLoop | None = None

    def __enter__(self) -> stop_on_signals:
        loop = asyncio.get_running_loop()
        task = self._task or asyncio.current_task()
        if task is None:
            raise RuntimeError("stop_on_signals() needs a running task")
        self._task, self._loop = task, loop
        installed: list[signal.Signals] = []
        try:
            for signum in self.signals:
                loop.add_signal_handler(signum, self._on_signal, signum)
                installed.append(signum)
        except (NotImplementedError, ValueError) as exc:  # not Unix, or not the main thread
            for signum in installed:
                loop.remove_signal_handler(signum)
            raise RuntimeError(f"cannot handle signals here: {exc}") from exc
        return self

    def _on_signal(self, signum: int) -> None:
        if self.received is not None:  # the second one: no more cleanup
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(OSError, ValueError):
                    stream.flush()
            os._exit(128 + self.received)
        self.received = signum
        assert self._task is not None
        self._task.cancel(f"stopped by signal {signal.Signals(signum).name}")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._loop is not None
        for signum in self.signals:  # back to the defaults: a later signal ends the process
            self._loop.remove_signal_handler(signum)
        if self.received is None:
            return
        if self._task is not None and self._task.cancelling():
            self._task.uncancel()
        raise SignalExit(self.received) from (
            None if isinstance(exc, asyncio.CancelledError) else exc
        )
