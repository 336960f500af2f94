"""ComfyUIPool: many ComfyUI servers behind the job API of one :class:`ComfyUIClient`.

In one breath: each server has its own :class:`ComfyUIClient` (one session, one WebSocket)
and a health state (up, suspect, down, draining — the table is in :mod:`placement`); jobs
wait client-side, cheap and cancellable, in priority order, and the pure
:meth:`Scheduler.assign <dreamgen_async.placement.Scheduler.assign>` step binds a job to a
server only when that server has a free slot (``1 + over_queue`` of ours), choosing by
capability, loaded model, load and speed. That step runs after every change (a job added or
settled, a server up or down) and returns the posts to make; this module is the I/O shell
that makes them. A server's slots are the one limit: the pool's clients keep no queue.

Each job's binding (waiting, posting, placed, cancelling, settled; with its attempt number)
is a value that changes in one place, :meth:`ComfyUIPool._step`, through the pure table
:func:`~dreamgen_async.placement.bind_step`; the pool performs the actions it returns
(launch a post, call a launch off, cancel the client job, unbind, blame the server,
settle). A launch reports with its attempt number, so the report of a launch that was
called off or superseded is recognised by the table and ignored.

Inputs given to :meth:`ComfyUIPool.upload_image` are remembered by name and uploaded lazily,
once per server, to the server a job lands on. A server that refuses connections, loses its
WebSocket for good or keeps answering 5xx is marked down: its jobs are taken back and placed
elsewhere (one that was running is resubmitted, or failed with ``on_lost="fail"``); it is
probed with backoff and rejoins by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from dreamgen_async.backend import BeforePost, ServerStatus, merge_object_info
from dreamgen_async.comfyui_api import (
    ComfyUIClient,
    ImageSource,
    UploadedImage,
    collect_output_images,
    collect_outputs,
    read_image_source,
)
from dreamgen_async.errors import (
    ClientClosedError,
    ConnectError,
    ConnectionLostError,
    DreamgenError,
    NoCapableServerError,
    NotComfyUIError,
    PromptLost,
    PromptTimeout,
    ServerError,
    TransportError,
)
from dreamgen_async.handles import JobHandle
from dreamgen_async.jobs import Job, OutputImage, ProgressCallback, PromptResult, check_limits
from dreamgen_async.lifecycle import JobState
from dreamgen_async.placement import (
    CANCELLED,
    Bind,
    Binding,
    BindingInput,
    BindingRules,
    BindingState,
    Blame,
    CallOff,
    Cancel,
    CancelClientJob,
    Capabilities,
    ClientJobCancelled,
    Close,
    Failed,
    Launch,
    Posted,
    Requirements,
    Scheduler,
    ServerEvent,
    ServerRecord,
    ServerState,
    Settle,
    Succeeded,
    TakeBack,
    Unbind,
    bind_step,
    describe_missing,
    requirements,
)
from dreamgen_async.protocol import ImageRef, OutputData
from dreamgen_async.retry import Backoff
from dreamgen_async.timeline import Span, SpanRecorder
from dreamgen_async.transport_errors import blames_server
from dreamgen_async.workflows.builder import ServerModels

__all__ = ["ComfyUIPool", "PoolImageRef", "PoolJob", "ServerStatus"]

log = logging.getLogger("dreamgen_async.pool")
#: A server going down or coming back: one WARNING line each (the CLI shows this logger).
health_log = logging.getLogger("dreamgen_async.pool.health")

LostPolicy = Literal["resubmit", "fail"]
PoolJobState = Literal["waiting", "posting", "queued", "running", "done", "cancelled"]

#: A pool job's state from its placed job's (finer) lifecycle state.
_POOL_STATE: Mapping[JobState, PoolJobState] = {
    JobState.WAITING: "posting",
    JobState.POSTING: "posting",
    JobState.CANCEL_WHILE_POSTING: "posting",
    JobState.QUEUED: "queued",
    JobState.RUNNING: "running",
    JobState.SETTLING: "running",
    JobState.REMOVING: "running",
    JobState.INTERRUPTING: "running",
    JobState.DONE: "done",
    JobState.FAILED: "done",
    JobState.CANCELLED: "cancelled",
}

_RECENT = 1024  # finished jobs kept for wait_for_completion / get_output_images(prompt_id)
_OUTPUTS = 65536  # output image -> server, for download()
_INPUTS = 4096  # remembered input images
_UNLIMITED = sys.maxsize  # the max_in_flight of the pool's own clients: see _new_client
_WAITING = BindingState.WAITING
#: Past this, a probe's backoff is at its cap anyway (and 2**n stays a float: a server down
#: for days is probed for ever).
_MAX_PROBE_ATTEMPT = 64


@dataclass(frozen=True, slots=True)
class PoolImageRef(ImageRef):
    """An output image of a pool job: an :class:`ImageRef` that also names its server.

    Two servers may well both write ``ComfyUI_00001_.png``: :meth:`ComfyUIPool.download`
    asks the one in ``server``.
    """

    server: str = ""


@dataclass(slots=True)
class _Input:
    data: bytes
    name: str
    subfolder: str
    type: str


@dataclass(eq=False)
class _Server:
    url: str
    source: str  # the URL as given (it may carry credentials)
    record: ServerRecord
    client: ComfyUIClient | None
    owned: bool
    opened: bool = False  # whether ``client`` was ever opened (a closed one is replaced)
    uploads: dict[str, asyncio.Future[str]] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)  # launches on this client
    probe: asyncio.Task[None] | None = None
    failures: int = 0  # consecutive; reset by a job that succeeds there
    downs: int = 0  # times it went down since its last success: the rejoin backoff grows
    down_since: float | None = None  # when it went down (None unless down)
    # Prompts it accepted and may still hold, that are no longer its (taken back from it,
    # or failed there with their fate unknown; see adopt()): taken off when it is back.
    abandoned: set[str] = field(default_factory=set)
    error: str | None = None  # why it did not join, or last failed a rejoin
    removed: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(eq=False)
class _Book:
    """The pool's book on one job: its binding (the one place that says where the job is,
    changed only by :func:`~dreamgen_async.placement.bind_step`) and the I/O carrying it out.
    """

    binding: Binding[Job]
    future: asyncio.Future[PromptResult]
    job: PoolJob = field(init=False)
    launch: asyncio.Task[None] | None = None  # the latest launch (it may be called off)
    deliver: ProgressCallback | None = None  # the handle's progress sink
    before_post: BeforePost | None = None  # awaited before each launch's POST
    req: Requirements | None = None  # the workflow's requirements (what a server needs to run it)
    deadline: float | None = None  # no joined server can run it: it fails at this time

    def bound_to(self, server: str) -> bool:
        """Whether ``server`` holds the job now (posting, placed or cancelling there)."""
        return self.binding.bound and self.binding.server == server


class PoolJob(JobHandle[PromptResult]):
    """One prompt submitted through a :class:`ComfyUIPool` (the pool's :class:`Job`).

    Await :meth:`result`, iterate :meth:`events`, or :meth:`cancel` it. ``server`` is the URL
    of the server it is placed on (``None`` while it waits client-side), or the one it ended
    on.
    """

    __slots__ = (
        "_book",
        "_canceller",
        "_future",
        "_locate",
        "extra_data",
        "front",
        "max_run_time",
        "priority",
        "prompt_id",
        "queue_timeout",
        "submitted_at",
        "workflow",
    )

    def __init__(
        self,
        book: _Book,
        canceller: Callable[[_Book], Awaitable[None]],
        workflow: Mapping[str, Any],
        *,
        priority: int,
        front: bool,
        extra_data: Mapping[str, Any] | None,
        on_progress: ProgressCallback | None,
        max_run_time: float | None = None,
        queue_timeout: float | None = None,
        locate: Callable[[str], int | None] | None = None,
    ) -> None:
        super().__init__()
        self.max_run_time = max_run_time
        self.queue_timeout = queue_timeout
        self.prompt_id = book.binding.key
        self._locate = locate
        self.workflow = workflow
        self.priority = priority
        self.front = front
        self.extra_data = dict(extra_data) if extra_data else None
        self.submitted_at = time.time()
        self._book = book
        self._canceller = canceller
        self._on_progress = on_progress
        self._future = book.future
        self._subscribers = None
        self._backlog = None
        book.job = self
        book.deliver = self.deliver
        # Runs before any waiter wakes (added first): subscribers end with the outcome.
        self._future.add_done_callback(self._settled)

    def __repr__(self) -> str:
        where = f" on {self.server}" if self.server else ""
        return f"<PoolJob {self.prompt_id} {self.state}{where}>"

    @property
    def label(self) -> str:
        return f"prompt {self.prompt_id}"

    @property
    def state(self) -> PoolJobState:
        """``waiting``, ``posting``, ``queued``, ``running``, ``done`` or ``cancelled``."""
        if self._future.done():
            return "cancelled" if self._future.cancelled() else "done"
        binding = self._book.binding
        if binding.handle is not None:
            return _POOL_STATE[binding.handle.state]
        return "waiting" if binding.state is BindingState.WAITING else "posting"

    @property
    def position(self) -> int | None:
        """Its place in the pool's client-side wait queue (1: the next to be placed), or in
        the queue of the server's client it was handed to; ``None`` once posted or ended."""
        return None if self._locate is None else self._locate(self.prompt_id)

    @property
    def server(self) -> str | None:
        """The server it is placed on, or ended on (``None``: waiting, or never placed)."""
        return self._book.binding.server

    @property
    def attempts(self) -> int:
        """How many times it was placed on a server."""
        return self._book.binding.attempt

    @property
    def resubmitted(self) -> bool:
        """Whether it was placed again while a server that had accepted it may still run it."""
        return self._book.binding.resubmitted

    async def cancel(self) -> None:
        """Cancel the job: out of the wait queue, or off the server that holds it.

        Idempotent. A job on a server ends as the client's jobs do: cancelled once the server
        no longer has it, done if it finished first (then ``result()`` returns it), or
        :class:`ConnectionLostError` if the server went down meanwhile (it may still run
        there). This returns once the job's outcome is known.
        """
        await self._canceller(self._book)

    async def abandon(self, reason: BaseException) -> None:
        # The job's cancel, not the caller's: it goes on if the caller is cancelled again.
        await asyncio.shield(self._canceller(self._book))

    def _settled(self, future: asyncio.Future[PromptResult]) -> None:
        self._close_events()


class ComfyUIPool:
    """Several ComfyUI servers behind one job API, with late binding and failover.

    Use it as ``async with ComfyUIPool([url1, url2]) as pool:``, then exactly like a
    :class:`ComfyUIClient`: it is a :class:`~dreamgen_async.backend.Backend` (``submit``,
    ``adopt``, ``run``, ``get_outputs``, ``download``, ``upload_image``, ``object_info``,
    ``models``, ``status``); ``DreamGenerator(pool, ...)``, ``server_models(pool)`` and the
    other helpers work too. Its ``object_info()`` is the union of its servers' (what the pool
    as a whole can run); ``object_info_by_server()`` says which server has what.

    Args:
        servers: Server URLs (the pool creates and owns a client for each) or open
            :class:`ComfyUIClient` objects (the caller keeps ownership).
        over_queue: Jobs of ours that may wait in a server's own queue behind the running
            one (1-2 hides the POST and upload latency; more binds jobs too early).
        lookahead: How far into the wait queue a free server looks for a job of the model it
            has loaded.
        on_lost: A job that was *running* on a server that went down: ``"resubmit"`` it
            elsewhere, or ``"fail"`` it with :class:`ConnectionLostError`.
        max_attempts: Placements a job gets before a server-side failure is final.
        max_failures: Consecutive failures (requests or probes) that mark a server down.
        health_interval: Seconds between checks of each server's WebSocket and queue.
        probe_timeout: Seconds a health probe or a rejoin attempt may take.
        probe_delay: First delay between probes of a down server (doubles, with jitter, up
            to ``max_probe_delay``).
        max_probe_delay: Longest delay between two probes.
        span_history: Spans (busy, idle, model load) kept per server for :meth:`spans`.
        join_timeout: Seconds a job that no joined server can run waits for the servers
            that have not joined or are down (one of them might run it); then it fails with
            :class:`NoCapableServerError` naming each server and why (lacks a node or
            model, down since when, not joined).
        **client_options: Passed to each :class:`ComfyUIClient` the pool creates (``token``,
            ``retry``, ``reconnect``, ``timeout`` ...; a ``client_id`` is then shared by
            them all, which is safe: each talks to its own server). Not ``max_in_flight``:
            a server's slots are the pool's (``1 + over_queue``), and its client keeps no
            queue of its own.
    """

    def __init__(
        self,
        servers: Iterable[str | ComfyUIClient],
        *,
        over_queue: int = 1,
        lookahead: int = 32,
        on_lost: LostPolicy = "resubmit",
        max_attempts: int = 3,
        max_failures: int = 3,
        health_interval: float = 1.0,
        probe_timeout: float = 10.0,
        probe_delay: float = 0.5,
        max_probe_delay: float = 30.0,
        span_history: int = 1000,
        join_timeout: float = 60.0,
        **client_options: Any,
    ) -> None:
        if over_queue < 0:
            raise ValueError("over_queue must be 0 or more")
        if max_attempts < 1 or max_failures < 1:
            raise ValueError("max_attempts and max_failures must be at least 1")
        if span_history < 1:
            raise ValueError("span_history must be at least 1")
        client_options.pop("max_in_flight", None)
        if join_timeout < 0:
            raise ValueError("join_timeout must be 0 or more")
        self._join_timeout = join_timeout
        self._client_id: str | None = client_options.get("client_id")
        self._adopted: OrderedDict[str, str] = OrderedDict()  # prompt_id -> server, adopt()
        self._capacity = 1 + over_queue
        self._client_options = client_options
        self._rules = BindingRules(max_attempts, fail_running=on_lost == "fail")
        self._max_failures = max_failures
        self._health_interval = health_interval
        self._probe_timeout = probe_timeout
        self._probe_backoff = Backoff(initial=probe_delay, cap=max_probe_delay)
        self._sched = Scheduler(lookahead)
        self._spans = SpanRecorder(span_history)
        self._servers: dict[str, _Server] = {}
        self._pending_servers = list(servers)
        if not self._pending_servers:
            raise ValueError("a pool needs at least one server")
        self._jobs: dict[str, _Book] = {}  # the jobs not settled yet
        self._recent: OrderedDict[str, PoolJob] = OrderedDict()
        self._inputs: OrderedDict[str, _Input] = OrderedDict()
        self._outputs: OrderedDict[tuple[str, str, str], str] = OrderedDict()
        self._background: set[asyncio.Task[Any]] = set()
        self._retiring: set[ComfyUIClient] = set()
        self._monitor: asyncio.Task[None] | None = None
        self._state: Literal["unopened", "opened", "closed"] = "unopened"
        self._closing: asyncio.Task[None] | None = None  # the close, once begun
        self._change: asyncio.Event | None = None
        self.done = 0
        self.failed = 0

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for srv in self._servers.values():
            counts[srv.record.state.value] = counts.get(srv.record.state.value, 0) + 1
        states = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"
        return (
            f"<ComfyUIPool {self._state} servers={len(self._servers)} ({states}) "
            f"waiting={len(self._sched.waiting)} placed={len(self._sched.placed)} "
            f"done={self.done} failed={self.failed}>"
        )

    @property
    def client_id(self) -> str | None:
        """The ``client_id`` every client the pool creates uses (``None``: each its own)."""
        return self._client_id

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> ComfyUIPool:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Open a client per server and read what each can run.

        Servers that do not answer start ``down`` and are probed until they join.

        Raises:
            ConnectError: no server could be opened.
        """
        if self._state != "unopened":
            raise ClientClosedError(f"pool is {self._state}; create a new one")
        self._state = "opened"
        self._change = asyncio.Event()
        servers = [self._add(s) for s in self._pending_servers]
        self._pending_servers = []
        errors = await asyncio.gather(*(self._join(srv) for srv in servers))
        if all(err is not None for err in errors):
            await self.aclose()
            raise ConnectError(
                "no server of the pool answered: "
                + "; ".join(f"{srv.url}: {err}" for srv, err in zip(servers, errors, strict=True))
            )
        self._monitor = asyncio.create_task(self._watch(), name="dreamgen-pool-monitor")

    async def aclose(self, *, detach: bool = False) -> None:
        """Stop placing, fail waiting jobs with :class:`ClientClosedError`, close owned
        clients. Idempotent.

        Jobs placed on servers are cancelled there (taken off the queue, or interrupted),
        unless ``detach=True``: then their prompts stay queued on their servers, as
        :meth:`ComfyUIClient.aclose` does.
        """
        if self._closing is None:
            # The pool owns its close, not the caller: a caller cancelled mid-way stops
            # waiting, the close goes on, and every later aclose() waits for the same one.
            self._state = "closed"
            self._closing = asyncio.get_running_loop().create_task(
                self._close(detach), name="dreamgen-pool-close"
            )
        await asyncio.shield(self._closing)

    async def _close(self, detach: bool) -> None:
        # Servers change while this awaits (a drained one is removed and its client retired
        # in the background): work on the servers of the moment, then on what was spawned.
        servers = list(self._servers.values())
        if detach:  # settle the placed jobs first, leaving their prompts where they are
            for srv in servers:
                if srv.owned and srv.client is not None:
                    await srv.client.aclose(detach=True)
        await self._stop_tasks(servers)
        launches = self._close_jobs()
        if launches:
            await asyncio.wait(launches, timeout=self._probe_timeout)
        for srv in servers:
            for fut in srv.uploads.values():
                fut.cancel()
            if srv.owned and srv.client is not None:
                await srv.client.aclose()
        for client in list(self._retiring):
            await client.aclose()
        if launches:
            await asyncio.gather(*launches, return_exceptions=True)
        await self._join_background()
        for srv in servers:
            srv.removed.set()  # wakes remove_server() callers: see there
        self._changed()

    async def _stop_tasks(self, servers: list[_Server]) -> None:
        """Cancel and await the monitor, the probes and the background tasks."""
        tasks: list[asyncio.Task[Any]] = [t for t in self._background if not t.done()]
        if self._monitor is not None:
            tasks.append(self._monitor)
        tasks += [srv.probe for srv in servers if srv.probe is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _close_jobs(self) -> list[asyncio.Task[None]]:
        """Fail every job with ClientClosedError; returns the launches called off."""
        closed = ClientClosedError("the pool was closed while the job waited")
        launches = []
        for book in list(self._jobs.values()):
            if book.launch is not None and not book.launch.done():
                launches.append(book.launch)
            self._step(book, Close(closed))
        return launches

    async def _join_background(self) -> None:
        """Await the background tasks, those spawned meanwhile too (a client retired).

        Each round waits for a snapshot and drops it from the set here: a done-callback
        is not what shrinks the set (``gather()`` over done tasks does not yield on 3.12+,
        so a loop waiting for callbacks would spin).
        """
        while self._background:
            tasks = list(self._background)
            await asyncio.gather(*tasks, return_exceptions=True)
            self._background.difference_update(tasks)

    def _check_open(self) -> None:
        if self._state != "opened":
            raise ClientClosedError(
                "the pool is not open: use `async with ComfyUIPool(urls) as pool`"
                if self._state == "unopened"
                else "the pool is closed"
            )

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("pool task %s failed", task.get_name(), exc_info=task.exception())

    def _changed(self) -> None:
        if self._change is not None:
            event, self._change = self._change, asyncio.Event()
            event.set()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        """Wait until ``predicate()`` holds, re-checking after every change of the pool
        (a job placed or settled, a server's state). Cancelling it is safe.

        Raises:
            TimeoutError: not true within ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            while not predicate():
                assert self._change is not None, "the pool is not open"
                await self._change.wait()

    # ------------------------------------------------------------------ observability

    @property
    def servers(self) -> list[ServerStatus]:
        """A snapshot of every server (not the removed ones)."""
        out = []
        for srv in self._servers.values():
            r = srv.record
            out.append(
                ServerStatus(
                    url=srv.url,
                    state=r.state.value,
                    in_flight=len(r.assigned),
                    queue=srv.client.queue_remaining if srv.client is not None else None,
                    capacity=r.capacity,
                    done=r.done,
                    failed=r.failed,
                    mean_job_time=r.mean_time,
                    loaded_model=r.loaded,
                    model_switches=r.switches,
                    down_since=srv.down_since,
                    error=srv.error if r.state in (ServerState.DOWN, ServerState.JOINING) else None,
                )
            )
        return out

    def server(self, url: str) -> ServerStatus:
        """The status of one server, by URL."""
        key = self._key(url)
        for status in self.servers:
            if status.url == key:
                return status
        raise KeyError(f"{url} is not in the pool")

    def spans(self) -> dict[str, tuple[Span, ...]]:
        """Where each server's time went: its last ``span_history`` spans (busy, idle between
        two of our jobs, model load), oldest first, by server URL; every server of the pool
        has a lane, empty until its first job. Draw them with
        :func:`dreamgen_async.timeline.write_svg`.

        A job's span runs from the start of its execution to its result, as this client saw
        them; the load part of a job that loaded another checkpoint is estimated as the job's
        time less the server's usual time for that checkpoint.
        """
        return self._spans.spans()

    @property
    def waiting(self) -> int:
        """Jobs waiting client-side for a free slot."""
        return len(self._sched.waiting)

    def position(self, prompt_id: str) -> int | None:
        """Where the job of ``prompt_id`` waits client-side: its place in the pool's wait
        queue (1: the next to be placed, by priority then first come; a free server may take
        a later job of the model it has loaded first), or in the queue of the server's client
        it was handed to. ``None`` when it waits nowhere (posted, ended, or unknown)."""
        if self._sched.is_waiting(prompt_id):
            return self._sched.waiting.index(prompt_id) + 1
        book = self._jobs.get(prompt_id)
        handle = book.binding.handle if book is not None else None
        return handle.position if handle is not None else None

    @property
    def in_flight(self) -> int:
        """Jobs placed on servers (posting, queued or running)."""
        return len(self._sched.placed)

    @property
    def queue_remaining(self) -> int | None:
        """The sum of the servers' own queue lengths (``None`` if none is known)."""
        known = [s.client.queue_remaining for s in self._servers.values() if s.client]
        values = [q for q in known if q is not None]
        return sum(values) if values else None

    # ------------------------------------------------------------------ servers

    @staticmethod
    def _key(server: str | ComfyUIClient) -> str:
        if isinstance(server, ComfyUIClient):
            return server.safe_url
        return ComfyUIClient(server).safe_url  # normalised, credentials stripped

    def _add(self, server: str | ComfyUIClient) -> _Server:
        owned = not isinstance(server, ComfyUIClient)
        client = server if isinstance(server, ComfyUIClient) else self._new_client(server)
        key = client.safe_url
        if key in self._servers:
            raise ValueError(f"{key} is already in the pool")
        # A client of ours queues nothing (see _new_client); one given to us keeps its own
        # max_in_flight, which then bounds what the scheduler places there.
        limit = None if owned else client.max_in_flight
        record = self._sched.add_server(key, self._capacity, limit)
        self._spans.add_server(key)
        srv = _Server(key, server if isinstance(server, str) else key, record, client, owned)
        self._servers[key] = srv
        return srv

    def _new_client(self, url: str) -> ComfyUIClient:
        # The scheduler's slots are the one limit: the client never holds a job back in a
        # queue of its own, which the pool could neither see nor reorder.
        return ComfyUIClient(url, max_in_flight=_UNLIMITED, **self._client_options)

    async def _join(self, srv: _Server) -> BaseException | None:
        """Open the server's client and read /object_info; READY or FAILED."""
        try:
            async with asyncio.timeout(self._probe_timeout):
                await self._connect(srv)
        except (DreamgenError, TimeoutError) as exc:
            log.warning("server %s did not join: %s", srv.url, exc)
            srv.error = str(exc) or type(exc).__name__
            if srv.record.state is ServerState.JOINING:
                self._event(srv, ServerEvent.FAILED)
            return exc
        self._event(srv, ServerEvent.READY)
        return None

    async def _connect(self, srv: _Server) -> None:
        """A fresh client for an owned server (rejoin; the old one closed first), then its
        capabilities."""
        if srv.owned:
            if srv.opened:
                # One socket per server: the client replaced (its launches were called off
                # when the server went down) is closed before the new one opens its
                # WebSocket, since its own reconnect loop may have got through meanwhile.
                old = srv.client
                assert old is not None
                await self._retire(old, set(srv.tasks))
                srv.client, srv.uploads = self._new_client(srv.source), {}
            srv.opened = True
            client = srv.client
            assert client is not None
            await client.open()
            try:
                info = await client.object_info()
            except BaseException:
                await client.aclose()
                raise
        else:
            assert srv.client is not None
            await srv.client.system_stats()
            info = await srv.client.object_info()
        srv.record.caps = Capabilities.from_object_info(info)

    async def _retire(self, client: ComfyUIClient, tasks: set[asyncio.Task[None]]) -> None:
        """Close a replaced client once the (already abandoned) launches on it are over."""
        self._retiring.add(client)
        try:
            if tasks:
                await asyncio.wait(tasks, timeout=self._probe_timeout)
        finally:
            await client.aclose()
            self._retiring.discard(client)

    async def add_server(self, server: str | ComfyUIClient) -> ServerStatus:
        """Add a server at run time; it takes jobs once it has joined (or is probed until
        it does). Returns its status."""
        self._check_open()
        srv = self._add(server)
        await self._join(srv)
        return self.server(srv.url)

    async def remove_server(self, url: str, *, drain: bool = True) -> None:
        """Remove a server at run time.

        With ``drain`` (the default) it takes no new job and this waits until its jobs are
        finished; otherwise its jobs are taken back at once and placed elsewhere.
        Cancelling the wait leaves the server draining.

        Raises:
            KeyError: ``url`` is not in the pool.
            ClientClosedError: the pool was closed before the server had drained.
        """
        self._check_open()
        srv = self._servers.get(self._key(url))
        if srv is None:
            raise KeyError(f"{url} is not in the pool")
        self._event(srv, ServerEvent.DRAIN if drain else ServerEvent.REMOVE)
        await srv.removed.wait()
        if self._servers.get(srv.url) is srv:  # still ours: the pool closed first
            raise ClientClosedError(f"the pool was closed while {url} drained")

    def _event(self, srv: _Server, event: ServerEvent) -> None:
        """The one place a server's health changes, and what entering a state does."""
        if srv.record.state is ServerState.REMOVED:
            return
        old, new = self._sched.apply(srv.url, event)
        if old is new:
            if new is ServerState.DRAINING and not srv.record.assigned:
                # Its last job left without settling (failed there, placed elsewhere).
                self._event(srv, ServerEvent.DRAINED)
                return
            self._changed()
            return
        log.info("server %s: %s -> %s (%s)", srv.url, old.value, new.value, event.value)
        if new is ServerState.DOWN and srv.down_since is None:
            srv.down_since = time.time()
            why = f": {srv.error}" if srv.error else ""
            health_log.warning("server %s is down%s", srv.url, why)
        elif new is ServerState.UP:
            if srv.down_since is not None:
                health_log.warning("server %s is back up", srv.url)
            srv.down_since = srv.error = None
        if new in (ServerState.DOWN, ServerState.REMOVED):
            self._take_back(srv)
        if new is ServerState.DOWN:
            srv.downs += 1
        if (
            new in (ServerState.SUSPECT, ServerState.DOWN)
            and self._state == "opened"
            and (srv.probe is None or srv.probe.done())
        ):
            srv.probe = asyncio.create_task(self._probe(srv), name="dreamgen-pool-probe")
        if new is ServerState.DRAINING and not srv.record.assigned:
            self._event(srv, ServerEvent.DRAINED)
            return
        if new is ServerState.REMOVED:
            self._remove(srv)
        self._kick()

    def _remove(self, srv: _Server) -> None:
        self._sched.forget_server(srv.url)
        del self._servers[srv.url]
        if srv.probe is not None and srv.probe is not asyncio.current_task():
            srv.probe.cancel()
        if srv.owned and srv.client is not None:
            self._spawn(self._retire(srv.client, set(srv.tasks)), "dreamgen-pool-retire")
        srv.removed.set()

    def _take_back(self, srv: _Server) -> None:
        """Unbind every job on a server that went down; cancel them there (best effort).

        A job the server had accepted is marked ``resubmitted``: it may run there too (a
        server that is only unreachable keeps its queue; :meth:`_forget_stale` takes such
        prompts off when it comes back, if it has not run them by then)."""
        on_it = [b for b in self._jobs.values() if b.bound_to(srv.url)]
        for book in on_it:
            inner = book.binding.handle
            accepted = inner is not None and inner.queued_at is not None
            if accepted:  # even if it settles before the server is back
                srv.abandoned.add(book.binding.key)
            self._step(
                book,
                TakeBack(
                    running=inner is not None and inner.state == JobState.RUNNING,
                    accepted=accepted,
                ),
            )
            if book.binding.state is BindingState.WAITING:
                log.info("prompt %s taken back from %s", book.binding.key, srv.url)

    async def _probe(self, srv: _Server) -> None:
        """Probe a suspect server (a few times) or a down one (with backoff, until it rejoins).

        The delays are the pool's :class:`~dreamgen_async.retry.Backoff` (``probe_delay``,
        doubling to ``max_probe_delay``); a server that went down again since its last
        success starts further along it."""
        backoff = self._probe_backoff
        attempt = max(1, srv.downs)
        while srv.record.state in (ServerState.SUSPECT, ServerState.DOWN):
            if srv.record.state is ServerState.SUSPECT:
                ok = await self._check(srv)
                if ok:
                    self._event(srv, ServerEvent.OK)
                    return
                srv.failures += 1
                if srv.failures >= self._max_failures:
                    self._event(srv, ServerEvent.PROBE_FAILED)
            else:
                await asyncio.sleep(backoff.delay(attempt))
                try:
                    async with asyncio.timeout(self._probe_timeout):
                        await self._connect(srv)
                        await self._forget_stale(srv)
                except (DreamgenError, TimeoutError) as exc:
                    log.info("server %s still down: %s", srv.url, exc)
                    srv.error = str(exc) or type(exc).__name__
                else:
                    self._event(srv, ServerEvent.READY)
                    return
                attempt = min(attempt + 1, _MAX_PROBE_ATTEMPT)
                continue
            await asyncio.sleep(backoff.delay(attempt))
            attempt = min(attempt + 1, _MAX_PROBE_ATTEMPT)

    async def _forget_stale(self, srv: _Server) -> None:
        """Before a down server takes jobs again: take off it the prompts of ours that it
        still holds (its client could not reach it to take them back) and that were placed
        elsewhere meanwhile or have ended, or that an adopter gave up on while it was down
        (:meth:`adopt`), so that they do not run twice."""
        client = srv.client
        assert client is not None
        queue = await client.get_queue()

        def stale(prompt_id: str) -> bool:
            if prompt_id in self._recent or prompt_id in srv.abandoned:
                return True
            book = self._jobs.get(prompt_id)
            return book is not None and not book.bound_to(srv.url)

        pending = [item.prompt_id for item in queue.pending if stale(item.prompt_id)]
        running = [item.prompt_id for item in queue.running if stale(item.prompt_id)]
        if pending or running:
            log.info(
                "server %s is back: taking off %d stale prompts", srv.url, len(pending + running)
            )
        if pending:
            await client.delete_from_queue(*pending)
        for prompt_id in running:
            await client.interrupt(prompt_id)
        srv.abandoned.clear()  # taken off, or not there: run already, or never arrived

    async def _check(self, srv: _Server) -> bool:
        client = srv.client
        if client is None:
            return False
        try:
            async with asyncio.timeout(self._probe_timeout):
                await client.system_stats()
        except (DreamgenError, TimeoutError):
            return False
        return client.connected

    async def _watch(self) -> None:
        """Every ``health_interval``: sockets, queues, drained servers."""
        while True:
            for srv in list(self._servers.values()):
                client, state = srv.client, srv.record.state
                if client is None or state in (ServerState.DOWN, ServerState.JOINING):
                    continue
                self._sched.set_queue(srv.url, client.queue_remaining)
                if state is ServerState.UP and not client.connected:
                    self._event(srv, ServerEvent.FAILED)
            self._kick()
            now = time.monotonic()
            for book in [b for b in self._jobs.values() if b.binding.state is _WAITING]:
                self._bound_wait(book, now)
            await asyncio.sleep(self._health_interval)

    def _joined_can_run(self, req: Requirements | None) -> bool:
        """Whether a joined, usable server can run ``req`` (not one down or still joining)."""
        return req is None or any(
            srv.record.state in (ServerState.UP, ServerState.SUSPECT) and srv.record.can_run(req)
            for srv in self._servers.values()
        )

    def _bound_wait(self, book: _Book, now: float) -> None:
        """A waiting job only an unjoined or down server might run: start its clock, or fail
        it once ``join_timeout`` has passed (a joined server that can run it stops it)."""
        if book.binding.state is not _WAITING or self._joined_can_run(book.req):
            book.deadline = None
            return
        if book.deadline is None:
            book.deadline = now + self._join_timeout
            self._spawn(self._expire(book), "dreamgen-pool-join-timeout")
        elif now >= book.deadline:
            book.deadline = None
            error = NoCapableServerError(
                f"no joined server of the pool can run prompt {book.binding.key} "
                f"(waited {self._join_timeout:g} s for the others): " + self._why_not(book.req),
                missing=self._missing(book.req),
            )
            self._step(book, Close(error))
            self.failed += 1
            self._kick()

    async def _expire(self, book: _Book) -> None:
        """Check ``book`` again when its deadline passes (the watch loop checks it too)."""
        deadline = book.deadline
        if deadline is None:
            return
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        if book.deadline == deadline:  # not reset meanwhile
            self._bound_wait(book, max(time.monotonic(), deadline))

    def _missing(self, req: Requirements | None) -> dict[str, tuple[str, ...]]:
        if req is None:
            return {}
        return {
            srv.url: srv.record.caps.missing(req)
            for srv in self._servers.values()
            if srv.record.caps is not None and srv.record.caps.missing(req)
        }

    def _why_not(self, req: Requirements | None) -> str:
        """Each server, and why it does not run ``req``."""
        reasons = []
        if req is None:
            return ""
        for srv in self._servers.values():
            state = srv.record.state
            caps = srv.record.caps
            lacks = caps.missing(req) if caps is not None else ()
            if lacks:
                why = "lacks " + ", ".join(lacks)
            elif state is ServerState.DOWN:
                since = time.strftime("%H:%M:%S", time.localtime(srv.down_since or time.time()))
                why = f"down since {since}" + (f" ({srv.error})" if srv.error else "")
            elif caps is None:
                why = "has not joined" + (f" ({srv.error})" if srv.error else "")
            else:
                why = state.value
            reasons.append(f"{srv.url} {why}")
        return "; ".join(reasons)

    async def _refresh_capabilities(self) -> None:
        """Read /object_info again from every usable server (after a capability miss)."""

        async def one(srv: _Server) -> None:
            if srv.client is None or srv.record.state not in (
                ServerState.UP,
                ServerState.SUSPECT,
            ):
                return
            with contextlib.suppress(DreamgenError, TimeoutError):
                async with asyncio.timeout(self._probe_timeout):
                    info = await srv.client.object_info()
                srv.record.caps = Capabilities.from_object_info(info)

        await asyncio.gather(*(one(s) for s in list(self._servers.values())))

    # ------------------------------------------------------------------ jobs

    async def submit(
        self,
        workflow: Mapping[str, Any],
        *,
        priority: int = 0,
        front: bool = False,
        extra_data: Mapping[str, Any] | None = None,
        on_progress: ProgressCallback | None = None,
        prompt_id: str | None = None,
        before_post: BeforePost | None = None,
        max_run_time: float | None = None,
        queue_timeout: float | None = None,
    ) -> PoolJob:
        """Queue a prompt client-side and return its :class:`PoolJob` at once.

        It is posted when a server it can run on has a free slot: higher ``priority``
        first, FIFO within a priority (``front``: ahead of its priority's queue).
        ``before_post(server, client_id)`` is awaited once the job is bound to a server and
        before its POST there, and again before the POST to another server on failover (a
        journal commits where the prompt goes before it goes there); if it fails, the job
        fails with its error and nothing is posted.

        ``max_run_time`` and ``queue_timeout``: as for :meth:`ComfyUIClient.submit`; the
        queue limit counts from now, the wait in the pool included.

        Raises:
            NoCapableServerError: no server has every node class and model file the
                workflow names (after reading their ``/object_info`` again); nothing was
                posted. ``.missing`` says what each server lacks.
        """
        self._check_open()
        check_limits(max_run_time, queue_timeout)
        req = requirements(workflow)
        missing = self._sched.runnable_somewhere(req)
        if missing is not None:
            await self._refresh_capabilities()
            missing = self._sched.runnable_somewhere(req)
        if missing is not None:
            raise NoCapableServerError(
                "no server of the pool can run this workflow: " + describe_missing(missing)
                if missing
                else "no server of the pool can run this workflow (no server is usable)",
                missing=missing,
            )
        prompt_id = prompt_id or str(uuid.uuid4())
        if prompt_id in self._jobs:
            raise ValueError(f"prompt_id {prompt_id} is already in use")
        book = _Book(Binding(prompt_id), asyncio.get_running_loop().create_future())
        book.before_post = before_post
        book.req = req
        job = PoolJob(
            book,
            self._cancel_book,
            workflow,
            priority=priority,
            front=front,
            extra_data=extra_data,
            on_progress=on_progress,
            max_run_time=max_run_time,
            queue_timeout=queue_timeout,
            locate=self.position,
        )
        self._jobs[prompt_id] = book
        self._sched.enqueue(prompt_id, req, priority, front)
        self._kick()
        self._bound_wait(book, time.monotonic())
        if queue_timeout is not None:
            self._spawn(self._queue_expire(book, queue_timeout), "dreamgen-pool-queue-timeout")
        return job

    async def _queue_expire(self, book: _Book, queue_timeout: float) -> None:
        """Fail a job still waiting in the pool once its ``queue_timeout`` passed (a job
        placed on a server meanwhile is timed by its client with what is left)."""
        await asyncio.sleep(queue_timeout)
        if book.binding.state is _WAITING and not book.future.done():
            error = PromptTimeout(
                f"prompt {book.binding.key} waited in the queue more than {queue_timeout:g} s "
                "(queue_timeout) without starting; it was removed",
                prompt_id=book.binding.key,
            )
            self._step(book, Close(error))
            self.failed += 1
            self._kick()

    async def queue_prompt(
        self,
        workflow: Mapping[str, Any],
        *,
        priority: int = 0,
        front: bool = False,
        extra_data: Mapping[str, Any] | None = None,
    ) -> str:
        """Submit and return the prompt_id; see :meth:`submit`."""
        job = await self.submit(workflow, priority=priority, front=front, extra_data=extra_data)
        return job.prompt_id

    async def run(
        self,
        workflow: Mapping[str, Any],
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        priority: int = 0,
        front: bool = False,
        extra_data: Mapping[str, Any] | None = None,
    ) -> PromptResult:
        """Submit and wait for the result. Cancelling it (or ``timeout``) cancels the job."""
        job = await self.submit(
            workflow, priority=priority, front=front, extra_data=extra_data, on_progress=on_progress
        )
        return await job.result(timeout)

    async def wait_for_completion(
        self, prompt_id: str, timeout: float | None = None
    ) -> PromptResult:
        """Wait for a prompt submitted through this pool (or recently finished, or adopted)."""
        adopted = self._adopted.get(prompt_id)
        if adopted is not None and prompt_id not in self._jobs:
            client = self._usable(adopted).client
            assert client is not None
            return await client.wait_for_completion(prompt_id, timeout)
        book = self._jobs.get(prompt_id)
        job = book.job if book is not None else self._recent.get(prompt_id)
        if job is None:
            raise KeyError(f"prompt {prompt_id} is unknown to this pool")
        return await job.result(timeout)

    def _kick(self) -> None:
        """The assign step: bind waiting jobs to free slots and post them."""
        if self._state != "opened":
            return
        for placement in self._sched.assign():
            self._step(self._jobs[placement.job], Bind(placement.server, placement.front))
        self._changed()

    def _step(self, book: _Book, event: BindingInput) -> list[Job]:
        """The one place a job's binding changes: the table's step, then its actions.

        Returns the client jobs to cancel, for the caller to await (only a cancel or a
        launch's POST, both in a coroutine, can ask for that).
        """
        book.binding, actions = bind_step(book.binding, event, self._rules)
        cancels: list[Job] = []
        for action in actions:
            if isinstance(action, Launch):
                self._start_launch(book, action)
            elif isinstance(action, CallOff):
                if book.launch is not None:
                    book.launch.cancel()  # takes the prompt back if the server still answers
            elif isinstance(action, CancelClientJob):
                cancels.append(action.handle)
            elif isinstance(action, Unbind):
                self._sched.unbind(book.binding.key, avoid=action.avoid)
            elif isinstance(action, Blame):
                self._blame(book.binding.key, action)
            else:
                self._settle(book, action)
        return cancels

    def _start_launch(self, book: _Book, action: Launch) -> None:
        srv = self._servers[action.server]
        front = action.front or book.job.front
        task = asyncio.create_task(
            self._launch(book, srv, front, action.attempt), name="dreamgen-pool-job"
        )
        book.launch = task
        srv.tasks.add(task)
        task.add_done_callback(srv.tasks.discard)
        task.add_done_callback(self._launch_done)

    @staticmethod
    def _launch_done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("pool job task failed", exc_info=task.exception())

    async def _launch(self, book: _Book, srv: _Server, front: bool, attempt: int) -> None:
        """Upload the job's inputs to its server, post it, wait for its outcome, and report
        each to the table as launch ``attempt`` (the table ignores a launch called off).

        Cancelling it takes the prompt off the server (ComfyUIClient's guarantee).
        """
        client = srv.client
        assert client is not None
        job = book.job
        inner: Job | None = None
        try:
            workflow = await self._with_inputs(job, srv)
            if book.before_post is not None:
                await book.before_post(srv.url, client.client_id)
            inner = await client.submit(
                workflow,
                prompt_id=job.prompt_id,
                front=front,
                extra_data=job.extra_data,
                on_progress=book.deliver,
                max_run_time=job.max_run_time,
                queue_timeout=_left(job.queue_timeout, job.submitted_at),
            )
            for handle in self._step(book, Posted(attempt, inner)):
                await handle.cancel()  # cancelled while posting
            result = await inner.result()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # this launch was called off
                raise
            self._step(book, ClientJobCancelled(attempt))  # as cancel() asked
            return
        except DreamgenError as exc:
            failure = self._failure(attempt, exc, inner)
            if failure.unknown and failure.attempt == book.binding.attempt:
                srv.abandoned.add(job.prompt_id)  # taken off it when it is back from down
            self._step(book, failure)
            self._kick()
            return
        seconds = None
        if result.started_at is not None and result.finished_at is not None:
            seconds = max(0.0, result.finished_at - result.started_at)
        self._step(book, Succeeded(attempt, result, seconds))

    def _failure(self, attempt: int, exc: DreamgenError, inner: Job | None) -> Failed:
        """What the table needs to know about a failed launch.

        The server's fault (not the job's) is worth another server, unless the pool is
        closing. A job whose fate there is unknown is marked ``resubmitted`` when placed
        again: that server may still run it. So is one the server had accepted and did not
        say it lost, and one whose POST the client could not confirm or take back (the
        client raises :class:`ConnectionLostError` then, before it returns a job).
        """
        accepted = inner is not None and inner.queued_at is not None
        return Failed(
            attempt,
            exc,
            retryable=self._state != "closed" and blames_server(exc),
            running=inner is not None and inner.started_at is not None,
            unknown=not isinstance(exc, PromptLost)
            and (accepted or (inner is None and isinstance(exc, ConnectionLostError))),
        )

    def _blame(self, key: str, blame: Blame) -> None:
        """A job's failure that says more about its server: a strike against the server."""
        log.warning("prompt %s failed on %s: %s", key, blame.server, blame.error)
        srv = self._servers.get(blame.server)
        if srv is None:
            return
        srv.failures += 1
        lost = isinstance(blame.error, ConnectError | ConnectionLostError | NotComfyUIError)
        if lost or srv.failures >= self._max_failures:
            self._event(srv, ServerEvent.LOST)
        else:
            self._event(srv, ServerEvent.FAILED)

    def _settle(self, book: _Book, settle: Settle) -> None:
        """The one place a job ends (the table settles a job once)."""
        binding = book.binding
        outcome = settle.outcome
        if isinstance(outcome, PromptResult):
            outcome = self._located(outcome, binding)
        ok = isinstance(outcome, PromptResult)
        if binding.key in self._sched.tickets:
            if isinstance(outcome, PromptResult) and binding.server is not None:
                self._record_span(binding.server, binding.key, outcome)
            self._sched.finish(binding.key, settle.seconds, ok)
        self._jobs.pop(binding.key, None)
        if not settle.closing and outcome is not CANCELLED:
            self._recent[binding.key] = book.job
            while len(self._recent) > _RECENT:
                self._recent.popitem(last=False)
            if ok:
                self.done += 1
            else:
                self.failed += 1
        _resolve(book.future, outcome)
        if settle.closing:
            return
        srv = self._servers.get(binding.server) if binding.server is not None else None
        if srv is not None:
            if ok:
                srv.failures = srv.downs = 0
            if srv.record.state is ServerState.DRAINING and not srv.record.assigned:
                self._event(srv, ServerEvent.DRAINED)
            elif ok and srv.record.state in (ServerState.SUSPECT, ServerState.UP):
                self._event(srv, ServerEvent.OK)
        self._kick()

    def _record_span(self, server: str, key: str, result: PromptResult) -> None:
        """The job's time on its server, for :meth:`spans` (before the scheduler learns it:
        whether it loaded a model is known from the model the server had before)."""
        if result.started_at is None or result.finished_at is None:
            return
        record = self._sched.servers.get(server)
        model = self._sched.tickets[key].model
        loaded = record is not None and model is not None and model != record.loaded
        plain = self._sched.job_time(server, model) if record is not None else None
        self._spans.job(
            server,
            result.started_at,
            result.finished_at,
            model=model,
            loaded=loaded,
            plain=plain,
            prompt_id=key,
        )

    def _located(self, result: PromptResult, binding: Binding[Job]) -> PromptResult:
        """``result`` with its refs naming the server that made them (remembered for
        :meth:`download`), and the binding's ``resubmitted``."""
        server = binding.server or ""
        outputs = {
            node: tuple(PoolImageRef(r.filename, r.subfolder, r.type, server) for r in refs)
            for node, refs in result.outputs.items()
        }
        files = tuple(
            dataclasses.replace(
                f, ref=PoolImageRef(f.ref.filename, f.ref.subfolder, f.ref.type, server)
            )
            if f.ref is not None
            else f
            for f in result.files
        )
        for refs in outputs.values():
            for ref in refs:
                self._outputs[(ref.filename, ref.subfolder, ref.type)] = server
                while len(self._outputs) > _OUTPUTS:
                    self._outputs.popitem(last=False)
        return dataclasses.replace(
            result, outputs=outputs, files=files, resubmitted=binding.resubmitted
        )

    async def _cancel_book(self, book: _Book) -> None:
        """:meth:`PoolJob.cancel`: waiting, it ends at once; on a server, the client job is
        cancelled and its outcome is the job's (a prompt that finished first is done, not
        cancelled); a launch still posting cancels its client job as soon as it has it."""
        launch = book.launch
        for handle in self._step(book, Cancel(launch_over=launch is None or launch.done())):
            await handle.cancel()
        if book.binding.state is BindingState.CANCELLING and launch is not None:
            await asyncio.wait([launch])

    async def adopt(
        self,
        prompt_id: str,
        *,
        server: str | None = None,
        client_id: str | None = None,
        workflow: Mapping[str, Any] | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Job | None:
        """Take charge of a prompt posted earlier to ``server`` (a journal's record): its
        :class:`Job` there, or ``None`` when that server does not have it (see
        :meth:`ComfyUIClient.adopt`). Without ``server``, each usable server is asked in turn.

        The job is that server's (it takes no slot of the pool); its outputs are downloaded
        from that server by :meth:`get_outputs`.

        Raises:
            ConnectError: ``server`` is not in the pool, or is down (the prompt's fate there
                is unknown: the caller may run it elsewhere). If that server comes back, the
                prompt is taken off it before it takes new jobs (if it has not run it yet).
        """
        self._check_open()
        if server is not None:
            candidates = [self._usable(server, abandon=prompt_id)]
        else:
            candidates = [srv for srv in self._servers.values() if self._answers(srv)]
        for srv in candidates:
            client = srv.client
            assert client is not None
            job = await client.adopt(
                prompt_id, client_id=client_id, workflow=workflow, on_progress=on_progress
            )
            if job is not None:
                self._adopted[prompt_id] = srv.url
                while len(self._adopted) > _OUTPUTS:
                    self._adopted.popitem(last=False)
                return job
        return None

    @staticmethod
    def _answers(srv: _Server) -> bool:
        return srv.client is not None and srv.record.state in (
            ServerState.UP,
            ServerState.SUSPECT,
            ServerState.DRAINING,
        )

    def _usable(self, server: str, abandon: str | None = None) -> _Server:
        """The server ``server`` names, if it answers; else :class:`ConnectError`.

        ``abandon``: a prompt_id the caller will run elsewhere if this server does not
        answer; the pool takes it off this server when it is back (see :meth:`_forget_stale`).
        """
        srv = self._servers.get(self._key(server))
        if srv is None:
            raise ConnectError(f"{server} is not in the pool")
        if not self._answers(srv):
            if abandon is not None and len(srv.abandoned) < _OUTPUTS:
                srv.abandoned.add(abandon)
            raise ConnectError(f"{srv.url} is {srv.record.state.value}")
        return srv

    # ------------------------------------------------------------------ capabilities

    async def object_info_by_server(
        self, node_class: str | None = None
    ) -> dict[str, dict[str, Any]]:
        """``GET /object_info`` (or ``/object_info/{class}``) of every server that answers,
        by URL: which server has which nodes and model files.

        Raises:
            ConnectError: no server answered (each one's reason is in the message).
        """
        self._check_open()
        servers = list(self._servers.values())

        async def one(srv: _Server) -> dict[str, Any] | BaseException:
            if srv.client is None or not self._answers(srv):
                return ConnectError(srv.error or f"it is {srv.record.state.value}")
            try:
                async with asyncio.timeout(self._probe_timeout):
                    info = await srv.client.object_info(node_class)
            except (DreamgenError, TimeoutError) as exc:
                return exc
            if node_class is None:
                srv.record.caps = Capabilities.from_object_info(info)
            return info

        answers = await asyncio.gather(*(one(srv) for srv in servers))
        infos = {
            srv.url: info
            for srv, info in zip(servers, answers, strict=True)
            if not isinstance(info, BaseException)
        }
        if not infos:
            raise ConnectError(
                "no server of the pool answered: "
                + "; ".join(
                    f"{srv.url}: {err or type(err).__name__}"
                    for srv, err in zip(servers, answers, strict=True)
                )
            )
        return infos

    async def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        """The union of the answering servers' ``/object_info``: every node class any of them
        has, each model list with every server's files (what the pool as a whole can run;
        a job still runs on one server that has all it needs). See
        :meth:`object_info_by_server` for which server has what.

        Raises:
            ConnectError: no server answered.
        """
        return merge_object_info(await self.object_info_by_server(node_class))

    async def models(self) -> ServerModels:
        """The model files the pool as a whole offers (any server's)."""
        return ServerModels.from_object_info(await self.object_info())

    async def status(self) -> list[ServerStatus]:
        """Every server's status (see :attr:`servers`)."""
        return self.servers

    # ------------------------------------------------------------------ inputs

    async def upload_image(
        self,
        image: ImageSource,
        *,
        name: str | None = None,
        subfolder: str = "",
        type: str = "input",
        overwrite: bool = False,
    ) -> UploadedImage:
        """Remember an input image; it is uploaded to each server a job using it lands on.

        Nothing is sent now. Reference it as ``UploadedImage.reference`` in LoadImage (as
        with :meth:`ComfyUIClient.upload_image`). Use content-hash names: a name given again
        with other bytes replaces the old ones for jobs placed from now on.
        """
        data, name = await read_image_source(image, name)
        uploaded = UploadedImage(name=name, subfolder=subfolder, type=type)
        ref = uploaded.reference
        old = self._inputs.get(ref)
        if old is None or old.data != data:
            self._inputs[ref] = _Input(data, name, subfolder, type)
            if old is not None:
                for srv in self._servers.values():
                    srv.uploads.pop(ref, None)
        self._inputs.move_to_end(ref)
        while len(self._inputs) > _INPUTS:
            self._inputs.popitem(last=False)
        return uploaded

    async def _with_inputs(self, job: PoolJob, srv: _Server) -> Mapping[str, Any]:
        """The workflow for ``srv``: remembered inputs uploaded there (once), renames applied."""
        if not self._inputs:
            return job.workflow
        refs = {
            value
            for node in job.workflow.values()
            if isinstance(node, Mapping)
            for value in (node.get("inputs") or {}).values()
            if isinstance(value, str) and value in self._inputs
        }
        renamed = {}
        for ref in sorted(refs):
            actual = await self._uploaded(srv, ref)
            if actual != ref:
                renamed[ref] = actual
        if not renamed:
            return job.workflow
        patched = {}
        for node_id, node in job.workflow.items():
            inputs = {
                k: renamed.get(v, v) if isinstance(v, str) else v for k, v in node["inputs"].items()
            }
            patched[node_id] = {**node, "inputs": inputs}
        return patched

    async def _uploaded(self, srv: _Server, ref: str) -> str:
        pending = srv.uploads.get(ref)
        if pending is None or (
            pending.done() and (pending.cancelled() or pending.exception() is not None)
        ):
            client = srv.client
            assert client is not None
            pending = asyncio.ensure_future(self._upload(client, self._inputs[ref]))
            pending.add_done_callback(_retrieve)
            srv.uploads[ref] = pending
        return await asyncio.shield(pending)

    @staticmethod
    async def _upload(client: ComfyUIClient, item: _Input) -> str:
        uploaded = await client.upload_image(
            item.data, name=item.name, subfolder=item.subfolder, type=item.type
        )
        return uploaded.reference

    # ------------------------------------------------------------------ outputs

    async def download(self, image: ImageRef) -> bytes:
        """``GET /view`` from the server that produced ``image`` (else from each in turn).

        Pass the refs of a pool job's result (:class:`PoolImageRef`): a plain
        :class:`ImageRef` is looked for on the server that last produced that name.
        """
        first = (
            image.server
            if isinstance(image, PoolImageRef)
            else self._outputs.get((image.filename, image.subfolder, image.type))
        )
        order = sorted(self._servers.values(), key=lambda s: s.url != first)
        error: DreamgenError | None = None
        for srv in order:
            if srv.client is None or srv.record.state in (ServerState.DOWN, ServerState.JOINING):
                continue
            try:
                return await srv.client.download(image)
            except (ServerError, TransportError, ClientClosedError) as exc:
                error = exc
        raise error or ServerError(
            f"no server of the pool has {image.filename!r}", status=404, url="/view"
        )

    async def get_outputs(
        self, result: PromptResult | str, *, previews: bool = True
    ) -> list[OutputData]:
        """Every output of a finished prompt, of every kind, from the server that made it;
        see :meth:`ComfyUIClient.get_outputs`."""
        if isinstance(result, str):
            result = await self.wait_for_completion(result)
        return await collect_outputs(result, self._fetcher(result), previews=previews)

    async def get_output_images(self, result: PromptResult | str) -> list[OutputImage]:
        """Download every output image of a finished prompt (saved images first), each
        checked by its magic bytes; see :meth:`ComfyUIClient.get_output_images`."""
        if isinstance(result, str):
            result = await self.wait_for_completion(result)
        return await collect_output_images(result, self._fetcher(result))

    def _fetcher(self, result: PromptResult) -> Callable[[ImageRef], Awaitable[bytes]]:
        """How to download ``result``'s files: an adopted prompt's from its own server."""
        server = self._adopted.get(result.prompt_id)
        if server is None:
            return self.download

        async def fetch(image: ImageRef) -> bytes:
            client = self._usable(server).client
            assert client is not None
            return await client.download(image)

        return fetch


def _resolve(future: asyncio.Future[PromptResult], outcome: object) -> None:
    """Set a pool job's outcome: a result, an exception or :data:`CANCELLED`."""
    if outcome is CANCELLED:
        future.cancel()
    elif isinstance(outcome, BaseException):
        future.set_exception(outcome)
        future.exception()  # retrieved: nobody may be waiting
    else:
        assert isinstance(outcome, PromptResult)
        future.set_result(outcome)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


def _left(limit: float | None, since: float) -> float | None:
    """What is left of a limit of ``limit`` seconds counted from ``since`` (at least 1 ms)."""
    if limit is None:
        return None
    return max(0.001, limit - (time.time() - since))
