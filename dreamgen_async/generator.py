"""DreamGenerator: the facade — upload, queue, wait, download, write.

Most users only need this module::

    async with DreamGenerator("http://127.0.0.1:8188", output_dir="out") as gen:
        result = await gen.generate_from_image("cat.png", "an oil painting", denoise=0.6)
        print(result.path, result.seed)

Inputs are checked before any network call and uploaded under content-hash names (no
re-upload, no collision between concurrent jobs). Outputs are written atomically (temporary
file, then rename) under names *we* choose — never a server-supplied path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import os
import re
import time
import uuid
import warnings
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeAlias

import aiofiles
import aiofiles.os
from PIL import Image, UnidentifiedImageError

from dreamgen_async.cache import ResultCache, cache_key
from dreamgen_async.comfyui_api import ComfyUIClient
from dreamgen_async.errors import DreamgenError, InputImageError
from dreamgen_async.jobs import Mailbox, ProgressCallback, PromptResult
from dreamgen_async.pool import ComfyUIPool
from dreamgen_async.protocol import Event
from dreamgen_async.workflow_builder import BuiltWorkflow, FluxWorkflowBuilder, Workflow

__all__ = [
    "Batch",
    "BatchProgress",
    "DreamGenerator",
    "GenerationResult",
    "ImageInput",
    "Img2ImgRequest",
    "JobFailure",
    "Timings",
    "Txt2ImgRequest",
    "WorkflowRequest",
]

log = logging.getLogger("dreamgen_async")

ImageInput: TypeAlias = "str | os.PathLike[str] | bytes | Image.Image"

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif"}
_UPLOAD_SUBFOLDER = "dreamgen"


# ---------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class Txt2ImgRequest:
    """One text-to-image job; ``seed=None`` draws one (reported in the result)."""

    prompt: str
    negative: str = ""
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    cfg: float | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Img2ImgRequest:
    """One image-to-image job. ``image`` is a path, bytes or a PIL image."""

    image: Any
    prompt: str
    denoise: float = 0.75
    negative: str = ""
    seed: int | None = None
    steps: int | None = None
    cfg: float | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class WorkflowRequest:
    """A user's own API-format workflow, run as it is."""

    workflow: Workflow | Mapping[str, Any]
    name: str | None = None


Request: TypeAlias = Txt2ImgRequest | Img2ImgRequest | WorkflowRequest


# ---------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Timings:
    """Wall-clock moments (``time.time()``) of one job; ``None`` when not applicable."""

    submitted: float
    queued: float | None = None
    started: float | None = None
    finished: float | None = None
    downloaded: float | None = None


@dataclass(frozen=True, slots=True)
class GenerationResult:
    """A finished job: the files written, and how they were made.

    Attributes:
        paths: The images written into ``output_dir``.
        prompt_id: The server's prompt id (``None`` for a cache hit).
        seed: The seed used (drawn at random when the request had none).
        workflow: The API-format graph that was (or would have been) sent.
        request: The request this answers.
        cached: Whether the images came from the result cache (no server work).
        timings: When it was submitted, queued, started, finished and downloaded.
    """

    paths: tuple[Path, ...]
    prompt_id: str | None
    seed: int | None
    workflow: Mapping[str, Any] = field(repr=False)
    request: Request = field(repr=False)
    cached: bool = False
    timings: Timings = field(default_factory=lambda: Timings(time.time()))

    @property
    def path(self) -> Path:
        """The first image written."""
        return self.paths[0]


@dataclass(frozen=True, slots=True)
class JobFailure:
    """A job of a batch that failed; the batch went on without it."""

    request: Request
    index: int
    error: DreamgenError | OSError

    @property
    def source(self) -> str:
        """What the failure is about: the input image, or the request's name."""
        if isinstance(self.error, InputImageError):
            return self.error.source
        if isinstance(self.request, Img2ImgRequest):
            return _describe(self.request.image)
        return getattr(self.request, "name", None) or f"job {self.index}"


@dataclass(frozen=True, slots=True)
class BatchProgress:
    """Counts of a running batch, passed to ``on_batch_progress``."""

    total: int | None
    done: int
    failed: int
    running: int
    cached: int


# ---------------------------------------------------------------------------- handles


