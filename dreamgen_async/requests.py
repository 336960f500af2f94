"""Request types, what a request comes to, and their round-trip to a journal record (pure).

A request says what to make (:class:`Txt2ImgRequest`, :class:`Img2ImgRequest`,
:class:`InpaintRequest`, :class:`UpscaleRequest`, :class:`WorkflowRequest`); a
:class:`GenerationResult` or a :class:`JobFailure` says what it came to. :func:`request_spec`
and :func:`request_from_spec` turn a request into JSON-ready data and back (what a batch
journal keeps for ``dreamgen resume``). Nothing here awaits or touches the network.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

from PIL import Image

from dreamgen_async.errors import DreamgenError, InputImageError, NodeError
from dreamgen_async.workflow_builder import (
    BuiltWorkflow,
    FluxWorkflowBuilder,
    Workflow,
    as_api_graph,
)
from dreamgen_async.workflows.recipes import Lora, LoraSpec

__all__ = [
    "ControlNetInput",
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
class ControlNetInput:
    """A ControlNet for one request: a model file on the server and a local control image.

    The image (a path, bytes or a PIL image) is checked and uploaded like a request's input
    image; ``ControlNetApplyAdvanced`` then applies it to both prompts.

    Attributes:
        model: The ControlNet file as the server's ``controlnet`` folder lists it.
        image: The control image (a control map, or any picture with ``preprocessor``).
        strength: 0 to 10.
        start, end: The part of the sampling it acts on, fractions 0 to 1.
        preprocessor: ``"canny"`` to turn the image into edges first (the core ``Canny``
            node), or ``None`` for an image that already is a control map.
    """

    model: str
    image: Any
    strength: float = 1.0
    start: float = 0.0
    end: float = 1.0
    preprocessor: Literal["canny"] | None = None


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
    loras: Sequence[LoraSpec] = ()
    controlnet: ControlNetInput | None = None


@dataclass(frozen=True, slots=True)
class Img2ImgRequest:
    """One image-to-image job. ``image`` is a path, bytes or a PIL image.

    ``max_side``: downscale the input (aspect kept, sides a multiple of the preset's size
    multiple) so that its longer side is at most this many pixels; smaller inputs are sent
    as they are.

    ``loras`` (``(name, strength)`` pairs, names or :class:`Lora`) are chained after the
    builder's own; ``controlnet`` adds a ControlNet (its image uploaded with the input).
    The same two options exist on :class:`Txt2ImgRequest` and :class:`InpaintRequest`.
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
    loras: Sequence[LoraSpec] = ()
    controlnet: ControlNetInput | None = None


@dataclass(frozen=True, slots=True)
class InpaintRequest:
    """Repaint the masked part of an image; every pixel outside the mask stays the input's.

    Attributes:
        image: The image: a path, bytes or a PIL image.
        mask: A mask file (path, bytes or PIL image; white = repaint, black = keep, any size:
            resized to the image's, with a ``MaskAspectWarning`` when its shape differs), or
            ``None`` to use the image's own alpha channel (transparent = repaint).
        prompt: What to paint in the masked area.
        denoise: In (0, 1]; 1 redraws the masked area, lower keeps some of it.
        grow_mask: Pixels to grow the mask by before repainting (0 to 4096).
        feather: Width in pixels of the soft edge, inside the grown mask (0 to 31).
        pad: ``(left, top, right, bottom)`` pixels to outpaint instead (then no mask).
        max_side: As for :class:`Img2ImgRequest` (the mask follows the image's new size).
        loras, controlnet: As for :class:`Img2ImgRequest`.
    """

    image: Any
    mask: Any
    prompt: str
    denoise: float = 1.0
    negative: str = ""
    seed: int | None = None
    steps: int | None = None
    cfg: float | None = None
    name: str | None = None
    max_side: int | None = None
    grow_mask: int = 0
    feather: int = 0
    pad: tuple[int, int, int, int] | None = None
    loras: Sequence[LoraSpec] = ()
    controlnet: ControlNetInput | None = None


