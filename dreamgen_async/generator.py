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
import base64
import contextlib
import dataclasses
import functools
import hashlib
import io
import logging
import os
import re
import time
import uuid
import warnings
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeAlias

import aiofiles
import aiofiles.os
from PIL import Image, ImageOps, UnidentifiedImageError

from dreamgen_async.cache import ResultCache, request_key
from dreamgen_async.comfyui_api import BIG_BODY, ComfyUIClient
from dreamgen_async.errors import (
    ClientClosedError,
    ConfigError,
    DreamgenError,
    ExecutionError,
    ExecutionInterrupted,
    InputImageError,
    JournalError,
    NodeError,
    PromptTimeout,
    WorkflowError,
)
from dreamgen_async.jobs import Mailbox, ProgressCallback, PromptResult
from dreamgen_async.journal import BatchJournal, JournalItem
from dreamgen_async.pool import ComfyUIPool
from dreamgen_async.protocol import (
    AUDIO_SUFFIXES,
    VIDEO_SUFFIXES,
    Event,
    OutputFile,
    sniff_image_format,
)
from dreamgen_async.workflow_builder import (
    BuiltWorkflow,
    FluxWorkflowBuilder,
    Workflow,
    as_api_graph,
)

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
    """One image-to-image job. ``image`` is a path, bytes or a PIL image.

    ``max_side``: downscale the input (aspect kept, sides a multiple of the preset's size
    multiple) so that its longer side is at most this many pixels; smaller inputs are sent
    as they are.
    """

    image: Any
    prompt: str
    denoise: float = 0.75
    negative: str = ""
    seed: int | None = None
    steps: int | None = None
    cfg: float | None = None
    name: str | None = None
    max_side: int | None = None


@dataclass(frozen=True, slots=True)
class WorkflowRequest:
    """A user's own API-format workflow, run as it is."""

    workflow: Workflow | BuiltWorkflow | Mapping[str, Any]
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
        paths: The outputs written into ``output_dir``, each kind with its own suffix
            (images by their content: ``.png``, ``.jpg``, ``.webp``...; videos ``.webm``/
            ``.mp4``; audio; text values as ``.txt``).
        prompt_id: The server's prompt id (``None`` for a cache hit).
        seed: The seed used (drawn at random when the request had none).
        workflow: The API-format graph that was (or would have been) sent.
        request: The request this answers.
        cached: Whether the images came from the result cache (no server work).
        timings: When it was submitted, queued, started, finished and downloaded. On a
            cache hit, the original run's (``None`` where not recorded); for an item a
            journal found done, only ``submitted``.
        node_errors: Nodes the server refused while running the rest (a partial prompt:
            200 with ``node_errors``); their ``dependent_outputs`` produced nothing.
        resumed: The item was finished by an earlier run of its journaled batch: its files
            were checked and nothing was sent.
    """

    paths: tuple[Path, ...]
    prompt_id: str | None
    seed: int | None
    workflow: Mapping[str, Any] = field(repr=False)
    request: Request = field(repr=False)
    cached: bool = False
    timings: Timings = field(default_factory=lambda: Timings(time.time()))
    node_errors: tuple[NodeError, ...] = ()
    resumed: bool = False

    @property
    def path(self) -> Path:
        """The first output written."""
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
    resumed: int = 0


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
    upload: tuple[bytes, str, str, str] | None

    @property
    def name_seed(self) -> int | None:
        """The seed shown in file names: only one the request chose (a drawn one varies)."""
        return self.seed if self.explicit_seed else None


@dataclass(frozen=True, slots=True)
class _Fetched:
    """Images obtained from the server for one request, with the run's timings."""

    prompt_id: str | None
    images: list[tuple[str, bytes]]
    timings: tuple[float | None, ...]
    seed: int | None = None  # the seed of a prompt an earlier run posted
    node_errors: tuple[NodeError, ...] = ()


def tag_key(request_key: str, occurrence: int) -> str:
    """A batch item's journal key: its request key, numbered for seedless repeats."""
    return request_key if occurrence == 0 else f"{request_key}-{occurrence}"


