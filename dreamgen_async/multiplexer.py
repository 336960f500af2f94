"""The one WebSocket: a single reader task that routes every event to its prompt.

In one breath: the client registers a :class:`~dreamgen_async.jobs.Job` under its
prompt_id *before* ``POST /prompt``; the reader parses each frame (``protocol``) and hands
it to that job, collecting outputs from ``executed`` and resolving on ``executing
{node: null}`` / ``execution_error`` / ``execution_interrupted``. When the socket drops,
the old one is closed completely, a new one is opened under the same clientId (with
jittered backoff), and every posted job is resynchronised from ``/queue`` + ``/history``.
Only an exhausted reconnect budget fails the pending jobs, with the cause chained.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

from dreamgen_async.errors import (
    ConnectionLostError,
    DreamgenError,
    ExecutionError,
    ExecutionInterrupted,
    ProtocolError,
)
from dreamgen_async.protocol import (
    Event,
    Executed,
    Executing,
    ExecutionCached,
    ExecutionErrorEvent,
    ExecutionInterruptedEvent,
    ExecutionStart,
    ExecutionSuccess,
    Status,
    feature_flags_message,
    parse_binary,
    parse_text,
)

if TYPE_CHECKING:
    from dreamgen_async.comfyui_api import ComfyUIClient
    from dreamgen_async.jobs import Job

__all__ = ["ReconnectPolicy"]

log = logging.getLogger("dreamgen_async.ws")


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """How hard to try when the WebSocket drops.

    Attributes:
        max_time: Seconds of failed attempts after which pending jobs fail with
            :class:`~dreamgen_async.ConnectionLostError` (a ComfyUI restart takes ~15 s).
        initial_delay: First backoff delay; doubles up to ``max_delay``, with full jitter.
        max_delay: Longest wait between two attempts.
    """

    max_time: float = 120.0
    initial_delay: float = 0.05
    max_delay: float = 5.0


def error_from_event(event: ExecutionErrorEvent) -> ExecutionError:
    """The typed error for an ``execution_error`` message (or history entry)."""
    return ExecutionError(
        prompt_id=event.prompt_id,
        node_id=event.node_id,
        node_type=event.node_type,
        exception_type=event.exception_type,
        exception_message=event.exception_message,
        traceback=event.traceback,
    )


class Multiplexer:
    """Owns the WebSocket and the reader task. Used only by :class:`ComfyUIClient`."""

    def __init__(self, client: ComfyUIClient, policy: ReconnectPolicy) -> None:
        self._client = client
        self._policy = policy
        self.jobs: dict[str, Job] = {}
        self.queue_remaining: int | None = None
        self.connections = 0
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._connected = asyncio.Event()
        self._closing = False
        self._running_prompt: str | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def start(self) -> None:
        """Open the socket (raises ConnectError if the server does not answer) and start reading."""
        self._ws = await self._client._ws_connect()
        self._on_connected()
        self._reader = asyncio.create_task(self._read_forever(), name="dreamgen-ws-reader")
        self._reader.add_done_callback(self._reader_done)

    async def ensure_running(self) -> None:
        """Restart the reader after an exhausted reconnect budget, on the next submission."""
        if self._reader is None or not self._reader.done() or self._closing:
            return
        await self.start()

    async def close(self, exc: BaseException) -> None:
        """Stop reading, close the socket, fail every job with ``exc``. Idempotent."""
        self._closing = True
        tasks = [t for t in (self._reader, *self._tasks) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()
        self._connected.clear()
        self.fail_all(exc)

    def fail_all(self, exc: BaseException) -> None:
        for job in list(self.jobs.values()):
            job._fail(exc)
        self.jobs.clear()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        """Run a helper coroutine that close() will cancel and await."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    def _reader_done(self, task: asyncio.Task[None]) -> None:
        # The reader has no try/except of its own: whatever ended it ends every waiter.
        self._connected.clear()
        if task.cancelled() or self._closing:
            return
        exc = task.exception()
        log.error("WebSocket reader stopped: %s", exc)
        lost = ConnectionLostError(f"lost the WebSocket to {self._client.safe_url}: {exc}")
        lost.__cause__ = exc
        self.fail_all(lost)

    # ------------------------------------------------------------------ reading

    async def _read_forever(self) -> None:
        while True:
            ws = self._ws
            assert ws is not None
            async for message in ws:
                if message.type is aiohttp.WSMsgType.TEXT:
                    self._dispatch_frame(message.data, parse_text)
                elif message.type is aiohttp.WSMsgType.BINARY:
                    self._dispatch_frame(message.data, parse_binary)
                elif message.type is aiohttp.WSMsgType.ERROR:
                    log.warning("WebSocket error: %s", ws.exception())
                    break
            # `async for` ends on close instead of raising: look at why, then reconnect.
            log.warning(
                "WebSocket to %s closed (code %s, %s); reconnecting",
                self._client.safe_url,
                ws.close_code,
                ws.exception(),
            )
            await self._reconnect()

    def _dispatch_frame(self, data: Any, parse: Callable[[Any], Event]) -> None:
        try:
            event = parse(data)
        except ProtocolError as exc:
            log.warning("ignoring a malformed frame: %s", exc)
            return
        self.dispatch(event)

    def dispatch(self, event: Event) -> None:
        """Route one parsed event. Never raises for a well-formed event, never awaits."""
        if isinstance(event, Status):
            self.queue_remaining = event.queue_remaining
            return
        prompt_id = getattr(event, "prompt_id", None)
        if prompt_id is None and not isinstance(event, Executing):
            # Previews without metadata carry no prompt_id: they belong to the running one.
            prompt_id = self._running_prompt
        job = self.jobs.get(prompt_id) if prompt_id is not None else None
        if job is None:
            return
        if isinstance(event, ExecutionStart):
            self._running_prompt = job.prompt_id
            job._note_started()
        elif isinstance(event, ExecutionCached):
            job._set_cached(event.nodes)
        elif isinstance(event, Executed):
            job._add_outputs(event.node, event.images, event.files)
        elif isinstance(event, ExecutionSuccess):
            job._mark_succeeded()
        elif isinstance(event, ExecutionErrorEvent):
            self._settle(job, error_from_event(event))
            return
        elif isinstance(event, ExecutionInterruptedEvent):
            self._settle(
                job,
                ExecutionInterrupted(
                    prompt_id=job.prompt_id, node_id=event.node_id, node_type=event.node_type
                ),
            )
            return
        elif isinstance(event, Executing) and event.node is None:
            self._running_prompt = None
            if job._has_succeeded and not job.gap:
                self._settle(job, None)
            else:
                # Events were missed: the history entry (written by now) is the truth.
                self.spawn(self._client._settle_from_history(job), "dreamgen-history")
            return
        job._deliver(event)

    def _settle(self, job: Job, error: DreamgenError | None) -> None:
        self.jobs.pop(job.prompt_id, None)
        if error is None:
            job._resolve()
        else:
            job._fail(error)

    # ------------------------------------------------------------------ reconnecting

    def _on_connected(self) -> None:
        self.connections += 1
        self._connected.set()

    async def _reconnect(self) -> None:
        """Close the old socket fully, then open a new one under the same clientId.

        Order matters: the server unregisters a clientId when *any* socket with that id
        closes, so a new socket opened before the old one is gone would go deaf.
        """
        self._connected.clear()
        for job in self.jobs.values():
            job.gap = True
        if self._ws is not None:
            await self._ws.close()
        deadline = time.monotonic() + self._policy.max_time
        delay = self._policy.initial_delay
        while True:
            try:
                self._ws = await self._client._ws_connect()
                break
            except DreamgenError as exc:
                if time.monotonic() + delay > deadline:
                    raise ConnectionLostError(
                        f"could not reconnect to {self._client.safe_url} "
                        f"within {self._policy.max_time:g} s"
                    ) from exc
                log.info("reconnect failed (%s); retrying in up to %.2f s", exc, delay)
                await asyncio.sleep(random.uniform(0, delay))
                delay = min(delay * 2, self._policy.max_delay)
        self._on_connected()
        log.info("WebSocket reconnected; resynchronising %d prompts", len(self.jobs))
        self.spawn(self.resync(), "dreamgen-resync")

    async def resync(self, only: Job | None = None) -> None:
        """Recover jobs whose events may have been missed, from ``/queue`` and ``/history``.

        Finished → resolved from history; still queued or running → keep waiting (new
        events arrive on the new socket); vanished → the client's lost-prompt policy.
        """
        jobs = [only] if only is not None else list(self.jobs.values())
        jobs = [j for j in jobs if j.state in ("queued", "running") and not j.done()]
        if not jobs:
            return
        try:
            queue = await self._client.get_queue()
        except DreamgenError as exc:
            log.warning("resync: /queue failed (%s); dropping the socket to try again", exc)
            await self._drop_socket()
            return
        for job in jobs:
            if job.prompt_id in queue:
                if queue.is_running(job.prompt_id):
                    job.state = "running"
                continue
            await self._client._settle_from_history(job)

    async def _drop_socket(self) -> None:
        if self._ws is not None:
            await self._ws.close()

    async def send_feature_flags(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        await ws.send_str(feature_flags_message())