@dataclass(frozen=True, slots=True)
class UpscaleRequest:
    """Upscale an image with an upscale model (``ImageUpscaleWithModel``); no sampling.

    ``model``: the server's ``upscale_models`` file; by default the first it has (known to a
    builder from :func:`~dreamgen_async.workflow_io.builder_from_server`).
    """

    image: Any
    model: str | None = None
    name: str | None = None
    max_side: int | None = None


@dataclass(frozen=True, slots=True)
class WorkflowRequest:
    """A user's own API-format workflow, run as it is.

    ``inputs`` maps node ids to local images (a path, bytes or a PIL image): each is
    checked, uploaded under its content hash (once, however many jobs use it) and set as
    that node's ``image`` input (a LoadImage node, say).
    """

    workflow: Workflow | BuiltWorkflow | Mapping[str, Any]
    name: str | None = None
    inputs: Mapping[str, Any] | None = None


Request: TypeAlias = (
    Txt2ImgRequest | Img2ImgRequest | InpaintRequest | UpscaleRequest | WorkflowRequest
)
#: The requests that read an input image.
ImageRequest: TypeAlias = Img2ImgRequest | InpaintRequest | UpscaleRequest


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
        if isinstance(self.request, Img2ImgRequest | InpaintRequest | UpscaleRequest):
            return describe_input(self.request.image)
        return getattr(self.request, "name", None) or f"job {self.index}"


def tag_key(request_key: str, occurrence: int, run_id: str = "") -> str:
    """A batch item's journal key: its request key, numbered for seedless repeats.

    A seedless request is a new request in each run of a batch: its key then names the run
    (``run_id``, see :meth:`~dreamgen_async.journal.BatchJournal.begin_run`) and its count
    in the run. ``run_id=""`` (a request with a seed, or an older journal's unfinished
    run) keeps the key a request always had.
    """
    if run_id:
        return f"{request_key}-{run_id}-{occurrence}"
    return request_key if occurrence == 0 else f"{request_key}-{occurrence}"


def is_deterministic(request: Request, workflow: Mapping[str, Any]) -> tuple[bool, bool]:
    """``(explicit seed, deterministic)`` of a request whose graph is ``workflow``.

    An API-format graph carries its seed literally: the same graph is the same images
    (ComfyUI itself answers it from its cache). Only a LoadImage of a file already on the
    server makes it unknowable to us, so that is not deterministic. A built request is
    deterministic when it names its seed.
    """
    if isinstance(request, WorkflowRequest):
        if randomized_inputs(workflow):  # a UI file's "randomize" seed: drawn in each run
            return False, False
        return True, not any(n.get("class_type") == "LoadImage" for n in workflow.values())
    if isinstance(request, UpscaleRequest):
        return False, True  # no seed, no sampling: the same input gives the same image
    explicit = request.seed is not None
    return explicit, explicit


