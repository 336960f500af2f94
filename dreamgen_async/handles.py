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
import logging
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Generic, TypeVar

from dreamgen_async.errors import PromptTimeout
from dreamgen_async.protocol import Event, JSONDict, event_from, parse_text, skipping_malformed

__all__ = ["EVENT_BUFFER", "EventSource", "JobHandle", "Mailbox", "Waiters", "within"]

R = TypeVar("R")
T = TypeVar("T")

log = logging.getLogger("dreamgen_async")

ProgressCallback = Callable[[Event], object]

#: Events kept for an ``events()`` subscriber that has not caught up; older ones are dropped
#: (never terminal outcomes, which are delivered through the result, not the stream).
EVENT_BUFFER = 256


class Mailbox(Generic[T]):
    """A bounded mailbox between a producer that never waits (``put``) and one consumer.

    When the consumer falls ``EVENT_BUFFER`` items behind, the oldest are dropped.
    """

    def __init__(self, backlog: Iterable[T] = ()) -> None:
        self._items: deque[T] = deque(backlog, maxlen=EVENT_BUFFER)
        self._wakeup = asyncio.Event()
        if self._items:
            self._wakeup.set()
        self._closed = False

    def put(self, item: T) -> None:
        self._items.append(item)
        self._wakeup.set()

    def close(self) -> None:
        self._closed = True
        self._wakeup.set()

    async def get(self) -> T | None:
        """The next item, or ``None`` once closed and drained."""
        while not self._items:
            if self._closed:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._items.popleft()


#: How many recent events (or frames) a job keeps for a subscriber that comes late.
_BACKLOG = 32


class EventSource:
    """The progress events of one job, for its callback and its ``events()`` subscribers.

    Shared by :class:`Job` and the pool's job; the subclass sets the attributes in its
    ``__init__``.
    """

    __slots__ = ("_backlog", "_on_progress", "_subscribers")
    # Recent events; a progress-only message nobody listened to is kept as the frame it
    # came in (a string: nothing for the garbage collector to scan while the job runs),
    # parsed only if a subscriber comes (see deliver_message).
    _backlog: deque[Event | str] | None
    _subscribers: list[Mailbox[Event]] | None
    prompt_id: str
    _future: asyncio.Future[Any]
    _on_progress: ProgressCallback | None

    async def events(self) -> AsyncIterator[Event]:
        """Progress events routed to this prompt, starting with the recent backlog.

        The iterator ends when the prompt reaches an outcome. A consumer that falls far
        behind loses the oldest events (never the outcome); the reader never waits for it.
        """
        sub: Mailbox[Event] = Mailbox(self._recent())
        if self._future.done():
            sub.close()
        else:
            if self._subscribers is None:
                self._subscribers = []
            self._subscribers.append(sub)
        try:
            while (event := await sub.get()) is not None:
                yield event
        finally:
            if self._subscribers and sub in self._subscribers:
                self._subscribers.remove(sub)

    def deliver(self, event: Event) -> None:
        """Hand an event to the callback and subscribers (the job's owner calls it).

        Never raises, never blocks.
        """
        self._remember(event)
        for sub in self._subscribers or ():
            sub.put(event)
        if self._on_progress is not None:
            try:
                self._on_progress(event)
            except Exception:
                log.exception("progress callback for prompt %s raised", self.prompt_id)

    def deliver_message(self, kind: str, data: JSONDict, frame: str) -> None:
        """Hand on a progress-only message (see
        :func:`~dreamgen_async.protocol.progress_only`), ``data`` decoded from ``frame``:
        parsed and delivered when a callback or a subscriber listens; otherwise only its
        ``frame`` is kept in the backlog (most jobs of a batch have no listener, and most of
        a job's messages are these).

        Never raises, never blocks.
        """
        if self._on_progress is None and not self._subscribers:
            self._remember(frame)
            return
        event = skipping_malformed(event_from, kind, data)
        if event is not None:
            self.deliver(event)

    def listen(self, on_progress: ProgressCallback) -> None:
        """Send the job's progress events from now on to ``on_progress`` (in place of the
        callback it was submitted with). Ignored once the job has settled."""
        if not self._future.done():
            self._on_progress = on_progress

    def _remember(self, item: Event | str) -> None:
        """Keep ``item`` among the recent ones a later subscriber starts with."""
        if self._backlog is None:
            self._backlog = deque(maxlen=_BACKLOG)
        self._backlog.append(item)

    def _recent(self) -> list[Event]:
        """The backlog's events, each kept frame parsed (a malformed one left out)."""
        events = []
        for item in self._backlog or ():
            event = skipping_malformed(parse_text, item) if isinstance(item, str) else item
            if event is not None:
                events.append(event)
        return events

    def _close_events(self) -> None:
        """The job settled: end every subscriber's iteration, drop the backlog and the
        callback (no event comes after the outcome; a callback often refers back to the job
        or its owner, a reference cycle that only the garbage collector would free, with
        everything the job holds)."""
        for sub in self._subscribers or ():
            sub.close()
        self._subscribers = None
        self._backlog = None
        self._on_progress = None