def output_name(stem: str, seed: int | None, tag: str, index: int, suffix: str) -> str:
    """``<stem>[_<seed>]_<tag>_<index><suffix>``: the file name of one output image."""
    seed_part = f"_{seed}" if seed is not None else ""
    return f"{stem}{seed_part}_{tag}_{index}{suffix}"


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

    def __init__(
        self,
        gen: DreamGenerator,
        requests: Iterable[Request],
        concurrency: int,
        journal: str | os.PathLike[str] | None = None,
    ) -> None:
        self._progress: Mailbox[BatchProgress] = Mailbox()
        self._task = asyncio.create_task(
            gen.generate_many(
                requests,
                concurrency=concurrency,
                on_batch_progress=self._progress.put,
                journal=journal,
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
        raise InputImageError(
            f"{source}: the image is too large for Pillow to open safely ({exc}); "
            f"downscale it (max_input_pixels is {max_pixels})",
            source=source,
        ) from exc
    except UnidentifiedImageError as exc:
        raise InputImageError(
            f"{source}: not a readable image (not PNG, JPEG, WEBP or another known format)",
            source=source,
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        detail = re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "the data", str(exc))
        raise InputImageError(
            f"{source}: not a readable image (it looks damaged: {detail})", source=source
        ) from exc
    if width * height > max_pixels:
        raise InputImageError(
            f"{source}: image is {width}x{height} = {width * height} pixels, over "
            f"max_input_pixels={max_pixels}; pass max_side= to downscale it, or raise "
            "DreamGenerator(max_input_pixels=...)",
            source=source,
        )
    return {"jpeg": ".jpg"}.get(fmt, f".{fmt}")


_FORMAT_SUFFIXES = {"jpeg": ".jpg", "tiff": ".tif"}
_DEFAULT_SUFFIXES = {"video": ".mp4", "audio": ".flac", "text": ".txt", "other": ".bin"}


def output_suffix(file: OutputFile, data: bytes) -> str:
    """The suffix we write an output under: images by their magic bytes, other kinds by
    the server's suffix when it is a known one for the kind, else a default per kind."""
    if file.kind in ("image", "animated"):
        fmt = sniff_image_format(data) or "png"
        return _FORMAT_SUFFIXES.get(fmt, f".{fmt}")
    if file.kind == "text":
        return ".txt"
    suffix = PurePosixPath(file.filename).suffix.lower()
    known = {"video": VIDEO_SUFFIXES, "audio": AUDIO_SUFFIXES}.get(file.kind)
    if (known is not None and suffix in known) or (
        file.kind == "other" and re.fullmatch(r"\.[a-z0-9]{1,8}", suffix)
    ):
        return suffix
    return _DEFAULT_SUFFIXES[file.kind]


async def _sha256(data: bytes) -> str:
    """The hex digest; in a worker thread for large data (10 MB take ~10 ms to hash)."""
    if len(data) > BIG_BODY:
        return await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
    return hashlib.sha256(data).hexdigest()


def fit_within(width: int, height: int, max_side: int, multiple: int = 8) -> tuple[int, int]:
    """The size to downscale ``width`` x ``height`` to so that its longer side is at most
    ``max_side``: aspect kept, both sides a multiple of ``multiple``. Unchanged if it fits."""
    if max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    limit = max(multiple, max_side // multiple * multiple)

    def side(value: int) -> int:
        return min(limit, max(multiple, round(value * scale / multiple) * multiple))

    return side(width), side(height)


def _downscale(data: bytes, source: str, max_side: int, multiple: int) -> bytes:
    """Runs in a worker thread: ``data`` re-encoded as PNG within ``max_side`` (EXIF
    orientation applied first, as ComfyUI's LoadImage does), or ``data`` if it fits."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                size = fit_within(img.width, img.height, max_side, multiple)
                if size == img.size:
                    return data
                upright = ImageOps.exif_transpose(img)
                size = fit_within(upright.width, upright.height, max_side, multiple)
                mode = "RGBA" if "A" in upright.getbands() else "RGB"
                resized = upright.convert(mode).resize(size, Image.Resampling.LANCZOS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputImageError(
            f"{source}: the image is too large for Pillow to open safely ({exc})", source=source
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputImageError(
            f"{source}: not a readable image (not PNG, JPEG, WEBP or another known format)",
            source=source,
        ) from exc
    buffer = io.BytesIO()
    resized.save(buffer, format="PNG", compress_level=4)
    return buffer.getvalue()


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
        self._inflight: dict[str, _SharedRun] = {}
        self._adopters: dict[str, ComfyUIClient] = {}
        self._adopters_lock = asyncio.Lock()

    async def __aenter__(self) -> DreamGenerator:
        if self._owns_client:
            await self.client.open()
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
        adopters, self._adopters = list(self._adopters.values()), {}
        for adopter in adopters:  # they share the client's session: closed first
            await adopter.aclose(detach=detach)
        if self._owns_client:
            await self.client.aclose(detach=detach)

    def _journaled_client(self) -> ComfyUIClient:
        """The one client a batch journal records (its server, its client_id)."""
        if not isinstance(self.client, ComfyUIClient):
            raise ConfigError(
                "a batch journal records one server's prompts: use it with a ComfyUIClient "
                "(or a server URL), not a ComfyUIPool"
            )
        return self.client

    def _check_entered(self) -> None:
        if self._owns_client and self.client._state == "unopened":
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
        max_side: int | None = None,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> GenerationResult:
        """Image to image; ``image`` is a path, bytes or a PIL image.

        ``max_side`` downscales a larger input first (aspect kept; see
        :class:`Img2ImgRequest`). Cancelling it takes the prompt off the server; no file
        is left.

        Raises:
            InputImageError: the image is missing, empty, not an image or too large
                (before any network call); ``.source`` names it.
            WorkflowError: an argument is invalid (before any network call).
        """
        request = Img2ImgRequest(image, prompt, denoise, negative, seed, steps, cfg, name, max_side)
        return await self.generate(request, timeout=timeout, on_progress=on_progress)

    async def run_workflow(
        self,
        workflow: Workflow | BuiltWorkflow | Mapping[str, Any],
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

    def start_batch(
        self,
        requests: Iterable[Request],
        *,
        concurrency: int = 8,
        journal: str | os.PathLike[str] | None = None,
    ) -> Batch:
        """Start a batch in the background; follow it with ``progress()``.

        ``journal=``: as for :meth:`as_completed`.
        """
        return Batch(self, requests, concurrency, journal)

    async def generate(
        self,
        request: Request,
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> GenerationResult:
        """Run one request of any kind (what the batch forms call)."""
        self._check_entered()
        prepared = await self._prepare(request)
        return await self._complete(prepared, 0, timeout, on_progress)

    async def _prepare(self, request: Request) -> _Prepared:
        """Build the workflow and the request's key; checks every argument, no network."""
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
            data, suffix, _ = await self._read_input(request.image, request.max_side)
            input_hash = await _sha256(data)
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
            workflow = Workflow(as_api_graph(wf)).to_api()  # validated: fails before any I/O
            seed = _first_seed(workflow)
            stem = request.name or "workflow"
        if isinstance(request, WorkflowRequest):
            # An API-format graph carries its seed literally: the same graph is the same
            # images (ComfyUI itself answers it from its cache). Only a LoadImage of a file
            # already on the server makes it unknowable to us, so that is not cached.
            explicit = True
            deterministic = not any(n.get("class_type") == "LoadImage" for n in workflow.values())
        else:
            explicit = deterministic = request.seed is not None
        key = request_key(workflow, input_hash, None if explicit else seed)
        return _Prepared(
            request, workflow, seed, explicit, key, deterministic, safe_stem(stem), upload
        )

    async def _complete(
        self,
        prep: _Prepared,
        occurrence: int,
        timeout: float | None,
        on_progress: ProgressCallback | None,
        journal: BatchJournal | None = None,
        index: int = 0,
    ) -> GenerationResult:
        """Answer a prepared request: from the journal, the cache, or by running it.

        With a journal, the item's record decides first: done with its files intact →
        skipped; posted → collected from its server by prompt_id (run only if the server
        does not have it); otherwise run, the prompt_id committed before the POST.
        """
        submitted = time.time()
        tag = prep.key[:12] if occurrence == 0 else f"{prep.key[:12]}-{occurrence}"
        item: JournalItem | None = None
        if journal is not None:
            item = await journal.begin(tag_key(prep.key, occurrence), prep.key, index)
            if item.state == "done" and await asyncio.to_thread(item.files_intact):
                return GenerationResult(
                    tuple(Path(f.path) for f in item.files),
                    item.prompt_id,
                    item.seed if item.seed is not None else prep.seed,
                    prep.workflow,
                    prep.request,
                    item.cached,
                    Timings(submitted),
                    resumed=True,
                )
        try:
            result = await self._answer(prep, tag, item, journal, submitted, timeout, on_progress)
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

    async def _answer(
        self,
        prep: _Prepared,
        tag: str,
        item: JournalItem | None,
        journal: BatchJournal | None,
        submitted: float,
        timeout: float | None,
        on_progress: ProgressCallback | None,
    ) -> GenerationResult:
        if prep.deterministic and self.cache is not None:
            entry = await self.cache.get_entry(prep.key)
            if entry is not None:
                paths = await self._write_outputs(prep, tag, list(entry.images))
                timings = _timings(entry.timings, submitted)
                return GenerationResult(
                    paths, None, prep.seed, prep.workflow, prep.request, True, timings
                )
        fetched = await self._run_shared(
            prep.key if prep.deterministic else None,
            lambda wait, progress: self._fetch(prep, wait, progress, item, journal),
            timeout,
            on_progress,
        )
        paths = await self._write_outputs(prep, tag, fetched.images)
        queued, started, finished = (fetched.timings + (None,) * 5)[1:4]
        timings = Timings(submitted, queued, started, finished, time.time())
        seed = fetched.seed if fetched.seed is not None else prep.seed
        return GenerationResult(
            paths,
            fetched.prompt_id,
            seed,
            prep.workflow,
            prep.request,
            False,
            timings,
            node_errors=fetched.node_errors,
        )

    async def _fetch(
        self,
        prep: _Prepared,
        timeout: float | None,
        on_progress: ProgressCallback | None,
        item: JournalItem | None = None,
        journal: BatchJournal | None = None,
    ) -> _Fetched:
        """Collect the item's earlier prompt, or upload (only now: a cache hit never touches
        the server), run and download."""
        fetched: _Fetched | None = None
        if item is not None and item.prompt_id is not None and not item.cached:
            fetched = await self._collect(item, prep, timeout, on_progress)
        if fetched is None:
            await self._upload(prep)
            started = time.time()
            before_post: Callable[[str], Awaitable[None]] | None = None
            if journal is not None and item is not None:
                key, client = item.item_key, self._journaled_client()

                async def before_post(prompt_id: str) -> None:
                    await journal.posted(
                        key, prompt_id, client.base_url, client.client_id, prep.seed
                    )

            result, images = await self._run_and_download(
                prep.workflow, timeout, on_progress, before_post
            )
            fetched = _Fetched(
                result.prompt_id,
                images,
                (started, result.queued_at, result.started_at, result.finished_at, time.time()),
                node_errors=result.node_errors,
            )
        if prep.deterministic and self.cache is not None:
            await self.cache.put(prep.key, fetched.images, fetched.timings)
        return fetched

    async def _collect(
        self,
        item: JournalItem,
        prep: _Prepared,
        timeout: float | None,
        on_progress: ProgressCallback | None,
    ) -> _Fetched | None:
        """Collect a prompt an earlier run posted; ``None`` when it must run (again)."""
        assert item.prompt_id is not None
        client = await self._client_for(item)
        if client is None:
            return None
        job = await client.adopt(item.prompt_id, workflow=prep.workflow, on_progress=on_progress)
        if job is None:
            log.info("prompt %s of an earlier run is not on the server: running it", item.prompt_id)
            return None
        try:
            result = await job.result(timeout)
        except (ExecutionInterrupted, ExecutionError) as exc:
            log.info("prompt %s of an earlier run failed (%s): running it", item.prompt_id, exc)
            return None
        images = await self._download(client, result)
        now = time.time()
        timings = (now, result.queued_at, result.started_at, result.finished_at, now)
        return _Fetched(item.prompt_id, images, timings, item.seed, result.node_errors)

    async def _client_for(self, item: JournalItem) -> ComfyUIClient | None:
        """The client that receives the events of ``item``'s prompt (its client_id)."""
        single = self._journaled_client()
        if item.server is not None and item.server != single.base_url:
            log.warning(
                "prompt %s was posted to %s, not %s: running it here",
                item.prompt_id,
                item.server,
                single.base_url,
            )
            return None
        if item.client_id is None or item.client_id == single.client_id:
            return single
        async with self._adopters_lock:
            adopter = self._adopters.get(item.client_id)
            if adopter is None:
                adopter = single.with_client_id(item.client_id)
                await adopter.open()
                self._adopters[item.client_id] = adopter
        return adopter

    async def _upload(self, prep: _Prepared) -> None:
        if prep.upload is None:
            return
        data, digest, suffix, expected = prep.upload
        reference = await self._store_input(data, digest, suffix)
        if reference != expected:  # the server renamed it: always use its name
            for node in prep.workflow.values():
                if node["class_type"] == "LoadImage":
                    node["inputs"]["image"] = reference

    async def _run_shared(
        self,
        key: str | None,
        fetch: Callable[[float | None, ProgressCallback | None], Coroutine[Any, Any, _Fetched]],
        timeout: float | None,
        on_progress: ProgressCallback | None,
    ) -> _Fetched:
        """Run ``fetch``; identical requests in flight at once share one run.

        The shared run belongs to no caller: each caller's ``timeout`` or cancellation ends
        only its own wait, every caller gets the progress events, and the prompt is taken off
        the server only when the last caller still waiting for it gives up.
        """
        if key is None:
            return await fetch(timeout, on_progress)
        shared = self._inflight.get(key)
        if shared is None:
            shared = self._inflight[key] = _SharedRun(key)
            shared.task = asyncio.create_task(
                fetch(None, shared.fan_out), name="dreamgen-shared-run"
            )
            shared.task.add_done_callback(functools.partial(self._shared_done, key, shared))
        task = shared.task
        assert task is not None
        shared.join(on_progress)
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(task)
        except TimeoutError:
            if task.done() and not task.cancelled() and task.exception() is None:
                return task.result()
            raise PromptTimeout(
                f"request did not finish within {timeout} s"
                + ("" if shared.interest > 1 else "; it was removed from the server"),
                prompt_id=None,
            ) from None
        finally:
            if shared.leave(on_progress) and not task.done():
                # The last caller gave up: take the prompt back, and wait until it is.
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    def _shared_done(self, key: str, shared: _SharedRun, task: asyncio.Task[Any]) -> None:
        if self._inflight.get(key) is shared:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: every caller may have given up already

    async def _run_and_download(
        self,
        workflow: Mapping[str, Any],
        timeout: float | None,
        on_progress: ProgressCallback | None,
        before_post: Callable[[str], Awaitable[None]] | None = None,
    ) -> tuple[PromptResult, list[tuple[str, bytes]]]:
        """Run the workflow under a prompt_id chosen here, then download its images.

        ``before_post(prompt_id)`` runs before the prompt is posted (the journal commits the
        id there, so a crash at any later moment can find the prompt on the server).
        """
        prompt_id = str(uuid.uuid4())
        if before_post is not None:
            await before_post(prompt_id)
        job = await self.client.submit(workflow, on_progress=on_progress, prompt_id=prompt_id)
        result = await job.result(timeout)
        return result, await self._download(self.client, result)

    @staticmethod
    async def _download(
        client: ComfyUIClient | ComfyUIPool, result: PromptResult
    ) -> list[tuple[str, bytes]]:
        # Saved outputs of every kind (and text values); previews only when nothing was saved.
        saved = any(f.ref is not None and f.ref.type == "output" for f in result.files)
        saved = saved or any(ref.type == "output" for ref in result.images)
        outputs = await client.get_outputs(result, previews=not saved)
        return [(output_suffix(o.file, o.data), o.data) for o in outputs]

    # ------------------------------------------------------------------ inputs

    async def _read_input(self, image: Any, max_side: int | None = None) -> tuple[bytes, str, str]:
        """The bytes of an input image, checked (and downscaled to ``max_side``):
        ``(data, suffix, source)``."""
        source = _describe(image)
        if max_side is not None and (
            isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 16
        ):
            raise WorkflowError(
                f"max_side must be an integer of at least 16 pixels, got {max_side!r}",
                input_name="max_side",
            )
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
                        f"{source}: {size} bytes, over max_input_bytes={self.max_input_bytes}",
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
                f"{source}: {len(data)} bytes, over max_input_bytes={self.max_input_bytes}",
                source=source,
            )
        if max_side is not None:
            multiple = self.builder.preset.size_multiple
            data = await asyncio.to_thread(_downscale, data, source, max_side, multiple)
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
        self, prep: _Prepared, tag: str, images: list[tuple[str, bytes]]
    ) -> tuple[Path, ...]:
        """Write images atomically under our own, stable names; nothing partial is left.

        The name is the request's (``<name>[_<seed>]_<request key>_<n>``): the same request
        writes the same file in every run, hit or miss, so a rerun replaces, never duplicates.
        """
        await aiofiles.os.makedirs(self.output_dir, exist_ok=True)
        paths = []
        try:
            for i, (suffix, data) in enumerate(images):
                final = self.output_dir / output_name(prep.stem, prep.name_seed, tag, i, suffix)
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
        journal: str | os.PathLike[str] | None = None,
    ) -> AsyncIterator[GenerationResult | JobFailure]:
        """Yield each job's outcome as it finishes; ``concurrency`` jobs at a time.

        Requests are consumed lazily, so a huge (or endless) iterable is fine, and nothing
        is kept per finished job. A failing job yields a :class:`JobFailure` (or, with
        ``return_exceptions=False``, raises its error after cancelling the rest — which
        takes their prompts off the server). Leaving the loop early cancels the rest too.

        With ``journal=`` (a file path; see "Long batches" in the README) the batch is
        recorded as it runs and a rerun with the same file resumes it: items already done
        are skipped, prompts an earlier run posted are collected instead of run again.

        Raises:
            JournalError: the journal is in use by another process, or not a journal.
        """
        async for _, outcome in self.enumerate_completed(
            requests,
            concurrency,
            return_exceptions,
            on_progress,
            on_batch_progress,
            journal=journal,
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
    ) -> list[GenerationResult | JobFailure]:
        """Run every request, ``concurrency`` at a time; outcomes in request order.

        Cancelling it cancels every running job (their prompts leave the server).
        ``journal=``: as for :meth:`as_completed`.
        """
        outcomes: dict[int, GenerationResult | JobFailure] = {}
        async for index, outcome in self.enumerate_completed(
            requests,
            concurrency,
            return_exceptions,
            on_progress,
            on_batch_progress,
            journal=journal,
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
    ) -> AsyncIterator[tuple[int, GenerationResult | JobFailure]]:
        """Like :meth:`as_completed`, yielding ``(index of the request, outcome)`` pairs.

        A pool of ``concurrency`` workers pulls from one shared lazy iterator; ``timeout``
        applies to each job (see :meth:`generate`).
        """
        if concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {concurrency}")
        if journal is None:
            async for pair in self._enumerate(
                requests,
                concurrency,
                return_exceptions,
                on_progress,
                on_batch_progress,
                None,
                timeout,
            ):
                yield pair
            return
        opened = await BatchJournal.open(journal)
        try:
            await self._describe_batch(opened, requests)
            # A run killed mid-write left staging files: this batch's folder, swept.
            await asyncio.to_thread(_sweep_staging, self.output_dir)
            async for pair in self._enumerate(
                requests,
                concurrency,
                return_exceptions,
                on_progress,
                on_batch_progress,
                opened,
                timeout,
            ):
                yield pair
        finally:
            await opened.aclose()

    async def _describe_batch(self, journal: BatchJournal, requests: Iterable[Request]) -> None:
        """Record what a later ``dreamgen resume`` needs: server, folders, builder, requests."""
        await journal.set_meta(
            {"client_id": self._journaled_client().client_id, "created": time.time()}, keep=True
        )
        output_dir = await asyncio.to_thread(os.path.abspath, self.output_dir)
        await journal.set_meta(
            {
                "server": self._journaled_client().base_url,
                "output_dir": output_dir,
                "builder": builder_spec(self.builder),
            }
        )
        if isinstance(requests, list | tuple):
            specs = await asyncio.to_thread(
                lambda: [(i, request_spec(r)) for i, r in enumerate(requests)]
            )
            await journal.record_requests(specs, replace=True)

    async def _enumerate(
        self,
        requests: Iterable[Request],
        concurrency: int,
        return_exceptions: bool,
        on_progress: Callable[[int, Event], object] | None,
        on_batch_progress: Callable[[BatchProgress], object] | None,
        journal: BatchJournal | None,
        timeout: float | None = None,
    ) -> AsyncIterator[tuple[int, GenerationResult | JobFailure]]:
        total = len(requests) if isinstance(requests, list | tuple) else None
        lazy = total is None
        counts = {"done": 0, "failed": 0, "running": 0, "cached": 0, "resumed": 0}
        finished: asyncio.Queue[tuple[int, GenerationResult | JobFailure]]
        finished = asyncio.Queue(concurrency)
        pending = enumerate(requests)
        repeats: dict[str, int] = {}

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
                    if journal is not None and lazy:
                        spec = await asyncio.to_thread(request_spec, request)
                        await journal.record_requests([(index, spec)], replace=False)
                    prepared = await self._prepare(request)
                    occurrence = 0
                    if not prepared.deterministic:
                        # The n-th repeat of a seedless request is its own image, named apart.
                        occurrence = repeats.get(prepared.key, 0)
                        repeats[prepared.key] = occurrence + 1
                    outcome = await self._complete(
                        prepared, occurrence, timeout, progress, journal, index
                    )
                except (DreamgenError, OSError) as exc:
                    outcome = JobFailure(request, index, exc)
                counts["running"] -= 1
                if isinstance(outcome, JobFailure):
                    counts["failed"] += 1
                else:
                    counts["done"] += 1
                    counts["cached"] += outcome.cached
                    counts["resumed"] += outcome.resumed
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


