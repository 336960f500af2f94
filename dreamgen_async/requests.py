"""Request types, what a request comes to, and their round-trip to a journal record (pure).

A request says what to make (:class:`Txt2ImgRequest`, :class:`Img2ImgRequest`,
:class:`WorkflowRequest`); a :class:`GenerationResult` or a :class:`JobFailure` says what it
came to. :func:`request_spec` and :func:`request_from_spec` turn a request into JSON-ready data
and back (what a batch journal keeps for ``dreamgen resume``). Nothing here awaits or touches
the network.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from PIL import Image

from dreamgen_async.errors import DreamgenError, InputImageError, NodeError
from dreamgen_async.workflow_builder import (
    BuiltWorkflow,
    FluxWorkflowBuilder,
    Workflow,
    as_api_graph,
)

__all__ = [
    "GenerationResult",
    "ImageInput",
    "Img2ImgRequest",
    "JobFailure",
    "Request",
    "Timings",
    "Txt2ImgRequest",
    "WorkflowRequest",
    "builder_from_spec",
    "builder_spec",
    "cached_timings",
    "describe_input",
    "encode_pil",
    "first_seed",
    "is_deterministic",
    "request_from_spec",
    "request_spec",
    "tag_key",
]

ImageInput: TypeAlias = "str | os.PathLike[str] | bytes | Image.Image"


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
        server: The server that ran the prompt (``None`` for a cache hit; for a resumed
            item, the one its journal recorded).
        resubmitted: The prompt was posted again while an earlier post of it may also have
            run (a server lost it, a pool moved it, or its server was gone at resume).
        index: The request's position in its batch (as :class:`JobFailure` has); ``None``
            outside a batch.
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
    server: str | None = None
    resubmitted: bool = False
    index: int | None = None

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
            return describe_input(self.request.image)
        return getattr(self.request, "name", None) or f"job {self.index}"


def tag_key(request_key: str, occurrence: int) -> str:
    """A batch item's journal key: its request key, numbered for seedless repeats."""
    return request_key if occurrence == 0 else f"{request_key}-{occurrence}"


def is_deterministic(request: Request, workflow: Mapping[str, Any]) -> tuple[bool, bool]:
    """``(explicit seed, deterministic)`` of a request whose graph is ``workflow``.

    An API-format graph carries its seed literally: the same graph is the same images
    (ComfyUI itself answers it from its cache). Only a LoadImage of a file already on the
    server makes it unknowable to us, so that is not deterministic. A built request is
    deterministic when it names its seed.
    """
    if isinstance(request, WorkflowRequest):
        return True, not any(n.get("class_type") == "LoadImage" for n in workflow.values())
    explicit = request.seed is not None
    return explicit, explicit


def first_seed(workflow: Mapping[str, Any]) -> int | None:
    """The first ``seed`` / ``noise_seed`` literal of a graph (what its result reports)."""
    for node in workflow.values():
        for key in ("seed", "noise_seed"):
            value = node.get("inputs", {}).get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return None


def cached_timings(values: tuple[float | None, ...] | None, submitted: float) -> Timings:
    """A cache hit's timings: the original run's when stored, else just ``submitted``."""
    if not values:
        return Timings(submitted)
    padded = (tuple(values) + (None,) * 5)[:5]
    return Timings(padded[0] or submitted, *padded[1:])


def describe_input(image: Any) -> str:
    """How messages name an input image: its path, or its kind and size."""
    if isinstance(image, str | os.PathLike):
        return os.fspath(image)
    if isinstance(image, bytes | bytearray):
        return f"<{len(image)} bytes>"
    return f"<{type(image).__name__}>"


def encode_pil(image: Image.Image) -> bytes:
    """A PIL image as PNG bytes (blocking)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------- records


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
                data = encode_pil(image) if isinstance(image, Image.Image) else bytes(image)
            except (OSError, ValueError) as exc:  # an image PIL cannot write: its job says so
                source = {"unsupported": f"{describe_input(image)} ({exc})"}
            else:
                source = {"base64": base64.b64encode(data).decode()}
        else:
            source = {"unsupported": describe_input(image)}
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