def randomized_inputs(workflow: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The ``(node id, input)`` pairs a converted UI workflow marks "control after generate:
    randomize" (``_meta["randomize"]``; see ``convert_ui_workflow(controls=True)``)."""
    found = []
    for node_id, node in workflow.items():
        meta = node.get("_meta")
        names = meta.get("randomize") if isinstance(meta, Mapping) else None
        if isinstance(names, list):
            inputs = node.get("inputs", {})
            found += [(node_id, n) for n in names if isinstance(inputs.get(n), int)]
    return found


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


def image_source(image: Any) -> dict[str, str]:
    """An input image as JSON-ready data: an absolute path, base64 bytes, or unsupported."""
    if isinstance(image, str | os.PathLike):
        return {"path": os.path.abspath(image)}
    if isinstance(image, bytes | bytearray | Image.Image):
        try:
            data = encode_pil(image) if isinstance(image, Image.Image) else bytes(image)
        except (OSError, ValueError) as exc:  # an image PIL cannot write: its job says so
            return {"unsupported": f"{describe_input(image)} ({exc})"}
        return {"base64": base64.b64encode(data).decode()}
    return {"unsupported": describe_input(image)}


def image_from_source(source: Mapping[str, str] | None) -> Any:
    """The image :func:`image_source` described (``None``: unsupported, or no image)."""
    if source is None:
        return None
    if "path" in source:
        return source["path"]
    if "base64" in source:
        return base64.b64decode(source["base64"])
    return None  # unsupported: the job fails with InputImageError, by name


def _lora_spec(lora: object) -> Any:
    if isinstance(lora, Lora):
        return [lora.name, lora.strength, lora.clip_strength]
    return list(lora) if isinstance(lora, tuple | list) else lora


def _recipe_options_spec(
    loras: Sequence[LoraSpec], controlnet: ControlNetInput | None
) -> dict[str, Any]:
    control = None
    if controlnet is not None:
        control = {f.name: getattr(controlnet, f.name) for f in dataclasses.fields(controlnet)} | {
            "image": image_source(controlnet.image)
        }
    return {"loras": [_lora_spec(lora) for lora in loras], "controlnet": control}


def _recipe_options_from_spec(fields: dict[str, Any]) -> None:
    """``loras`` and ``controlnet`` of a recorded request back as the request takes them."""
    if "loras" in fields:
        fields["loras"] = tuple(
            tuple(lora) if isinstance(lora, list) else lora for lora in fields["loras"] or ()
        )
    control = fields.get("controlnet")
    if control is not None:
        fields["controlnet"] = ControlNetInput(
            **{**control, "image": image_from_source(control.get("image"))}
        )


def _image_request_spec(request: InpaintRequest | UpscaleRequest) -> dict[str, Any]:
    fields = {f.name: getattr(request, f.name) for f in dataclasses.fields(request)}
    fields["image"] = image_source(request.image)
    if isinstance(request, UpscaleRequest):
        return {"kind": "upscale", **fields}
    fields["mask"] = None if request.mask is None else image_source(request.mask)
    fields["pad"] = None if request.pad is None else list(request.pad)
    return {
        "kind": "inpaint",
        **fields,
        **_recipe_options_spec(request.loras, request.controlnet),
    }


def request_spec(request: Request) -> dict[str, Any]:
    """A request as JSON-ready data (what a journal keeps for ``dreamgen resume``).

    Image paths are made absolute; bytes and PIL images are kept (as base64 PNG bytes).
    """
    if isinstance(request, InpaintRequest | UpscaleRequest):
        return _image_request_spec(request)
    if isinstance(request, Txt2ImgRequest | Img2ImgRequest):
        options = _recipe_options_spec(request.loras, request.controlnet)
        request = dataclasses.replace(request, loras=(), controlnet=None)
        if isinstance(request, Txt2ImgRequest):
            return {"kind": "txt2img", **dataclasses.asdict(request), **options}
        fields = {f.name: getattr(request, f.name) for f in dataclasses.fields(request)}
        source = image_source(fields.pop("image"))
        return {"kind": "img2img", "image": source, **fields, **options}
    wf = request.workflow
    graph = as_api_graph(wf)
    spec: dict[str, Any] = {"kind": "workflow", "workflow": graph, "name": request.name}
    if request.inputs:
        spec["inputs"] = {node: image_source(image) for node, image in request.inputs.items()}
    return spec


def request_from_spec(spec: Mapping[str, Any]) -> Request:
    """The request :func:`request_spec` described."""
    fields = {k: v for k, v in spec.items() if k != "kind"}
    if spec["kind"] in ("txt2img", "img2img", "inpaint"):
        _recipe_options_from_spec(fields)
    if spec["kind"] == "txt2img":
        return Txt2ImgRequest(**fields)
    if spec["kind"] == "img2img":
        return Img2ImgRequest(image_from_source(fields.pop("image")), **fields)
    if spec["kind"] == "inpaint":
        fields["image"] = image_from_source(fields["image"])
        mask = fields["mask"]
        if mask is not None:  # an unsupported mask stays unusable (never the alpha's None)
            mask = image_from_source(mask) if "path" in mask or "base64" in mask else mask
        fields["mask"] = mask
        fields["pad"] = None if fields.get("pad") is None else tuple(fields["pad"])
        return InpaintRequest(**fields)
    if spec["kind"] == "upscale":
        return UpscaleRequest(image_from_source(fields.pop("image")), **fields)
    inputs = fields.get("inputs")
    return WorkflowRequest(
        fields["workflow"],
        fields.get("name"),
        None if not inputs else {n: image_from_source(s) for n, s in inputs.items()},
    )


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