class GenerationJob:
    """One request running in the background (from :meth:`DreamGenerator.submit`).

    Await :meth:`result`, follow :meth:`events`, or :meth:`cancel` it. Cancelling (or
    cancelling a call to ``result()``) takes its prompt off the server.
    """

    def __init__(self, gen: DreamGenerator, request: Request, timeout: float | None) -> None:
        self.request = request
        self._events: Mailbox[Event] = Mailbox()
        self._task = asyncio.create_task(
            gen.generate(request, timeout=timeout, on_progress=self._events.put),
            name="dreamgen-generation",
        )
        self._task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[GenerationResult]) -> None:
        self._events.close()
        if not task.cancelled():
            task.exception()  # retrieved here; result() still raises it

    def done(self) -> bool:
        """Whether the outcome is known."""
        return self._task.done()

    async def result(self) -> GenerationResult:
        """The result, once the images are written. Raises what the job raised."""
        return await self._task

    def cancel(self) -> None:
        """Cancel the job: its prompt leaves the server and no file is left."""
        self._task.cancel()

    async def events(self) -> AsyncIterator[Event]:
        """The job's progress events (from its start; one consumer); ends with the job."""
        while (event := await self._events.get()) is not None:
            yield event


class Batch:
    """A batch running in the background (from :meth:`DreamGenerator.start_batch`)."""

    def __init__(self, gen: DreamGenerator, requests: Iterable[Request], concurrency: int) -> None:
        self._progress: Mailbox[BatchProgress] = Mailbox()
        self._task = asyncio.create_task(
            gen.generate_many(
                requests, concurrency=concurrency, on_batch_progress=self._progress.put
            ),
            name="dreamgen-batch",
        )
        self._task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[list[GenerationResult | JobFailure]]) -> None:
        self._progress.close()
        if not task.cancelled():
            task.exception()

    async def progress(self) -> AsyncIterator[BatchProgress]:
        """A :class:`BatchProgress` snapshot at every change (one consumer); ends with the batch.

        A consumer that falls far behind skips old snapshots, never the last one.
        """
        while (state := await self._progress.get()) is not None:
            yield state

    async def results(self) -> list[GenerationResult | JobFailure]:
        """Every outcome, in request order, once the batch is over."""
        return await self._task

    def cancel(self) -> None:
        """Cancel every job of the batch (their prompts leave the server)."""
        self._task.cancel()


# ---------------------------------------------------------------------------- helpers


def _describe(image: Any) -> str:
    if isinstance(image, str | os.PathLike):
        return os.fspath(image)
    if isinstance(image, bytes | bytearray):
        return f"<{len(image)} bytes>"
    return f"<{type(image).__name__}>"


def safe_stem(name: str, default: str = "image") -> str:
    """A file-name stem with no path separators, no leading dots, at most 80 characters."""
    stem = _SAFE.sub("_", PurePosixPath(name.replace("\\", "/")).name.replace("\0", ""))
    stem = stem.lstrip(".")[:80].strip("_")
    return stem or default


