"""The one owner of a client's jobs: by id, their slots, their lifecycles and the I/O they need.

:class:`JobOwner` is where every job's state changes: it feeds each input to the job's
:class:`~dreamgen_async.lifecycle.Lifecycle` (:meth:`JobOwner.drive`) and performs the effects
that come back — post, remove (batched: one delete for every job cancelled meanwhile),
reconcile, resync, settle, release a slot. It holds:

- the jobs by where they are: the waiting heap (client-side, by priority) or ``live`` (the
  server may hold them); a settled job is in neither;
- the :class:`~dreamgen_async.multiplexer.Multiplexer`, which feeds it WebSocket events through
  the :class:`~dreamgen_async.multiplexer.Listener` protocol it implements;
- ONE reconcile (:meth:`JobOwner.reconcile`): ``/queue``, then ``/history/{id}`` of each job
  not in it. When ``/queue`` cannot be read, each job is still settled from its history entry;
  only a job whose fate stays unknown makes the reconcile fail (the caller retries it).

Arrows point down: the client calls the owner, the owner calls the multiplexer and the server's
endpoints (:class:`Endpoints`, which the client implements); the multiplexer calls the owner
only through ``Listener``. Nothing here touches another object's private members.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import heapq
import itertools
import logging
import time
import types
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

import aiohttp

from dreamgen_async import lifecycle as lc
from dreamgen_async.errors import (
    ConnectionLostError,
    DreamgenError,
    ExecutionInterrupted,
    PartialPromptWarningError,
    PromptLost,
    PromptRejected,
    PromptTimeout,
    ProtocolError,
)
from dreamgen_async.jobs import Job, ProgressCallback, PromptResult
from dreamgen_async.lifecycle import JobState
from dreamgen_async.multiplexer import Multiplexer, ReconnectPolicy
from dreamgen_async.outcomes import error_from_event, error_from_history
from dreamgen_async.protocol import (
    Event,
    Executed,
    Executing,
    ExecutionCached,
    ExecutionErrorEvent,
    ExecutionInterruptedEvent,
    ExecutionStart,
    ExecutionSuccess,
    HistoryRecord,
    JSONDict,
    QueueState,
    parse_node_errors,
)
from dreamgen_async.retry import Backoff, retry_call
from dreamgen_async.transport_errors import classify, may_have_been_processed

__all__ = ["Endpoints", "JobOwner", "PostAnswer", "Reconciled", "history_input"]

log = logging.getLogger("dreamgen_async")

T = TypeVar("T")
PartialPolicy = Literal["warn", "error", "ignore"]


@dataclass(frozen=True, slots=True)
class PostAnswer:
    """The server's answer to ``POST /prompt``: its status and JSON object."""

    status: int
    body: Mapping[str, Any]


