"""DreamGenerator: the facade — upload, queue, wait, download, write.

Most users only need this module::

    async with DreamGenerator("http://127.0.0.1:8188", output_dir="out") as gen:
        result = await gen.generate_from_image("cat.png", "an oil painting", denoise=0.6)
        print(result.path, result.seed)

Inputs are checked before any network call and uploaded under content-hash names (no
re-upload, no collision between concurrent jobs). Outputs are written atomically (temporary
file, then rename) under names *we* choose — never a server-supplied path.

The facade is a shell around decisions made elsewhere: :mod:`~dreamgen_async.requests` (what
a request is, and its journal record), :mod:`~dreamgen_async.plan` (what to do with a request
the journal or the cache knows), :mod:`~dreamgen_async.files` (input checks, output names,
atomic writes) and :mod:`~dreamgen_async.batch` (the workers behind the batch forms). Their
public names are importable from here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import (
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeAlias

from dreamgen_async.backend import Backend, BackendJob
from dreamgen_async.batch import Batch, BatchProgress, BatchRunner, Outcome
from dreamgen_async.cache import CacheEntry, ResultCache, request_key
from dreamgen_async.comfyui_api import ComfyUIClient
from dreamgen_async.errors import (
    ClientClosedError,
    ConfigError,
    DreamgenError,
    ExecutionError,
    ExecutionInterrupted,
    JournalError,
    NodeError,
    PromptTimeout,
    TransportError,
    WorkflowError,
)
from dreamgen_async.files import (
    UPLOAD_SUBFOLDER,
    InputLimits,
    copy_atomically,
    fit_within,
    node_labels,
    output_name,
    output_suffix,
    read_input_hashed,
    read_mask,
    safe_stem,
    sha256,
    sweep_staging,
    write_outputs,
)
from dreamgen_async.handles import JobHandle, Waiters, within
from dreamgen_async.jobs import ProgressCallback, PromptResult, check_limits
from dreamgen_async.journal import BatchJournal, JournalItem
from dreamgen_async.plan import (
    Adopt,
    FromCache,
    Plan,
    Record,
    Skip,
    decide,
    must_check_files,
    needs_cache_entry,
)
from dreamgen_async.protocol import Event
from dreamgen_async.requests import (
    ControlNetInput,
    GenerationResult,
    ImageInput,
    Img2ImgRequest,
    InpaintRequest,
    JobFailure,
    Request,
    Timings,
    Txt2ImgRequest,
    UpscaleRequest,
    WorkflowRequest,
    builder_from_spec,
    builder_spec,
    cached_timings,
    describe_input,
    first_seed,
    is_deterministic,
    randomized_inputs,
    request_from_spec,
    request_spec,
    tag_key,
)
from dreamgen_async.storage import check_writable
from dreamgen_async.workflow_builder import (
    BuiltWorkflow,
    FluxWorkflowBuilder,
    Workflow,
    as_api_graph,
    random_seed,
)
from dreamgen_async.workflows.masks import alpha_mask
from dreamgen_async.workflows.recipes import LoraSpec

__all__ = [
    "Batch",
    "BatchProgress",
    "ControlNetInput",
    "DreamGenerator",
    "GenerationJob",
    "GenerationJobState",
    "GenerationResult",
    "ImageInput",
    "Img2ImgRequest",
    "InpaintRequest",
    "JobFailure",
    "Request",
    "Timings",
    "Txt2ImgRequest",
    "UpscaleRequest",
    "WorkflowRequest",
    "builder_from_spec",
    "builder_spec",
    "fit_within",
    "output_name",
    "output_suffix",
    "request_from_spec",
    "request_spec",
    "safe_stem",
    "tag_key",
]

log = logging.getLogger("dreamgen_async")

#: Told which backend job runs a request once it exists (and the server it went to, if known).
OnJob: TypeAlias = Callable[[BackendJob, str | None], object]
Locate: TypeAlias = Callable[[], int | None]


#: An input to upload: ``(data, sha256 hex digest, suffix, the name LoadImage expects)``.
_Upload: TypeAlias = tuple[bytes, str, str, str]
#: What a request kind builds: ``(workflow, seed, file-name stem, input to upload or None)``.
_Built: TypeAlias = tuple[dict[str, Any], int | None, str, _Upload | None]


@dataclass(frozen=True, slots=True)
class _Limits:
    """A caller's per-job limits (see :meth:`DreamGenerator.generate`)."""

    max_run_time: float | None = None
    queue_timeout: float | None = None

    @classmethod
    def of(cls, max_run_time: float | None, queue_timeout: float | None) -> _Limits:
        """Checked at the call (a bad value is a ``ConfigError`` before any I/O)."""
        check_limits(max_run_time, queue_timeout)
        return cls(max_run_time, queue_timeout)


_NO_LIMITS = _Limits()


@dataclass(slots=True)
class _Prepared:
    """A request turned into what runs it: its workflow, seed, key and file-name stem."""

    request: Request
    workflow: dict[str, Any]
    seed: int | None
    explicit_seed: bool
    key: str
    deterministic: bool
    stem: str
    upload: _Upload | None
    more_uploads: tuple[_Upload, ...] = ()  # other local inputs: a mask, a control image...
    priority: int = 0  # the caller's, for the client's queue (not part of the request)
    limits: _Limits = _NO_LIMITS  # the caller's, too


@dataclass(frozen=True, slots=True)
class _Fetched:
    """Images obtained from the server for one request, with the run's timings."""

    prompt_id: str | None
    images: list[tuple[str, bytes]]
    timings: tuple[float | None, ...]
    seed: int | None = None  # the seed of a prompt an earlier run posted
    node_errors: tuple[NodeError, ...] = ()
    server: str | None = None  # where it ran
    resubmitted: bool = False  # an earlier post of it may also have run
    nodes: tuple[str, ...] = ()  # the node that made each image


@dataclass(frozen=True, slots=True, eq=False)
class _Watch:
    """Who follows one request: its progress events, and the backend job that runs it."""

    on_progress: ProgressCallback | None = None
    on_job: OnJob | None = None
    # Told, before the prompt is submitted, how to ask its place in the client-side queue.
    on_waiting: Callable[[Locate], object] | None = None

    def progress(self) -> ProgressCallback | None:
        return self.on_progress

    def bound(self, job: BackendJob, server: str | None) -> None:
        if self.on_job is not None:
            self.on_job(job, server)

    def waiting(self, locate: Locate) -> None:
        if self.on_waiting is not None:
            self.on_waiting(locate)


class _Follower(Protocol):
    """Who follows a run: one caller's :class:`_Watch`, or the callers of a shared run."""

    def progress(self) -> ProgressCallback | None:
        """What the run's job reports its progress to (asked when it is submitted)."""

    def bound(self, job: BackendJob, server: str | None) -> None:
        """The run's backend job is known (submitted)."""

    def waiting(self, locate: Locate) -> None:
        """Before the job is submitted: how to ask its place in the client-side queue."""


# ---------------------------------------------------------------------------- handles

GenerationJobState = Literal[
    "waiting", "posting", "queued", "running", "done", "failed", "cancelled"
]