def request_spec(request: Request) -> dict[str, Any]:
    """A request as JSON-ready data (what a journal keeps for ``dreamgen resume``).

    Image paths are made absolute; bytes and PIL images are kept (as base64 PNG bytes).
    """
    if isinstance(request, Txt2ImgRequest):
        return {"kind": "txt2img", **dataclasses.asdict(request)}
    if isinstance(request, Img2ImgRequest):
        fields = {f.name: getattr(request, f.name) for f in dataclasses.fields(request)}
        image = fields.pop("image")
        source: dict[str, str]
        if isinstance(image, str | os.PathLike):
            source = {"path": os.path.abspath(image)}
        elif isinstance(image, bytes | bytearray | Image.Image):
            try:
                data = _encode_pil(image) if isinstance(image, Image.Image) else bytes(image)
            except (OSError, ValueError) as exc:  # an image PIL cannot write: its job says so
                source = {"unsupported": f"{_describe(image)} ({exc})"}
            else:
                source = {"base64": base64.b64encode(data).decode()}
        else:
            source = {"unsupported": _describe(image)}
        return {"kind": "img2img", "image": source, **fields}
    wf = request.workflow
    graph = as_api_graph(wf)
    return {"kind": "workflow", "workflow": graph, "name": request.name}


def request_from_spec(spec: Mapping[str, Any]) -> Request:
    """The request :func:`request_spec` described."""
    fields = {k: v for k, v in spec.items() if k != "kind"}
    if spec["kind"] == "txt2img":
        return Txt2ImgRequest(**fields)
    if spec["kind"] == "img2img":
        source = fields.pop("image")
        image: Any = None  # unsupported: the job fails with InputImageError, by name
        if "path" in source:
            image = source["path"]
        elif "base64" in source:
            image = base64.b64decode(source["base64"])
        return Img2ImgRequest(image, **fields)
    return WorkflowRequest(fields["workflow"], fields.get("name"))


