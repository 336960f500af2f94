"""Presets and the txt2img / img2img builder. Pure, no I/O.

:class:`FluxWorkflowBuilder` builds the graphs this library runs, with presets for Flux
schnell / dev, SD 1.5 and SDXL. Every argument is checked before a graph is produced; a
bad one raises :class:`~dreamgen_async.errors.WorkflowError` naming it.
"""

from __future__ import annotations

import copy
import logging
import math
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, TypeAlias

from dreamgen_async.errors import UIWorkflowError, WorkflowError
from dreamgen_async.workflows.api import _UI_EXPORT_HINT, Workflow
from dreamgen_async.workflows.graph import (
    MAX_SEED,
    Graph,
    Node,
    Output,
    _check_int,
    _check_text,
    _quoted,
)
from dreamgen_async.workflows.recipes import (
    ControlNet,
    HiresFix,
    InpaintInputs,
    InpaintLayout,
    Lora,
    LoraSpec,
    add_composite,
    add_controlnets,
    add_inpaint_latent,
    add_loras,
    add_mask_edits,
    check_available,
    check_mask_edits,
    check_pad,
    choose_inpaint_layout,
    is_inpaint_model,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CHECKPOINT",
    "MAX_BATCH_SIZE",
    "MAX_RESOLUTION",
    "PRESETS",
    "BuiltWorkflow",
    "FluxWorkflowBuilder",
    "LoaderLayout",
    "Preset",
    "PresetName",
    "RecipeKind",
    "ServerModels",
    "as_api_graph",
    "choose_loaders",
    "guess_preset",
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
        "sd3.5": Preset("sd3.5", 28, 4.5, "euler", "sgm_uniform", 1024, 1024, 16),
    }
)

PresetName: TypeAlias = Literal["flux-schnell", "flux-dev", "sd15", "sdxl", "sd3.5"]

#: What a :class:`BuiltWorkflow` makes.
RecipeKind: TypeAlias = Literal["txt2img", "img2img", "inpaint", "outpaint", "upscale"]

#: ``FluxGuidance`` for Flux Fill models (ComfyUI's ``flux_fill_inpaint_example``).
FLUX_FILL_GUIDANCE = 30.0

#: Community SD 1.5 fine-tunes whose file names carry no "1.5" tag.
_SD15_FAMILIES = (
    "dreamshaper", "realisticvision", "realistic_vision", "anything-v", "anything_v",
    "anythingv", "deliberate", "revanimated", "epicrealism", "majicmix", "cyberrealistic",
    "absolutereality", "counterfeit", "meinamix", "chilloutmix", "protogen", "openjourney",
)  # fmt: skip
_SD15_TAGS = (
    "sd15", "sd1.5", "sd_1.5", "sd-1.5", "sd-15", "sd_15", "sd 1.5", "v1-5", "v1.5", "v1_5",
    "1_5", "v15",
)  # fmt: skip


def guess_preset(checkpoint: str) -> tuple[str, bool]:
    """Guess a preset from a model file name: ``(preset, recognised)``.

    ``recognised`` is False when no rule matched and the answer is the ``flux-schnell``
    fallback. Rules, in order: ``flux`` (+ ``dev``/``krea`` → ``flux-dev``); ``sd3``
    (``sd3.5_large``...) → ``sd3.5``; ``xl`` or ``pony`` → ``sdxl``; a 1.5 tag (``sd15``,
    ``sd-15``, ``v1-5``, ``v15``...) or a well-known SD 1.5 fine-tune (``dreamshaper_8``,
    ``realisticVisionV60...``, ``anything-v3``...) → ``sd15``; ``schnell`` → ``flux-schnell``.
    """
    name = checkpoint.lower().rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
    if "flux" in name:
        return ("flux-dev" if "dev" in name or "krea" in name else "flux-schnell"), True
    if "sd3" in name or "stable-diffusion-3" in name or "stable_diffusion_3" in name:
        return "sd3.5", True
    if "xl" in name or "pony" in name:
        return "sdxl", True
    if any(tag in name for tag in _SD15_TAGS) or any(f in name for f in _SD15_FAMILIES):
        return "sd15", True
    if "schnell" in name:
        return "flux-schnell", True
    return "flux-schnell", False