def _verify_image(data: bytes, source: str, max_pixels: int) -> str:
    """Check that ``data`` decodes as an image; return its file suffix."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                fmt = (img.format or "PNG").lower()
                img.verify()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputImageError(f"{source}: image is too large ({exc})", source=source) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputImageError(f"{source}: not a readable image ({exc})", source=source) from exc
    if width * height > max_pixels:
        raise InputImageError(
            f"{source}: image is {width}x{height}, over the limit of {max_pixels} pixels",
            source=source,
        )
    return {"jpeg": ".jpg"}.get(fmt, f".{fmt}")


def _encode_pil(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------- generator


class DreamGenerator:
    """Generate images with a ComfyUI server and write them to ``output_dir``.

    Args:
        client: A :class:`ComfyUIClient` or :class:`ComfyUIPool` (which you open and close)
            or a server URL (the generator then owns the client, opened on enter and closed
            on exit).
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
        client: ComfyUIClient | ComfyUIPool | str = "http://127.0.0.1:8188",
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
        self.client: ComfyUIClient | ComfyUIPool = (
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
        self._inflight: dict[str, asyncio.Future[tuple[PromptResult, list[tuple[str, bytes]]]]] = {}

    async def __aenter__(self) -> DreamGenerator:
        if self._owns_client:
            await self.client.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client if this generator created it. Idempotent."""
        if self._owns_client:
            await self.client.aclose()

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
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> GenerationResult:
        """Text to image. Cancelling it takes the prompt off the server; no file is left.

        Raises:
            WorkflowError: an argument is invalid (before any network call).
            PromptRejected, ExecutionError, PromptTimeout, ...: see ComfyUIClient.
        """
        request = Txt2ImgRequest(prompt, negative, seed, width, height, steps, cfg, name)
        return await self.generate(request, timeout=timeout, on_progress=on_progress)

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
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> GenerationResult:
        """Image to image; ``image`` is a path, bytes or a PIL image.

        Cancelling it takes the prompt off the server; no file is left.

        Raises:
            InputImageError: the image is missing, empty, not an image or too large
                (before any network call); ``.source`` names it.
            WorkflowError: an argument is invalid (before any network call).
        """
        request = Img2ImgRequest(image, prompt, denoise, negative, seed, steps, cfg, name)
        return await self.generate(request, timeout=timeout, on_progress=on_progress)

    async def run_workflow(
        self,
        workflow: Workflow | Mapping[str, Any],
        *,
        name: str | None = None,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> GenerationResult:
        """Run a user's API-format workflow and write its output images."""
        request = WorkflowRequest(workflow, name)
        return await self.generate(request, timeout=timeout, on_progress=on_progress)

    def submit(self, request: Request, *, timeout: float | None = None) -> GenerationJob:
        """Start one request in the background; follow it with ``events()``."""
        return GenerationJob(self, request, timeout)

    def start_batch(self, requests: Iterable[Request], *, concurrency: int = 8) -> Batch:
        """Start a batch in the background; follow it with ``progress()``."""
        return Batch(self, requests, concurrency)

    async def generate(
        self,
        request: Request,
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> GenerationResult:
        """Run one request of any kind (what the batch forms call)."""
        submitted = time.time()
        input_hash: str | None = None
        upload: tuple[bytes, str, str, str] | None = None
        seed: int | None
        built: BuiltWorkflow
        if isinstance(request, Txt2ImgRequest):
            built = self.builder.build_txt2img(
                request.prompt,
                request.negative,
                request.width,
                request.height,
                request.steps,
                request.cfg,
                request.seed,
            )
            workflow, seed, stem = built.workflow, built.seed, request.name or "txt2img"
        elif isinstance(request, Img2ImgRequest):
            data, suffix, _ = await self._read_input(request.image)
            input_hash = hashlib.sha256(data).hexdigest()
            expected = f"{_UPLOAD_SUBFOLDER}/{input_hash[:32]}{suffix}"
            # Built (so every argument is checked) before the upload touches the network.
            built = self.builder.build_img2img(
                expected,
                request.prompt,
                request.negative,
                request.denoise,
                request.steps,
                request.cfg,
                request.seed,
            )
            upload = (data, input_hash, suffix, expected)
            workflow, seed = built.workflow, built.seed
            stem = request.name or (
                Path(os.fspath(request.image)).stem
                if isinstance(request.image, str | os.PathLike)
                else "img2img"
            )
        else:
            wf = request.workflow
            workflow = wf.to_api() if isinstance(wf, Workflow) else Workflow.from_dict(wf).to_api()
            seed = _first_seed(workflow)
            stem = request.name or "workflow"
        deterministic = not isinstance(request, WorkflowRequest) and request.seed is not None
        key = cache_key(workflow, input_hash) if deterministic else None
        stem = safe_stem(stem)

        if key is not None and self.cache is not None:
            hit = await self.cache.get(key)
            if hit is not None:
                stored = [(p.suffix, await asyncio.to_thread(p.read_bytes)) for p in hit]
                paths = await self._write_outputs(stem, seed, key[:8], stored)
                return GenerationResult(
                    paths, None, seed, workflow, request, True, Timings(submitted)
                )

        if upload is not None:  # only now: a cache hit never touches the server
            data, digest, suffix, expected = upload
            reference = await self._store_input(data, digest, suffix)
            if reference != expected:  # the server renamed it: always use its name
                for node in workflow.values():
                    if node["class_type"] == "LoadImage":
                        node["inputs"]["image"] = reference
        result, images = await self._run_shared(key, workflow, timeout, on_progress)
        if key is not None and self.cache is not None:
            await self.cache.put(key, images)
        paths = await self._write_outputs(stem, seed, result.prompt_id[:8], images)
        timings = Timings(
            submitted, result.queued_at, result.started_at, result.finished_at, time.time()
        )
        return GenerationResult(paths, result.prompt_id, seed, workflow, request, False, timings)

    async def _run_shared(
        self,
        key: str | None,
        workflow: Mapping[str, Any],
        timeout: float | None,
        on_progress: ProgressCallback | None,
    ) -> tuple[PromptResult, list[tuple[str, bytes]]]:
        """Run the workflow and download its images; identical requests in flight share one."""
        if key is None:
            return await self._run_and_download(workflow, timeout, on_progress)
        shared = self._inflight.get(key)
        if shared is not None:
            return await asyncio.shield(shared)
        future: asyncio.Future[tuple[PromptResult, list[tuple[str, bytes]]]]
        future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            outcome = await self._run_and_download(workflow, timeout, on_progress)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(exc)
                future.exception()  # retrieved: followers may be none
            raise
        else:
            future.set_result(outcome)
            return outcome
        finally:
            self._inflight.pop(key, None)

    async def _run_and_download(
        self,
        workflow: Mapping[str, Any],
        timeout: float | None,
        on_progress: ProgressCallback | None,
    ) -> tuple[PromptResult, list[tuple[str, bytes]]]:
        result = await self.client.run(workflow, timeout=timeout, on_progress=on_progress)
        refs = [ref for ref in result.images if ref.type == "output"] or list(result.images)
        images = []
        for ref in refs:
            suffix = PurePosixPath(ref.filename).suffix.lower()
            images.append(
                (suffix if suffix in _IMAGE_SUFFIXES else ".png", await self.client.download(ref))
            )
        return result, images

    # ------------------------------------------------------------------ inputs

    async def _read_input(self, image: Any) -> tuple[bytes, str, str]:
        """The bytes of an input image, checked: ``(data, suffix, source)``."""
        source = _describe(image)
        if isinstance(image, Image.Image):
            data = await asyncio.to_thread(_encode_pil, image)
        elif isinstance(image, bytes | bytearray):
            data = bytes(image)
        elif isinstance(image, str | os.PathLike):
            path = Path(image)
            try:
                size = (await aiofiles.os.stat(path)).st_size
                if size > self.max_input_bytes:
                    raise InputImageError(
                        f"{source}: {size} bytes, over the limit of {self.max_input_bytes}",
                        source=source,
                    )
                async with aiofiles.open(path, "rb") as f:
                    data = await f.read()
            except FileNotFoundError as exc:
                raise InputImageError(f"{source}: no such file", source=source) from exc
            except IsADirectoryError as exc:
                raise InputImageError(f"{source}: is a directory", source=source) from exc
            except PermissionError as exc:
                raise InputImageError(f"{source}: permission denied", source=source) from exc
        else:
            raise InputImageError(
                f"unsupported image input {source}: give a path, bytes or a PIL image",
                source=source,
            )
        if not data:
            raise InputImageError(f"{source}: the file is empty", source=source)
        if len(data) > self.max_input_bytes:
            raise InputImageError(
                f"{source}: {len(data)} bytes, over the limit of {self.max_input_bytes}",
                source=source,
            )
        suffix = await asyncio.to_thread(_verify_image, data, source, self.max_input_pixels)
        return data, suffix, source

    async def _store_input(self, data: bytes, digest: str, suffix: str) -> str:
        """Upload (or copy into ``input_dir``) once per content; returns LoadImage's name."""
        pending = self._uploads.get(digest)
        if pending is None or (pending.done() and pending.exception() is not None):
            pending = asyncio.ensure_future(self._store_once(data, digest, suffix))
            self._uploads[digest] = pending
            while len(self._uploads) > 4096:
                self._uploads.popitem(last=False)
        self._uploads.move_to_end(digest)
        return await asyncio.shield(pending)

    async def _store_once(self, data: bytes, digest: str, suffix: str) -> str:
        name = f"{digest[:32]}{suffix}"
        if self.input_dir is not None:
            await asyncio.to_thread(
                _copy_atomically, data, self.input_dir / _UPLOAD_SUBFOLDER, name
            )
            return f"{_UPLOAD_SUBFOLDER}/{name}"
        uploaded = await self.client.upload_image(data, name=name, subfolder=_UPLOAD_SUBFOLDER)
        return uploaded.reference

    # ------------------------------------------------------------------ outputs

    async def _write_outputs(
        self, stem: str, seed: int | None, tag: str, images: list[tuple[str, bytes]]
    ) -> tuple[Path, ...]:
        """Write images atomically under our own names; nothing partial is ever left."""
        await aiofiles.os.makedirs(self.output_dir, exist_ok=True)
        seed_part = f"_{seed}" if seed is not None else ""
        paths = []
        try:
            for i, (suffix, data) in enumerate(images):
                final = self.output_dir / f"{stem}{seed_part}_{tag}_{i}{suffix}"
                await _write_atomically(final, data)
                paths.append(final)
        except BaseException:
            for path in paths:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            raise
        return tuple(paths)

    # ------------------------------------------------------------------ batches

    async def as_completed(
        self,
        requests: Iterable[Request],
        *,
        concurrency: int = 8,
        return_exceptions: bool = True,
        on_progress: Callable[[int, Event], object] | None = None,
        on_batch_progress: Callable[[BatchProgress], object] | None = None,
    ) -> AsyncIterator[GenerationResult | JobFailure]:
        """Yield each job's outcome as it finishes; ``concurrency`` jobs at a time.

        Requests are consumed lazily, so a huge (or endless) iterable is fine, and nothing
        is kept per finished job. A failing job yields a :class:`JobFailure` (or, with
        ``return_exceptions=False``, raises its error after cancelling the rest — which
        takes their prompts off the server). Leaving the loop early cancels the rest too.
        """
        async for _, outcome in self.enumerate_completed(
            requests, concurrency, return_exceptions, on_progress, on_batch_progress
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
    ) -> list[GenerationResult | JobFailure]:
        """Run every request, ``concurrency`` at a time; outcomes in request order.

        Cancelling it cancels every running job (their prompts leave the server).
        """
        outcomes: dict[int, GenerationResult | JobFailure] = {}
        async for index, outcome in self.enumerate_completed(
            requests, concurrency, return_exceptions, on_progress, on_batch_progress
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
    ) -> AsyncIterator[tuple[int, GenerationResult | JobFailure]]:
        """Like :meth:`as_completed`, yielding ``(index of the request, outcome)`` pairs.

        A pool of ``concurrency`` workers pulls from one shared lazy iterator.
        """
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        total = len(requests) if isinstance(requests, list | tuple) else None
        counts = {"done": 0, "failed": 0, "running": 0, "cached": 0}
        finished: asyncio.Queue[tuple[int, GenerationResult | JobFailure]]
        finished = asyncio.Queue(concurrency)
        pending = enumerate(requests)

        def report() -> None:
            if on_batch_progress is not None:
                try:
                    on_batch_progress(BatchProgress(total, **counts))
                except Exception:
                    log.exception("batch progress callback raised")

        async def worker() -> None:
            for index, request in pending:
                counts["running"] += 1
                report()
                progress = None if on_progress is None else _bind(on_progress, index)
                outcome: GenerationResult | JobFailure
                try:
                    outcome = await self.generate(request, on_progress=progress)
                except (DreamgenError, OSError) as exc:
                    outcome = JobFailure(request, index, exc)
                counts["running"] -= 1
                if isinstance(outcome, JobFailure):
                    counts["failed"] += 1
                else:
                    counts["done"] += 1
                    counts["cached"] += outcome.cached
                report()
                await finished.put((index, outcome))

        workers = [asyncio.create_task(worker(), name="dreamgen-batch") for _ in range(concurrency)]
        all_done = asyncio.gather(*workers)
        try:
            while True:
                get = asyncio.ensure_future(finished.get())
                waiting: set[asyncio.Future[Any]] = {get, all_done}
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    if finished.empty():
                        await all_done  # re-raises a worker's unexpected exception, if any
                        return
                    continue
                index, outcome = get.result()
                if isinstance(outcome, JobFailure) and not return_exceptions:
                    raise outcome.error
                yield index, outcome
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            if all_done.done() and not all_done.cancelled():
                all_done.exception()


def _bind(callback: Callable[[int, Event], object], index: int) -> ProgressCallback:
    return lambda event: callback(index, event)


def _first_seed(workflow: Mapping[str, Any]) -> int | None:
    for node in workflow.values():
        for key in ("seed", "noise_seed"):
            value = node.get("inputs", {}).get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return None


def _copy_atomically(data: bytes, folder: Path, name: str) -> None:
    target = folder / name
    if target.exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".{name}.{uuid.uuid4().hex}.part"
    try:
        staging.write_bytes(data)
        os.replace(staging, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            staging.unlink()


async def _write_atomically(final: Path, data: bytes) -> None:
    staging = final.with_name(f".{final.name}.{uuid.uuid4().hex}.part")
    try:
        async with aiofiles.open(staging, "wb") as f:
            await f.write(data)
        await aiofiles.os.replace(staging, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            await aiofiles.os.remove(staging)
