"""RemoteBackend: the producer's side — jobs go to ``dreamgen worker`` processes via taskiq.

It offers what :class:`~dreamgen_async.DreamGenerator` calls on a client (``open``,
``aclose``, ``submit``, ``upload_image``, ``get_outputs``), so switching a service to
workers is one constructor::

    async with RemoteBackend("redis://127.0.0.1:6379/0") as backend:
        gen = DreamGenerator(backend, output_dir="out")
        result = await gen.generate_from_prompt("a lighthouse")

The job's record is written (``pending``) before its message is sent; the prompt_id is chosen
here. Inputs go to Redis once per content (a blob named by its SHA-256); outputs come back as
blobs. Events and the settling of each job come back on this producer's channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

from redis.exceptions import RedisError
from taskiq.kicker import AsyncKicker

from dreamgen_async.comfyui_api import ImageSource, UploadedImage, read_image_source
from dreamgen_async.distributed.broker import TASK_NAME, make_broker
from dreamgen_async.distributed.records import (
    JobRecord,
    NoWorkerError,
    decode_event,
    on_submit,
    rebuild_error,
)
from dreamgen_async.distributed.store import RedisJobStore, broker_error
from dreamgen_async.errors import ClientClosedError, DreamgenError
from dreamgen_async.handles import JobHandle, ProgressCallback
from dreamgen_async.jobs import PromptResult
from dreamgen_async.protocol import OutputData

__all__ = ["RemoteBackend", "RemoteJob"]

log = logging.getLogger("dreamgen_async.distributed")


class RemoteJob(JobHandle[PromptResult]):
    """One job sent to the workers: await :meth:`result`, follow :meth:`events`, cancel."""

    __slots__ = ("_backend", "_future", "_on_progress", "prompt_id", "state", "workflow")

    def __init__(
        self,
        backend: RemoteBackend,
        prompt_id: str,
        workflow: Mapping[str, Any],
        on_progress: ProgressCallback | None,
    ) -> None:
        super().__init__()
        self.prompt_id = prompt_id
        self.workflow = workflow
        self._backend = backend
        self._on_progress = on_progress
        self._subscribers = None
        self._backlog = None
        self._future: asyncio.Future[PromptResult] = asyncio.get_running_loop().create_future()
        self._future.add_done_callback(self._finished)
        self.state = "queued"

    def _finished(self, future: asyncio.Future[PromptResult]) -> None:
        if not future.cancelled():
            future.exception()  # retrieved here (a job nobody awaits); result() raises it
        self._close_events()

    def __repr__(self) -> str:
        return f"<RemoteJob {self.prompt_id} {self.state}>"

    @property
    def label(self) -> str:
        return f"prompt {self.prompt_id}"

    @property
    def resubmitted(self) -> bool:
        return False

    def settle(self, record: JobRecord) -> None:
        """The record says the job ended: resolve it (the backend's reader calls this)."""
        if self._future.done():
            return
        if record.state == "done":
            self.state = "done"
            timings = (*record.timings, None, None, None)
            self._future.set_result(
                PromptResult(record.prompt_id, {}, (), (), timings[0], timings[1], timings[2])
            )
        elif record.state == "cancelled":
            self.state = "cancelled"
            self._future.cancel()
        else:
            self.state = "failed"
            self._future.set_exception(rebuild_error(record.error or {}, self.prompt_id))

    async def wait(self, timeout: float) -> None:
        """Return when the job has ended, or after ``timeout`` seconds (no waiter counted)."""
        await asyncio.wait([self._future], timeout=timeout)

    def fail(self, exc: BaseException) -> None:
        if not self._future.done():
            self.state = "failed"
            self._future.set_exception(exc)

    async def cancel(self) -> None:
        """Cancel on the worker that holds it (its prompt leaves the server); returns once
        the job has ended. Idempotent."""
        if not self._future.done():
            await self._backend.request_cancel(self.prompt_id)
            await asyncio.wait([self._future])

    async def abandon(self, reason: BaseException) -> None:
        await asyncio.shield(self.cancel())


class RemoteBackend:
    """Jobs run by ``dreamgen worker`` processes listening on the broker at ``url``.

    Args:
        url: ``redis://HOST:PORT/DB``.
        pickup_timeout: Seconds a job may wait for its first worker when no worker is alive
            (then it fails with :class:`~.records.NoWorkerError`).
        batch: A name for a batch that may be rerun (the CLI uses the output folder): job
            ids are then derived from it and the workflow, so a rerun after a crash collects
            what the workers finished meanwhile instead of running it again (requests with a
            seed; a seedless request draws a new seed, so it is a new job).
    """

    def __init__(self, url: str, *, pickup_timeout: float = 30.0, batch: str | None = None) -> None:
        self.url = url
        self.batch = batch
        self.base_url = url
        self.pickup_timeout = pickup_timeout
        self.id = uuid.uuid4().hex[:12]
        self.store = RedisJobStore(url)
        self.broker = make_broker(url)
        self._kicker: AsyncKicker[[dict[str, Any]], None] = AsyncKicker(TASK_NAME, self.broker, {})
        self._jobs: dict[str, RemoteJob] = {}
        self._inputs: dict[str, dict[str, str]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._watchers: set[asyncio.Task[None]] = set()
        self._state = "unopened"

    async def __aenter__(self) -> RemoteBackend:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Connect to the broker.

        Raises:
            ConnectError: the broker cannot be reached (one line).
        """
        await self.store.open()
        pubsub = self.store.pubsub()
        try:
            await pubsub.subscribe(self.store.events_channel(self.id))
        except (RedisError, OSError) as exc:
            raise broker_error(self.url, exc) from exc
        self._reader = asyncio.create_task(self._read(pubsub), name="dreamgen-remote-reader")
        self._state = "opened"

    async def aclose(self, *, detach: bool = False) -> None:
        """Close; jobs still running are cancelled on their workers unless ``detach``."""
        if self._state != "opened":
            self._state = "closed"
            return
        self._state = "closed"
        jobs = [job for job in self._jobs.values() if not job.done()]
        if not detach:
            for job in jobs:
                with contextlib.suppress(DreamgenError, RedisError):
                    await self.request_cancel(job.prompt_id)
        for job in jobs:
            job.fail(ClientClosedError("the remote backend was closed"))
        if self._watchers:  # they end with their jobs
            await asyncio.wait(list(self._watchers))
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.wait([self._reader])
        await self.broker.shutdown()
        await self.store.aclose()

    def _check_open(self) -> None:
        if self._state != "opened":
            raise ClientClosedError(f"the remote backend is {self._state}")

    # ------------------------------------------------------------------ jobs

    async def submit(
        self,
        workflow: Mapping[str, Any],
        *,
        on_progress: ProgressCallback | None = None,
        prompt_id: str | None = None,
        **_: Any,
    ) -> RemoteJob:
        """Write the job's record, then send it to the workers; its :class:`RemoteJob`.

        With ``batch=`` set, the prompt_id is derived from the batch and the workflow (so a
        rerun finds the records of the earlier run: done jobs are collected, not run again).
        """
        self._check_open()
        if self.batch is not None:
            prompt_id = job_id(self.batch, workflow)
        prompt_id = prompt_id or str(uuid.uuid4())
        job = self._jobs.get(prompt_id)
        if job is not None and not job.done():  # the same job twice at once: one run
            return job
        job = RemoteJob(self, prompt_id, workflow, on_progress)
        self._jobs[prompt_id] = job
        reply = self.store.events_channel(self.id)
        message = {
            "prompt_id": prompt_id,
            "workflow": dict(workflow),
            "inputs": _inputs_of(workflow, self._inputs),
        }
        try:
            step = on_submit(await self.store.get(prompt_id))
            if step == "create":
                await self.store.create(JobRecord(prompt_id, reply=reply, created=time.time()))
            elif step == "retry":
                await self.store.update(
                    prompt_id, state="pending", cancel=False, error=None, worker=None, reply=reply
                )
            else:
                await self.store.update(prompt_id, reply=reply)
            if step != "collect":
                await self._kicker.kiq(message)
        except (RedisError, OSError) as exc:
            self._jobs.pop(prompt_id, None)
            raise broker_error(self.url, exc) from exc
        watcher = asyncio.create_task(self._watch(job), name="dreamgen-remote-watch")
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return job

    async def _watch(self, job: RemoteJob) -> None:
        """Settle ``job`` from its record when it ends; fail it if no worker ever takes it."""
        deadline = time.monotonic() + self.pickup_timeout
        try:
            while not job.done():
                record = await self.store.get(job.prompt_id)
                if record is not None and record.settled:
                    job.settle(record)
                    break
                if record is not None and record.worker is not None:
                    job.state = "running"
                elif time.monotonic() > deadline and await self.store.workers() == 0:
                    job.fail(
                        NoWorkerError(
                            f"no worker took job {job.prompt_id} within {self.pickup_timeout} s: "
                            f"is `dreamgen worker --broker {self.url}` running?"
                        )
                    )
                    break
                # The channel's "settled" message wakes it; reading the record is the fallback.
                await job.wait(1.0 if job.state == "queued" else 5.0)
        except (RedisError, OSError) as exc:
            job.fail(broker_error(self.url, exc))
        finally:
            if job.done():
                self._jobs.pop(job.prompt_id, None)

    async def _read(self, pubsub: Any) -> None:
        try:
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                data = json.loads(message["data"])
                job = self._jobs.get(str(data.get("prompt_id")))
                if job is None:
                    continue
                if data.get("type") == "settled":
                    record = await self.store.get(job.prompt_id)
                    if record is not None and record.settled:
                        job.settle(record)
                    continue
                event = decode_event(data, job.prompt_id)
                if event is not None:
                    job.state = "running"
                    job.deliver(event)
        finally:
            await pubsub.aclose()

    async def request_cancel(self, prompt_id: str) -> None:
        """Ask the worker holding the job to cancel it (and any worker not to start it).

        Raises:
            ConnectError: the broker cannot be reached.
        """
        try:
            await self._request_cancel(prompt_id)
        except (RedisError, OSError) as exc:
            raise broker_error(self.url, exc) from exc

    async def _request_cancel(self, prompt_id: str) -> None:
        record = await self.store.get(prompt_id)
        if record is None or record.settled:
            return
        await self.store.update(prompt_id, cancel=True)
        await self.store.publish(self.store.cancel_channel, prompt_id)
        fresh = await self.store.get(prompt_id)
        if fresh is not None and fresh.worker is None:  # never taken: nobody else settles it
            settled = await self.store.update(prompt_id, state="cancelled")
            job = self._jobs.get(prompt_id)
            if job is not None:
                job.settle(settled)

    # ------------------------------------------------------------------ files

    async def upload_image(
        self,
        image: ImageSource,
        *,
        name: str | None = None,
        subfolder: str = "",
        type: str = "input",
        overwrite: bool = False,
    ) -> UploadedImage:
        """Put the image in the broker once per content; the worker uploads it to the
        server the job lands on. Use the returned ``reference`` in LoadImage."""
        self._check_open()
        data, name = await read_image_source(image, name)
        digest = await self.store.put_blob(data)
        uploaded = UploadedImage(name=name, subfolder=subfolder, type=type)
        self._inputs[uploaded.reference] = {"digest": digest, "name": name, "subfolder": subfolder}
        return uploaded

    async def get_outputs(
        self, result: PromptResult | str, *, previews: bool = True
    ) -> list[OutputData]:
        """The outputs the worker collected for a finished job (from the broker's blobs)."""
        prompt_id = result if isinstance(result, str) else result.prompt_id
        record = await self.store.get(prompt_id)
        if record is None:
            raise DreamgenError(f"no record of job {prompt_id} on the broker")
        return [
            OutputData(stored.output_file(), await self.store.get_blob(stored.digest))
            for stored in record.outputs
        ]


def job_id(batch: str, workflow: Mapping[str, Any]) -> str:
    """The prompt_id of ``workflow`` in ``batch``: the same in every run of the batch."""
    canonical = json.dumps(workflow, sort_keys=True, separators=(",", ":"))
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"dreamgen:{batch}\n{canonical}"))


def _inputs_of(
    workflow: Mapping[str, Any], known: Mapping[str, dict[str, str]]
) -> dict[str, dict[str, str]]:
    """The uploaded inputs ``workflow`` names (by their reference)."""
    used: dict[str, dict[str, str]] = {}
    for node in workflow.values():
        if not isinstance(node, Mapping):
            continue
        for value in (node.get("inputs") or {}).values():
            if isinstance(value, str) and value in known:
                used[value] = known[value]
    return used