class Endpoints(Protocol):
    """The server's HTTP API, as the owner uses it (:class:`~dreamgen_async.ComfyUIClient`)."""

    @property
    def client_id(self) -> str: ...

    async def post_prompt(self, body: Mapping[str, Any], prompt_id: str) -> PostAnswer | None: ...

    async def get_queue(self) -> QueueState: ...

    async def get_history(self, prompt_id: str) -> HistoryRecord | None: ...

    async def delete_from_queue(self, *prompt_ids: str) -> None: ...

    async def interrupt(self, prompt_id: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Reconciled:
    """What a reconcile found: the server's queue length (``None`` when ``/queue`` failed)
    and how many jobs it settled from ``/history``."""

    queue_length: int | None
    settled: int


def history_input(prompt_id: str, record: HistoryRecord) -> lc.Outcome:
    """A job's lifecycle input for its ``/history`` record."""
    return lc.Outcome(
        error_from_history(prompt_id, record),
        record.outputs,
        files=record.files,
        interrupted=record.interrupted,
    )


def _removal_done(state: JobState) -> bool:
    """A cancel has done its part once the job is settled or its interrupt was sent."""
    return state.terminal or state is JobState.INTERRUPTING


def _terminal(state: JobState) -> bool:
    return state.terminal


def _retryable_within_budget(exc: BaseException) -> bool:
    """What a loop bounded by its own budget (removals) tries again."""
    return isinstance(exc, DreamgenError) and classify(exc, budgeted=True) != "fatal"


class JobOwner:
    """Jobs by id, the slot queue, drive/perform, removal batching, and the one reconcile.

    Args:
        server: The endpoints it posts, reads and deletes through.
        connect: Opens the WebSocket (for the multiplexer it creates).
        url: The server's URL without credentials, for messages.
        reconnect: The multiplexer's policy.
        backoff: Between the attempts of a removal.
        max_in_flight: Slots: how many jobs may be on the server at once.
        on_partial: The client's policy for a prompt queued with ``node_errors``.
        resubmit_lost: Whether a prompt the server lost is posted again (once).
    """

    def __init__(
        self,
        server: Endpoints,
        *,
        connect: Callable[[], Awaitable[aiohttp.ClientWebSocketResponse]],
        url: str,
        reconnect: ReconnectPolicy,
        backoff: Backoff,
        max_in_flight: int,
        on_partial: PartialPolicy,
        resubmit_lost: bool,
    ) -> None:
        self._server = server
        self.url = url
        self.mux = Multiplexer(connect, self, reconnect, url)
        self._backoff = backoff
        self._max_in_flight = max_in_flight
        self._on_partial: PartialPolicy = on_partial
        self._resubmit_lost = resubmit_lost
        self._waiting: list[tuple[int, int, Job]] = []
        self._order = itertools.count()
        self._live: dict[str, Job] = {}
        self._waiting_count = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._free = max_in_flight
        self._removals: list[Job] = []
        self._remover: asyncio.Task[None] | None = None
        self._posts: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._running_prompt: str | None = None
        self._closing = False
        #: The limit timer of each job that has one (its queue limit, then its run limit).
        self._timers: dict[str, asyncio.TimerHandle] = {}
        #: Seconds a removal (delete + interrupt) may take; then the job fails (it may still run).
        self.removal_budget = 10.0
        self._recent: collections.OrderedDict[str, PromptResult | BaseException] = (
            collections.OrderedDict()
        )

    # ------------------------------------------------------------------ what it holds

    @property
    def live(self) -> Mapping[str, Job]:
        """The jobs the server may hold (posting to being removed), by prompt_id (read-only)."""
        return types.MappingProxyType(self._live)

    @property
    def waiting(self) -> int:
        """Jobs waiting client-side for a slot."""
        return self._waiting_count

    @property
    def free_slots(self) -> int:
        return self._free

    @property
    def max_in_flight(self) -> int:
        return self._max_in_flight

    async def wait_idle(self) -> None:
        """Return once no job is waiting or on the server. Cancelling it is safe."""
        await self._idle.wait()

    def find(self, prompt_id: str) -> Job | None:
        """The unsettled job of ``prompt_id`` (waiting or on the server), if any."""
        return self._live.get(prompt_id) or next(
            (j for _, _, j in self._waiting if j.prompt_id == prompt_id), None
        )

    def recent(self, prompt_id: str) -> PromptResult | BaseException | None:
        """The outcome of a recently settled job (success or failure; not a cancellation)."""
        return self._recent.get(prompt_id)

    def post_task(self, prompt_id: str) -> asyncio.Task[None] | None:
        """The ``POST /prompt`` task of a job that holds a slot, if any (for diagnostics)."""
        return self._posts.get(prompt_id)

    def position(self, job: Job) -> int | None:
        """``job``'s place among the jobs waiting for a slot (1: the next to get one, in the
        order slots are granted: priority, then first come), ``None`` when not waiting."""
        if job.state is not JobState.WAITING:
            return None
        mine = next(((p, o) for p, o, j in self._waiting if j is job), None)
        if mine is None:
            return None
        ahead = sum(1 for p, o, j in self._waiting if (p, o) < mine and j.state is JobState.WAITING)
        return ahead + 1

    def waiting_jobs(self) -> list[Job]:
        """The jobs waiting for a slot, in no particular order."""
        return [j for _, _, j in self._waiting if j.state is JobState.WAITING]

    def jobs(self) -> list[Job]:
        """Every unsettled job: the waiting ones, then those on the server."""
        return [*self.waiting_jobs(), *self._live.values()]

    # ------------------------------------------------------------------ jobs in

    def add(
        self,
        prompt_id: str,
        workflow: Mapping[str, Any],
        *,
        extra_data: Mapping[str, Any] | None = None,
        front: bool = False,
        on_progress: ProgressCallback | None = None,
        priority: int = 0,
        adopted: bool = False,
        max_run_time: float | None = None,
        queue_timeout: float | None = None,
    ) -> Job:
        """A new job, waiting client-side for a slot (by priority), then granted one.

        ``queue_timeout`` starts now (the wait for a slot counts); ``max_run_time`` when
        the job is seen running. Either limit, reached, feeds its lifecycle input.
        """
        job = Job(
            self,
            prompt_id,
            workflow,
            extra_data=extra_data,
            front=front,
            on_progress=on_progress,
            priority=priority,
            # An adopted prompt the server lost is None to the caller, never resubmitted.
            resubmit_lost=self._resubmit_lost and not adopted,
            adopted=adopted,
            max_run_time=max_run_time,
            queue_timeout=queue_timeout,
        )
        if queue_timeout is not None:
            self._arm(job, queue_timeout, lc.QueueTimeout(_queue_timeout_error(job)))
        heapq.heappush(self._waiting, (-job.priority, next(self._order), job))
        self._waiting_count += 1
        self._idle.clear()
        self._grant_slots()
        return job

    def resubmit_if_lost(self, job: Job, allowed: bool) -> None:
        """Whether ``job``'s prompt is posted again if the server loses it (after adopt)."""
        job.lifecycle.resubmit_lost = allowed and self._resubmit_lost

    async def cancel(self, job: Job, reason: BaseException) -> None:
        """Take ``job`` off the server and settle it with ``reason`` (idempotent).

        Returns once the removal was sent (bounded by ``removal_budget``); cancelling this
        call does not undo the request.
        """
        self.drive(job, lc.Cancel(reason))
        try:
            async with asyncio.timeout(self.removal_budget):
                await asyncio.shield(job.wait_for(_removal_done))
        except TimeoutError:
            log.warning("prompt %s: removal still in progress", job.prompt_id)

    def abandon(self, job: Job, reason: BaseException) -> None:
        """Settle ``job`` with ``reason`` at once, leaving its prompt to the server."""
        self.drive(job, lc.Abandon(reason))

    async def close(self, reason: BaseException, *, detach: bool, timeout: float) -> None:
        """Settle every job for a close: cancel each (or abandon, with ``detach``), wait at
        most ``timeout`` for the server to answer, then abandon what is left."""
        self._closing = True
        jobs = self.jobs()
        for job in jobs:
            self.drive(job, lc.Abandon(reason) if detach else lc.Cancel(reason))
        try:
            async with asyncio.timeout(timeout):
                for job in jobs:
                    await job.wait_for(_terminal)
        except TimeoutError:
            log.warning("aclose: %d prompts could not be taken back in time", len(self._live))
        for job in self.jobs():  # what the server did not answer for in time
            self.drive(job, lc.Abandon(reason))

    async def stop(self) -> None:
        """Close the socket, then cancel and await every helper task (the last step of a close).

        The task set is emptied here, not by done-callbacks: since Python 3.12 ``gather()``
        over tasks that are all done returns without yielding, so a loop waiting for
        ``_task_done`` (scheduled with ``call_soon``) to shrink the set would never end.
        """
        self._closing = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        await self.mux.close()
        while self._tasks:
            tasks = list(self._tasks)
            self._tasks.clear()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ drive / perform

    def drive(self, job: Job, event: lc.Input) -> None:
        """Feed one input to a job's lifecycle and carry out the effects. Never awaits.

        This is the one place where a job's state changes.
        """
        before = job.state
        effects = job.lifecycle.handle(event)
        after = job.state
        if after is not before:
            if before is JobState.WAITING:
                self._waiting_count -= 1
            if after is JobState.RUNNING or after.terminal:
                self._limit_run(job, after)
            if after.terminal:
                self._live.pop(job.prompt_id, None)
                if not self._live and not self._waiting_count:
                    self._idle.set()
            elif after in lc.ON_SERVER:
                self._live[job.prompt_id] = job
            job.state_changed()
        for effect in effects:
            self._perform(job, effect)

    def _perform(self, job: Job, effect: lc.Effect) -> None:
        kind = effect.kind
        if kind == "post":
            self._posts[job.prompt_id] = self._spawn(self._post(job), "dreamgen-post")
        elif kind == "remove":
            self._removals.append(job)
            if self._remover is None or self._remover.done():
                self._remover = self._spawn(self._remove_pending(), "dreamgen-remove")
        elif kind == "reconcile":
            self._spawn(self._reconcile_one(job), "dreamgen-reconcile")
        elif kind == "resync":
            self.mux.force_reconnect()
        elif kind in ("resolve", "fail"):
            self._settle(job, effect)
        elif kind == "release":
            self._posts.pop(job.prompt_id, None)
            self._free += 1
            self._grant_slots()
        elif kind == "abort_post":
            post = self._posts.pop(job.prompt_id, None)
            if post is not None:
                post.cancel()
        else:  # pragma: no cover - the effect kinds are a closed set
            raise AssertionError(f"unknown effect {kind}")

    def _settle(self, job: Job, effect: lc.Effect) -> None:
        outcome: PromptResult | BaseException
        if effect.kind == "resolve":
            outcome = job.resolve(effect.outputs, effect.files)  # type: ignore[arg-type]
        else:
            assert effect.error is not None
            job.fail(effect.error)
            outcome = effect.error
        if isinstance(outcome, asyncio.CancelledError):
            return
        self._recent[job.prompt_id] = outcome
        while len(self._recent) > 1024:
            self._recent.popitem(last=False)

    def _arm(self, job: Job, delay: float, event: lc.RunTimeout | lc.QueueTimeout) -> None:
        """Feed ``event`` to ``job`` in ``delay`` seconds (replacing its earlier timer)."""
        old = self._timers.pop(job.prompt_id, None)
        if old is not None:
            old.cancel()

        def fire() -> None:
            self._timers.pop(job.prompt_id, None)
            self.drive(job, event)

        self._timers[job.prompt_id] = asyncio.get_running_loop().call_later(delay, fire)

    def _limit_run(self, job: Job, state: JobState) -> None:
        """The job runs (its queue limit no longer applies; its run limit starts) or is
        settled (no limit applies)."""
        timer = self._timers.pop(job.prompt_id, None)
        if timer is not None:
            timer.cancel()
        if state is JobState.RUNNING and job.max_run_time is not None:
            self._arm(job, job.max_run_time, lc.RunTimeout(_run_timeout_error(job)))

    def _grant_slots(self) -> None:
        """Hand free slots to waiting jobs, highest priority first."""
        while self._free > 0 and self._waiting:
            _, _, job = heapq.heappop(self._waiting)
            if job.state is not JobState.WAITING:
                continue  # cancelled while it waited
            self._free -= 1
            self.drive(job, lc.SlotGranted(connected=self.mux.connected))

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run a helper coroutine that :meth:`stop` cancels and awaits."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    # ------------------------------------------------------------------ Listener (the socket)

    def on_event(self, event: Event) -> None:
        """Route one parsed event (not ``status``) to its job. Never raises, never awaits."""
        job = self._addressee(getattr(event, "prompt_id", None), isinstance(event, Executing))
        if job is not None and self._apply(job, event):
            job.deliver(event)

    def on_progress_message(self, kind: str, data: JSONDict, frame: str) -> None:
        """Route a progress-only message (see :meth:`Listener.on_progress_message`) to its
        job, as :meth:`on_event` routes its event; parsed there only if someone listens."""
        job = self._addressee(data.get("prompt_id"), kind == "executing")
        if job is not None:
            job.deliver_message(kind, data, frame)

    def _addressee(self, prompt_id: str | None, executing: bool) -> Job | None:
        """The live job a message is for. One without a prompt_id (a preview without
        metadata, a progress message) belongs to the running prompt; an ``executing``
        without one is the re-send to a reconnecting socket, for nobody."""
        if prompt_id is None and not executing:
            prompt_id = self._running_prompt
        return self._live.get(prompt_id) if prompt_id is not None else None

    def _apply(self, job: Job, event: Event) -> bool:
        """What ``event`` means for ``job``; False when it settles the job (not delivered)."""
        if isinstance(event, ExecutionStart):
            self._running_prompt = job.prompt_id
            job.note_started()
            self.drive(job, lc.Started())
        elif isinstance(event, ExecutionCached):
            job.set_cached(event.nodes)
        elif isinstance(event, Executed):
            job.add_outputs(event.node, event.images, event.files)
        elif isinstance(event, ExecutionSuccess):
            job.mark_succeeded()
        elif isinstance(event, ExecutionErrorEvent):
            self.drive(job, lc.Failed(error_from_event(event)))
            return False
        elif isinstance(event, ExecutionInterruptedEvent):
            error = ExecutionInterrupted(
                prompt_id=job.prompt_id, node_id=event.node_id, node_type=event.node_type
            )
            self.drive(job, lc.Interrupted(error))
            return False
        elif isinstance(event, Executing) and event.node is None:
            self._running_prompt = None
            self.drive(job, lc.Finished(complete=job.succeeded))
            return False
        return True

    def on_gap(self) -> None:
        """The socket dropped: every job the server holds may have missed events."""
        for job in list(self._live.values()):
            self.drive(job, lc.Gap())

    async def resync(self) -> None:
        """Reconcile every job with a gap, and every one whose outcome is owed.

        Raises:
            DreamgenError: the server could not say what became of some job.
        """
        await self.reconcile(
            j
            for j in list(self._live.values())
            if j.state in lc.RECONCILABLE and (j.lifecycle.gap or j.state is JobState.SETTLING)
        )

    async def missed_while_silent(self) -> bool:
        """Whether a socket that heard nothing for a while missed something: the server's
        queue length moved, or one of our jobs finished (then it is settled from history).

        Raises:
            DreamgenError: the server could not be asked.
        """
        if not self._live:
            return False
        found = await self.reconcile(list(self._live.values()))
        remote, heard = found.queue_length, self.mux.queue_remaining
        return (remote is not None and remote != heard) or found.settled > 0

    def on_failed(self, error: DreamgenError) -> None:
        """The reader gave up (budget exhausted, or fatal): every job fails with ``error``.

        The prompts are deleted from the server in the background, best effort: the failure
        is reported at once, not after the server answers.
        """
        on_server = list(self._live)
        for job in self.jobs():
            self.drive(job, lc.Abandon(error))
        if on_server and not self._closing:
            self._spawn(self._delete_quietly(on_server), "dreamgen-delete-lost")

    # ------------------------------------------------------------------ the one reconcile

    async def reconcile(self, jobs: Iterable[Job]) -> Reconciled:
        """Check jobs whose events may be incomplete against ``/queue`` and ``/history``.

        Finished → settled from history; still queued or running → keep waiting (their events
        arrive on the current socket); vanished → the lost-prompt policy. When ``/queue``
        cannot be read, each job is still settled from ``/history/{id}`` if it finished. What
        was read applies only to a job that did not change meanwhile (its lifecycle's epoch):
        a job resubmitted by another check must not be judged on a snapshot from before.
        Requests attempt once when the caller retries.

        Raises:
            DreamgenError: ``/history`` failed, ``/queue`` failed fatally, or ``/queue`` failed
                and some job is neither finished nor known to be lost.
        """
        checked = [(j, j.lifecycle.epoch) for j in jobs if j.state in lc.RECONCILABLE]
        if not checked:
            return Reconciled(None, 0)
        queue: QueueState | None = None
        queue_error: DreamgenError | None = None
        try:
            queue = await self._server.get_queue()
        except DreamgenError as exc:
            if classify(exc, budgeted=True) == "fatal":
                raise
            log.info("GET /queue failed (%s); reading /history of %d jobs", exc, len(checked))
            queue_error = exc
        settled = unknown = 0
        for job, epoch in checked:
            if job.lifecycle.epoch != epoch:
                continue
            if queue is not None and job.prompt_id in queue:
                running = queue.is_running(job.prompt_id)
                self.drive(job, lc.InQueue(running, listening=self.mux.connected))
                continue
            record = await self._server.get_history(job.prompt_id)
            if job.lifecycle.epoch != epoch:
                continue
            if record is not None:
                self.drive(job, history_input(job.prompt_id, record))
                settled += 1
            elif queue is not None:
                lost = _lost_error(job)
                self.drive(job, lc.Absent(lost, listening=self.mux.connected))
            else:
                unknown += 1  # queued, running or lost: only /queue can tell
        if unknown and queue_error is not None:
            raise queue_error
        length = None if queue is None else len(queue.running) + len(queue.pending)
        return Reconciled(length, settled)

    async def _reconcile_one(self, job: Job) -> None:
        """The ``reconcile`` effect; a failure reports ReconcileFailed (the socket is then
        dropped, so that the resync after the reconnect retries it)."""
        try:
            await self.reconcile([job])
        except DreamgenError:
            if job.state in lc.RECONCILABLE:
                self.drive(job, lc.ReconcileFailed())

    # ------------------------------------------------------------------ effects that do I/O

    async def _post(self, job: Job) -> None:
        body: dict[str, Any] = {
            "prompt": job.workflow,
            "client_id": self._server.client_id,
            "prompt_id": job.prompt_id,
        }
        if job.extra_data:
            body["extra_data"] = job.extra_data
        if job.front:
            body["front"] = True
        try:
            outcome = await self._post_prompt(job, body)
        except DreamgenError as exc:
            # Refused or throttled on every attempt: it never reached the queue; otherwise
            # the server may hold it, and it is taken back.
            outcome = lc.PostFailed(exc) if may_have_been_processed(exc) else lc.PostRejected(exc)
        self.drive(job, outcome)

    async def _post_prompt(self, job: Job, body: dict[str, Any]) -> lc.Input:
        answer = await self._server.post_prompt(body, job.prompt_id)
        if answer is None:  # the server already had it (an earlier attempt got through)
            job.queued_at = job.queued_at or time.time()
            return lc.PostAccepted()
        data = answer.body
        if answer.status == 400 or "error" in data:
            error = data.get("error") if isinstance(data.get("error"), dict) else {}
            assert isinstance(error, dict)
            return lc.PostRejected(
                PromptRejected(
                    prompt_id=job.prompt_id,
                    error_type=str(error.get("type", "unknown")),
                    error_message=str(error.get("message", data.get("error"))),
                    node_errors=parse_node_errors(data.get("node_errors")),
                    raw=dict(data),
                )
            )
        echoed = data.get("prompt_id")
        if echoed is not None and echoed != job.prompt_id:
            self._spawn(self._delete_quietly([str(echoed)]), "dreamgen-delete-echo")
            return lc.PostFailed(
                ProtocolError(f"server answered prompt_id {echoed!r}, we sent {job.prompt_id!r}")
            )
        node_errors = parse_node_errors(data.get("node_errors"))
        if node_errors:
            job.node_errors = node_errors
            if self._on_partial == "error":
                return lc.PostFailed(
                    PartialPromptWarningError(prompt_id=job.prompt_id, node_errors=node_errors)
                )
        job.queued_at = job.queued_at or time.time()
        return lc.PostAccepted()

    async def _delete_quietly(self, prompt_ids: list[str]) -> None:
        try:
            async with asyncio.timeout(self.removal_budget):
                await self._server.delete_from_queue(*prompt_ids)
        except (DreamgenError, TimeoutError) as exc:
            log.info(
                "could not delete %d prompts from %s after losing it: %s",
                len(prompt_ids),
                self.url,
                self._why(exc),
            )

    def _why(self, exc: BaseException) -> str:
        """A failure's reason for a log line (a timeout's message is empty)."""
        if isinstance(exc, TimeoutError) and not str(exc):
            return f"no answer within {self.removal_budget:g} s"
        return str(exc) or type(exc).__name__

    async def _remove_pending(self) -> None:
        """Take back every job queued for removal, in batches: one delete for all of them."""
        while self._removals:
            batch, self._removals = self._removals, []
            try:
                async with asyncio.timeout(self.removal_budget):
                    await self._remove_batch(batch)
            except (DreamgenError, TimeoutError) as exc:
                log.warning(
                    "could not take %d prompts back from %s: %s",
                    len(batch),
                    self.url,
                    self._why(exc),
                )
                for job in batch:  # unconfirmed: the server may still hold, and run, it
                    if job.state is JobState.REMOVING:
                        self.drive(job, lc.Abandon(self._not_taken_back(job, exc)))

    def _not_taken_back(self, job: Job, exc: BaseException) -> ConnectionLostError:
        """What a job being cancelled fails with when its removal failed for good: never
        reported cancelled, since the server did not confirm the prompt is off it."""
        error = ConnectionLostError(
            f"could not take prompt {job.prompt_id} off {self.url} "
            f"({self._why(exc)}): it may still run"
        )
        error.__cause__ = exc
        return error

    async def _remove_batch(self, batch: list[Job]) -> None:
        """Delete (pending), then look: interrupt the one running; read history for the rest.

        In this order no race leaves a prompt running: a delete that arrives too late is a
        no-op, and the queue read after it shows the prompt that runs. A prompt in neither
        ``/queue`` nor ``/history`` is reported :class:`~dreamgen_async.lifecycle.Absent`:
        cancelled if nothing was missed since it was last seen, else failed with
        ``PromptLost`` (it may have run, its history wiped by a restart).
        """
        ids = [job.prompt_id for job in batch]
        queue = await self._retrying(functools.partial(self._delete_and_look, ids))
        for job in batch:
            if job.state is not JobState.REMOVING:
                continue
            prompt_id = job.prompt_id
            if queue.is_running(prompt_id):
                await self._retrying(functools.partial(self._server.interrupt, prompt_id))
                self.drive(job, lc.Removed(running=True))
                continue
            record = await self._retrying(functools.partial(self._server.get_history, prompt_id))
            if job.state is not JobState.REMOVING:
                continue
            if record is None:  # our delete took it, or the server lost it: the table
                # decides whether the client can know it never ran (no gap since last seen)
                lost = _lost_while_removed(job)
                self.drive(job, lc.Absent(lost, listening=self.mux.connected))
            else:
                self.drive(job, history_input(job.prompt_id, record))

    async def _delete_and_look(self, ids: list[str]) -> QueueState:
        await self._server.delete_from_queue(*ids)
        return await self._server.get_queue()

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """Repeat ``call`` while :func:`classify` allows, with backoff (the caller bounds
        the time)."""
        return await retry_call(call, self._backoff, retry_if=_retryable_within_budget)


def _run_timeout_error(job: Job) -> PromptTimeout:
    return PromptTimeout(
        f"prompt {job.prompt_id} ran for more than {job.max_run_time:g} s (max_run_time); "
        "it was interrupted on the server",
        prompt_id=job.prompt_id,
    )


def _queue_timeout_error(job: Job) -> PromptTimeout:
    return PromptTimeout(
        f"prompt {job.prompt_id} waited in the queue more than {job.queue_timeout:g} s "
        "(queue_timeout) without starting; it was removed",
        prompt_id=job.prompt_id,
    )


def _lost_while_removed(job: Job) -> PromptLost:
    """What a job being cancelled fails with when the server has no trace of its prompt and
    the client missed events since it last saw it (else the job is simply cancelled)."""
    return PromptLost(
        f"prompt {job.prompt_id} was being cancelled and the server no longer has it "
        "(did it restart?): it may have run, its history lost",
        prompt_id=job.prompt_id,
    )


def _lost_error(job: Job) -> PromptLost:
    if job.state is JobState.INTERRUPTING:
        log.warning("prompt %s vanished from the server while it was interrupted", job.prompt_id)
        return _lost_while_removed(job)
    if job.resubmitted:
        log.warning("prompt %s vanished from the server again", job.prompt_id)
    else:
        log.warning("prompt %s vanished from the server (did it restart?)", job.prompt_id)
    return PromptLost(
        f"the server lost prompt {job.prompt_id} (did it restart?)"
        + (" even after it was resubmitted" if job.resubmitted else ""),
        prompt_id=job.prompt_id,
    )