def preset_for_checkpoint(checkpoint: str) -> str:
    """Guess a preset from a checkpoint file name (used when no preset is given).

    See :func:`guess_preset` for the rules; anything unrecognised gives ``flux-schnell``.
    """
    return guess_preset(checkpoint)[0]


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


# --------------------------------------------------------------------------- loader layouts

DEFAULT_CHECKPOINT = "flux1-schnell.safetensors"

#: Where each model list comes from in ``/object_info``: (class, input).
_MODEL_COMBOS: Mapping[str, tuple[tuple[str, str], ...]] = MappingProxyType(
    {
        "checkpoints": (("CheckpointLoaderSimple", "ckpt_name"),),
        "unets": (("UNETLoader", "unet_name"),),
        "clips": (("DualCLIPLoader", "clip_name1"), ("CLIPLoader", "clip_name")),
        "vaes": (("VAELoader", "vae_name"),),
        "loras": (("LoraLoader", "lora_name"), ("LoraLoaderModelOnly", "lora_name")),
        "controlnets": (("ControlNetLoader", "control_net_name"),),
        "upscale_models": (("UpscaleModelLoader", "model_name"),),
    }
)


def _combo_choices(info: Mapping[str, Any], class_type: str, input_name: str) -> list[str]:
    node = info.get(class_type)
    if not isinstance(node, Mapping):
        return []
    inputs = node.get("input") or {}
    for category in ("required", "optional"):
        spec = (inputs.get(category) or {}).get(input_name)
        if not isinstance(spec, list) or not spec:
            continue
        if isinstance(spec[0], list):
            return [str(x) for x in spec[0]]
        if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], Mapping):
            return [str(x) for x in spec[1].get("options") or []]
    return []


@dataclass(frozen=True)
class ServerModels:
    """The model files a server offers, as its loaders' combos list them.

    Attributes:
        checkpoints: All-in-one checkpoints (``CheckpointLoaderSimple``).
        unets: Diffusion models alone (``UNETLoader``, ``models/diffusion_models``).
        clips: Text encoders (``DualCLIPLoader`` / ``CLIPLoader``).
        vaes: VAEs (``VAELoader``).
        loras: LoRAs (``LoraLoader``).
        controlnets: ControlNet models (``ControlNetLoader``).
        upscale_models: Upscale models (``UpscaleModelLoader``).
    """

    checkpoints: tuple[str, ...] = ()
    unets: tuple[str, ...] = ()
    clips: tuple[str, ...] = ()
    vaes: tuple[str, ...] = ()
    loras: tuple[str, ...] = ()
    controlnets: tuple[str, ...] = ()
    upscale_models: tuple[str, ...] = ()

    @classmethod
    def from_object_info(cls, info: Mapping[str, Any]) -> ServerModels:
        """Read the loaders' choices from ``GET /object_info`` (missing loaders: none)."""
        lists: dict[str, tuple[str, ...]] = {}
        for field_name, combos in _MODEL_COMBOS.items():
            names: dict[str, None] = {}
            for class_type, input_name in combos:
                names.update(dict.fromkeys(_combo_choices(info, class_type, input_name)))
            lists[field_name] = tuple(names)
        return cls(**lists)

    def describe(self) -> str:
        """One line per kind, for error messages."""
        return (
            f"checkpoints: {_quoted(list(self.checkpoints))}; "
            f"diffusion models (UNETLoader): {_quoted(list(self.unets))}; "
            f"CLIP: {_quoted(list(self.clips))}; VAE: {_quoted(list(self.vaes))}"
        )


@dataclass(frozen=True)
class LoaderLayout:
    """How the model is loaded: an all-in-one checkpoint, or Flux split files.

    Attributes:
        checkpoint: The ``CheckpointLoaderSimple`` file (all-in-one layout).
        unet: The ``UNETLoader`` file (split layout).
        clip: The two ``DualCLIPLoader`` files, CLIP-L then T5 (split layout).
        vae: The ``VAELoader`` file (split layout).
        clip_type: ``DualCLIPLoader``'s ``type`` (``flux``).
        weight_dtype: ``UNETLoader``'s ``weight_dtype``.
    """

    checkpoint: str | None = None
    unet: str | None = None
    clip: tuple[str, str] | None = None
    vae: str | None = None
    clip_type: str = "flux"
    weight_dtype: str = "default"

    @property
    def kind(self) -> Literal["checkpoint", "split"]:
        """``"checkpoint"`` or ``"split"``."""
        return "checkpoint" if self.checkpoint is not None else "split"

    @property
    def model(self) -> str:
        """The main model file (the checkpoint, or the UNet)."""
        return self.checkpoint if self.checkpoint is not None else str(self.unet)