class Waiters:
    """Callers waiting for one moment, each on a future of its own (cancelling one wait
    cancels nothing shared), all woken by :meth:`wake`: their tasks resume in the next pass
    of the loop, where a shield over a shared future takes two (its own callback, then
    theirs). Empty (no list) until someone waits: thousands of jobs may hold one each."""

    __slots__ = ("_futures",)

    def __init__(self) -> None:
        self._futures: list[asyncio.Future[None]] | None = None

    def wait(self) -> asyncio.Future[None]:
        """A future of the caller's own, resolved at the next :meth:`wake`."""
        future = asyncio.get_running_loop().create_future()
        if self._futures is None:
            self._futures = []
        elif len(self._futures) >= 16:  # waits given up (timeouts, cancels) are dropped
            self._futures = [waiting for waiting in self._futures if not waiting.done()]
        self._futures.append(future)
        return future

    @property
    def pending(self) -> int:
        """How many waits are still waiting."""
        return sum(not future.done() for future in self._futures or ())

    @property
    def held(self) -> int:
        """How many futures are held: the pending ones and at most 16 given up."""
        return len(self._futures or ())

    def wake(self) -> None:
        """Resolve every waiting future (a cancelled wait is skipped)."""
        futures, self._futures = self._futures, None
        for future in futures or ():
            if not future.done():
                future.set_result(None)


def within(waiting: Awaitable[T], timeout: float | None) -> Awaitable[T]:
    """``waiting``, to be awaited within ``timeout`` seconds when there is one (then
    ``TimeoutError``); itself when there is none (most waits: no timer, no coroutine)."""
    if timeout is None:
        return waiting
    return _timed(waiting, timeout)


async def _timed(waiting: Awaitable[T], timeout: float) -> T:
    async with asyncio.timeout(timeout):
        return await waiting


class JobHandle(EventSource, ABC, Generic[R]):
    """The base of every job handle: the one waiter rule.

    Subclasses set ``_future`` (the job's outcome; an ``asyncio.Task`` is one too) in their
    ``__init__`` and call ``super().__init__()``; they implement :meth:`abandon`, :meth:`cancel`
    and :attr:`label`.
    """

    __slots__ = ("_waiters",)
    _future: asyncio.Future[R]

    def __init__(self) -> None:
        self._waiters = 0

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
    def position(self) -> int | None:
        """Its place in our client-side queue, waiting for a slot: 1 is the next to be
        posted. ``None`` when it is not waiting there (posted, on a server, or ended)."""
        return None

    def settled_error(self) -> BaseException | None:
        """What the job failed with once done: ``None`` on success, a ``CancelledError``
        when cancelled.

        Raises:
            asyncio.InvalidStateError: the job has no outcome yet.
        """
        if self._future.cancelled():
            return asyncio.CancelledError()
        return self._future.exception()

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
        future = self._future
        if future.done():  # settled: nothing to wait for, nobody to give up
            return future.result()
        self._waiters += 1
        reason: BaseException | None = None  # set when this caller gives up
        try:
            await within(self._settling(), timeout)
            return future.result()
        except TimeoutError:
            if future.done() and not future.cancelled():
                return future.result()
            reason = self._timeout_error(timeout, last=self._waiters == 1)
            raise reason from None
        except asyncio.CancelledError as exc:
            reason = exc
            raise
        finally:
            self._waiters -= 1
            if reason is not None and self._waiters == 0 and not future.done():
                await self.abandon(reason)

    def _settling(self) -> Awaitable[object]:
        """What :meth:`result` awaits: done once the job has its outcome, and cancelling it
        cancels nothing of the job's. A handle that settles its own future wakes its waiters
        itself (one loop pass: see :class:`Waiters`); here, a shield."""
        return asyncio.shield(self._future)

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