def builder_spec(builder: FluxWorkflowBuilder) -> dict[str, Any]:
    """A builder's settings as JSON-ready data."""
    return {
        "checkpoint": builder.checkpoint,
        "preset": builder.preset.name,
        "sampler": builder.sampler,
        "scheduler": builder.scheduler,
        "filename_prefix": builder.filename_prefix,
        "steps": builder.steps,
        "cfg": builder.cfg,
        "guidance": builder.guidance,
    }


def builder_from_spec(spec: Mapping[str, Any]) -> FluxWorkflowBuilder:
    """The builder :func:`builder_spec` described."""
    spec = dict(spec)
    return FluxWorkflowBuilder(spec.pop("checkpoint"), **spec)


class _SharedRun:
    """One server run shared by identical requests in flight, and who still waits for it."""

    __slots__ = ("callbacks", "interest", "key", "task")

    def __init__(self, key: str) -> None:
        self.key = key
        self.task: asyncio.Task[_Fetched] | None = None
        self.interest = 0
        self.callbacks: list[ProgressCallback] = []

    def join(self, on_progress: ProgressCallback | None) -> None:
        self.interest += 1
        if on_progress is not None:
            self.callbacks.append(on_progress)

    def leave(self, on_progress: ProgressCallback | None) -> bool:
        """One caller is done waiting; True when it was the last."""
        self.interest -= 1
        if on_progress is not None:
            self.callbacks.remove(on_progress)
        return self.interest == 0

    def fan_out(self, event: Event) -> None:
        for callback in list(self.callbacks):
            try:
                callback(event)
            except Exception:
                log.exception("progress callback for request %s raised", self.key[:12])


