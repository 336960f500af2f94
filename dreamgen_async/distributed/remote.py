"""RemoteBackend: the producer's side — jobs go to ``dreamgen worker`` processes via taskiq.

It is a full :class:`~dreamgen_async.Backend` (what a client and a pool are), so switching a
service to workers is one constructor::

    async with RemoteBackend("redis://127.0.0.1:6379/0") as backend:
        gen = DreamGenerator(backend, output_dir="out")
        result = await gen.generate_from_prompt("a lighthouse")

The job's record is written (``pending``) before its message is sent; the prompt_id is chosen
here. Inputs go to Redis once per content (a blob named by its SHA-256); outputs come back as
blobs. Events and the settling of each job come back on this producer's channel.

How each part of the Backend is answered:

- ``object_info``, ``object_info_by_server``, ``models``, ``status``: from what the live
  workers publish with their heartbeat (each server's ``/object_info``, read again when a
  server joins, and each server's status); a server several workers share is one entry.
- ``submit(before_post=)``: the worker's pool calls it right before each POST (again on
  failover): the worker writes the server and client_id to the record, sends the call to
  this producer, which awaits ``before_post`` here and answers; the POST waits for the
  answer (a producer that does not answer within 30 s is taken for dead: the record names
  the server, the POST goes ahead). If ``before_post`` raises, the job fails, unposted.
- ``adopt``: a prompt this broker has a record of is followed from that record (a job whose
  worker died is sent again, to be adopted, never run). Another prompt gets a record naming
  ``server`` and ``client_id`` and goes to a worker that only adopts it: the worker asks
  ``server`` first, then its other servers; when none has it, ``adopt`` returns ``None``.
- ``download``, ``get_outputs``, ``get_output_images``: from the blobs the worker stored
  (a ref is known once the job that made it has ended here).
- ``client_id``: ``None``: each worker's pool posts under its own; the record of each job
  names the one it was posted under.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from redis.exceptions import RedisError
from taskiq.kicker import AsyncKicker

from dreamgen_async.backend import BeforePost, ServerStatus, merge_object_info
from dreamgen_async.comfyui_api import (
    ImageSource,
    UploadedImage,
    collect_output_images,
    read_image_source,
)
from dreamgen_async.distributed.broker import TASK_NAME, make_broker
from dreamgen_async.distributed.records import (
    ABSENT,
    JobRecord,
    NoWorkerError,
    RemoteJobError,
    decode_event,
    on_submit,
    rebuild_error,
)
from dreamgen_async.distributed.store import RedisJobStore, broker_error
from dreamgen_async.errors import ClientClosedError, ConnectError, DreamgenError
from dreamgen_async.handles import JobHandle, ProgressCallback
from dreamgen_async.jobs import OutputImage, PromptResult, check_limits
from dreamgen_async.protocol import ImageRef, OutputData
from dreamgen_async.workflows.builder import ServerModels

__all__ = ["RemoteBackend", "RemoteJob"]

log = logging.getLogger("dreamgen_async.distributed")

_FILES = 4096  # output refs remembered for download()


class RemoteJob(JobHandle[PromptResult]):
    """One job sent to the workers: await :meth:`result`, follow :meth:`events`, cancel."""

    __slots__ = (
        "_backend",
        "_future",
        "before_post",
        "prompt_id",
        "server",
        "state",
        "workflow",
    )

    def __init__(
        self,
        backend: RemoteBackend,
        prompt_id: str,
        workflow: Mapping[str, Any],
        on_progress: ProgressCallback | None,
        before_post: BeforePost | None = None,
    ) -> None:
        super().__init__()
        self.prompt_id = prompt_id
        self.workflow = workflow
        self.before_post = before_post
        #: The server the record names (known before the POST, and when the job has ended).
        self.server: str | None = None
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

    def error(self) -> BaseException | None:
        """The job's error, once it failed (``None`` otherwise)."""
        if not self._future.done() or self._future.cancelled():
            return None
        return self._future.exception()

    def settle(self, record: JobRecord) -> None:
        """The record says the job ended: resolve it (the backend's reader calls this)."""
        if self._future.done():
            return
        self.server = record.server or self.server
        if record.state == "done":
            self.state = "done"
            self._future.set_result(result_of(record))
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
        self._files: OrderedDict[tuple[str, str, str], str] = OrderedDict()  # ref -> digest
        self._state = "unopened"

    @property
    def client_id(self) -> str | None:
        """``None``: each worker's pool posts under its own ``client_id`` (the job's record
        names the one its prompt was posted under)."""
        return None

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
        priority: int = 0,
        front: bool = False,
        extra_data: Mapping[str, Any] | None = None,
        on_progress: ProgressCallback | None = None,
        prompt_id: str | None = None,
        before_post: BeforePost | None = None,
        max_run_time: float | None = None,
        queue_timeout: float | None = None,
    ) -> RemoteJob:
        """Write the job's record, then send it to the workers; its :class:`RemoteJob`.

        ``priority``, ``front`` and ``extra_data`` go to the worker's pool (its order among
        that worker's jobs), and so do ``max_run_time`` and ``queue_timeout`` (the queue
        limit counts from the worker's pickup). ``before_post(server, client_id)`` is awaited
        here before each POST the worker makes (see the module docstring).

        With ``batch=`` set, the prompt_id is derived from the batch and the workflow (so a
        rerun finds the records of the earlier run: done jobs are collected, not run again).
        """
        self._check_open()
        check_limits(max_run_time, queue_timeout)
        if self.batch is not None:
            prompt_id = job_id(self.batch, workflow)
        prompt_id = prompt_id or str(uuid.uuid4())
        job = self._jobs.get(prompt_id)
        if job is not None and not job.done():  # the same job twice at once: one run
            return job
        job = RemoteJob(self, prompt_id, workflow, on_progress, before_post)
        self._jobs[prompt_id] = job
        reply = self.store.events_channel(self.id)
        message = {
            "prompt_id": prompt_id,
            "workflow": dict(workflow),
            "inputs": _inputs_of(workflow, self._inputs),
            "priority": priority,
            "front": front,
            "extra_data": None if extra_data is None else dict(extra_data),
            "before_post": before_post is not None,
            "max_run_time": max_run_time,
            "queue_timeout": queue_timeout,
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
        self._follow(job)
        return job

    def _follow(self, job: RemoteJob) -> None:
        watcher = asyncio.create_task(self._watch(job), name="dreamgen-remote-watch")
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def adopt(
        self,
        prompt_id: str,
        *,
        server: str | None = None,
        client_id: str | None = None,
        workflow: Mapping[str, Any] | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> RemoteJob | None:
        """Take charge of a prompt posted earlier: its job, or ``None`` when no server of the
        workers' has it.

        A prompt with a record on this broker (a job of this or an earlier producer) is
        followed from its record; when the worker holding it died before it ended, it is
        sent again to be adopted (a worker asks the server the record names), never run.
        Any other prompt gets a record naming ``server`` and ``client_id`` and is sent to a
        worker that asks ``server`` first, then its other servers.

        Raises:
            ConnectError: ``server`` is none of the live workers' servers, or the broker
                cannot be reached.
        """
        self._check_open()
        job = self._jobs.get(prompt_id)
        if job is not None:
            return job
        job = RemoteJob(self, prompt_id, workflow or {}, on_progress)
        try:
            await self._send_adoption(job, server, client_id)
        except (RedisError, OSError) as exc:
            raise broker_error(self.url, exc) from exc
        self._jobs[prompt_id] = job
        self._follow(job)
        # Until a worker found the prompt on a server (or the job ended): None if absent.
        record: JobRecord | None = None
        while not job.done():
            record = await self.store.get(prompt_id)
            if record is None or record.settled or record.extra.get("adopted"):
                break
            await job.wait(0.2)
        if record is not None and record.settled:
            job.settle(record)
        error = job.error()
        if isinstance(error, RemoteJobError) and error.error_type == ABSENT:
            return None
        return job

    async def _send_adoption(
        self, job: RemoteJob, server: str | None, client_id: str | None
    ) -> None:
        """Write or reuse the record of a prompt to adopt, and send it to a worker unless a
        live one holds it (a record an earlier adoption found absent is asked again)."""
        reply = self.store.events_channel(self.id)
        message: dict[str, Any] = {"prompt_id": job.prompt_id, "inputs": {}, "adopt": True}
        record = await self.store.get(job.prompt_id)
        if record is None:
            if server is not None and server not in await self._servers():
                raise ConnectError(f"{server} is none of the live workers' servers")
            fresh = JobRecord(
                job.prompt_id,
                state="posted",
                server=server,
                client_id=client_id,
                reply=reply,
                created=time.time(),
            )
            await self.store.create(fresh)
            await self._kicker.kiq(message)
            return
        if record.settled and (record.error or {}).get("type") == ABSENT:
            await self.store.update(
                job.prompt_id,
                state="posted",
                error=None,
                worker=None,
                reply=reply,
                server=server or record.server,
                client_id=client_id or record.client_id,
            )
            await self._kicker.kiq(message)
            return
        await self.store.update(job.prompt_id, reply=reply)
        holder = record.worker
        if not record.settled and (holder is None or not await self.store.worker_alive(holder)):
            await self._kicker.kiq(message)

    async def _watch(self, job: RemoteJob) -> None:
        """Settle ``job`` from its record when it ends; fail it if no worker ever takes it."""
        deadline = time.monotonic() + self.pickup_timeout
        try:
            while not job.done():
                record = await self.store.get(job.prompt_id)
                if record is not None and record.settled:
                    self._remember(record)
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
                        self._remember(record)
                        job.settle(record)
                    continue
                if data.get("type") == "before_post":
                    self._call_before_post(job, str(data["server"]), str(data["client_id"]))
                    continue
                event = decode_event(data, job.prompt_id)
                if event is not None:
                    job.state = "running"
                    job.deliver(event)
        finally:
            await pubsub.aclose()

    def _call_before_post(self, job: RemoteJob, server: str, client_id: str) -> None:
        """A worker is about to POST ``job`` to ``server``: await the job's ``before_post``
        here, then answer the worker (which waits for the answer before it posts)."""

        async def call() -> None:
            job.server = server
            answer: dict[str, Any] = {"prompt_id": job.prompt_id, "ok": True}
            try:
                if job.before_post is not None:
                    await job.before_post(server, client_id)
            except Exception as exc:  # the job must not be posted: it fails with this
                answer = {"prompt_id": job.prompt_id, "ok": False, "error": str(exc)}
                job.fail(exc)
            with contextlib.suppress(RedisError, OSError):  # unanswered: the worker posts
                await self.store.publish(self.store.ack_channel, answer)

        task = asyncio.create_task(call(), name="dreamgen-remote-before-post")
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    def _remember(self, record: JobRecord) -> None:
        """Note the blobs of a finished job's outputs, for :meth:`download`."""
        for stored in record.outputs:
            if stored.filename is None:
                continue
            key = (stored.filename, stored.subfolder, stored.type)
            self._files[key] = stored.digest
            self._files.move_to_end(key)
        while len(self._files) > _FILES:
            self._files.popitem(last=False)

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

    def position(self, prompt_id: str) -> int | None:
        """``None``: a remote job waits in the broker's stream and its worker's pool, where
        the producer cannot see its place."""
        return None

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

    async def _record(self, result: PromptResult | str) -> JobRecord:
        prompt_id = result if isinstance(result, str) else result.prompt_id
        record = await self.store.get(prompt_id)
        if record is None:
            raise DreamgenError(f"no record of job {prompt_id} on the broker")
        self._remember(record)
        return record

    async def get_outputs(
        self, result: PromptResult | str, *, previews: bool = True
    ) -> list[OutputData]:
        """The outputs the worker collected for a finished job (from the broker's blobs).

        The worker stores previews only for a job that saved no file; ``previews=False``
        leaves out temp-folder files.
        """
        record = await self._record(result)
        return [
            OutputData(stored.output_file(), await self.store.get_blob(stored.digest))
            for stored in record.outputs
            if previews or stored.type != "temp"
        ]

    async def get_output_images(self, result: PromptResult | str) -> list[OutputImage]:
        """Every output image of a finished job (saved images first), from the broker's
        blobs, each checked by its magic bytes."""
        record = await self._record(result)
        digests = {(s.filename, s.subfolder, s.type): s.digest for s in record.outputs}

        async def fetch(ref: ImageRef) -> bytes:
            return await self.store.get_blob(digests[(ref.filename, ref.subfolder, ref.type)])

        return await collect_output_images(result_of(record), fetch)

    async def download(self, image: ImageRef) -> bytes:
        """One output file's bytes, from the blob its worker stored (a ref of a job that
        ended on this backend).

        Raises:
            DreamgenError: no job that ended here made this file.
        """
        self._check_open()
        digest = self._files.get((image.filename, image.subfolder, image.type))
        if digest is None:
            raise DreamgenError(f"{image.filename} is no output of a job this backend has seen")
        try:
            return await self.store.get_blob(digest)
        except (RedisError, OSError) as exc:
            raise broker_error(self.url, exc) from exc

    # ------------------------------------------------------------------ capabilities

    async def _caps(self) -> list[dict[str, Any]]:
        """What the live workers published (after waiting up to ``pickup_timeout`` for one).

        Raises:
            NoWorkerError: no worker is alive.
            ConnectError: the broker cannot be reached.
        """
        self._check_open()
        deadline = time.monotonic() + self.pickup_timeout
        try:
            while not (caps := await self.store.caps()):
                if time.monotonic() > deadline:
                    raise NoWorkerError(
                        f"no worker published its servers within {self.pickup_timeout} s: "
                        f"is `dreamgen worker --broker {self.url}` running?"
                    )
                await asyncio.sleep(0.2)
        except (RedisError, OSError) as exc:
            raise broker_error(self.url, exc) from exc
        return sorted(caps, key=lambda c: float(c.get("at", 0.0)))  # the newest last

    async def _servers(self) -> set[str]:
        return {s["url"] for caps in await self._caps() for s in caps.get("status", ())}

    async def object_info_by_server(self) -> dict[str, dict[str, Any]]:
        """Each answering server's ``/object_info``, by URL, as the live workers read it.

        Raises:
            ConnectError: no worker's server answered (or the broker cannot be reached).
            NoWorkerError: no worker is alive.
        """
        digests: dict[str, str] = {}
        for caps in await self._caps():
            digests.update(caps.get("object_info") or {})
        if not digests:
            raise ConnectError("no server of the live workers answers")
        infos: dict[str, dict[str, Any]] = {}
        try:
            for url, digest in sorted(digests.items()):
                infos[url] = json.loads(await self.store.get_blob(digest))
        except (RedisError, OSError) as exc:
            raise broker_error(self.url, exc) from exc
        return infos

    async def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        """The union of the workers' servers' ``/object_info`` (what they as a whole can
        run); with ``node_class``, that class's entry only (``{}``: none has it)."""
        merged = merge_object_info(await self.object_info_by_server())
        if node_class is None:
            return merged
        return {node_class: merged[node_class]} if node_class in merged else {}

    async def models(self) -> ServerModels:
        """The model files the workers' servers as a whole offer."""
        return ServerModels.from_object_info(await self.object_info())

    async def status(self) -> list[ServerStatus]:
        """One status per server of the live workers (a server several workers share: its
        best state, their jobs summed), in URL order."""
        return merge_statuses(
            [ServerStatus(**s) for caps in await self._caps() for s in caps.get("status", ())]
        )


def result_of(record: JobRecord) -> PromptResult:
    """A finished job's :class:`PromptResult`, from its record (pure)."""
    outputs: dict[str, list[ImageRef]] = {}
    for stored in record.outputs:
        if stored.kind == "image" and stored.filename is not None:
            ref = ImageRef(stored.filename, stored.subfolder, stored.type)
            outputs.setdefault(stored.node_id, []).append(ref)
    timings = (*record.timings, None, None, None)
    return PromptResult(
        record.prompt_id,
        {node: tuple(refs) for node, refs in outputs.items()},
        queued_at=timings[0],
        started_at=timings[1],
        finished_at=timings[2],
        files=tuple(stored.output_file() for stored in record.outputs),
    )


_STATES = ("up", "draining", "suspect", "joining", "down", "removed")


def _rank(state: str) -> int:
    return _STATES.index(state) if state in _STATES else len(_STATES)


def merge_statuses(statuses: list[ServerStatus]) -> list[ServerStatus]:
    """One status per URL (pure): the best state any worker saw, the counts summed."""
    by_url: dict[str, ServerStatus] = {}
    for status in statuses:
        old = by_url.get(status.url)
        if old is None:
            by_url[status.url] = status
            continue
        best = status if _rank(status.state) < _rank(old.state) else old
        by_url[status.url] = ServerStatus(
            url=status.url,
            state=best.state,
            in_flight=old.in_flight + status.in_flight,
            queue=best.queue,
            capacity=old.capacity + status.capacity,
            done=old.done + status.done,
            failed=old.failed + status.failed,
            mean_job_time=best.mean_job_time,
            loaded_model=best.loaded_model,
            model_switches=old.model_switches + status.model_switches,
            down_since=best.down_since,
            error=best.error,
        )
    return [by_url[url] for url in sorted(by_url)]


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