def _pick(names: tuple[str, ...], *tests: Callable[[str], bool]) -> str | None:
    for test in tests:
        for name in names:
            if test(name.lower()):
                return name
    return None


def choose_loaders(models: ServerModels, model: str | None = None) -> LoaderLayout:
    """The loader layout that fits what the server has.

    ``model`` names a checkpoint (all-in-one layout) or a diffusion model (Flux split
    layout: ``UNETLoader`` + ``DualCLIPLoader(type="flux")`` with a CLIP-L and a T5 file
    + ``VAELoader``). Without ``model``, a Flux schnell file is preferred, then the first
    checkpoint, then the first diffusion model.

    Raises:
        WorkflowError: The model is not on the server, or the split layout lacks a CLIP-L,
            T5 or VAE file; the message lists what the server has (``input_name`` is
            ``"checkpoint"``).
    """
    if model is None:
        everything = models.checkpoints + models.unets
        model = _pick(everything, lambda n: "schnell" in n) or (
            everything[0] if everything else None
        )
        if model is None:
            raise WorkflowError(
                f"the server has no model to use; {models.describe()}", input_name="checkpoint"
            )
    if model in models.checkpoints:
        return LoaderLayout(checkpoint=model)
    if model not in models.unets:
        raise WorkflowError(
            f"the server has no model {model!r}; {models.describe()}", input_name="checkpoint"
        )
    clip_l = _pick(models.clips, lambda n: "clip_l" in n or "clip-l" in n)
    t5 = _pick(models.clips, lambda n: "t5" in n and "fp8" in n, lambda n: "t5" in n)
    vae = _pick(
        models.vaes,
        lambda n: n in ("ae.safetensors", "ae.sft"),
        lambda n: "flux" in n or n.startswith("ae"),
    )
    missing = [
        what
        for what, found in (
            ("a CLIP-L text encoder", clip_l),
            ("a T5 text encoder", t5),
            ("a Flux VAE", vae),
        )
        if found is None
    ]
    if missing:
        raise WorkflowError(
            f"{model!r} is a diffusion model alone (UNETLoader); loading it needs "
            f"{' and '.join(missing)}, which the server lacks; {models.describe()}",
            input_name="checkpoint",
        )
    assert clip_l is not None
    assert t5 is not None
    assert vae is not None
    return LoaderLayout(unet=model, clip=(clip_l, t5), vae=vae)


# --------------------------------------------------------------------------- Flux builder


