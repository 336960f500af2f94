"""Presets and the txt2img / img2img builder. Pure, no I/O.

:class:`FluxWorkflowBuilder` builds the graphs this library runs, with presets for Flux
schnell / dev, SD 1.5 and SDXL. Every argument is checked before a graph is produced; a
bad one raises :class:`~dreamgen_async.errors.WorkflowError` naming it.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, TypeAlias

from dreamgen_async.errors import WorkflowError
from dreamgen_async.workflows.api import Workflow
from dreamgen_async.workflows.graph import (
    MAX_SEED,
    Graph,
    Node,
    Output,
    _check_int,
    _check_text,
    _quoted,
)

__all__ = [
    "MAX_BATCH_SIZE",
    "MAX_RESOLUTION",
    "PRESETS",
    "BuiltWorkflow",
    "FluxWorkflowBuilder",
    "Preset",
    "PresetName",
    "preset_for_checkpoint",
    "random_seed",
]

#: ComfyUI's largest latent/image side (``MAX_RESOLUTION`` in its ``nodes.py``).
MAX_RESOLUTION = 16384

#: ComfyUI's largest ``EmptyLatentImage`` batch.
MAX_BATCH_SIZE = 4096

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
