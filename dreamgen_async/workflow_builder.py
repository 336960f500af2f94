"""ComfyUI workflows as pure data: build them, load them, patch them.

Three layers, none of which does any network I/O (the only I/O is :func:`load_workflow`,
which reads one JSON file synchronously):

* :class:`Graph` - a typed graph builder. ``g.add(class_type, **inputs)`` returns a
  :class:`Node` whose ``node.out(i)`` is an :class:`Output` handle; passing a handle as an
  input makes a link. ``g.to_api()`` gives ComfyUI's API format.
* :class:`FluxWorkflowBuilder` - the txt2img and img2img graphs this library runs, with
  presets for Flux schnell / dev, SD 1.5 and SDXL. Every argument is checked before a graph
  is produced; a bad one raises :class:`~dreamgen_async.errors.WorkflowError` naming it.
* :class:`Workflow` - a user's exported API-format workflow, validated and patchable by
  node id, title or class type (``wf.patch("KSampler.seed", 42)``).

The API format (see ComfyUI's ``POST /prompt``)::

    {"3": {"class_type": "KSampler",
           "inputs": {"seed": 42, "model": ["4", 0], ...},
           "_meta": {"title": "KSampler"}}}

A two-element ``[node_id, output_index]`` list is a link; a literal list value must be
wrapped as ``{"__value__": [...]}``. Both builders do that wrapping for you.
"""

from __future__ import annotations

import copy
import json
import math
import os
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, TypeAlias, TypeGuard

from dreamgen_async.errors import UIWorkflowError, WorkflowError

__all__ = [
    "MAX_SEED",
    "NODE_OUTPUTS",
    "OUTPUT_NODE_CLASSES",
    "PRESETS",
    "BuiltWorkflow",
    "FluxWorkflowBuilder",
    "Graph",
    "InputValue",
    "Node",
    "Output",
    "Preset",
    "Workflow",
    "as_api_graph",
    "load_workflow",
    "parse_set_assignment",
    "preset_for_checkpoint",
    "random_seed",
]

#: The largest seed ComfyUI's KSampler accepts (``0xffffffffffffffff``).
MAX_SEED = 0xFFFF_FFFF_FFFF_FFFF

#: ComfyUI's largest latent/image side (``MAX_RESOLUTION`` in its ``nodes.py``).
MAX_RESOLUTION = 16384

#: ComfyUI's largest ``EmptyLatentImage`` batch.
MAX_BATCH_SIZE = 4096

#: Output names, by index, of the node classes this library knows. A class that is not
#: listed may have any number of outputs.
NODE_OUTPUTS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "CheckpointLoaderSimple": ("MODEL", "CLIP", "VAE"),
        "CLIPTextEncode": ("CONDITIONING",),
        "FluxGuidance": ("CONDITIONING",),
        "EmptyLatentImage": ("LATENT",),
        "EmptySD3LatentImage": ("LATENT",),
        "LoadImage": ("IMAGE", "MASK"),
        "VAEEncode": ("LATENT",),
        "KSampler": ("LATENT",),
        "VAEDecode": ("IMAGE",),
        "SaveImage": (),
        "PreviewImage": (),
    }
)

#: Node classes whose results come back as images (``executed`` / history outputs).
OUTPUT_NODE_CLASSES = frozenset({"SaveImage", "PreviewImage"})

#: What a node input may hold when building a graph: a link or a JSON literal.
InputValue: TypeAlias = "Output | str | int | float | bool | list[Any] | dict[str, Any] | None"

_UI_EXPORT_HINT = (
    "ComfyUI's HTTP API only accepts the API format. In ComfyUI, use the menu "
    "Workflow → Export (API) (in older versions: enable 'Dev mode options' in Settings, "
    "then 'Save (API Format)'); it saves a workflow_api.json file - load that one instead."
)


def _id_sort_key(node_id: str) -> tuple[int, int, str]:
    """Sort numeric ids numerically ("2" before "10"), then the others by name."""
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)


def _is_link(value: object) -> TypeGuard[list[Any]]:
    """Whether ComfyUI reads ``value`` as a link (``[str, int]``), as its executor does."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def _quoted(names: list[str], *, limit: int = 30) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return (shown + more) if names else "(none)"


# --------------------------------------------------------------------------- typed graph


@dataclass(frozen=True, slots=True)
class Output:
    """One output of one node: what a link points to.

    Attributes:
        node_id: The producing node.
        index: The output's position (``CheckpointLoaderSimple``: 0 MODEL, 1 CLIP, 2 VAE).
        type_name: The output's ComfyUI type, when the node class is known.
    """

    node_id: str
    index: int
    type_name: str | None = None

    def to_api(self) -> list[str | int]:
        """The link as ComfyUI's API format writes it: ``[node_id, index]``."""
        return [self.node_id, self.index]