@dataclass(frozen=True)
class BuiltWorkflow:
    """A ready-to-queue workflow and the choices that went into it.

    Attributes:
        workflow: The graph in API format (the ``prompt`` of ``POST /prompt``).
        seed: The seed used (drawn at random when none was given).
        output_node_ids: The nodes whose images are the result.
        kind: The recipe: ``"txt2img"``, ``"img2img"``, ``"inpaint"``, ``"outpaint"`` or
            ``"upscale"``.
        params: Every resolved setting (checkpoint, preset, steps, cfg, size, ...).
    """

    workflow: dict[str, Any]
    seed: int
    output_node_ids: tuple[str, ...]
    kind: RecipeKind
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
        checkpoint: str = DEFAULT_CHECKPOINT,
        *,
        preset: PresetName | None = None,
        loaders: LoaderLayout | None = None,
        sampler: str | None = None,
        scheduler: str | None = None,
        filename_prefix: str = "dreamgen",
        steps: int | None = None,
        cfg: float | None = None,
        guidance: float | None = None,
        models: ServerModels | None = None,
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
            loaders: How to load the model (see :func:`choose_loaders`); by default an
                all-in-one ``checkpoint``. When given, ``checkpoint`` is ignored.
            models: What the server offers (:meth:`for_server` sets it); when known, LoRA,
                ControlNet and upscale model names are checked against it.

        A preset guessed from the file name (no ``preset`` given) is logged as a warning
        (see :func:`guess_preset`).

        Raises:
            WorkflowError: An argument is invalid; ``input_name`` says which.
        """
        if loaders is not None:
            checkpoint = loaders.model
        self.checkpoint = _check_text(checkpoint, "checkpoint")
        self.loaders = loaders if loaders is not None else LoaderLayout(checkpoint=checkpoint)
        if preset is None:
            name, recognised = guess_preset(checkpoint)
            if checkpoint != DEFAULT_CHECKPOINT:
                logger.warning(
                    "no preset given for %r: using %r, guessed from its name%s; pass preset= "
                    "(one of %s) to choose",
                    checkpoint,
                    name,
                    "" if recognised else " (not recognised: fallback)",
                    ", ".join(PRESETS),
                )
        else:
            name = preset
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
        self._guidance_given = guidance is not None
        self.models = models
        self.loras: tuple[Lora, ...] = ()
        self.controlnets: tuple[ControlNet, ...] = ()

    def with_loras(self, loras: Iterable[LoraSpec]) -> FluxWorkflowBuilder:
        """A copy of this builder that chains these LoRAs into every recipe, in order.

        Checkpoint models get ``LoraLoader`` (model and CLIP); the Flux split layout gets
        ``LoraLoaderModelOnly``. Replaces any LoRAs set before; ``[]`` removes them.

        Args:
            loras: :class:`Lora` settings, ``(name, strength)`` pairs or bare names (1.0).

        Raises:
            WorkflowError: A bad entry, or (when :attr:`models` is known) a name the server's
                ``loras`` folder lacks; the message lists what it has (``input_name="loras"``).
        """
        chosen = tuple(Lora.of(lora) for lora in loras)
        if self.models is not None:
            check_available((x.name for x in chosen), self.models.loras, "LoRA", "loras")
        clone = copy.copy(self)
        clone.loras = chosen
        return clone

    def with_controlnet(
        self,
        model: str,
        control_image: str,
        strength: float = 1.0,
        start: float = 0.0,
        end: float = 1.0,
        preprocessor: Literal["canny"] | None = None,
    ) -> FluxWorkflowBuilder:
        """A copy of this builder that applies one more ControlNet in every recipe.

        Core nodes only: ``ControlNetLoader`` + ``ControlNetApplyAdvanced`` on both prompts
        (after ``FluxGuidance``), with ``Canny`` first when ``preprocessor="canny"``.

        Args:
            model: The ControlNet file (the server's ``controlnet`` folder).
            control_image: The control image's name on the server, as its upload returned it.
            strength: 0 to 10.
            start, end: The fraction of the sampling it acts on (0 to 1, start <= end).
            preprocessor: ``"canny"``, or None for an image that already is a control map.

        Raises:
            WorkflowError: A bad argument, or (when :attr:`models` is known) a model the
                server lacks; the message lists what it has (``input_name="controlnet"``).
        """
        control = ControlNet(model, control_image, strength, start, end, preprocessor).checked()
        if self.models is not None:
            check_available([model], self.models.controlnets, "ControlNet model", "controlnet")
        clone = copy.copy(self)
        clone.controlnets = (*self.controlnets, control)
        return clone

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
        hires: HiresFix | None = None,
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
            hires: A "hires fix" second pass (``LatentUpscaleBy`` + a second ``KSampler``
                at ``hires.denoise``); the image comes out ``hires.scale`` times larger.

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
        if hires is None:
            save = self._sample_and_save(
                g, model, positive, negative_cond, vae, latent.out(0), sampling, denoise=1.0
            )
        else:
            hires = hires.checked()
            first = self._sampler(g, model, positive, negative_cond, latent.out(0), sampling, 1.0)
            upscaled = g.add(
                "LatentUpscaleBy",
                title="Hires Upscale",
                samples=first,
                upscale_method=hires.method,
                scale_by=hires.scale,
            )
            second = {**sampling, "steps": hires.steps or sampling["steps"]}
            save = self._sample_and_save(
                g, model, positive, negative_cond, vae, upscaled.out(0), second,
                denoise=hires.denoise,
            )  # fmt: skip
        size = {"width": width, "height": height, "batch_size": batch_size}
        params = {**self._params(sampling), **size}
        if hires is not None:
            params["hires"] = {"scale": hires.scale, "denoise": hires.denoise,
                               "steps": hires.steps, "method": hires.method}  # fmt: skip
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

    def build_inpaint(
        self,
        image: str,
        mask: str | None,
        prompt: str,
        negative: str = "",
        denoise: float = 1.0,
        steps: int | None = None,
        cfg: float | None = None,
        seed: int | None = None,
        *,
        grow_mask: int = 0,
        feather: int = 0,
    ) -> BuiltWorkflow:
        """Inpainting: repaint the masked part of an image, keep the rest pixel for pixel.

        The layout follows the model (see
        :func:`~dreamgen_async.workflows.recipes.choose_inpaint_layout`):
        ``VAEEncodeForInpaint`` at denoise 1, ``VAEEncode`` + ``SetLatentNoiseMask`` below,
        ``InpaintModelConditioning`` for inpainting models (SD ``*inpainting*``, Flux Fill,
        whose ``FluxGuidance`` defaults to 30), with ``DifferentialDiffusion`` in the two
        noise-mask layouts. The result is composited onto the original through the mask
        (``ImageCompositeMasked``), so every pixel outside the (grown) mask is the input's,
        byte for byte, whatever the VAE round trip does.

        Args:
            image: The image's name on the server, as its upload returned it.
            mask: The mask file's name on the server (white = repaint, black = keep; loaded
                with ``LoadImageMask(channel="red")``; upload it at the image's size, see
                :func:`~dreamgen_async.workflows.masks.prepare_mask`), or ``None`` to use
                the image's own alpha channel (transparent = repaint: ``LoadImage``'s MASK).
            prompt: What to paint in the masked area; must not be blank.
            negative: What to avoid.
            denoise: In (0, 1]; 1 redraws the masked area, lower keeps some of it.
            steps, cfg: Override the builder's defaults for this job.
            seed: 0 to 2**64-1; random (and reported in the result) when ``None``.
            grow_mask: Pixels to grow the mask by before repainting (0 to 4096).
            feather: Width in pixels of the soft edge, inside the grown mask (0 to 31).

        Raises:
            WorkflowError: An argument is invalid; ``input_name`` says which.
        """
        image = _check_text(image, "image")
        if mask is not None:
            mask = _check_text(mask, "mask")
        denoise = _check_denoise(denoise)
        grow, soft = check_mask_edits(grow_mask, feather)
        sampling = self._sampling(prompt, negative, steps, cfg, seed)
        g, model, positive, negative_cond, vae = self._conditioning_graph(
            sampling["prompt"], sampling["negative"], self._inpaint_guidance()
        )
        loaded = g.add("LoadImage", title="Load Image", image=image)
        if mask is None:
            mask_out = loaded.out("MASK")
        else:
            mask_out = g.add("LoadImageMask", title="Load Mask", image=mask, channel="red").out(0)
        sample_mask, composite_mask = add_mask_edits(g, mask_out, grow, soft)
        layout = choose_inpaint_layout(self.loaders.model, denoise)
        parts = InpaintInputs(model, positive, negative_cond, vae, loaded.out(0), sample_mask)
        save = self._repaint_and_save(g, parts, layout, composite_mask, sampling, denoise)
        params = {
            **self._params(sampling), "image": image, "mask": mask, "denoise": denoise,
            "grow_mask": grow, "feather": soft, "inpaint_layout": layout,
        }  # fmt: skip
        return BuiltWorkflow(g.to_api(), sampling["seed"], (save.id,), "inpaint", params)

    def build_outpaint(
        self,
        image: str,
        prompt: str,
        pad: tuple[int, int, int, int],
        negative: str = "",
        steps: int | None = None,
        cfg: float | None = None,
        seed: int | None = None,
        *,
        feathering: int = 40,
    ) -> BuiltWorkflow:
        """Outpainting: extend the canvas (``ImagePadForOutpaint``) and paint the new border.

        The padded image is repainted like an inpaint at denoise 1 (same layouts) and
        composited through the pad's mask, so the input's pixels away from the seam (more
        than ``feathering`` pixels inside) come back unchanged.

        Args:
            image: The image's name on the server, as its upload returned it.
            prompt: What to paint in the new border; must not be blank.
            pad: Pixels to add on the (left, top, right, bottom); multiples of 8 keep the
                size a multiple of 8.
            negative, steps, cfg, seed: As for :meth:`build_inpaint`.
            feathering: ``ImagePadForOutpaint``'s soft seam inside the original, in pixels.

        Raises:
            WorkflowError: An argument is invalid; ``input_name`` says which.
        """
        image = _check_text(image, "image")
        left, top, right, bottom = check_pad(pad)
        feathering = _check_int(feathering, "feathering", minimum=0, maximum=MAX_RESOLUTION)
        sampling = self._sampling(prompt, negative, steps, cfg, seed)
        g, model, positive, negative_cond, vae = self._conditioning_graph(
            sampling["prompt"], sampling["negative"], self._inpaint_guidance()
        )
        loaded = g.add("LoadImage", title="Load Image", image=image)
        padded = g.add(
            "ImagePadForOutpaint", title="Pad Image for Outpainting", image=loaded.out(0),
            left=left, top=top, right=right, bottom=bottom, feathering=feathering,
        )  # fmt: skip
        layout = choose_inpaint_layout(self.loaders.model, 1.0)
        parts = InpaintInputs(model, positive, negative_cond, vae, padded.out(0), padded.out(1))
        save = self._repaint_and_save(g, parts, layout, padded.out(1), sampling, 1.0)
        params = {
            **self._params(sampling), "image": image, "pad": (left, top, right, bottom),
            "feathering": feathering, "inpaint_layout": layout,
        }  # fmt: skip
        return BuiltWorkflow(g.to_api(), sampling["seed"], (save.id,), "outpaint", params)

    def build_upscale(self, image: str, model: str | None = None) -> BuiltWorkflow:
        """Upscale with a model: ``UpscaleModelLoader`` + ``ImageUpscaleWithModel`` → save.

        No checkpoint is loaded; the factor is the model's (4 for ``RealESRGAN_x4plus``).

        Args:
            image: The image's name on the server, as its upload returned it.
            model: The upscale model file (the server's ``upscale_models`` folder); by
                default the first one the server has (needs :attr:`models`).

        Raises:
            WorkflowError: A bad argument, no model given and none known, or (when
                :attr:`models` is known) a model the server lacks, listing what it has
                (``input_name="model"``).
        """
        image = _check_text(image, "image")
        available = self.models.upscale_models if self.models is not None else None
        if model is None:
            if not available:
                raise WorkflowError(
                    "no upscale model given and none known; the server has: "
                    f"{_quoted(list(available or ()))}",
                    input_name="model",
                )
            model = available[0]
        model = _check_text(model, "model")
        if available is not None:
            check_available([model], available, "upscale model", "model")
        g = Graph()
        loaded = g.add("LoadImage", title="Load Image", image=image)
        upscaler = g.add("UpscaleModelLoader", title="Load Upscale Model", model_name=model)
        upscaled = g.add(
            "ImageUpscaleWithModel", title="Upscale Image (using Model)",
            upscale_model=upscaler.out(0), image=loaded.out(0),
        )  # fmt: skip
        save = self._save(g, upscaled.out(0))
        params = {"image": image, "upscale_model": model}
        return BuiltWorkflow(g.to_api(), 0, (save.id,), "upscale", params)

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

    def _inpaint_guidance(self) -> float | None:
        """FluxGuidance for repainting: 30 for a Flux Fill model unless set explicitly."""
        if self.guidance is None or self._guidance_given:
            return self.guidance
        return FLUX_FILL_GUIDANCE if is_inpaint_model(self.loaders.model) else self.guidance

    def _repaint_and_save(
        self,
        g: Graph,
        parts: InpaintInputs,
        layout: InpaintLayout,
        composite_mask: Output,
        sampling: Mapping[str, Any],
        denoise: float,
    ) -> Node:
        """Sample the masked latent, decode, composite onto the original, save."""
        model, positive, negative, latent = add_inpaint_latent(g, parts, layout)
        sampled = self._sampler(g, model, positive, negative, latent, sampling, denoise)
        decoded = g.add("VAEDecode", title="VAE Decode", samples=sampled, vae=parts.vae)
        kept = add_composite(g, parts.pixels, decoded.out(0), composite_mask)
        return self._save(g, kept)

    def _params(self, sampling: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "loaders": self.loaders.kind,
            "preset": self.preset.name,
            "sampler": self.sampler,
            "scheduler": self.scheduler,
            "guidance": self.guidance,
            **sampling,
        }

    def _conditioning_graph(
        self, prompt: str, negative: str, guidance: float | None = None
    ) -> tuple[Graph, Output, Output, Output, Output]:
        """Loaders (+ LoRAs), both prompts, FluxGuidance when configured, ControlNets."""
        g = Graph()
        model_out, clip, vae_out = self._loader_graph(g)
        positive = g.add("CLIPTextEncode", title="Positive Prompt", text=prompt, clip=clip)
        negative_node = g.add("CLIPTextEncode", title="Negative Prompt", text=negative, clip=clip)
        positive_cond = positive.out(0)
        guidance = self.guidance if guidance is None else guidance
        if guidance is not None:
            guided = g.add(
                "FluxGuidance",
                title="Flux Guidance",
                conditioning=positive_cond,
                guidance=guidance,
            )
            positive_cond = guided.out(0)
        positive_cond, negative_cond = add_controlnets(
            g, positive_cond, negative_node.out(0), vae_out, self.controlnets
        )
        return g, model_out, positive_cond, negative_cond, vae_out

    def _loader_graph(self, g: Graph) -> tuple[Output, Output, Output]:
        """The loader nodes of :attr:`loaders`: MODEL, CLIP and VAE handles."""
        layout = self.loaders
        if layout.checkpoint is not None:
            ckpt = g.add(
                "CheckpointLoaderSimple", title="Load Checkpoint", ckpt_name=layout.checkpoint
            )
            model, clip = add_loras(
                g, ckpt.out("MODEL"), ckpt.out("CLIP"), self.loras, model_only=False
            )
            return model, clip, ckpt.out("VAE")
        assert layout.clip is not None
        assert layout.vae is not None
        unet = g.add(
            "UNETLoader",
            title="Load Diffusion Model",
            unet_name=layout.model,
            weight_dtype=layout.weight_dtype,
        )
        clip_node = g.add(
            "DualCLIPLoader",
            title="DualCLIPLoader",
            clip_name1=layout.clip[0],
            clip_name2=layout.clip[1],
            type=layout.clip_type,
        )
        vae = g.add("VAELoader", title="Load VAE", vae_name=layout.vae)
        model, _ = add_loras(g, unet.out(0), clip_node.out(0), self.loras, model_only=True)
        return model, clip_node.out(0), vae.out(0)

    @classmethod
    def for_server(
        cls,
        object_info: Mapping[str, Any],
        model: str | None = None,
        *,
        preset: PresetName | None = None,
        **settings: Any,
    ) -> FluxWorkflowBuilder:
        """A builder for what a server has, from its ``GET /object_info`` answer.

        Args:
            object_info: The server's node definitions.
            model: A checkpoint or diffusion-model file name; see :func:`choose_loaders`
                for the choice when ``None``.
            preset: The sampling preset; guessed from the model name (and logged) if None.
            **settings: Other :class:`FluxWorkflowBuilder` arguments (``steps``...).

        Raises:
            WorkflowError: The model is missing (the message lists what the server has).
        """
        models = ServerModels.from_object_info(object_info)
        layout = choose_loaders(models, model)
        return cls(preset=preset, loaders=layout, models=models, **settings)

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
        sampled = self._sampler(g, model, positive, negative, latent, sampling, denoise)
        decoded = g.add("VAEDecode", title="VAE Decode", samples=sampled, vae=vae)
        return self._save(g, decoded.out(0))

    def _sampler(
        self,
        g: Graph,
        model: Output,
        positive: Output,
        negative: Output,
        latent: Output,
        sampling: Mapping[str, Any],
        denoise: float,
    ) -> Output:
        return g.add(
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
        ).out(0)

    def _save(self, g: Graph, images: Output) -> Node:
        return g.add(
            "SaveImage",
            title="Save Image",
            images=images,
            filename_prefix=self.filename_prefix,
        )


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
