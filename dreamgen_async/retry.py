"""The one backoff policy, and the one rule that no retry runs inside another.

Every loop that tries again uses :class:`Backoff`: HTTP retries (``ComfyUIClient``'s
requests), the removals of cancelled jobs, and the WebSocket's reconnect loop. The delay before
attempt ``n + 1`` is drawn between half and all of ``min(initial * 2**(n - 1), cap)``: jitter
that keeps a floor, so many clients never retry in lockstep and none retries at once. A failure
that carries ``retry_after`` (seconds the server asked for, from ``Retry-After``) waits that
long instead, at most ``max_retry_after``.

What is worth another attempt is :func:`~dreamgen_async.transport_errors.classify`'s verdict,
never a rule of the loop's own.

**No nesting.** A loop that retries runs its attempts inside :func:`single_attempts` (which
:func:`retry_call` does for you); a request made by that same task then makes one attempt and
leaves the retrying to the loop (:func:`in_retry_loop` tells it). Tasks spawned meanwhile are
not affected: the mark belongs to the task that set it.

The API, in full::

    Backoff(initial=0.1, cap=5.0, max_retry_after=30.0)   # the policy (frozen)
        .delay(attempt) -> float                          # before attempt + 1 (1-based)
        .delays() -> Iterator[float]                      # the delays of a loop, forever
        .wait(offset=0) -> tenacity wait strategy         # for tenacity.AsyncRetrying
    await retry_call(call, backoff, *args, retry_if=..., attempts=None, max_time=None)
    with single_attempts(): ...                           # this task's loop does the retrying
    in_retry_loop() -> bool                               # inside such a loop: attempt once
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    stop_never,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

__all__ = ["Backoff", "in_retry_loop", "retry_call", "single_attempts"]

log = logging.getLogger("dreamgen_async")

T = TypeVar("T")

#: The task running a retry loop (inherited by tasks it spawns, which then differ from it).
_LOOP_TASK: ContextVar[asyncio.Task[object] | None] = ContextVar(
    "dreamgen_retry_loop", default=None
)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Jittered exponential backoff with a cap.

    Attributes:
        initial: The first delay's upper bound (seconds).
        cap: No delay's upper bound exceeds this.
        max_retry_after: The longest wait a server's ``Retry-After`` may impose.
    """

    initial: float = 0.1
    cap: float = 5.0
    max_retry_after: float = 30.0

    def delay(self, attempt: int, error: BaseException | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based).

        ``error``: the failure; its ``retry_after`` attribute, when set, wins (capped).
        """
        retry_after = getattr(error, "retry_after", None)
        if isinstance(retry_after, int | float):
            return min(float(retry_after), self.max_retry_after)
        # The exponent is bounded: 2.0 ** 1024 overflows, and the cap is reached long before.
        ceiling = min(self.initial * 2.0 ** min(max(0, attempt - 1), 64), self.cap)
        return random.uniform(ceiling / 2, ceiling)

    def delays(self) -> Iterator[float]:
        """The delays of a loop that tries forever (start a new iterator to start over)."""
        attempt = 0
        while True:
            attempt += 1
            yield self.delay(attempt)

    def wait(self, offset: int = 0) -> wait_base:
        """This policy as a tenacity ``wait`` strategy; ``offset``: attempts made before
        tenacity's loop began (its attempt 1 is then attempt ``offset + 1`` here)."""
        return _Wait(self, offset)


class _Wait(wait_base):
    def __init__(self, backoff: Backoff, offset: int = 0) -> None:
        self._backoff = backoff
        self._offset = offset  # attempts made before tenacity's loop began

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None and outcome.failed else None
        return self._backoff.delay(retry_state.attempt_number + self._offset, error)


def in_retry_loop() -> bool:
    """Whether the current task runs inside a retry loop (then its requests attempt once)."""
    task = asyncio.current_task()
    return task is not None and _LOOP_TASK.get() is task


@contextmanager
def single_attempts() -> Iterator[None]:
    """Mark the current task as running a retry loop until the block ends.

    Requests it makes meanwhile attempt once and raise, so that only this loop retries.
    """
    token = _LOOP_TASK.set(asyncio.current_task())
    try:
        yield
    finally:
        _LOOP_TASK.reset(token)


async def retry_call(
    call: Callable[..., Awaitable[T]],
    backoff: Backoff,
    *args: Any,
    retry_if: Callable[[BaseException], bool],
    attempts: int | None = None,
    max_time: float | None = None,
) -> T:
    """Await ``call(*args)`` until it returns, backing off between attempts.

    A failure for which ``retry_if`` is false, or the last allowed attempt's failure, is
    raised as it is. ``attempts`` and ``max_time`` bound the loop (``None``: unbounded; the
    caller may bound it with ``asyncio.timeout``). Requests made by ``call`` attempt once.
    Cancelling it cancels the attempt or the wait in progress.

    The first attempt is made directly: a call that succeeds at once (nearly every request)
    costs no retry machinery. Only a retryable failure starts tenacity's loop, for the
    attempts after it, numbered (for the backoff, the stop and the time bound) as one loop.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    # single_attempts(), written out: no context manager built for every request.
    token = _LOOP_TASK.set(asyncio.current_task())
    try:
        return await call(*args)
    except Exception as exc:
        if attempts == 1 or not retry_if(exc):
            raise
        if max_time is not None and loop.time() - started >= max_time:
            raise
        log.info("retrying after %s", exc)
        first_delay = backoff.delay(1, exc)
    finally:
        _LOOP_TASK.reset(token)
    await asyncio.sleep(first_delay)
    return await _retry_loop(call, args, backoff, retry_if, attempts, max_time, started)


async def _retry_loop(
    call: Callable[..., Awaitable[T]],
    args: tuple[Any, ...],
    backoff: Backoff,
    retry_if: Callable[[BaseException], bool],
    attempts: int | None,
    max_time: float | None,
    started: float,
) -> T:
    """:func:`retry_call` from its second attempt on: tenacity's loop, numbered from 2."""
    stop: stop_base = stop_never
    if attempts is not None:
        stop = stop_after_attempt(attempts - 1)
    if max_time is not None:
        spent = asyncio.get_running_loop().time() - started
        stop = stop | stop_after_delay(max(0.0, max_time - spent))
    retrying = AsyncRetrying(
        stop=stop, wait=backoff.wait(offset=1), retry=retry_if_exception(retry_if), reraise=True
    )
    with single_attempts():
        async for attempt in retrying:
            with attempt:
                try:
                    return await call(*args)
                except Exception as exc:
                    if retry_if(exc):
                        log.info("retrying after %s", exc)
                    raise
    raise AssertionError("unreachable")  # pragma: no cover