#: A running request's state from its backend job's (client job or pool job) state; the
#: states not listed (running, settling, removing, interrupting; a finished backend job
#: while its files are written) read ``running``.
_BACKEND_STATE: Mapping[str, GenerationJobState] = {
    "waiting": "waiting",
    "posting": "posting",
    "cancel-while-posting": "posting",
    "queued": "queued",
}


def running_state(backend_state: str) -> GenerationJobState:
    """What a :class:`GenerationJob` whose backend job is in ``backend_state`` says."""
    return _BACKEND_STATE.get(backend_state, "running")


def is_posted(backend_state: str) -> bool:
    """Whether a backend job in ``backend_state`` has its prompt on a server."""
    return running_state(backend_state) not in ("waiting", "posting")


class GenerationJob(JobHandle[GenerationResult]):
    """One request running in the background (from :meth:`DreamGenerator.submit`).

    Await :meth:`result`, follow :meth:`events`, or ``await`` :meth:`cancel`. It follows the
    waiter rule of every job handle (see :mod:`dreamgen_async.handles`): a caller's timeout
    or cancellation ends only its own wait, and when the last waiter leaves the job is
    cancelled; :meth:`cancel` cancels it for everyone. A cancelled job's prompt leaves the
    server and no file is left.
    """

    def __init__(
        self,
        run: Callable[[_Watch], Coroutine[Any, Any, GenerationResult]],
        request: Request,
    ) -> None:
        super().__init__()
        self.request = request
        self._on_progress: ProgressCallback | None = None
        self._subscribers = None
        self._backlog = None
        self._job: BackendJob | None = None
        self._server: str | None = None
        self._locate: Locate | None = None
        self._future: asyncio.Task[GenerationResult] = asyncio.create_task(
            run(_Watch(self.deliver, self._bind, self._waiting)), name="dreamgen-generation"
        )
        self._future.add_done_callback(self._finished)

    def __repr__(self) -> str:
        return f"<GenerationJob {self.state}>"

    def _bind(self, job: BackendJob, server: str | None) -> None:
        self._job, self._server = job, server

    def _waiting(self, locate: Locate) -> None:
        self._locate = locate

    def _finished(self, task: asyncio.Task[GenerationResult]) -> None:
        if not task.cancelled():
            task.exception()  # retrieved here; result() still raises it
        self._close_events()

    @property
    def label(self) -> str:
        return f"request {self.request!r:.60}"

    @property
    def prompt_id(self) -> str | None:  # type: ignore[override]
        """The server's prompt id once the prompt is posted, else ``None``."""
        job = self._job
        if job is None or (not job.done() and not is_posted(str(job.state))):
            return None
        return job.prompt_id

    @property
    def state(self) -> GenerationJobState:
        """``waiting`` (checking inputs, uploading, waiting for a slot), ``posting``,
        ``queued``, ``running`` (also while its files are written), then ``done``,
        ``failed`` or ``cancelled``."""
        if self._future.done():
            if self._future.cancelled():
                return "cancelled"
            return "failed" if self._future.exception() is not None else "done"
        if self._job is None:
            return "waiting"
        return running_state(str(self._job.state))

    @property
    def position(self) -> int | None:
        """Its place in the client-side queue of its client or pool (1: the next to be
        posted), so a bot can say "you are 3rd"; ``None`` before its prompt is submitted
        (inputs being checked or uploaded), once posted, and once ended."""
        if self._future.done():
            return None
        job = self._job
        if job is not None:
            return None if job.done() else job.position
        return self._locate() if self._locate is not None else None

    @property
    def server(self) -> str | None:
        """The server that runs (or ran) the prompt, once it is known."""
        placed = getattr(self._job, "server", None)
        return placed if isinstance(placed, str) else self._server

    @property
    def resubmitted(self) -> bool:
        """Whether the prompt was posted again (the server lost it, or another server took it)."""
        return self._job is not None and self._job.resubmitted

    async def abandon(self, reason: BaseException) -> None:
        await self.cancel()

    async def cancel(self) -> None:
        """Cancel the job for every waiter: its prompt leaves the server, no file is left.

        Idempotent; returns once the job has ended (cancelled, or finished first).
        """
        self._future.cancel()
        await asyncio.wait([self._future])


# ---------------------------------------------------------------------------- generator


