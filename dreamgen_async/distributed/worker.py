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
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from taskiq.api import run_receiver_task

from dreamgen_async.comfyui_api import ComfyUIClient
from dreamgen_async.distributed.broker import DEFAULT_TAKEOVER, TASK_NAME, make_broker
from dreamgen_async.distributed.records import (
    ABSENT,
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
#: Seconds a worker waits for the producer to answer its ``before_post`` call (a producer
#: that died does not answer: the record already names the server, the POST goes ahead).
ACK_TIMEOUT = 30.0
#: Seconds after which the servers' ``/object_info`` is read again even if none joined.
CAPS_REFRESH = 300.0


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
        self._acks: dict[str, asyncio.Future[Mapping[str, Any]]] = {}
        self._info: dict[str, str] = {}  # server -> its /object_info blob's digest
        self._info_of: tuple[tuple[str, ...], float] = ((), 0.0)  # for which servers, when
        self._reading: asyncio.Task[None] | None = None
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
                await self.publish_caps()
                if self._reading is not None:  # ready with what the servers offer
                    await self._reading
                await self.publish_caps()
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
        if self._reading is not None:
            self._reading.cancel()
            await asyncio.wait([self._reading])
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
            await self.publish_caps()
            await asyncio.sleep(self.lease / 3)

    async def publish_caps(self) -> None:
        """Publish what this worker's servers offer (each one's ``/object_info``, read again
        in the background when the set of answering servers changes, and its status), for
        producers' ``object_info``, ``models`` and ``status``; it expires with the heartbeat
        (which never waits for a server)."""
        statuses = await self.pool.status()
        answering = tuple(sorted(s.url for s in statuses if s.state == "up"))
        of, at = self._info_of
        stale = answering != of or time.monotonic() - at > CAPS_REFRESH
        if stale and (self._reading is None or self._reading.done()):
            self._info_of = (answering, time.monotonic())
            self._reading = asyncio.create_task(
                self._read_info(bool(answering)), name="dreamgen-worker-object-info"
            )
        caps = {
            "worker": self.id,
            "at": time.time(),
            "object_info": self._info,
            "status": [asdict(s) for s in statuses],
        }
        await self.store.put_caps(self.id, caps, self.lease)

    async def _read_info(self, any_up: bool) -> None:
        """Read the answering servers' ``/object_info`` into blobs (for :meth:`publish_caps`)."""
        try:
            infos = await self.pool.object_info_by_server() if any_up else {}
            self._info = {
                url: await self.store.put_blob(json.dumps(info).encode())
                for url, info in infos.items()
            }
        except Exception as exc:  # a server or the broker: the heartbeat goes on regardless
            log.warning("could not publish the servers' object_info: %s", exc)

    async def _listen_cancels(self) -> None:
        """Producers' cancels, and their answers to ``before_post`` calls."""
        pubsub = self.store.pubsub()
        await pubsub.subscribe(self.store.cancel_channel, self.store.ack_channel)
        ack_channel = self.store.ack_channel.encode()
        try:
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                if message.get("channel") == ack_channel:
                    answer = json.loads(message["data"])
                    waiter = self._acks.get(str(answer.get("prompt_id")))
                    if waiter is not None and not waiter.done():
                        waiter.set_result(answer)
                    continue
                self.cancel(message["data"].decode())
        finally:
            await pubsub.aclose()

    async def _ask_producer(self, record: JobRecord, server: str, client_id: str) -> None:
        """Call the producer's ``before_post`` (through its channel) and wait for its answer.

        Raises:
            DreamgenError: the producer's ``before_post`` failed (the job must not be posted).
        """
        if not record.reply:
            return
        waiter: asyncio.Future[Mapping[str, Any]] = asyncio.get_running_loop().create_future()
        self._acks[record.prompt_id] = waiter
        try:
            message = {
                "type": "before_post",
                "prompt_id": record.prompt_id,
                "server": server,
                "client_id": client_id,
            }
            if not await self.store.publish(record.reply, message):
                return  # the producer is gone (nobody listens): the record names the server
            done, _ = await asyncio.wait([waiter], timeout=ACK_TIMEOUT)
        finally:
            self._acks.pop(record.prompt_id, None)
        if not done:
            log.warning(
                "job %s: the producer did not answer before_post: posting", record.prompt_id
            )
            return
        answer = waiter.result()
        if not answer.get("ok"):
            raise DreamgenError(f"the producer's before_post failed: {answer.get('error')}")

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

        adopt_only = bool(job.get("adopt"))  # a producer's adopt(): never run it here
        try:
            result, client = None, None
            if check or adopt_only:
                found = await self._adopt(record, publish, rerun=not adopt_only)
                if found is not None:
                    result, client = found
            if result is None and adopt_only:
                error = {"type": ABSENT, "message": f"no server has prompt {prompt_id}"}
                await self._settle(record, state="failed", error=error)
                return
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
        """Post the job through the pool and wait for it. The record says ``posted`` first;
        right before each POST (again on failover) it names the server and client_id, then
        the producer's ``before_post`` is called when it passed one."""
        workflow = await self._with_inputs(job)
        await self.store.update(record.prompt_id, state="posted")  # before the POST
        ask = bool(job.get("before_post"))

        async def before_post(server: str, client_id: str) -> None:
            await self.store.update(record.prompt_id, server=server, client_id=client_id)
            if ask:
                await self._ask_producer(record, server, client_id)

        pool_job: PoolJob = await self.pool.submit(
            workflow,
            prompt_id=record.prompt_id,
            on_progress=publish,
            before_post=before_post,
            priority=int(job.get("priority") or 0),
            front=bool(job.get("front")),
            extra_data=job.get("extra_data"),
            max_run_time=job.get("max_run_time"),
            queue_timeout=job.get("queue_timeout"),
        )
        return await pool_job.result()

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
        self, record: JobRecord, publish: ProgressCallback, *, rerun: bool
    ) -> tuple[PromptResult, ComfyUIClient] | None:
        """Find the prompt on a server (the record's first, under the record's client_id):
        its result (collected or waited for), or ``None`` when no server has it. With
        ``rerun`` (a dead worker's job) a prompt that failed there is ``None`` too: it runs
        again; otherwise its error is the job's."""
        order = sorted(self.servers, key=lambda url: url != record.server)
        for url in order:
            client = await self._adopter(url)
            adopted = await client.adopt(
                record.prompt_id, client_id=record.client_id, on_progress=publish
            )
            if adopted is None:
                continue
            log.info("job %s: adopted its prompt on %s", record.prompt_id, url)
            await self.store.update(record.prompt_id, server=url, extra={"adopted": url})
            try:
                return await adopted.result(), client
            except (ExecutionInterrupted, ExecutionError):
                if not rerun:
                    raise
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