@dataclass(frozen=True, eq=False)
class Node:
    """A node added to a :class:`Graph`. Use :meth:`out` to link its outputs elsewhere.

    Attributes:
        id: The node id in the graph (``"1"``, ``"2"``... unless chosen).
        class_type: The ComfyUI node class (``KSampler``...).
        title: Shown in ComfyUI as the node's title; stored in ``_meta.title``.
        inputs: The inputs as given (links still as :class:`Output` handles).
    """

    id: str
    class_type: str
    title: str
    inputs: Mapping[str, InputValue] = field(repr=False)

    @property
    def output_names(self) -> tuple[str, ...] | None:
        """The known output names by index, or ``None`` for a class this library does not know."""
        return NODE_OUTPUTS.get(self.class_type)

    def out(self, index: int | str) -> Output:
        """A handle on one of this node's outputs.

        Args:
            index: The output's position, or (for known classes) its type name, e.g. ``"VAE"``.

        Returns:
            The handle to pass as another node's input.

        Raises:
            WorkflowError: The index is negative, or past the outputs of a known class, or
                a name was given that the class does not have (or the class is unknown).
        """
        names = self.output_names
        if isinstance(index, str):
            if names is None or index not in names:
                known = "unknown for this class" if names is None else _quoted(list(names))
                raise WorkflowError(
                    f"node {self.id} ({self.class_type}) has no output named {index!r}; "
                    f"its outputs: {known}. Use an index instead.",
                    node_id=self.id,
                )
            return Output(self.id, names.index(index), index)
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise WorkflowError(
                f"unknown output index {index!r} of node {self.id} ({self.class_type}): "
                "an output index is an int >= 0",
                node_id=self.id,
            )
        if names is None:
            return Output(self.id, index)
        if index >= len(names):
            raise WorkflowError(
                f"unknown output index {index} of node {self.id} ({self.class_type}): "
                f"it has {_describe_outputs(names)}",
                node_id=self.id,
            )
        return Output(self.id, index, names[index])


def _describe_outputs(names: tuple[str, ...]) -> str:
    if not names:
        return "no outputs"
    listed = ", ".join(f"{i} {name}" for i, name in enumerate(names))
    return f"{len(names)} output{'s' if len(names) > 1 else ''}: {listed}"