class DreamGenerator:
    """Generate images with a ComfyUI server and write them to ``output_dir``.

    Args:
        client: A :class:`~dreamgen_async.backend.Backend` (a :class:`ComfyUIClient` or a
            :class:`ComfyUIPool`, which you open and close) or a server URL (the generator
            then owns the client, opened on enter and closed on exit).
        output_dir: Where images are written (created if missing).
        builder: The workflow builder (flux1-schnell defaults when omitted).
        cache: A :class:`ResultCache` or a folder for one; deterministic requests (an
            explicit seed) are then answered from disk when seen before.
        input_dir: A local ComfyUI ``input`` folder: inputs are copied there instead of
            uploaded (for a server on the same machine).
        max_input_bytes: Largest input file accepted.
        max_input_pixels: Largest input image (width × height) accepted.
        **client_options: Passed to :class:`ComfyUIClient` when ``client`` is a URL.
    """

    def __init__(
        self,
        client: Backend | str = "http://127.0.0.1:8188",
        *,
        output_dir: str | os.PathLike[str] = "dreamgen-output",
        builder: FluxWorkflowBuilder | None = None,
        cache: ResultCache | str | os.PathLike[str] | None = None,
        input_dir: str | os.PathLike[str] | None = None,
        max_input_bytes: int = 50 * 1024 * 1024,
        max_input_pixels: int = 64 * 1024 * 1024,
        **client_options: Any,
    ) -> None:
        self._owns_client = isinstance(client, str)
        self._entered = False
        self.client: Backend = (
            ComfyUIClient(client, **client_options) if isinstance(client, str) else client
        )
        self.output_dir = Path(output_dir)
        self.builder = builder or FluxWorkflowBuilder()
        self.cache = (
            cache if isinstance(cache, ResultCache) or cache is None else ResultCache(cache)
        )
        self.input_dir = Path(input_dir) if input_dir is not None else None
        self.max_input_bytes = max_input_bytes
        self.max_input_pixels = max_input_pixels
        self._uploads: OrderedDict[str, asyncio.Future[str]] = OrderedDict()
        self._inflight: dict[str, _SharedRun] = {}
        self._output_checked = False

    async def __aenter__(self) -> DreamGenerator:
        if self._owns_client:
            await self.client.open()
        self._entered = True
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self, *, detach: bool = False) -> None:
        """Close the client if this generator created it. Idempotent.

        Jobs still running fail with ``ClientClosedError`` and their prompts are taken off the
        server, unless ``detach=True``: then they stay queued there, and a later run of the
        same journaled batch collects them instead of running them again (a batch stopped on
        purpose).
        """
        if self._owns_client:
            await self.client.aclose(detach=detach)

    def _check_entered(self) -> None:
        if self._owns_client and not self._entered:
            raise ClientClosedError(
                "the generator is not open: use `async with DreamGenerator(...) as gen:` "
                "(or `await gen.__aenter__()`)"
            )

    # ------------------------------------------------------------------ single jobs

    async def generate_from_prompt(
        self,
        prompt: str,
        *,
        negative: str = "",
        seed: int | None = None,
        width: int | None = None,
        height: int | None = None,
        steps: int | None = None,
        cfg: float | None = None,
        name: str | None = None,
        loras: Sequence[LoraSpec] = (),
        controlnet: ControlNetInput | None = None,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        priority: int = 0,
        max_run_time: float | None = None,
        queue_timeout: float | None = None,
    ) -> GenerationResult:
        """Text to image. Cancelling it takes the prompt off the server; no file is left.

        ``loras`` (``(name, strength)`` pairs or names) are chained after the builder's own;
        ``controlnet`` applies a :class:`ControlNetInput` (its image uploaded first).

        Raises:
            WorkflowError: an argument is invalid (before any network call).
            PromptRejected, ExecutionError, PromptTimeout, ...: see ComfyUIClient.
        """
        request = Txt2ImgRequest(
            prompt, negative, seed, width, height, steps, cfg, name, tuple(loras), controlnet
        )
        return await self.generate(
            request,
            timeout=timeout,
            on_progress=on_progress,
            priority=priority,
            max_run_time=max_run_time,
            queue_timeout=queue_timeout,
        )

    async def generate_from_image(
        self,
        image: ImageInput,
        prompt: str,
        denoise: float = 0.75,
        *,
        negative: str = "",
        seed: int | None = None,
        steps: int | None = None,
        cfg: float | None = None,
        name: str | None = None,
        max_side: int | None = None,
        loras: Sequence[LoraSpec] = (),
        controlnet: ControlNetInput | None = None,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        priority: int = 0,
        max_run_time: float | None = None,
        queue_timeout: float | None = None,
    ) -> GenerationResult:
        """Image to image; ``image`` is a path, bytes or a PIL image.

        ``max_side`` downscales a larger input first (aspect kept; see
        :class:`Img2ImgRequest`); ``loras`` and ``controlnet`` as for
        :meth:`generate_from_prompt`. Cancelling it takes the prompt off the server; no file
        is left.

        Raises:
            InputImageError: the image is missing, empty, not an image or too large
                (before any network call); ``.source`` names it.
            WorkflowError: an argument is invalid (before any network call).
        """
        request = Img2ImgRequest(
            image, prompt, denoise, negative, seed, steps, cfg, name, max_side, tuple(loras),
            controlnet,
        )  # fmt: skip
        return await self.generate(
            request,
            timeout=timeout,
            on_progress=on_progress,
            priority=priority,
            max_run_time=max_run_time,
            queue_timeout=queue_timeout,
        )

    async def generate_inpaint(
        self,
        image: ImageInput,
        mask: ImageInput | None,
        prompt: str,
        *,
        denoise: float = 1.0,
        negative: str = "",
        seed: int | None = None,
        steps: int | None = None,
        cfg: float | None = None,
        grow_mask: int = 0,
        feather: int = 0,
        pad: tuple[int, int, int, int] | None = None,
        name: str | None = None,
        max_side: int | None = None,
        loras: Sequence[LoraSpec] = (),
        controlnet: ControlNetInput | None = None,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        priority: int = 0,
        max_run_time: float | None = None,
        queue_timeout: float | None = None,
    ) -> GenerationResult:
        """Repaint the masked part of ``image``; every pixel outside the mask is the input's.

        ``mask`` is a mask file (path, bytes or PIL image: white = repaint, black = keep;
        any size, resized to the image's, with a ``MaskAspectWarning`` when its shape
        differs), or ``None`` to use the image's own alpha (transparent = repaint). With
        ``pad=(left, top, right, bottom)`` the canvas is extended and the new border
        painted instead (outpainting; no mask). See :class:`InpaintRequest`.

        Raises:
            MaskError: the mask is not an image, or masks nothing (before any network call).
            InputImageError: the image cannot be used (before any network call).
            WorkflowError: an argument is invalid, or a LoRA / ControlNet model the server
                lacks (the message lists what it has).
        """
        request = InpaintRequest(
            image, mask, prompt, denoise, negative, seed, steps, cfg, name, max_side,
            grow_mask, feather, pad, tuple(loras), controlnet,
        )  # fmt: skip
        return await self.generate(
            request,
            timeout=timeout,
            on_progress=on_progress,
            priority=priority,
            max_run_time=max_run_time,
            queue_timeout=queue_timeout,
        )

    async def generate_upscale(
        self,
        image: ImageInput,
        *,
        model: str | None = None,
        name: str | None = None,
        max_side: int | None = None,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        priority: int = 0,
        max_run_time: float | None = None,
        queue_timeout: float | None = None,
    ) -> GenerationResult:
        """Upscale ``image`` with an upscale model (the server's ``upscale_models``; by
        default the first the builder knows of). See :class:`UpscaleRequest`."""
        request = UpscaleRequest(image, model, name, max_side)
        return await self.generate(
            request,
            timeout=timeout,
            on_progress=on_progress,
            priority=priority,
            max_run_time=max_run_time,
            queue_timeout=queue_timeout,
        )

    async def run_workflow(
        self,
        workflow: Workflow | BuiltWorkflow | Mapping[str, Any],
        *,
        name: str | None = None,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        priority: int = 0,
        max_run_time: float | None = None,
        queue_timeout: float | None = None,
    ) -> GenerationResult:
        """Run a user's API-format workflow and write its output images."""
        request = WorkflowRequest(workflow, name)
        return await self.generate(
            request,
            timeout=timeout,
            on_progress=on_progress,
            priority=priority,
            max_run_time=max_run_time,
            queue_timeout=queue_timeout,
        )

    def submit(
        self,
        request: Request,
        *,
        timeout: float | None = None,
        priority: int = 0,
        max_run_time: float | None = None,
        queue_timeout: float | None = None,
    ) -> GenerationJob:
        """Start one request in the background; follow it with ``events()``.

        ``timeout`` applies to the job itself (as for :meth:`generate`); ``result(timeout=)``
        bounds one caller's wait. ``priority``, ``max_run_time`` and ``queue_timeout``: as
        for :meth:`generate`.
        """
        limits = _Limits.of(max_run_time, queue_timeout)
        return GenerationJob(
            lambda watch: self._generate(request, timeout, watch, priority, limits), request
        )

    def start_batch(
        self,
        requests: Iterable[Request],
        *,
        concurrency: int = 8,
        journal: str | os.PathLike[str] | None = None,
        priority: int = 0,
        max_run_time: float | None = None,
        queue_timeout: float | None = None,
    ) -> Batch:
        """Start a batch in the background; follow it with ``progress()``.

        ``journal=``, ``priority=`` and the limits: as for :meth:`as_completed`.
        """
        return Batch(
            lambda report: self.generate_many(
                requests,
                concurrency=concurrency,
                on_batch_progress=report,
                journal=journal,
                priority=priority,
                max_run_time=max_run_time,
                queue_timeout=queue_timeout,
            )
        )

    async def generate(
        self,
        request: Request,
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        priority: int = 0,
        max_run_time: float | None = None,
        queue_timeout: float | None = None,
    ) -> GenerationResult:
        """Run one request of any kind (what the batch forms call).

        ``priority`` orders the job among this generator's jobs waiting for a slot on the
        server (higher first, first come first served within a priority), as the client's
        and the pool's ``submit(priority=)`` do: an interactive request with a higher
        priority overtakes a running batch's queued jobs.

        ``timeout`` bounds the whole job, waiting included. Per-job limits (``None``: none):
        ``max_run_time`` seconds of execution on the server, counted from its
        ``execution_start`` (then it is interrupted there), and ``queue_timeout`` seconds of
        waiting before it starts, for a slot client-side and in the server's queue (then it
        is taken off the queue). Each fails the job with ``PromptTimeout`` naming the limit.
        """
        limits = _Limits.of(max_run_time, queue_timeout)
        return await self._generate(request, timeout, _Watch(on_progress), priority, limits)

    async def _generate(
        self,
        request: Request,
        timeout: float | None,
        watch: _Watch,
        priority: int = 0,
        limits: _Limits | None = None,
    ) -> GenerationResult:
        self._check_entered()
        await self._check_output_dir()
        prepared = await self._prepare(request)
        prepared.priority = priority
        prepared.limits = limits or _NO_LIMITS
        return await self._complete(prepared, 0, timeout, watch)

    async def _check_output_dir(self) -> None:
        """Once per generator, before its first prompt: can ``output_dir`` be written?"""
        if self._output_checked:
            return
        await asyncio.to_thread(check_writable, self.output_dir)
        self._output_checked = True

    async def _prepare(self, request: Request) -> _Prepared:
        """Build the workflow and the request's key; checks every argument, no network.

        One ``_build_*`` per request kind (a new kind adds one), each returning the graph,
        its seed, the file-name stem and the input to upload (``None``: nothing).
        """
        more: tuple[_Upload, ...] = ()
        builder = self.builder
        if isinstance(request, Txt2ImgRequest | Img2ImgRequest | InpaintRequest):
            builder, more = await self._recipe_builder(request)
        if isinstance(request, Txt2ImgRequest):
            workflow, seed, stem, upload = self._build_txt2img(request, builder)
        elif isinstance(request, Img2ImgRequest):
            workflow, seed, stem, upload = await self._build_img2img(request, builder)
        elif isinstance(request, InpaintRequest):
            (workflow, seed, stem, upload), mask = await self._build_inpaint(request, builder)
            more = (*mask, *more)
        elif isinstance(request, UpscaleRequest):
            workflow, seed, stem, upload = await self._build_upscale(request)
        else:
            workflow, seed, stem, upload = self._build_workflow(request)
            more = await self._workflow_inputs(request, workflow)
        explicit, deterministic = is_deterministic(request, workflow)
        input_hash = _inputs_hash([*([upload] if upload is not None else []), *more])
        key = request_key(workflow, input_hash, None if explicit else seed)
        return _Prepared(
            request, workflow, seed, explicit, key, deterministic, safe_stem(stem), upload, more
        )

    async def _workflow_inputs(
        self, request: Request, workflow: dict[str, Any]
    ) -> tuple[_Upload, ...]:
        """A workflow request's local ``inputs``: checked, and set on their nodes under their
        content-hash names (uploaded later, only when the request runs)."""
        if not isinstance(request, WorkflowRequest) or not request.inputs:
            return ()
        uploads = []
        for node_id, image in request.inputs.items():
            node = workflow.get(node_id)
            if not isinstance(node, dict) or "image" not in node.get("inputs", {}):
                raise WorkflowError(
                    f"an input image is given for node {node_id!r}, but the workflow has no "
                    "such node with an 'image' input",
                    node_id=node_id,
                    input_name="image",
                )
            upload = await self._read_upload(image)
            node["inputs"]["image"] = upload[3]
            uploads.append(upload)
        return tuple(uploads)

    def _limits(self) -> InputLimits:
        return InputLimits(
            self.max_input_bytes, self.max_input_pixels, self.builder.preset.size_multiple
        )

    async def _read_upload(self, image: Any, max_side: int | None = None) -> _Upload:
        """An input image read and checked, named by its content hash (nothing sent yet)."""
        data, suffix, _, digest = await read_input_hashed(image, self._limits(), max_side)
        return data, digest, suffix, f"{UPLOAD_SUBFOLDER}/{digest[:32]}{suffix}"

    async def _recipe_builder(
        self, request: Txt2ImgRequest | Img2ImgRequest | InpaintRequest
    ) -> tuple[FluxWorkflowBuilder, tuple[_Upload, ...]]:
        """The builder with the request's LoRAs (after the builder's own) and ControlNet,
        and the control image to upload; ``self.builder`` itself when it has neither."""
        builder = self.builder
        if request.loras:
            builder = builder.with_loras((*builder.loras, *request.loras))
        control = request.controlnet
        if control is None:
            return builder, ()
        upload = await self._read_upload(control.image)
        builder = builder.with_controlnet(
            control.model, upload[3], control.strength, control.start, control.end,
            control.preprocessor,
        )  # fmt: skip
        return builder, (upload,)

    def _build_txt2img(
        self, request: Txt2ImgRequest, builder: FluxWorkflowBuilder | None = None
    ) -> _Built:
        built = (builder or self.builder).build_txt2img(
            request.prompt,
            request.negative,
            request.width,
            request.height,
            request.steps,
            request.cfg,
            request.seed,
        )
        return built.workflow, built.seed, request.name or "txt2img", None

    async def _build_img2img(
        self, request: Img2ImgRequest, builder: FluxWorkflowBuilder | None = None
    ) -> _Built:
        limits = InputLimits(
            self.max_input_bytes, self.max_input_pixels, self.builder.preset.size_multiple
        )
        data, suffix, _, input_hash = await read_input_hashed(
            request.image, limits, request.max_side
        )
        expected = f"{UPLOAD_SUBFOLDER}/{input_hash[:32]}{suffix}"
        # Built (so every argument is checked) before the upload touches the network.
        built = (builder or self.builder).build_img2img(
            expected,
            request.prompt,
            request.negative,
            request.denoise,
            request.steps,
            request.cfg,
            request.seed,
        )
        stem = request.name or (
            Path(os.fspath(request.image)).stem
            if isinstance(request.image, str | os.PathLike)
            else "img2img"
        )
        return built.workflow, built.seed, stem, (data, input_hash, suffix, expected)

    async def _build_inpaint(
        self, request: InpaintRequest, builder: FluxWorkflowBuilder
    ) -> tuple[_Built, tuple[_Upload, ...]]:
        """The inpaint (or, with ``pad``, outpaint) graph, and the mask file to upload.

        The mask is checked (an image, something to repaint) and resized to the image's
        size after ``max_side``; an alpha mask is checked in the image itself, which is
        uploaded unchanged. Everything is checked before anything is sent.
        """
        upload = await self._read_upload(request.image, request.max_side)
        data, _, _, expected = upload
        source = describe_input(request.image)
        mask_upload: tuple[_Upload, ...] = ()
        if request.pad is not None:
            if request.mask is not None:
                raise WorkflowError(
                    "pad= outpaints the border it adds: give no mask with it", input_name="mask"
                )
            built = builder.build_outpaint(
                expected, request.prompt, request.pad, request.negative, request.steps,
                request.cfg, request.seed,
            )  # fmt: skip
        else:
            mask_name = None
            if request.mask is None:
                await asyncio.to_thread(alpha_mask, data, source=source)
            else:
                prepared = await read_mask(request.mask, data, self._limits())
                digest = await sha256(prepared.data)
                mask_name = f"{UPLOAD_SUBFOLDER}/{digest[:32]}.png"
                mask_upload = ((prepared.data, digest, ".png", mask_name),)
            built = builder.build_inpaint(
                expected, mask_name, request.prompt, request.negative, request.denoise,
                request.steps, request.cfg, request.seed,
                grow_mask=request.grow_mask, feather=request.feather,
            )  # fmt: skip
        stem = request.name or _input_stem(request.image, "inpaint")
        return (built.workflow, built.seed, stem, upload), mask_upload

    async def _build_upscale(self, request: UpscaleRequest) -> _Built:
        upload = await self._read_upload(request.image, request.max_side)
        built = self.builder.build_upscale(upload[3], request.model)
        stem = request.name or _input_stem(request.image, "upscale")
        return built.workflow, None, stem, upload

    @staticmethod
    def _build_workflow(request: WorkflowRequest) -> _Built:
        workflow = Workflow(as_api_graph(request.workflow)).to_api()  # validated: no I/O yet
        randomized = randomized_inputs(workflow)
        if not randomized:
            return workflow, first_seed(workflow), request.name or "workflow", None
        seed = random_seed()  # "randomize" seeds: a new one in each run, as the frontend's
        for node_id, name in randomized:
            workflow[node_id]["inputs"][name] = seed
            meta = dict(workflow[node_id]["_meta"])
            meta.pop("randomize", None)  # ours: the server gets what the frontend would send
            workflow[node_id]["_meta"] = meta
        return workflow, seed, request.name or "workflow", None

    async def _complete(
        self,
        prep: _Prepared,
        occurrence: int,
        timeout: float | None,
        watch: _Watch,
        journal: BatchJournal | None = None,
        index: int | None = None,
        run_id: str = "",
    ) -> GenerationResult:
        """Answer a prepared request as :func:`~dreamgen_async.plan.decide` says: skipped (the
        journal has it done, files intact), from the cache, by collecting the prompt an
        earlier run posted, or by running it (the prompt_id committed before the POST)."""
        submitted = time.time()
        tag = prep.key[:12] if occurrence == 0 else f"{prep.key[:12]}-{occurrence}"
        item: JournalItem | None = None
        record: Record | None = None
        if journal is not None:
            item_key = tag_key(prep.key, occurrence, run_id)
            item = await journal.begin(item_key, prep.key, index or 0)
            intact = must_check_files(item.state) and await asyncio.to_thread(item.files_intact)
            record = Record(item.state, item.prompt_id, item.cached, intact)
        try:
            plan = await self._plan(prep, record)
            if isinstance(plan, Skip):
                assert item is not None
                return dataclasses.replace(_resumed(item, prep, submitted), index=index)
            if isinstance(plan, FromCache):
                paths = await self._write_outputs(
                    prep, tag, list(plan.entry.images), prep.seed, plan.entry.nodes
                )
                timings = cached_timings(plan.entry.timings, submitted)
                result = GenerationResult(
                    paths, None, prep.seed, prep.workflow, prep.request, True, timings, index=index
                )
            else:
                adopt = item if isinstance(plan, Adopt) else None
                result = await self._run(
                    prep, tag, adopt, item, journal, submitted, timeout, watch, index
                )
        except (DreamgenError, OSError) as exc:
            if journal is not None and item is not None:
                with contextlib.suppress(JournalError):  # the job's own error matters more
                    await journal.failed(item.item_key, f"{type(exc).__name__}: {exc}")
            raise
        if journal is not None and item is not None:
            await journal.done(
                item.item_key,
                result.prompt_id,
                result.paths,
                cached=result.cached,
                seed=result.seed,
            )
        return result

    async def _plan(self, prep: _Prepared, record: Record | None) -> Plan[CacheEntry]:
        """:func:`~dreamgen_async.plan.decide`, the cache read only when it can matter."""
        entry = None
        if self.cache is not None and needs_cache_entry(
            record, deterministic=prep.deterministic, has_cache=True
        ):
            entry = await self.cache.get_entry(prep.key)
        return decide(record, entry, deterministic=prep.deterministic)

    async def _run(
        self,
        prep: _Prepared,
        tag: str,
        adopt: JournalItem | None,
        item: JournalItem | None,
        journal: BatchJournal | None,
        submitted: float,
        timeout: float | None,
        watch: _Watch,
        index: int | None,
    ) -> GenerationResult:
        """Run the request (or collect ``adopt``'s prompt), identical requests sharing a run."""
        fetched = await self._run_shared(
            prep.key if prep.deterministic else None,
            functools.partial(self._fetch, prep, adopt=adopt, item=item, journal=journal),
            timeout,
            watch,
        )
        seed = fetched.seed if fetched.seed is not None else prep.seed
        paths = await self._write_outputs(prep, tag, fetched.images, seed, fetched.nodes)
        queued, started, finished = (fetched.timings + (None,) * 5)[1:4]
        timings = Timings(submitted, queued, started, finished, time.time())
        return GenerationResult(
            paths,
            fetched.prompt_id,
            seed,
            prep.workflow,
            prep.request,
            False,
            timings,
            index=index,
            node_errors=fetched.node_errors,
            server=fetched.server,
            resubmitted=fetched.resubmitted,
        )

    async def _fetch(
        self,
        prep: _Prepared,
        timeout: float | None,
        watch: _Follower,
        adopt: JournalItem | None = None,
        item: JournalItem | None = None,
        journal: BatchJournal | None = None,
    ) -> _Fetched:
        """Collect the item's earlier prompt, or upload (only now: a cache hit never touches
        the server), run and download."""
        fetched: _Fetched | None = None
        resubmitted = False
        if adopt is not None:
            collected = await self._collect(adopt, prep, timeout, watch)
            resubmitted = collected is _UNKNOWN
            fetched = collected if isinstance(collected, _Fetched) else None
        if fetched is None:
            await self._upload(prep)
            started = time.time()
            posting = _Posting(journal, item.item_key if item is not None else None, prep.seed)
            result, (images, nodes) = await self._run_and_download(
                prep.workflow, timeout, watch, posting, prep.priority, prep.limits
            )
            fetched = _Fetched(
                result.prompt_id,
                images,
                (started, result.queued_at, result.started_at, result.finished_at, time.time()),
                node_errors=result.node_errors,
                server=posting.server,
                resubmitted=resubmitted or result.resubmitted,
                nodes=nodes,
            )
        if prep.deterministic and self.cache is not None:
            await self.cache.put(prep.key, fetched.images, fetched.timings, fetched.nodes)
        return fetched

    async def _collect(
        self,
        item: JournalItem,
        prep: _Prepared,
        timeout: float | None,
        watch: _Follower,
    ) -> _Fetched | object | None:
        """Collect a prompt an earlier run posted on its server; ``None`` when it must run
        again, :data:`_UNKNOWN` when it must run again but may also run where it was posted
        (that server cannot be asked)."""
        assert item.prompt_id is not None
        client = self.client
        try:
            job = await client.adopt(
                item.prompt_id,
                server=item.server,
                client_id=item.client_id,
                workflow=prep.workflow,
                on_progress=watch.progress(),
            )
        except TransportError as exc:
            log.warning(
                "prompt %s of an earlier run cannot be collected (%s): running it again "
                "(it may also run on %s)",
                item.prompt_id,
                exc,
                item.server,
            )
            return _UNKNOWN
        if job is None:
            log.info("prompt %s of an earlier run is not on the server: running it", item.prompt_id)
            return None
        watch.bound(job, item.server)
        try:
            result = await job.result(timeout)
        except (ExecutionInterrupted, ExecutionError) as exc:
            log.info("prompt %s of an earlier run failed (%s): running it", item.prompt_id, exc)
            return None
        except TransportError as exc:  # its server went away meanwhile: it may still run there
            log.warning("prompt %s of an earlier run: %s; running it", item.prompt_id, exc)
            return _UNKNOWN
        images, nodes = await self._download(client, result)
        now = time.time()
        timings = (now, result.queued_at, result.started_at, result.finished_at, now)
        return _Fetched(
            item.prompt_id,
            images,
            timings,
            item.seed,
            result.node_errors,
            server=item.server,
            resubmitted=result.resubmitted,
            nodes=nodes,
        )

    async def _upload(self, prep: _Prepared) -> None:
        uploads = prep.more_uploads if prep.upload is None else (prep.upload, *prep.more_uploads)
        for data, digest, suffix, expected in uploads:
            reference = await self._store_input(data, digest, suffix)
            if reference != expected:  # the server renamed it: always use its name
                for node in prep.workflow.values():
                    if node["inputs"].get("image") == expected:
                        node["inputs"]["image"] = reference

    async def _run_shared(
        self,
        key: str | None,
        fetch: Callable[[float | None, _Follower], Coroutine[Any, Any, _Fetched]],
        timeout: float | None,
        watch: _Watch,
    ) -> _Fetched:
        """Run ``fetch``; identical requests in flight at once share one run.

        The shared run belongs to no caller: each caller's ``timeout`` or cancellation ends
        only its own wait, every caller gets the progress events (and learns the job), and
        the prompt is taken off the server only when the last caller still waiting for it
        gives up.
        """
        if key is None:
            return await fetch(timeout, watch)
        shared = self._inflight.get(key)
        if shared is None:
            shared = self._inflight[key] = _SharedRun(key)
            # The run's job reports progress only if a caller listens (a later caller that
            # does makes the job report from then on: see _SharedRun.join).
            shared.task = asyncio.create_task(
                shared.drive(fetch(None, shared)), name="dreamgen-shared-run"
            )
            shared.task.add_done_callback(functools.partial(self._shared_done, key, shared))
        task = shared.task
        assert task is not None
        shared.join(watch)
        try:
            await within(shared.settling(), timeout)
            return task.result()  # done: the run woke its callers as it ended
        except TimeoutError:
            if task.done() and not task.cancelled():
                # Its outcome, or its own error: a job limit's PromptTimeout is a
                # TimeoutError too, and says which limit, not this caller's wait.
                return task.result()
            raise _shared_timeout(timeout, shared) from None
        finally:
            if shared.leave(watch) and not task.done():
                # The last caller gave up: take the prompt back, and wait until it is.
                # An identical request from now on starts a run of its own, not this one.
                # (asyncio.wait, not gather: a second cancel of this caller then leaves no
                # future holding an exception nobody retrieves.)
                self._forget_shared(key, shared)
                task.cancel()
                await asyncio.wait([task])

    def _forget_shared(self, key: str, shared: _SharedRun) -> None:
        if self._inflight.get(key) is shared:
            del self._inflight[key]

    def _shared_done(self, key: str, shared: _SharedRun, task: asyncio.Task[Any]) -> None:
        self._forget_shared(key, shared)
        shared.wake()  # whoever waits, however the task ended (even before it started)
        if not task.cancelled():
            task.exception()  # retrieved: every caller may have given up already

    async def _run_and_download(
        self,
        workflow: Mapping[str, Any],
        timeout: float | None,
        watch: _Follower,
        posting: _Posting,
        priority: int = 0,
        limits: _Limits | None = None,
    ) -> tuple[PromptResult, tuple[list[tuple[str, bytes]], tuple[str, ...]]]:
        """Run the workflow under a prompt_id chosen here, then download its images (and
        the node that made each).

        ``posting`` is told (and awaited) before each POST of the prompt: the journal commits
        the prompt_id and its server there, so a crash at any later moment can find it.
        """
        posting.prompt_id = str(uuid.uuid4())
        watch.waiting(functools.partial(self.client.position, posting.prompt_id))
        job = await self.client.submit(
            workflow,
            on_progress=watch.progress(),
            prompt_id=posting.prompt_id,
            before_post=posting.before_post,
            priority=priority,
            max_run_time=limits.max_run_time if limits else None,
            queue_timeout=limits.queue_timeout if limits else None,
        )
        watch.bound(job, posting.server)
        result = await job.result(timeout)
        return result, await self._download(self.client, result)

    @staticmethod
    async def _download(
        client: Backend, result: PromptResult
    ) -> tuple[list[tuple[str, bytes]], tuple[str, ...]]:
        """``(suffix, data)`` per output, and the id of the node that made each."""
        # Saved outputs of every kind (and text values); previews only when nothing was saved.
        saved = any(f.ref is not None and f.ref.type == "output" for f in result.files)
        saved = saved or any(ref.type == "output" for ref in result.images)
        outputs = await client.get_outputs(result, previews=not saved)
        images = [(output_suffix(o.file, o.data), o.data) for o in outputs]
        return images, tuple(o.file.node_id for o in outputs)

    # ------------------------------------------------------------------ inputs

    async def _store_input(self, data: bytes, digest: str, suffix: str) -> str:
        """Upload (or copy into ``input_dir``) once per content; returns LoadImage's name."""
        pending = self._uploads.get(digest)
        if pending is None or (pending.done() and pending.exception() is not None):
            pending = asyncio.ensure_future(self._store_once(data, digest, suffix))
            self._uploads[digest] = pending
            while len(self._uploads) > 4096:
                self._uploads.popitem(last=False)
        self._uploads.move_to_end(digest)
        if pending.done():  # uploaded already (a batch's every request but the first)
            return pending.result()
        return await asyncio.shield(pending)

    async def _store_once(self, data: bytes, digest: str, suffix: str) -> str:
        name = f"{digest[:32]}{suffix}"
        if self.input_dir is not None:
            await asyncio.to_thread(copy_atomically, data, self.input_dir / UPLOAD_SUBFOLDER, name)
            return f"{UPLOAD_SUBFOLDER}/{name}"
        uploaded = await self.client.upload_image(data, name=name, subfolder=UPLOAD_SUBFOLDER)
        return uploaded.reference

    # ------------------------------------------------------------------ outputs

    async def _write_outputs(
        self,
        prep: _Prepared,
        tag: str,
        images: list[tuple[str, bytes]],
        seed: int | None,
        nodes: tuple[str, ...] = (),
    ) -> tuple[Path, ...]:
        """Write images atomically under our own, stable names; nothing partial is left.

        The name is the request's and the seed it ran with (``<name>[_<seed>]_<request
        key>_<n>``): the same request writes the same file in every run, hit or miss, so a
        rerun replaces, never duplicates; a seedless request draws a new seed each run, so
        its rerun writes new files and never overwrites an earlier run's.
        """
        names = output_names(prep, tag, images, seed, nodes)
        return await write_outputs(self.output_dir, names, images)

    # ------------------------------------------------------------------ batches

    async def as_completed(
        self,
        requests: Iterable[Request],
        *,
        concurrency: int = 8,
        return_exceptions: bool = True,
        on_progress: Callable[[int, Event], object] | None = None,
        on_batch_progress: Callable[[BatchProgress], object] | None = None,
        journal: str | os.PathLike[str] | None = None,
        priority: int = 0,
        max_run_time: float | None = None,
        queue_timeout: float | None = None,
    ) -> AsyncIterator[GenerationResult | JobFailure]:
        """Yield each job's outcome as it finishes; ``concurrency`` jobs at a time.

        Requests are consumed lazily, so a huge (or endless) iterable is fine, and nothing
        is kept per finished job. A failing job yields a :class:`JobFailure` (or, with
        ``return_exceptions=False``, raises its error after cancelling the rest — which
        takes their prompts off the server). Leaving the loop early cancels the rest too.

        With ``journal=`` (a file path; see "Long batches" in the README) the batch is
        recorded as it runs and a rerun with the same file resumes it: items already done
        are skipped, prompts an earlier run posted are collected instead of run again. A
        batch that finished (every job done) is not resumed: the same call makes a new run,
        in which requests without a seed are new requests (new seeds, new files) and
        requests with one are found done.

        ``priority`` orders the batch's jobs against this generator's other jobs waiting
        for a slot on the server; ``max_run_time`` and ``queue_timeout`` limit each job
        (see :meth:`generate`).

        Before anything is posted, the output folder (and the journal's) must be writable.

        Raises:
            StorageError: the output folder or the journal's cannot be written (nothing
                was sent).
            JournalError: the journal is in use by another process, or not a journal.
        """
        async for _, outcome in self.enumerate_completed(
            requests,
            concurrency,
            return_exceptions,
            on_progress,
            on_batch_progress,
            journal=journal,
            priority=priority,
            max_run_time=max_run_time,
            queue_timeout=queue_timeout,
        ):
            yield outcome

    async def generate_many(
        self,
        requests: Iterable[Request],
        *,
        concurrency: int = 8,
        return_exceptions: bool = True,
        on_progress: Callable[[int, Event], object] | None = None,
        on_batch_progress: Callable[[BatchProgress], object] | None = None,
        journal: str | os.PathLike[str] | None = None,
        priority: int = 0,
        max_run_time: float | None = None,
        queue_timeout: float | None = None,
    ) -> list[GenerationResult | JobFailure]:
        """Run every request, ``concurrency`` at a time; outcomes in request order.

        Cancelling it cancels every running job (their prompts leave the server).
        ``journal=`` and ``priority=``: as for :meth:`as_completed`.
        """
        outcomes: dict[int, GenerationResult | JobFailure] = {}
        async for index, outcome in self.enumerate_completed(
            requests,
            concurrency,
            return_exceptions,
            on_progress,
            on_batch_progress,
            journal=journal,
            priority=priority,
            max_run_time=max_run_time,
            queue_timeout=queue_timeout,
        ):
            outcomes[index] = outcome
        return [outcomes[i] for i in range(len(outcomes))]

    async def enumerate_completed(
        self,
        requests: Iterable[Request],
        concurrency: int = 8,
        return_exceptions: bool = True,
        on_progress: Callable[[int, Event], object] | None = None,
        on_batch_progress: Callable[[BatchProgress], object] | None = None,
        *,
        journal: str | os.PathLike[str] | None = None,
        timeout: float | None = None,
        priority: int = 0,
        max_run_time: float | None = None,
        queue_timeout: float | None = None,
        on_job: Callable[[int, BackendJob, str | None], object] | None = None,
    ) -> AsyncIterator[tuple[int, GenerationResult | JobFailure]]:
        """Like :meth:`as_completed`, yielding ``(index of the request, outcome)`` pairs.

        A pool of ``concurrency`` workers pulls from one shared lazy iterator; ``timeout``
        applies to each job (see :meth:`generate`). ``on_job(index, job, server)`` is called
        when a request's backend job is submitted (a pool job's ``server`` follows it; the
        server URL is given for a single client, ``None`` for a pool).
        """
        if concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {concurrency}")
        await self._check_batch_folders(journal)
        settings = _BatchSettings(
            concurrency,
            return_exceptions,
            timeout,
            priority,
            _Limits.of(max_run_time, queue_timeout),
            on_job,
        )
        if journal is None:
            async for pair in self._enumerate(
                requests, settings, on_progress, on_batch_progress, None, ""
            ):
                yield pair
            return
        opened = await BatchJournal.open(journal)
        try:
            run = await opened.begin_run()
            await self._describe_batch(opened, requests)
            # A run killed mid-write left staging files: this batch's folder, swept.
            await asyncio.to_thread(sweep_staging, self.output_dir)
            finished = True
            async for pair in self._enumerate(
                requests, settings, on_progress, on_batch_progress, opened, run.id
            ):
                finished = finished and not isinstance(pair[1], JobFailure)
                yield pair
            if finished:  # every job done: a rerun is a new run, not a resume
                await opened.end_run()
        finally:
            await opened.aclose()

    async def _check_batch_folders(self, journal: str | os.PathLike[str] | None) -> None:
        """Before a batch posts anything: its output folder and its journal's are writable."""
        await self._check_output_dir()
        if journal is not None:
            await asyncio.to_thread(lambda: check_writable(Path(journal).absolute().parent))

    async def _describe_batch(self, journal: BatchJournal, requests: Iterable[Request]) -> None:
        """Record what a later ``dreamgen resume`` needs: servers, folders, builder, requests."""
        first: dict[str, Any] = {"created": time.time()}
        if self.client.client_id is not None:
            first["client_id"] = self.client.client_id
        await journal.set_meta(first, keep=True)
        output_dir = await asyncio.to_thread(os.path.abspath, self.output_dir)
        servers = [status.url for status in await self.client.status()]
        await journal.set_meta(
            {
                "server": servers[0],
                "servers": servers,
                "output_dir": output_dir,
                "builder": builder_spec(self.builder),
            }
        )
        if isinstance(requests, list | tuple):
            specs = await asyncio.to_thread(
                lambda: [(i, request_spec(r)) for i, r in enumerate(requests)]
            )
            await journal.record_requests(specs, replace=True)

    def _enumerate(
        self,
        requests: Iterable[Request],
        settings: _BatchSettings,
        on_progress: Callable[[int, Event], object] | None,
        on_batch_progress: Callable[[BatchProgress], object] | None,
        journal: BatchJournal | None,
        run_id: str,
    ) -> AsyncIterator[tuple[int, Outcome]]:
        """The batch's workers (:class:`~dreamgen_async.batch.BatchRunner`) on this generator.

        ``run_id`` (the journal's run) goes into the journal keys of seedless requests: a
        new run of a finished batch makes new images, a resumed one finds its own again.
        """
        lazy = not isinstance(requests, list | tuple)
        repeats: dict[str, int] = {}

        async def run_one(index: int, request: Request) -> GenerationResult:
            if journal is not None and lazy:
                spec = await asyncio.to_thread(request_spec, request)
                await journal.record_requests([(index, spec)], replace=False)
            prepared = await self._prepare(request)
            prepared.priority = settings.priority
            prepared.limits = settings.limits
            occurrence = 0
            if not prepared.deterministic:
                # The n-th repeat of a seedless request is its own image, named apart.
                occurrence = repeats.get(prepared.key, 0)
                repeats[prepared.key] = occurrence + 1
            progress = None if on_progress is None else functools.partial(on_progress, index)
            bound = None if settings.on_job is None else functools.partial(settings.on_job, index)
            return await self._complete(
                prepared,
                occurrence,
                settings.timeout,
                _Watch(progress, bound),
                journal,
                index,
                # Only a drawn seed makes a new request per run; an upscale draws none.
                "" if prepared.explicit_seed or prepared.deterministic else run_id,
            )

        runner = BatchRunner(requests, settings.concurrency, run_one, on_batch_progress)
        return runner.outcomes(return_exceptions=settings.return_exceptions)


