"""One waiter rule for every job handle: :class:`Job`, :class:`PoolJob`, :class:`GenerationJob`.

A handle is what a caller holds while a job runs. Several callers may wait on one job; the
rule (nats.py's, see ``shared/STYLE.md``) is the same for every handle:

- ``await handle.result(timeout=...)``: a caller's timeout or cancellation ends **only that
  caller's wait**. When the last waiter gives up and the job has no outcome yet, the job is
  cancelled (:meth:`JobHandle.abandon`): it leaves the client-side queue or its server.
- ``await handle.cancel()`` cancels the job **for everyone**: idempotent, a request honoured
  once; waiters get ``CancelledError`` (or the outcome, when the job finished first).
- ``handle.done()`` says whether the outcome is known.

Subclasses own the job's future and say how to abandon and cancel it; this base owns the
waiter count and the timeout message, so the rule cannot drift between handles.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import Generic, TypeVar

from dreamgen_async.errors import PromptTimeout

__all__ = ["JobHandle"]

R = TypeVar("R")


class JobHandle(ABC, Generic[R]):
    """The base of every job handle: the one waiter rule.

    Subclasses set ``_future`` (the job's outcome; an ``asyncio.Task`` is one too) and
    ``_waiters = 0`` in their ``__init__``, and implement :meth:`abandon` and :meth:`cancel`.
    """

    __slots__ = ()
    _future: asyncio.Future[R]
    _waiters: int

    @property
    @abstractmethod
    def label(self) -> str:
        """How error messages name the job (``prompt <id>``, or the request)."""

    @abstractmethod
    async def abandon(self, reason: BaseException) -> None:
        """The last waiter gave up (``reason``: its timeout or cancellation): end the job.

        Called at most once per giving-up, only while the job has no outcome; returns once
        the job's removal was asked for (and sent, where that is bounded).
        """

    @abstractmethod
    async def cancel(self) -> None:
        """Cancel the job for every waiter. Idempotent; awaiting it is required."""

    def done(self) -> bool:
        """Whether the outcome is known (success, failure or cancellation)."""
        return self._future.done()

    @property
    def waiters(self) -> int:
        """How many callers are in :meth:`result` right now."""
        return self._waiters

    async def result(self, timeout: float | None = None) -> R:
        """Wait for the outcome.

        Several callers may wait on one job. Cancelling this call, or reaching ``timeout``,
        ends this caller's wait; when no other caller is waiting, it also cancels the job
        (off the client-side queue or its server) before it returns.

        Raises:
            PromptTimeout: ``timeout`` seconds passed (also a builtin ``TimeoutError``).
            DreamgenError: the job did not succeed (what it failed with).
        """
        self._waiters += 1
        reason: BaseException | None = None  # set when this caller gives up
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(self._future)
        except TimeoutError:
            if self._future.done() and not self._future.cancelled():
                return self._future.result()
            reason = self._timeout_error(timeout, last=self._waiters == 1)
            raise reason from None
        except asyncio.CancelledError as exc:
            reason = exc
            raise
        finally:
            self._waiters -= 1
            if reason is not None and self._waiters == 0 and not self._future.done():
                await self.abandon(reason)

    def _timeout_error(self, timeout: float | None, *, last: bool) -> PromptTimeout:
        what = (
            "it was removed from the server"
            if last
            else "another caller still waits for it, so it stays on the server"
        )
        return PromptTimeout(
            f"{self.label} did not finish within {timeout} s; {what}",
            prompt_id=getattr(self, "prompt_id", None),
        )