def _encode_literal(value: object, *, node_id: str, input_name: str) -> Any:
    """A builder input value as API-format JSON (links handled by the caller)."""
    if isinstance(value, Output):
        return value.to_api()
    if value is None or isinstance(value, str | int | float | bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise WorkflowError(
                f"node {node_id} input {input_name!r}: {value} is not a finite number",
                node_id=node_id,
                input_name=input_name,
            )
        return value
    if isinstance(value, list):
        return {"__value__": copy.deepcopy(value)}
    if isinstance(value, dict):
        return copy.deepcopy(value)
    hint = " (use node.out(index) to link a node's output)" if isinstance(value, Node) else ""
    raise WorkflowError(
        f"node {node_id} input {input_name!r}: cannot use a {type(value).__name__} as an "
        f"input value{hint}",
        node_id=node_id,
        input_name=input_name,
    )


class Graph:
    """A ComfyUI graph under construction, with typed links.

    Example:
        >>> g = Graph()
        >>> ckpt = g.add("CheckpointLoaderSimple", ckpt_name="flux1-schnell.safetensors")
        >>> text = g.add("CLIPTextEncode", text="a fox", clip=ckpt.out(1))
        >>> g.to_api()["2"]["inputs"]
        {'text': 'a fox', 'clip': ['1', 1]}
    """

    def __init__(self) -> None:
        self._nodes: dict[str, Node] = {}
        self._counter = 0

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(self._nodes.values())

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes

    def node(self, node_id: str) -> Node:
        """The node with this id.

        Raises:
            WorkflowError: There is no such node.
        """
        try:
            return self._nodes[node_id]
        except KeyError:
            ids = sorted(self._nodes, key=_id_sort_key)
            raise WorkflowError(
                f"no node {node_id!r} in the graph; its nodes: {_quoted(ids)}", node_id=node_id
            ) from None

    def add(
        self,
        class_type: str,
        *,
        title: str | None = None,
        node_id: str | None = None,
        **inputs: InputValue,
    ) -> Node:
        """Add a node.

        Args:
            class_type: The ComfyUI node class.
            title: The ``_meta.title`` (defaults to ``class_type``); used to patch by title.
            node_id: The id to use; by default the next free one of ``"1"``, ``"2"``...
            **inputs: The node's inputs: :class:`Output` handles for links, JSON literals
                otherwise (lists are wrapped as ``{"__value__": [...]}`` on export).

        Returns:
            The new node, whose :meth:`Node.out` gives handles on its outputs.

        Raises:
            WorkflowError: Empty class type, duplicate id, or an input value that is
                neither a link nor a JSON literal.
        """
        if not isinstance(class_type, str) or not class_type.strip():
            raise WorkflowError(f"class_type must be a non-empty string, not {class_type!r}")
        if node_id is None:
            node_id = self._next_id()
        elif not isinstance(node_id, str) or not node_id:
            raise WorkflowError(f"a node id must be a non-empty string, not {node_id!r}")
        elif node_id in self._nodes:
            raise WorkflowError(f"node id {node_id!r} is already in the graph", node_id=node_id)
        for name, value in inputs.items():
            _encode_literal(value, node_id=node_id, input_name=name)  # type check now
        node = Node(node_id, class_type, title if title is not None else class_type, inputs)
        self._nodes[node_id] = node
        return node

    def _next_id(self) -> str:
        while True:
            self._counter += 1
            candidate = str(self._counter)
            if candidate not in self._nodes:
                return candidate

    def validate(self) -> None:
        """Check that every link points to an existing node and to an output it has.

        Raises:
            WorkflowError: Naming the node and input of the first bad link.
        """
        for node in self._nodes.values():
            for name, value in node.inputs.items():
                if not isinstance(value, Output):
                    continue
                source = self._nodes.get(value.node_id)
                if source is None:
                    raise WorkflowError(
                        f"node {node.id} ({node.class_type}) input {name!r} links to node "
                        f"{value.node_id!r}, which is not in the graph",
                        node_id=node.id,
                        input_name=name,
                    )
                names = source.output_names
                if names is not None and value.index >= len(names):
                    raise WorkflowError(
                        f"node {node.id} ({node.class_type}) input {name!r} links to unknown "
                        f"output index {value.index} of node {source.id} ({source.class_type}), "
                        f"which has {_describe_outputs(names)}",
                        node_id=node.id,
                        input_name=name,
                    )

    def to_api(self) -> dict[str, Any]:
        """The graph in ComfyUI's API format (a new dict each call), after :meth:`validate`.

        Raises:
            WorkflowError: A link is dangling (see :meth:`validate`).
        """
        self.validate()
        return {
            node.id: {
                "class_type": node.class_type,
                "inputs": {
                    name: _encode_literal(value, node_id=node.id, input_name=name)
                    for name, value in node.inputs.items()
                },
                "_meta": {"title": node.title},
            }
            for node in self._nodes.values()
        }

    def output_node_ids(self) -> tuple[str, ...]:
        """The ids of the image output nodes (``SaveImage``, ``PreviewImage``), in order added."""
        return tuple(n.id for n in self._nodes.values() if n.class_type in OUTPUT_NODE_CLASSES)


# --------------------------------------------------------------------------- presets


@dataclass(frozen=True, slots=True)
class Preset:
    """Sampling defaults for one model family.

    Attributes:
        name: The preset's key in :data:`PRESETS`.
        steps, cfg, sampler, scheduler: KSampler defaults.
        width, height: The default image size.
        size_multiple: The recommended multiple for width and height (8 is always accepted).
        guidance: ``FluxGuidance`` strength on the positive prompt, or ``None`` for no node.
    """

    name: str
    steps: int
    cfg: float
    sampler: str
    scheduler: str
    width: int
    height: int
    size_multiple: int
    guidance: float | None = None


#: The built-in presets, by name.
PRESETS: Mapping[str, Preset] = MappingProxyType(
    {
        "flux-schnell": Preset("flux-schnell", 4, 1.0, "euler", "simple", 1024, 1024, 16),
        "flux-dev": Preset("flux-dev", 20, 1.0, "euler", "simple", 1024, 1024, 16, 3.5),
        "sd15": Preset("sd15", 20, 7.0, "euler", "normal", 512, 512, 8),
        "sdxl": Preset("sdxl", 25, 7.0, "euler", "normal", 1024, 1024, 8),
    }
)

PresetName: TypeAlias = Literal["flux-schnell", "flux-dev", "sd15", "sdxl"]


def preset_for_checkpoint(checkpoint: str) -> str:
    """Guess a preset from a checkpoint file name (used when no preset is given).

    ``flux`` + ``dev`` → ``flux-dev``; ``xl`` → ``sdxl``; ``1.5`` / ``1-5`` / ``15`` next to
    ``sd`` or ``v`` → ``sd15``; anything else → ``flux-schnell``.
    """
    name = checkpoint.lower()
    if "flux" in name:
        return "flux-dev" if "dev" in name else "flux-schnell"
    if "xl" in name:
        return "sdxl"
    if any(tag in name for tag in ("sd15", "sd1.5", "sd_1.5", "sd-1.5", "v1-5", "v1.5", "1_5")):
        return "sd15"
    return "flux-schnell"


def random_seed() -> int:
    """A fresh random seed in ``[0, 2**53)`` (exact in JSON and in JavaScript)."""
    return secrets.randbelow(2**53)


# --------------------------------------------------------------------------- argument checks


def _check_text(value: object, name: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise WorkflowError(f"{name} must be a string, not {type(value).__name__}", input_name=name)
    if not allow_empty and not value.strip():
        raise WorkflowError(f"{name} must not be empty", input_name=name)
    return value


def _check_int(value: object, name: str, *, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise WorkflowError(
            f"{name} must be an int, not {type(value).__name__} ({value!r})", input_name=name
        )
    if not minimum <= value <= maximum:
        raise WorkflowError(
            f"{name} must be between {minimum} and {maximum}, got {value}", input_name=name
        )
    return value


def _check_number(value: object, name: str, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WorkflowError(
            f"{name} must be a number, not {type(value).__name__} ({value!r})", input_name=name
        )
    if not math.isfinite(value) or value < minimum:
        raise WorkflowError(
            f"{name} must be a finite number >= {minimum}, got {value}", input_name=name
        )
    return float(value)


def _check_steps(value: object, *, default: int) -> int:
    if value is None:
        return default
    return _check_int(value, "steps", minimum=1, maximum=10_000)


def _check_cfg(value: object, *, default: float) -> float:
    if value is None:
        return default
    return _check_number(value, "cfg")


def _check_size(value: object, name: str, preset: Preset) -> int:
    size = _check_int(value, name, minimum=1, maximum=MAX_RESOLUTION)
    if size % 8:
        advice = (
            f" ({preset.name} works best with multiples of {preset.size_multiple})"
            if preset.size_multiple != 8
            else ""
        )
        raise WorkflowError(
            f"{name} must be a multiple of 8, got {size}{advice}; nearest: "
            f"{max(8, round(size / 8) * 8)}",
            input_name=name,
        )
    return size


def _check_denoise(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WorkflowError(
            f"denoise must be a number in (0, 1], not {type(value).__name__}", input_name="denoise"
        )
    if not 0.0 < value <= 1.0:
        raise WorkflowError(
            f"denoise must be in (0, 1] (lower keeps more of the input image), got {value}",
            input_name="denoise",
        )
    return float(value)


def _check_seed(value: object) -> int:
    if value is None:
        return random_seed()
    return _check_int(value, "seed", minimum=0, maximum=MAX_SEED)


# --------------------------------------------------------------------------- Flux builder


@dataclass(frozen=True)
class BuiltWorkflow:
    """A ready-to-queue workflow and the choices that went into it.

    Attributes:
        workflow: The graph in API format (the ``prompt`` of ``POST /prompt``).
        seed: The seed used (drawn at random when none was given).
        output_node_ids: The nodes whose images are the result.
        kind: ``"txt2img"`` or ``"img2img"``.
        params: Every resolved setting (checkpoint, preset, steps, cfg, size, ...).
    """

    workflow: dict[str, Any]
    seed: int
    output_node_ids: tuple[str, ...]
    kind: Literal["txt2img", "img2img"]
    params: Mapping[str, Any] = field(default_factory=dict)

    def to_workflow(self) -> Workflow:
        """A patchable :class:`Workflow` copy of :attr:`workflow`."""
        return Workflow(self.workflow)


class FluxWorkflowBuilder:
    """Builds txt2img and img2img graphs for Flux (schnell / dev), SD 1.5 and SDXL.

    Every argument is checked when given, so a mistake raises
    :class:`~dreamgen_async.errors.WorkflowError` (with ``input_name`` set to the argument)
    before anything reaches the network. The builder holds no state besides its settings:
    one instance may serve any number of concurrent jobs.

    Example:
        >>> builder = FluxWorkflowBuilder("flux1-dev.safetensors", preset="flux-dev")
        >>> built = builder.build_txt2img("a lighthouse at dusk", seed=7)
        >>> built.output_node_ids
        ('8',)
    """

    def __init__(
        self,
        checkpoint: str = "flux1-schnell.safetensors",
        *,
        preset: PresetName | None = None,
        sampler: str | None = None,
        scheduler: str | None = None,
        filename_prefix: str = "dreamgen",
        steps: int | None = None,
        cfg: float | None = None,
        guidance: float | None = None,
    ) -> None:
        """Choose the model and the defaults of every job.

        Args:
            checkpoint: The checkpoint file name as the server lists it (``ckpt_name``).
            preset: One of :data:`PRESETS`; by default guessed from the checkpoint name
                (see :func:`preset_for_checkpoint`), which gives ``flux-schnell`` for the default.
            sampler: KSampler ``sampler_name`` (the preset's, ``euler``, by default).
            scheduler: KSampler ``scheduler`` (the preset's: ``simple`` for Flux,
                ``normal`` for SD).
            filename_prefix: SaveImage's file name prefix on the server.
            steps: Default sampling steps (the preset's by default).
            cfg: Default classifier-free guidance scale (the preset's by default).
            guidance: ``FluxGuidance`` strength; overrides the preset's (3.5 for flux-dev).
                When set, a ``FluxGuidance`` node is put on the positive conditioning.

        Raises:
            WorkflowError: An argument is invalid; ``input_name`` says which.
        """
        self.checkpoint = _check_text(checkpoint, "checkpoint")
        name = preset_for_checkpoint(checkpoint) if preset is None else preset
        if name not in PRESETS:
            raise WorkflowError(
                f"unknown preset {name!r}; choose one of {_quoted(list(PRESETS))}",
                input_name="preset",
            )
        self.preset = PRESETS[name]
        self.sampler = _check_text(sampler or self.preset.sampler, "sampler")
        self.scheduler = _check_text(scheduler or self.preset.scheduler, "scheduler")
        self.filename_prefix = _check_text(filename_prefix, "filename_prefix")
        self.steps = _check_steps(steps, default=self.preset.steps)
        self.cfg = _check_cfg(cfg, default=self.preset.cfg)
        self.guidance = (
            self.preset.guidance if guidance is None else _check_number(guidance, "guidance")
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.checkpoint!r}, preset={self.preset.name!r}, "
            f"steps={self.steps}, cfg={self.cfg}, sampler={self.sampler!r}, "
            f"scheduler={self.scheduler!r})"
        )

    def build_txt2img(
        self,
        prompt: str,
        negative: str = "",
        width: int | None = None,
        height: int | None = None,
        steps: int | None = None,
        cfg: float | None = None,
        seed: int | None = None,
        *,
        batch_size: int = 1,
    ) -> BuiltWorkflow:
        """Text to image: checkpoint → prompts → empty latent → KSampler → decode → save.

        Args:
            prompt: What to draw; must not be blank.
            negative: What to avoid (no effect at cfg 1.0, as with Flux, but always wired).
            width, height: Image size, multiples of 8 (16 recommended for Flux); the
                preset's by default.
            steps, cfg: Override the builder's defaults for this job.
            seed: 0 to 2**64-1; random (and reported in the result) when ``None``.
            batch_size: Images per job, 1 to 4096.

        Returns:
            The graph, the seed used and the output node ids.

        Raises:
            WorkflowError: An argument is invalid; ``input_name`` says which.
        """
        width = _check_size(self.preset.width if width is None else width, "width", self.preset)
        height = _check_size(
            self.preset.height if height is None else height, "height", self.preset
        )
        batch_size = _check_int(batch_size, "batch_size", minimum=1, maximum=MAX_BATCH_SIZE)
        sampling = self._sampling(prompt, negative, steps, cfg, seed)

        g, model, positive, negative_cond, vae = self._conditioning_graph(
            sampling["prompt"], sampling["negative"]
        )
        latent = g.add(
            "EmptyLatentImage",
            title="Empty Latent Image",
            width=width,
            height=height,
            batch_size=batch_size,
        )
        save = self._sample_and_save(
            g, model, positive, negative_cond, vae, latent.out(0), sampling, denoise=1.0
        )
        size = {"width": width, "height": height, "batch_size": batch_size}
        params = {**self._params(sampling), **size}
        return BuiltWorkflow(g.to_api(), sampling["seed"], (save.id,), "txt2img", params)

    def build_img2img(
        self,
        image: str,
        prompt: str,
        negative: str = "",
        denoise: float = 0.75,
        steps: int | None = None,
        cfg: float | None = None,
        seed: int | None = None,
    ) -> BuiltWorkflow:
        """Image to image: load image → VAE encode → KSampler(denoise) → decode → save.

        Args:
            image: The image's name on the server, as the upload returned it
                (``"name.png"`` or ``"subfolder/name.png"``).
            prompt: What to draw; must not be blank.
            negative: What to avoid.
            denoise: In (0, 1]; lower keeps more of the input image.
            steps, cfg: Override the builder's defaults for this job.
            seed: 0 to 2**64-1; random (and reported in the result) when ``None``.

        Returns:
            The graph, the seed used and the output node ids.

        Raises:
            WorkflowError: An argument is invalid; ``input_name`` says which.
        """
        image = _check_text(image, "image")
        denoise = _check_denoise(denoise)
        sampling = self._sampling(prompt, negative, steps, cfg, seed)

        g, model, positive, negative_cond, vae = self._conditioning_graph(
            sampling["prompt"], sampling["negative"]
        )
        loaded = g.add("LoadImage", title="Load Image", image=image)
        encoded = g.add("VAEEncode", title="VAE Encode", pixels=loaded.out(0), vae=vae)
        save = self._sample_and_save(
            g, model, positive, negative_cond, vae, encoded.out(0), sampling, denoise=denoise
        )
        params = {**self._params(sampling), "image": image, "denoise": denoise}
        return BuiltWorkflow(g.to_api(), sampling["seed"], (save.id,), "img2img", params)

    # -- shared pieces ------------------------------------------------------------------

    def _sampling(
        self, prompt: str, negative: str, steps: int | None, cfg: float | None, seed: int | None
    ) -> dict[str, Any]:
        return {
            "prompt": _check_text(prompt, "prompt"),
            "negative": _check_text(negative, "negative", allow_empty=True),
            "steps": _check_steps(steps, default=self.steps),
            "cfg": _check_cfg(cfg, default=self.cfg),
            "seed": _check_seed(seed),
        }

    def _params(self, sampling: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "preset": self.preset.name,
            "sampler": self.sampler,
            "scheduler": self.scheduler,
            "guidance": self.guidance,
            **sampling,
        }

    def _conditioning_graph(
        self, prompt: str, negative: str
    ) -> tuple[Graph, Output, Output, Output, Output]:
        """Checkpoint and both prompts (with FluxGuidance when configured)."""
        g = Graph()
        ckpt = g.add("CheckpointLoaderSimple", title="Load Checkpoint", ckpt_name=self.checkpoint)
        clip = ckpt.out("CLIP")
        positive = g.add("CLIPTextEncode", title="Positive Prompt", text=prompt, clip=clip)
        negative_node = g.add("CLIPTextEncode", title="Negative Prompt", text=negative, clip=clip)
        positive_cond = positive.out(0)
        if self.guidance is not None:
            guided = g.add(
                "FluxGuidance",
                title="Flux Guidance",
                conditioning=positive_cond,
                guidance=self.guidance,
            )
            positive_cond = guided.out(0)
        return g, ckpt.out("MODEL"), positive_cond, negative_node.out(0), ckpt.out("VAE")

    def _sample_and_save(
        self,
        g: Graph,
        model: Output,
        positive: Output,
        negative: Output,
        vae: Output,
        latent: Output,
        sampling: Mapping[str, Any],
        *,
        denoise: float,
    ) -> Node:
        sampler = g.add(
            "KSampler",
            title="KSampler",
            model=model,
            positive=positive,
            negative=negative,
            latent_image=latent,
            seed=sampling["seed"],
            steps=sampling["steps"],
            cfg=sampling["cfg"],
            sampler_name=self.sampler,
            scheduler=self.scheduler,
            denoise=denoise,
        )
        decoded = g.add("VAEDecode", title="VAE Decode", samples=sampler.out(0), vae=vae)
        return g.add(
            "SaveImage",
            title="Save Image",
            images=decoded.out(0),
            filename_prefix=self.filename_prefix,
        )


# --------------------------------------------------------------------------- user workflows


def _validate_api(data: object, *, source: str) -> dict[str, dict[str, Any]]:
    """Check that ``data`` is an API-format graph; return it (not copied)."""
    where = f"{source}: " if source else ""
    if not isinstance(data, dict):
        raise WorkflowError(f"{where}a workflow is a JSON object, not {type(data).__name__}")
    if isinstance(data.get("nodes"), list) and isinstance(data.get("links"), list):
        raise UIWorkflowError(
            f"{where}this is a UI-format workflow (it has 'nodes' and 'links' lists). "
            + _UI_EXPORT_HINT
        )
    if not data:
        raise WorkflowError(f"{where}the workflow has no nodes")
    for node_id, node in data.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            hint = ""
            if node_id == "prompt" and isinstance(node, dict):
                hint = " (this looks like a POST /prompt body: pass its 'prompt' value)"
            raise WorkflowError(
                f"{where}node {node_id!r} has no 'class_type' string{hint}", node_id=str(node_id)
            )
        if not isinstance(node.get("inputs", {}), dict):
            raise WorkflowError(
                f"{where}node {node_id!r} ({node['class_type']}): 'inputs' must be an object",
                node_id=node_id,
            )
        node.setdefault("inputs", {})
    for node_id, node in data.items():
        for name, value in node["inputs"].items():
            if _is_link(value) and value[0] not in data:
                raise WorkflowError(
                    f"{where}node {node_id} ({node['class_type']}) input {name!r} links to "
                    f"node {value[0]!r}, which is not in the workflow",
                    node_id=node_id,
                    input_name=name,
                )
    return data


class Workflow:
    """A user's API-format workflow (``workflow_api.json``), validated and patchable.

    Nodes are addressed by id (``"3"``), by title (``_meta.title``, e.g. ``"Positive
    Prompt"``) or by class type (``"KSampler"``). The workflow owns a private copy of the
    data it was given; :meth:`to_api` hands out copies.

    Example:
        >>> wf = Workflow.from_dict({
        ...     "3": {"class_type": "KSampler", "inputs": {"seed": 1}},
        ...     "9": {"class_type": "SaveImage", "inputs": {"images": ["3", 0]}},
        ... })
        >>> wf.patch("KSampler.seed", 42)
        1
        >>> wf.output_node_ids()
        ('9',)
    """

    def __init__(self, api: Mapping[str, Any], *, source: str = "") -> None:
        """Validate and copy an API-format graph.

        Args:
            api: ``{node_id: {"class_type", "inputs", "_meta"?}}``.
            source: Where it came from (a file name), for error messages.

        Raises:
            UIWorkflowError: ``api`` is a UI-format export (``nodes`` and ``links`` lists).
            WorkflowError: A node lacks ``class_type`` / ``inputs``, or a link is dangling.
        """
        data = copy.deepcopy(dict(api)) if isinstance(api, Mapping) else api
        self._nodes = _validate_api(data, source=source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Workflow:
        """A workflow from an API-format mapping (deep-copied). See :meth:`__init__`."""
        return cls(data)

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "") -> Workflow:
        """A workflow from API-format JSON text.

        Raises:
            WorkflowError: The text is not JSON, or not an API-format workflow.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            where = f"{source}: " if source else ""
            raise WorkflowError(f"{where}not valid JSON: {exc}") from exc
        return cls(data, source=source)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Workflow:
        """Read an API-format workflow file; see :func:`load_workflow`."""
        return load_workflow(path)

    # -- reading ------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes

    def __repr__(self) -> str:
        return f"<Workflow with {len(self._nodes)} nodes>"

    @property
    def node_ids(self) -> tuple[str, ...]:
        """Every node id, numerically sorted."""
        return tuple(sorted(self._nodes, key=_id_sort_key))

    def class_type(self, node_id: str) -> str:
        """The class type of a node."""
        return str(self._node(node_id)["class_type"])

    def title(self, node_id: str) -> str | None:
        """The ``_meta.title`` of a node, if it has one."""
        meta = self._node(node_id).get("_meta")
        title = meta.get("title") if isinstance(meta, dict) else None
        return title if isinstance(title, str) else None

    def get(self, node_id: str, input_name: str) -> Any:
        """A copy of one input value (a link reads as ``[node_id, index]``).

        Raises:
            WorkflowError: No such node, or no such input on it.
        """
        return copy.deepcopy(self._inputs(node_id, input_name)[input_name])

    def nodes_by_title(self, title: str) -> list[str]:
        """The ids of the nodes whose ``_meta.title`` is ``title`` (maybe none)."""
        return [i for i in self.node_ids if self.title(i) == title]

    def nodes_by_class(self, class_type: str) -> list[str]:
        """The ids of the nodes of class ``class_type`` (maybe none)."""
        return [i for i in self.node_ids if self._nodes[i]["class_type"] == class_type]

    def output_node_ids(self) -> tuple[str, ...]:
        """The ids of the image output nodes (``SaveImage``, ``PreviewImage``)."""
        return tuple(
            i for i in self.node_ids if self._nodes[i]["class_type"] in OUTPUT_NODE_CLASSES
        )

    def to_api(self) -> dict[str, Any]:
        """A deep copy of the graph in API format, ready for ``POST /prompt``."""
        return copy.deepcopy(self._nodes)

    # -- patching -----------------------------------------------------------------------

    def set(
        self, node_id: str, input_name: str, value: InputValue, *, create: bool = False
    ) -> None:
        """Set one input of one node.

        Lists that are links (``[node_id, index]``) stay links and must point to an existing
        node; any other list is wrapped as ``{"__value__": [...]}``. An :class:`Output`
        handle becomes a link.

        Args:
            node_id: The node's id.
            input_name: The input to set.
            value: The new value.
            create: Allow adding an input the node does not have yet (by default that is
                an error, which catches typos such as ``"sead"``).

        Raises:
            WorkflowError: No such node or input, or a link to a missing node.
        """
        inputs = self._inputs(node_id, None if create else input_name)
        link = value.to_api() if isinstance(value, Output) else value
        if _is_link(link):
            if link[0] not in self._nodes:
                raise WorkflowError(
                    f"node {node_id} input {input_name!r} cannot link to node {link[0]!r}, "
                    "which is not in the workflow",
                    node_id=node_id,
                    input_name=input_name,
                )
            inputs[input_name] = list(link)
        else:
            inputs[input_name] = _encode_literal(value, node_id=node_id, input_name=input_name)

    def set_by_title(self, title: str, input_name: str, value: InputValue) -> int:
        """Set an input on every node titled ``title``; return how many were set.

        Raises:
            WorkflowError: No node has that title (the message lists the titles there are).
        """
        ids = self.nodes_by_title(title)
        if not ids:
            titles = sorted({t for i in self.node_ids if (t := self.title(i)) is not None})
            raise WorkflowError(
                f"no node titled {title!r}; titles in this workflow: {_quoted(titles)}"
            )
        return self._set_all(ids, input_name, value)

    def set_by_class(self, class_type: str, input_name: str, value: InputValue) -> int:
        """Set an input on every node of class ``class_type``; return how many were set.

        Raises:
            WorkflowError: No node has that class (the message lists the classes there are).
        """
        ids = self.nodes_by_class(class_type)
        if not ids:
            raise WorkflowError(
                f"no node of class {class_type!r}; classes in this workflow: "
                f"{_quoted(self._class_types())}"
            )
        return self._set_all(ids, input_name, value)

    def replace_image(self, name: str) -> int:
        """Point every ``LoadImage`` node at ``name`` (a server-side name, e.g. from upload).

        Returns:
            How many nodes were changed.

        Raises:
            WorkflowError: ``name`` is blank, or the workflow has no ``LoadImage`` node.
        """
        _check_text(name, "image")
        return self.set_by_class("LoadImage", "image", name)

    def set_seed(self, seed: int) -> int:
        """Set every literal ``seed`` / ``noise_seed`` input (KSampler, KSamplerAdvanced...).

        Seeds fed by a link are left alone.

        Returns:
            How many inputs were changed.

        Raises:
            WorkflowError: The seed is out of range, or no node has a literal seed input.
        """
        seed = _check_int(seed, "seed", minimum=0, maximum=MAX_SEED)
        count = 0
        for node in self._nodes.values():
            for name in ("seed", "noise_seed"):
                if name in node["inputs"] and not _is_link(node["inputs"][name]):
                    node["inputs"][name] = seed
                    count += 1
        if not count:
            raise WorkflowError("no node in this workflow has a seed input", input_name="seed")
        return count

    def patch(self, target: str, value: InputValue) -> int:
        """Set ``selector.input`` to ``value``, the selector being a node id, title or class.

        ``"3.seed"`` sets node 3; ``"KSampler.seed"`` every KSampler;
        ``"Positive Prompt.text"`` every node with that title. An id wins; otherwise every
        node whose title or class type is the selector is set (see :meth:`select`).

        Returns:
            How many nodes were changed.

        Raises:
            WorkflowError: A malformed target, or a selector matching nothing (the message
                lists the ids, titles and classes there are).
        """
        selector, input_name = _split_target(target)
        return self._set_all(self.select(selector), input_name, value)

    def apply_assignment(self, assignment: str) -> int:
        """Apply a CLI-style ``selector.input=value`` (see :func:`parse_set_assignment`).

        When every selected input currently holds a string, the value is kept as the raw
        text (so ``"Positive Prompt.text=42"`` sets the text ``"42"``).

        Returns:
            How many nodes were changed.
        """
        selector, input_name, value = parse_set_assignment(assignment)
        ids = self.select(selector)
        current = [self._inputs(i, input_name)[input_name] for i in ids]
        if not isinstance(value, str) and all(isinstance(v, str) for v in current):
            value = assignment.partition("=")[2]
        return self._set_all(ids, input_name, value)

    def select(self, selector: str) -> list[str]:
        """The ids a selector names: a node id, else every node with that title or class type.

        ``"KSampler"`` thus names every KSampler, including one whose title is still the
        default ``"KSampler"``.

        Raises:
            WorkflowError: Nothing matches (the message lists what there is).
        """
        if selector in self._nodes:
            return [selector]
        ids = set(self.nodes_by_title(selector)) | set(self.nodes_by_class(selector))
        if ids:
            return sorted(ids, key=_id_sort_key)
        titles = sorted({t for i in self.node_ids if (t := self.title(i)) is not None})
        ids_text, titles_text = _quoted(list(self.node_ids)), _quoted(titles)
        raise WorkflowError(
            f"no node with id, title or class type {selector!r}; ids: {ids_text}; "
            f"titles: {titles_text}; classes: {_quoted(self._class_types())}"
        )

    # -- internals ----------------------------------------------------------------------

    def _node(self, node_id: str) -> dict[str, Any]:
        try:
            return self._nodes[node_id]
        except KeyError:
            raise WorkflowError(
                f"no node {node_id!r} in this workflow; its ids: {_quoted(list(self.node_ids))}",
                node_id=node_id,
            ) from None

    def _inputs(self, node_id: str, input_name: str | None) -> dict[str, Any]:
        """The node's inputs dict; with ``input_name``, check that input exists."""
        node = self._node(node_id)
        inputs: dict[str, Any] = node["inputs"]
        if input_name is not None and input_name not in inputs:
            raise WorkflowError(
                f"node {node_id} ({node['class_type']}) has no input {input_name!r}; "
                f"its inputs: {_quoted(list(inputs))}",
                node_id=node_id,
                input_name=input_name,
            )
        return inputs

    def _set_all(self, ids: list[str], input_name: str, value: InputValue) -> int:
        for node_id in ids:  # check them all first: all or nothing
            self._inputs(node_id, input_name)
        for node_id in ids:
            self.set(node_id, input_name, value)
        return len(ids)

    def _class_types(self) -> list[str]:
        return sorted({str(node["class_type"]) for node in self._nodes.values()})


def load_workflow(path: str | os.PathLike[str]) -> Workflow:
    """Read an API-format workflow file (``workflow_api.json``) synchronously.

    This is the module's only I/O; call it before entering the event loop, or through
    ``asyncio.to_thread`` from inside it.

    Raises:
        UIWorkflowError: The file is a UI-format export; the message says how to export
            the API format.
        WorkflowError: The file cannot be read, is not JSON, or is not a valid workflow.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkflowError(f"cannot read workflow file {str(file)!r}: {exc}") from exc
    return Workflow.from_json(text, source=str(file))


def _split_target(target: str) -> tuple[str, str]:
    """``"Positive Prompt.text"`` → ``("Positive Prompt", "text")`` (split at the last dot)."""
    selector, dot, input_name = target.rpartition(".")
    if not dot or not selector.strip() or not input_name.strip():
        raise WorkflowError(
            f"{target!r} is not 'node.input' (node = id, title or class type, "
            "e.g. '3.seed' or 'KSampler.steps')"
        )
    return selector.strip(), input_name.strip()


def parse_set_assignment(text: str) -> tuple[str, str, Any]:
    """Parse a CLI ``--set`` assignment: ``"3.seed=42"`` → ``("3", "seed", 42)``.

    The value is read as JSON when it is JSON (numbers, ``true``/``false``, ``null``,
    lists, objects, ``"quoted strings"``), else kept as text: ``KSampler.cfg=3.5`` gives
    ``3.5``, ``Positive Prompt.text=a red fox`` gives ``"a red fox"``. ``True``/``False`` in
    any case are booleans too.

    Raises:
        WorkflowError: No ``=``, or the left side is not ``node.input``.
    """
    target, equals, raw = text.partition("=")
    if not equals:
        raise WorkflowError(f"{text!r} is not an assignment: expected 'node.input=value'")
    selector, input_name = _split_target(target)
    return selector, input_name, _parse_value(raw)


def _parse_value(raw: str) -> Any:
    lowered = raw.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    if isinstance(value, float) and not math.isfinite(value):
        return raw  # "NaN", "Infinity": keep the text
    return value


def as_api_graph(workflow: object) -> dict[str, Any]:
    """The API-format graph of anything the library accepts as a workflow.

    A :class:`Workflow`, a :class:`BuiltWorkflow` or a :class:`Graph` gives its graph; a
    plain mapping is checked for the UI format and passed on as it is (not copied, not
    validated further: the server has the last word on it).

    Raises:
        UIWorkflowError: A UI-format export (``nodes`` and ``links`` lists).
        WorkflowError: Something that is not a workflow at all (a list, a string, ...).
    """
    if isinstance(workflow, Workflow | Graph):
        return workflow.to_api()
    if isinstance(workflow, BuiltWorkflow):
        return workflow.workflow
    if isinstance(workflow, Mapping):
        if isinstance(workflow.get("nodes"), list) and isinstance(workflow.get("links"), list):
            raise UIWorkflowError(
                "this is a UI-format workflow (it has 'nodes' and 'links' lists). "
                + _UI_EXPORT_HINT
            )
        return workflow if isinstance(workflow, dict) else dict(workflow)
    raise WorkflowError(
        f"a workflow is a Workflow, a BuiltWorkflow or an API-format mapping, "
        f"not {type(workflow).__name__}"
    )