@dataclass(frozen=True, slots=True)
class _BatchSettings:
    """How a batch runs its jobs."""

    concurrency: int
    return_exceptions: bool
    timeout: float | None
    priority: int
    limits: _Limits
    on_job: Callable[[int, BackendJob, str | None], object] | None = None


def output_names(
    prep: _Prepared,
    tag: str,
    images: Sequence[tuple[str, bytes]],
    seed: int | None,
    nodes: Sequence[str],
) -> list[str]:
    """Each output's file name. Outputs of several nodes carry their node's label (title or
    id, see :func:`~dreamgen_async.files.node_labels`) and are numbered per node; outputs of
    one node (or of a cache entry that does not know its nodes) are numbered as before."""
    if len(nodes) != len(images):
        nodes = ()
    labels = node_labels(prep.workflow, nodes) if nodes else [None] * len(images)
    counts: dict[str | None, int] = {}
    names = []
    for (suffix, _), label in zip(images, labels, strict=True):
        index = counts.get(label, 0)
        counts[label] = index + 1
        names.append(output_name(prep.stem, seed, tag, index, suffix, label))
    return names


def _inputs_hash(uploads: Sequence[_Upload]) -> str | None:
    """What the request key takes of the inputs: the one input's hash (as it always was),
    or one hash of every input's (image, mask, control image) when there are several."""
    if len(uploads) <= 1:
        return uploads[0][1] if uploads else None
    return hashlib.sha256(":".join(upload[1] for upload in uploads).encode()).hexdigest()