def _bind(callback: Callable[[int, Event], object], index: int) -> ProgressCallback:
    return lambda event: callback(index, event)


def _timings(values: tuple[float | None, ...] | None, submitted: float) -> Timings:
    """A cache hit's timings: the original run's when stored, else just ``submitted``."""
    if not values:
        return Timings(submitted)
    padded = (tuple(values) + (None,) * 5)[:5]
    return Timings(padded[0] or submitted, *padded[1:])


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


_STAGING = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{32}\.part$")


def _sweep_staging(folder: Path) -> int:
    """Remove staging files left by writer processes that died mid-write (blocking).

    A staging file names its writer's pid; files of a live process are left alone.
    """
    removed = 0
    try:
        entries = list(folder.iterdir())
    except FileNotFoundError:
        return 0
    for path in entries:
        match = _STAGING.match(path.name)
        if match is None or _alive(int(match.group(1))):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but not ours to signal
        return True
    return True


async def _write_atomically(final: Path, data: bytes) -> None:
    staging = final.with_name(f".{final.name}.{os.getpid()}.{uuid.uuid4().hex}.part")
    try:
        async with aiofiles.open(staging, "wb") as f:
            await f.write(data)
        await aiofiles.os.replace(staging, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            await aiofiles.os.remove(staging)
