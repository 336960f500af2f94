"""The worker pool behind ``generate_many``, ``as_completed`` and ``start_batch``.

:class:`BatchRunner` runs ``concurrency`` workers that pull from one shared, lazy iterator of
requests and hand each outcome to the one consumer as it finishes. A job's own failure (a
:class:`DreamgenError` or an ``OSError``) becomes a :class:`JobFailure`; anything else is a
bug and ends the batch. Leaving the iteration early, or cancelling it, cancels every worker
(their prompts leave the server) and waits for them; nothing is left pending.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias

from dreamgen_async.errors import DreamgenError
from dreamgen_async.handles import Mailbox
from dreamgen_async.requests import GenerationResult, JobFailure, Request

__all__ = ["Batch", "BatchProgress", "BatchRunner", "Outcome"]

log = logging.getLogger("dreamgen_async")

Outcome: TypeAlias = GenerationResult | JobFailure
#: Runs one request of the batch (its index, the request); raises what the job failed with.
RunOne: TypeAlias = Callable[[int, Request], Awaitable[GenerationResult]]


@dataclass(frozen=True, slots=True)
class BatchProgress:
    """Counts of a running batch, passed to ``on_batch_progress``."""

    total: int | None
    done: int
    failed: int
    running: int
    cached: int
    resumed: int = 0


class _Counts:
    """A batch's running counts, reported to its ``on_batch_progress`` at every change."""

    def __init__(self, total: int | None, report: Callable[[BatchProgress], object] | None) -> None:
        self.total = total
        self.done = self.failed = self.running = self.cached = self.resumed = 0
        self._report = report

    def started(self) -> None:
        self.running += 1
        self.report()

    def finished(self, outcome: Outcome) -> None:
        self.running -= 1
        if isinstance(outcome, JobFailure):
            self.failed += 1
        else:
            self.done += 1
            self.cached += outcome.cached
            self.resumed += outcome.resumed
        self.report()

    def report(self) -> None:
        if self._report is None:
            return
        state = BatchProgress(
            self.total, self.done, self.failed, self.running, self.cached, self.resumed
        )
        try:
            self._report(state)
        except Exception:
            log.exception("batch progress callback raised")


def _retrieve(task: asyncio.Task[None]) -> None:
    """A worker's unexpected exception is raised by the consumer; never logged as lost."""
    if not task.cancelled():
        task.exception()


class BatchRunner:
    """``concurrency`` workers over one lazy iterator of requests; one consumer.

    Args:
        requests: The requests; a list or tuple gives ``BatchProgress.total``.
        concurrency: Workers (jobs at a time).
        run_one: Runs one request (see :data:`RunOne`).
        on_batch_progress: Told the counts at every change; an exception it raises is logged.
    """

    def __init__(
        self,
        requests: Iterable[Request],
        concurrency: int,
        run_one: RunOne,
        on_batch_progress: Callable[[BatchProgress], object] | None = None,
    ) -> None:
        total = len(requests) if isinstance(requests, list | tuple) else None
        self._pending = enumerate(requests)
        self._concurrency = concurrency
        self._run_one = run_one
        self._counts = _Counts(total, on_batch_progress)
        # Bounded: a consumer that stops reading stops the workers (back-pressure).
        self._finished: asyncio.Queue[tuple[int, Outcome]] = asyncio.Queue(concurrency)
        self._wake = asyncio.Event()  # set when an outcome is queued or a worker ends
        self._live = 0  # workers not ended yet
        self._crash: BaseException | None = None  # a worker's unexpected exception

    async def _worker(self) -> None:
        try:
            for index, request in self._pending:
                self._counts.started()
                outcome: Outcome
                try:
                    outcome = await self._run_one(index, request)
                except (DreamgenError, OSError) as exc:
                    outcome = JobFailure(request, index, exc)
                self._counts.finished(outcome)
                await self._finished.put((index, outcome))
                self._wake.set()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug, not a job's failure: the consumer raises it
            if self._crash is None:
                self._crash = exc
            raise
        finally:
            self._live -= 1
            self._wake.set()

    async def outcomes(
        self, *, return_exceptions: bool = True
    ) -> AsyncIterator[tuple[int, Outcome]]:
        """``(index, outcome)`` pairs as jobs finish.

        With ``return_exceptions=False`` the first failure is raised (the rest cancelled).
        Cancelling the iteration (or leaving it) cancels every worker and waits for them.

        The consumer sleeps on one event the workers set (an outcome queued, a worker
        ended): no per-outcome wait over every worker task.
        """
        self._live = self._concurrency
        workers = [
            asyncio.create_task(self._worker(), name="dreamgen-batch")
            for _ in range(self._concurrency)
        ]
        for task in workers:
            task.add_done_callback(_retrieve)
        try:
            while True:
                if not self._finished.empty():
                    index, outcome = self._finished.get_nowait()
                    if isinstance(outcome, JobFailure) and not return_exceptions:
                        raise outcome.error
                    yield index, outcome
                    continue
                if self._crash is not None:
                    raise self._crash
                if self._live == 0:  # every worker ended and nothing is left in the queue
                    return
                self._wake.clear()
                await self._wake.wait()
        finally:
            await self._stop(workers)

    @staticmethod
    async def _stop(workers: list[asyncio.Task[None]]) -> None:
        """Cancel the workers and wait for all of them."""
        for task in workers:
            task.cancel()
        await asyncio.wait(workers)


class Batch:
    """A batch running in the background (from :meth:`DreamGenerator.start_batch`).

    Follow it with :meth:`progress`, collect :meth:`results`, or ``await`` :meth:`cancel`.
    """

    def __init__(
        self,
        run: Callable[[Callable[[BatchProgress], object]], Coroutine[Any, Any, list[Outcome]]],
    ) -> None:
        self._progress: Mailbox[BatchProgress] = Mailbox()
        self._task = asyncio.create_task(run(self._progress.put), name="dreamgen-batch")
        self._task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[list[Outcome]]) -> None:
        self._progress.close()
        if not task.cancelled():
            task.exception()

    def done(self) -> bool:
        """Whether the batch is over (finished, failed or cancelled)."""
        return self._task.done()

    async def progress(self) -> AsyncIterator[BatchProgress]:
        """A :class:`BatchProgress` snapshot at every change (one consumer); ends with the batch.

        A consumer that falls far behind skips old snapshots, never the last one.
        """
        while (state := await self._progress.get()) is not None:
            yield state

    async def results(self) -> list[Outcome]:
        """Every outcome, in request order, once the batch is over."""
        return await self._task

    async def cancel(self) -> None:
        """Cancel every job of the batch; returns once their prompts left the server.

        Idempotent. :meth:`results` then raises ``CancelledError``.
        """
        self._task.cancel()
        await asyncio.wait([self._task])