def _input_stem(image: Any, default: str) -> str:
    """The file-name stem of an input: its file's stem, or ``default`` for bytes / PIL."""
    return Path(os.fspath(image)).stem if isinstance(image, str | os.PathLike) else default


#: What :meth:`DreamGenerator._collect` returns when the prompt's server cannot be asked.
_UNKNOWN = object()


class _Posting:
    """Where one run's prompt is posted: told before each POST (by the backend's
    ``before_post``), it commits that to the batch journal first, when there is one."""

    __slots__ = ("item_key", "journal", "prompt_id", "seed", "server")

    def __init__(self, journal: BatchJournal | None, item_key: str | None, seed: int | None):
        self.journal = journal if item_key is not None else None
        self.item_key = item_key
        self.seed = seed
        self.prompt_id = ""
        self.server: str | None = None

    async def before_post(self, server: str, client_id: str) -> None:
        if self.journal is not None and self.item_key is not None:
            await self.journal.posted(self.item_key, self.prompt_id, server, client_id, self.seed)
        self.server = server


def _resumed(item: JournalItem, prep: _Prepared, submitted: float) -> GenerationResult:
    """The result of an item an earlier run of its journaled batch finished (files intact)."""
    return GenerationResult(
        tuple(Path(f.path) for f in item.files),
        item.prompt_id,
        item.seed if item.seed is not None else prep.seed,
        prep.workflow,
        prep.request,
        item.cached,
        Timings(submitted),
        resumed=True,
        server=item.server,
    )


