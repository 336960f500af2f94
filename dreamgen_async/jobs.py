"""Jobs and their results: what a caller holds while a prompt runs, and what it gets back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dreamgen_async.errors import ConfigError, NodeError
from dreamgen_async.handles import EventSource, JobHandle, Mailbox, ProgressCallback, Waiters
from dreamgen_async.lifecycle import JobState, Lifecycle
from dreamgen_async.protocol import ImageRef, OutputFile

if TYPE_CHECKING:
    from dreamgen_async.owner import JobOwner

__all__ = [
    "EventSource",
    "Job",
    "JobState",
    "Mailbox",
    "OutputImage",
    "ProgressCallback",
    "PromptResult",
    "check_limits",
]


def check_limits(max_run_time: float | None, queue_timeout: float | None) -> None:
    """Refuse a per-job limit that is not a positive number of seconds (``None``: no limit).

    Raises:
        ConfigError: a limit is zero, negative or not a number.
    """
    for name, value in (("max_run_time", max_run_time), ("queue_timeout", queue_timeout)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")


@dataclass(frozen=True, slots=True)
class PromptResult:
    """A prompt that ran to success.

    Attributes:
        prompt_id: The id we chose and the server echoed.
        outputs: Images per output node id, as the server reported them.
        cached_nodes: Nodes the server skipped because their result was cached.
        node_errors: Output nodes the server dropped at validation (200 with node_errors).
        queued_at: ``time.time()`` when the server accepted the prompt.
        started_at: When execution started (``None`` if that event was missed in a reconnect).
        finished_at: When the result was known to the client.
        resubmitted: Whether the prompt was submitted again after the server lost it (in a
            pool: or placed on another server while the first may still have run it).
        files: Every output of every kind (images, animated images, videos, audio, text,
            other files), in node order; download them with ``ComfyUIClient.get_outputs``.
    """

    prompt_id: str
    outputs: Mapping[str, tuple[ImageRef, ...]]
    cached_nodes: tuple[str, ...] = ()
    node_errors: tuple[NodeError, ...] = ()
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    resubmitted: bool = False
    files: tuple[OutputFile, ...] = ()

    @property
    def images(self) -> tuple[ImageRef, ...]:
        """Every output image, saved (``type == "output"``) images first, in node order."""
        refs = [ref for refs in self.outputs.values() for ref in refs]
        return tuple(sorted(refs, key=lambda r: r.type != "output"))


@dataclass(frozen=True, slots=True)
class OutputImage:
    """A downloaded output image."""

    node_id: str
    ref: ImageRef
    data: bytes = field(repr=False)


class Job(JobHandle[PromptResult]):
    """One prompt submitted through a :class:`~dreamgen_async.ComfyUIClient`.

    Created by :meth:`ComfyUIClient.submit`; await :meth:`result` for the outcome (the one
    waiter rule of :class:`~dreamgen_async.handles.JobHandle`), iterate :meth:`events` for
    progress, call :meth:`cancel` to take it off the server. The job's state is owned by its
    client's :class:`~dreamgen_async.owner.JobOwner` (see :mod:`dreamgen_async.lifecycle`):
    this handle reads it and asks the owner for changes; the owner records what the server
    said through the methods under "owner side".
    """

    # Thousands may be in flight at once: keep each one small.
    __slots__ = (
        "_cached",
        "_changed",
        "_files",
        "_future",
        "_life",
        "_outputs",
        "_owner",
        "_settled",
        "_succeeded",
        "extra_data",
        "front",
        "max_run_time",
        "node_errors",
        "priority",
        "prompt_id",
        "queue_timeout",
        "queued_at",
        "started_at",
        "workflow",
    )

    def __init__(
        self,
        owner: JobOwner,
        prompt_id: str,
        workflow: Mapping[str, Any],
        *,
        extra_data: Mapping[str, Any] | None,
        front: bool,
        on_progress: ProgressCallback | None,
        priority: int = 0,
        resubmit_lost: bool = True,
        adopted: bool = False,
        max_run_time: float | None = None,
        queue_timeout: float | None = None,
    ) -> None:
        super().__init__()
        #: Seconds it may run once started (``execution_start``); then it is interrupted.
        self.max_run_time = max_run_time
        #: Seconds it may wait (client-side, then in the server's queue) before it starts.
        self.queue_timeout = queue_timeout
        self.prompt_id = prompt_id
        self.workflow = workflow
        self.extra_data = dict(extra_data) if extra_data else None
        self.front = front
        self.priority = priority
        self.queued_at: float | None = None
        self.started_at: float | None = None
        self.node_errors: tuple[NodeError, ...] = ()
        self._life = Lifecycle(resubmit_lost=resubmit_lost, adopted=adopted)
        self._owner = owner
        self._on_progress = on_progress
        self._future: asyncio.Future[PromptResult] = asyncio.get_running_loop().create_future()
        self._outputs: dict[str, tuple[ImageRef, ...]] = {}
        self._files: dict[str, tuple[OutputFile, ...]] = {}
        self._cached: tuple[str, ...] = ()
        self._succeeded = False
        self._changed = Waiters()  # woken at every state change (wait_for)
        self._settled = Waiters()  # woken once, when the job has its outcome (result)
        # Created on first use: most jobs have no subscriber and few events.
        self._subscribers = None
        self._backlog = None

    def __repr__(self) -> str:
        return f"<Job {self.prompt_id} {self.state.value}>"

    @property
    def position(self) -> int | None:
        """Its place in the client's queue of jobs waiting for a slot (1: the next to be
        posted), ``None`` once posted or ended."""
        return self._owner.position(self)

    @property
    def state(self) -> JobState:
        """Where the job is (see :class:`~dreamgen_async.lifecycle.JobState`)."""
        return self._life.state

    @property
    def resubmitted(self) -> bool:
        """Whether the server lost the prompt and it was posted again."""
        return self._life.resubmitted

    @property
    def label(self) -> str:
        return f"prompt {self.prompt_id}"

    async def cancel(self) -> None:
        """Take the prompt off the server (delete if queued, targeted interrupt if running).

        Idempotent. Returns once the removal was sent; waiters get ``CancelledError``.
        Cancelling this call does not undo the request.
        """
        await self._owner.cancel(self, asyncio.CancelledError())

    async def abandon(self, reason: BaseException) -> None:
        """The last waiter gave up: take the prompt off the server, settling with ``reason``."""
        await self._owner.cancel(self, reason)

    # ------------------------------------------------------------------ owner side

    @property
    def lifecycle(self) -> Lifecycle:
        """The job's state machine; only its owner feeds it inputs."""
        return self._life

    @property
    def succeeded(self) -> bool:
        """Whether ``execution_success`` was heard."""
        return self._succeeded

    async def wait_for(self, reached: Callable[[JobState], bool]) -> None:
        """Return once ``reached(self.state)`` holds (re-checked after every change)."""
        while not reached(self._life.state):
            await self._changed.wait()

    def state_changed(self) -> None:
        """Wake :meth:`wait_for` callers: the state changed."""
        self._changed.wake()

    def _settling(self) -> asyncio.Future[None]:
        # Woken by resolve() and fail() themselves: one loop pass, not a shield's two.
        return self._settled.wait()

    def note_started(self) -> None:
        self.started_at = time.time()

    def add_outputs(
        self, node: str, images: tuple[ImageRef, ...], files: tuple[OutputFile, ...] = ()
    ) -> None:
        self._outputs[node] = images
        self._files[node] = files

    def set_cached(self, nodes: tuple[str, ...]) -> None:
        self._cached = nodes

    def mark_succeeded(self) -> None:
        self._succeeded = True

    def resolve(
        self,
        outputs: Mapping[str, tuple[ImageRef, ...]] | None = None,
        files: tuple[OutputFile, ...] | None = None,
    ) -> PromptResult:
        """Settle with success: the outputs heard, or those of ``/history``. Returns it."""
        assert not self._future.done(), "a job is settled once"
        if files is None:
            if outputs is None:
                files = tuple(f for node_files in self._files.values() for f in node_files)
            else:  # from /history without its files: at least the images
                files = tuple(
                    OutputFile(node, "image", ref) for node, refs in outputs.items() for ref in refs
                )
        result = PromptResult(
            prompt_id=self.prompt_id,
            outputs=dict(self._outputs if outputs is None else outputs),
            cached_nodes=self._cached,
            node_errors=self.node_errors,
            queued_at=self.queued_at,
            started_at=self.started_at,
            finished_at=time.time(),
            resubmitted=self.resubmitted,
            files=files,
        )
        self._future.set_result(result)
        self._settled.wake()
        self._close_events()
        return result

    def fail(self, exc: BaseException) -> None:
        """Settle with ``exc`` (a ``CancelledError`` cancels the job's future)."""
        assert not self._future.done(), "a job is settled once"
        if isinstance(exc, asyncio.CancelledError):
            self._future.cancel()
        else:
            self._future.set_exception(exc)
            # Mark retrieved: a job nobody awaits must not warn "exception never retrieved".
            self._future.exception()
        self._settled.wake()
        self._close_events()
