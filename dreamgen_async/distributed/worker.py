"""The worker: one pool of ComfyUI servers, running the jobs producers send through the broker.

A delivered job reads its record first (:func:`~.records.on_delivery`): settled → nothing;
held by a live worker → wait for it; posted by a dead worker → ask the servers (finished →
collect, queued or running → adopt and wait, absent → run); otherwise run. The record says
``posted`` *before* the POST, under the prompt_id the producer chose, so the GPU runs each job
once even when the broker delivers it twice.

Inputs come as blobs named by their SHA-256 (uploaded to a server once per content); outputs
go back as blobs, named in the record. Progress events go to the producer's channel; a cancel
on the producer's channel cancels the job here (its prompt leaves the server).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import OrderedDict
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

from taskiq.api import run_receiver_task

from dreamgen_async.comfyui_api import ComfyUIClient
from dreamgen_async.distributed.broker import DEFAULT_TAKEOVER, TASK_NAME, make_broker
from dreamgen_async.distributed.records import (
    JobRecord,
    StoredOutput,
    encode_error,
    encode_event,
    on_delivery,
)
from dreamgen_async.distributed.store import RedisJobStore
from dreamgen_async.errors import DreamgenError, ExecutionError, ExecutionInterrupted
from dreamgen_async.handles import ProgressCallback
from dreamgen_async.jobs import PromptResult
from dreamgen_async.pool import ComfyUIPool, PoolJob
from dreamgen_async.protocol import Event

__all__ = ["Worker"]

log = logging.getLogger("dreamgen_async.distributed")

_INPUTS = 1024


class Worker:
    """Run producers' jobs on ``servers`` (one pool per worker process).

    Args:
        broker: ``redis://HOST:PORT/DB``.
        servers: ComfyUI server URLs.
        takeover: Seconds after which a dead worker's jobs are taken over (its heartbeat
            lapses sooner: ``takeover / 3``, at most 10 s).
        max_jobs: Jobs this worker holds at once (the pool queues them client-side).
        **pool_options: Passed to :class:`~dreamgen_async.pool.ComfyUIPool`.
    """

    def __init__(
        self,
        broker: str,
        servers: Sequence[str],
        *,
        takeover: float = DEFAULT_TAKEOVER,
        max_jobs: int = 256,
        **pool_options: Any,
    ) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.url = broker
        self.servers = list(servers)
        self.takeover = takeover
        self.lease = min(10.0, takeover / 3)
        self.max_jobs = max_jobs
        self.store = RedisJobStore(broker)
        self.broker = make_broker(broker, takeover=takeover, consumer=self.id)
        self.pool = ComfyUIPool(self.servers, on_partial="ignore", **pool_options)
        self._adopters: dict[str, ComfyUIClient] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._cancelled: set[str] = set()
        self._uploaded: OrderedDict[str, str] = OrderedDict()  # reference -> digest
        self._sending: set[asyncio.Future[Any]] = set()
        self.ran = 0

        async def run(job: dict[str, Any]) -> None:
            await self.run_job(job)

        self.broker.register_task(run, task_name=TASK_NAME)

    async def serve(
        self, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None
    ) -> None:
        """Take jobs until ``stop`` is set (or this is cancelled), then stop taking jobs and
        leave the prompts in flight on their servers (another worker collects them).

        Raises:
            ConnectError: the broker cannot be reached at start.
        """
        await self.store.open()
        try:
            await self.pool.open()
            try:
                await self.store.beat(self.id, self.lease)
                await self.broker.startup()
                await self._run_until(stop or asyncio.Event(), ready)
            finally:
                await self._shutdown()
        finally:
            await self.store.aclose()

    async def _run_until(self, stop: asyncio.Event, ready: asyncio.Event | None) -> None:
        receiver = run_receiver_task(self.broker, max_async_tasks=self.max_jobs, run_startup=False)
        tasks = [
            asyncio.create_task(self._heartbeat(), name="dreamgen-worker-heartbeat"),
            asyncio.create_task(self._listen_cancels(), name="dreamgen-worker-cancels"),
            asyncio.create_task(receiver, name="dreamgen-worker-receiver"),
        ]
        stopping = asyncio.create_task(stop.wait(), name="dreamgen-worker-stop")
        log.info("worker %s ready: %d server(s), broker %s", self.id, len(self.servers), self.url)
        if ready is not None:
            ready.set()
        try:
            await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            # taskiq's receiver (an anyio task group) can absorb a cancel that lands while it
            # starts: cancel until each task has ended.
            for task in [*tasks, stopping]:
                while not task.done():
                    task.cancel()
                    await asyncio.wait([task], timeout=1.0)
        for task in tasks:
            error = None if task.cancelled() else task.exception()
            if error is not None:  # a task ended by itself: the broker failed
                raise error

    async def _shutdown(self) -> None:
        with contextlib.suppress(Exception):
            await self.broker.shutdown()
        for adopter in self._adopters.values():
            await adopter.aclose(detach=True)
        await self.pool.aclose(detach=True)  # another worker collects what is left
        with contextlib.suppress(Exception):
            await asyncio.shield(self.store.retire(self.id))

    async def _heartbeat(self) -> None:
        while True:
            await self.store.beat(self.id, self.lease)
            await asyncio.sleep(self.lease / 3)

    async def _listen_cancels(self) -> None:
        pubsub = self.store.pubsub()
        await pubsub.subscribe(self.store.cancel_channel)
        try:
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                self.cancel(message["data"].decode())
        finally:
            await pubsub.aclose()

    # ------------------------------------------------------------------ one job

    async def run_job(self, job: Mapping[str, Any]) -> None:
        """The task: run (or collect, or leave) one delivered job; never raises its error.

        A job delivered again to the worker that already holds it (its message reclaimed
        while it ran) waits for the first delivery.
        """
        prompt_id = str(job["prompt_id"])
        current = self._running.get(prompt_id)
        if current is not None:
            await asyncio.wait([current])
            return
        task = asyncio.create_task(self._handle(prompt_id, job), name=f"dreamgen-job-{prompt_id}")
        self._running[prompt_id] = task
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:  # the worker stops: the job is left to another
            task.cancel()
            await asyncio.wait([task])
            raise
        finally:
            self._running.pop(prompt_id, None)
        if task.cancelled():
            if prompt_id not in self._cancelled:
                raise asyncio.CancelledError
            self._cancelled.discard(prompt_id)
            record = await self.store.get(prompt_id)
            if record is not None and record.worker == self.id and not record.settled:
                await self._settle(record, state="cancelled")
        elif (exc := task.exception()) is not None:
            raise exc

    async def _handle(self, prompt_id: str, job: Mapping[str, Any]) -> None:
        waited = False
        while True:
            record = await self.store.get(prompt_id)
            if record is None:
                log.warning("job %s has no record (expired?): dropped", prompt_id)
                return
            alive = record.worker is not None and await self.store.worker_alive(record.worker)
            step = on_delivery(record, me=self.id, holder_alive=alive)
            if step == "settled":
                return
            if step == "wait":
                if not waited:
                    log.info("job %s: held by live worker %s, waiting", prompt_id, record.worker)
                    waited = True
                await asyncio.sleep(self.lease / 3)  # the holder finishes it, or dies
                continue
            claimed = await self.store.claim(prompt_id, self.id)
            if claimed is not None:
                break
        if claimed.worker != record.worker and record.worker is not None:
            log.info("job %s: taken over from worker %s", prompt_id, record.worker)
        await self._execute(claimed, job, step == "check")

    def cancel(self, prompt_id: str) -> None:
        """Cancel the job if this worker holds it (a producer asked)."""
        task = self._running.get(prompt_id)
        if task is not None:
            self._cancelled.add(prompt_id)
            task.cancel()

    async def _execute(self, record: JobRecord, job: Mapping[str, Any], check: bool) -> None:
        prompt_id = record.prompt_id

        def publish(event: Event) -> None:
            data = encode_event(event)
            if data is not None and record.reply:
                data["prompt_id"] = prompt_id
                self._background(self.store.publish(record.reply, data))

        try:
            result, client = None, None
            if check:
                found = await self._adopt(record, job, publish)
                if found is not None:
                    result, client = found
            if result is None:
                result = await self._run(record, job, publish)
            outputs = await self._store_outputs(result, client)
        except DreamgenError as exc:
            await self._settle(record, state="failed", error=encode_error(exc))
            return
        except Exception as exc:  # a bug or the broker: the producer must still hear of it
            log.exception("job %s failed on this worker", prompt_id)
            await self._settle(record, state="failed", error=encode_error(exc))
            return
        timings = (result.queued_at, result.started_at, result.finished_at)
        await self._settle(record, state="done", outputs=outputs, timings=timings)
        self.ran += 1

    async def _run(
        self, record: JobRecord, job: Mapping[str, Any], publish: ProgressCallback
    ) -> PromptResult:
        """Post the job through the pool (the record says ``posted`` first) and wait for it;
        the record names the server as soon as the job's first event comes from it."""
        workflow = await self._with_inputs(job)
        await self.store.update(record.prompt_id, state="posted")  # before the POST
        placed: list[PoolJob] = []
        noted: list[str] = []

        def on_progress(event: Event) -> None:
            publish(event)
            server = placed[0].server if placed else None
            if server is not None and not noted:
                noted.append(server)
                self._background(self.store.update(record.prompt_id, server=server))

        pool_job = await self.pool.submit(
            workflow, prompt_id=record.prompt_id, on_progress=on_progress
        )
        placed.append(pool_job)
        try:
            return await pool_job.result()
        finally:
            if pool_job.server is not None and pool_job.server not in noted:
                with contextlib.suppress(Exception):
                    await self.store.update(record.prompt_id, server=pool_job.server)

    def _background(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run ``work`` without waiting for it (kept referenced until it ends)."""
        task = asyncio.ensure_future(work)
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _with_inputs(self, job: Mapping[str, Any]) -> Mapping[str, Any]:
        """Give the pool each input blob the job names (it uploads it where the job lands)."""
        inputs: Mapping[str, Mapping[str, str]] = job.get("inputs") or {}
        for reference, blob in inputs.items():
            if self._uploaded.get(reference) == blob["digest"]:
                self._uploaded.move_to_end(reference)
                continue
            data = await self.store.get_blob(blob["digest"])
            await self.pool.upload_image(data, name=blob["name"], subfolder=blob["subfolder"])
            self._uploaded[reference] = blob["digest"]
            while len(self._uploaded) > _INPUTS:  # fewer than the pool remembers
                self._uploaded.popitem(last=False)
        workflow: Mapping[str, Any] = job["workflow"]
        return workflow

    async def _adopt(
        self, record: JobRecord, job: Mapping[str, Any], publish: ProgressCallback
    ) -> tuple[PromptResult, ComfyUIClient] | None:
        """Find a dead worker's prompt on a server: its result (collected or waited for),
        or ``None`` when no server has it (it must run)."""
        order = sorted(self.servers, key=lambda url: url != record.server)
        for url in order:
            client = await self._adopter(url)
            adopted = await client.adopt(record.prompt_id, on_progress=publish)
            if adopted is None:
                continue
            log.info("job %s: adopted its prompt on %s", record.prompt_id, url)
            try:
                return await adopted.result(), client
            except (ExecutionInterrupted, ExecutionError):
                return None
        return None

    async def _adopter(self, url: str) -> ComfyUIClient:
        client = self._adopters.get(url)
        if client is None:
            client = ComfyUIClient(url, on_partial="ignore")
            await client.open()
            self._adopters[url] = client
        return client

    async def _store_outputs(
        self, result: PromptResult, client: ComfyUIClient | None
    ) -> tuple[StoredOutput, ...]:
        saved = any(f.ref is not None and f.ref.type == "output" for f in result.files)
        saved = saved or any(ref.type == "output" for ref in result.images)
        source: ComfyUIClient | ComfyUIPool = client if client is not None else self.pool
        outputs = await source.get_outputs(result, previews=not saved)
        stored = []
        for output in outputs:
            digest = await self.store.put_blob(output.data)
            stored.append(StoredOutput.of(output.file, digest, len(output.data)))
        return tuple(stored)

    async def _settle(self, record: JobRecord, *, state: str, **changes: Any) -> None:
        written = await self.store.update(record.prompt_id, state=state, **changes)
        if written.reply:  # the producer's latest channel (a rerun's, after a crash)
            await self.store.publish(
                written.reply, {"type": "settled", "prompt_id": record.prompt_id}
            )