def _shared_timeout(timeout: float | None, shared: _SharedRun) -> PromptTimeout:
    return PromptTimeout(
        f"request did not finish within {timeout} s"
        + ("" if shared.interest > 1 else "; it was removed from the server"),
        prompt_id=None,
    )


class _SharedRun:
    """One server run shared by identical requests in flight, and who still waits for it."""

    __slots__ = ("_settled", "job", "key", "listened", "locate", "task", "watches")

    def __init__(self, key: str) -> None:
        self.key = key
        self.task: asyncio.Task[_Fetched] | None = None
        self._settled = Waiters()  # the callers waiting for the run's outcome
        self.watches: list[_Watch] = []
        self.job: tuple[BackendJob, str | None] | None = None
        self.locate: Locate | None = None
        # Whether the job reports its progress to fan_out: from its submission when a caller
        # listened by then, else from when one does (see _listen). A listener joining while
        # the job is being submitted hears it from when the job is known (bound).
        self.listened = False

    @property
    def interest(self) -> int:
        """How many callers still wait for the run."""
        return len(self.watches)

    async def drive(self, work: Coroutine[Any, Any, _Fetched]) -> _Fetched:
        """The run's task: ``work``, its callers woken as it ends (its outcome, an error or
        a cancellation), from the task itself: they resume in the loop's next pass, with
        the task done (a shield would take two passes). The task's done-callback wakes
        them too (:meth:`wake` is idempotent): a task cancelled before it started."""
        try:
            return await work
        finally:
            self.wake()

    def wake(self) -> None:
        self._settled.wake()

    def settling(self) -> asyncio.Future[None]:
        """A caller's wait for the run's end (cancelling it cancels nothing of the run)."""
        return self._settled.wait()

    def join(self, watch: _Watch) -> None:
        self.watches.append(watch)
        if watch.on_progress is not None:
            self._listen()
        if self.locate is not None:
            watch.waiting(self.locate)
        if self.job is not None:
            watch.bound(*self.job)

    def _listen(self) -> None:
        """A caller listens: the job reports to :meth:`fan_out` (once it is known)."""
        if self.job is not None and not self.listened:
            self.job[0].listen(self.fan_out)
            self.listened = True

    def leave(self, watch: _Watch) -> bool:
        """One caller is done waiting; True when it was the last."""
        self.watches.remove(watch)
        return not self.watches

    def _anyone_listens(self) -> bool:
        return any(watch.on_progress is not None for watch in self.watches)

    def progress(self) -> ProgressCallback | None:
        """:meth:`fan_out` when a caller listens as the job is submitted; else nothing
        (the job then keeps its progress unparsed) until one does (see :meth:`_listen`)."""
        self.listened = self._anyone_listens()
        return self.fan_out if self.listened else None

    def bound(self, job: BackendJob, server: str | None) -> None:
        self.job = (job, server)
        if self._anyone_listens():
            self._listen()  # one joined while the job was being submitted
        for watch in list(self.watches):
            watch.bound(job, server)

    def waiting(self, locate: Locate) -> None:
        self.locate = locate
        for watch in list(self.watches):
            watch.waiting(locate)

    def fan_out(self, event: Event) -> None:
        for watch in list(self.watches):
            if watch.on_progress is None:
                continue
            try:
                watch.on_progress(event)
            except Exception:
                log.exception("progress callback for request %s raised", self.key[:12])
