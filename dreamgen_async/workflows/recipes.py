"""The pieces of the everyday recipes: LoRAs, ControlNets, masks, inpainting. Pure, no I/O.

:class:`~dreamgen_async.workflows.builder.FluxWorkflowBuilder` assembles its graphs from
these functions; each adds a few nodes to a :class:`~dreamgen_async.workflows.graph.Graph`
and returns the handles the next piece links to. The decisions (which inpaint layout fits a
model, what a LoRA / ControlNet setting means) are plain functions a test can call.

Mask conventions (ComfyUI's): a MASK is 1.0 (white) where the image is repainted and 0.0
(black) where it is kept. A mask *file* is loaded with ``LoadImageMask(channel="red")``
(white = repaint); an image's own alpha channel comes out of ``LoadImage``'s MASK output
as ``1 - alpha`` (transparent = repaint), which is also what ComfyUI's ``/upload/mask``
writes into the image.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

from dreamgen_async.errors import WorkflowError
from dreamgen_async.workflows.graph import Graph, Output, _check_int, _check_text, _quoted

__all__ = [
    "ControlNet",
    "HiresFix",
    "InpaintLayout",
    "Lora",
    "LoraSpec",
    "check_available",
    "choose_inpaint_layout",
    "is_inpaint_model",
]

#: How a checkpoint or diffusion model is asked to repaint (see :func:`choose_inpaint_layout`).
InpaintLayout: TypeAlias = Literal["encode_for_inpaint", "noise_mask", "inpaint_conditioning"]

#: A LoRA as the builder accepts it: a :class:`Lora`, a name (strength 1.0), or
#: ``(name, strength)`` / ``(name, strength, clip_strength)``.
LoraSpec: TypeAlias = "Lora | str | tuple[str, float] | tuple[str, float, float]"

#: ``ImageBlur``'s largest radius, hence the widest feather.
MAX_FEATHER = 31


def _check_float(value: object, name: str, *, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WorkflowError(
            f"{name} must be a number, not {type(value).__name__} ({value!r})", input_name=name
        )
    if not math.isfinite(value) or not low <= value <= high:
        raise WorkflowError(f"{name} must be in [{low}, {high}], got {value}", input_name=name)
    return float(value)


@dataclass(frozen=True, slots=True)
class Lora:
    """One LoRA in the chain.

    Attributes:
        name: The file name as the server's ``loras`` folder lists it.
        strength: ``strength_model`` (-100 to 100; 1.0 is the LoRA as trained).
        clip_strength: ``strength_clip`` for checkpoint models (``strength`` when None);
            ignored by the Flux split layout, whose ``LoraLoaderModelOnly`` has no CLIP input.
    """

    name: str
    strength: float = 1.0
    clip_strength: float | None = None

    @classmethod
    def of(cls, value: object) -> Lora:
        """A :class:`Lora` from a ``Lora``, a name, or a ``(name, strength)`` pair.

        Raises:
            WorkflowError: Anything else, or a bad name or strength (``input_name="loras"``).
        """
        if isinstance(value, Lora):
            lora = value
        elif isinstance(value, str):
            lora = cls(value)
        elif isinstance(value, tuple | list) and len(value) in (2, 3):
            lora = cls(*value)
        else:
            raise WorkflowError(
                f"a LoRA is a name or a (name, strength) pair, not {value!r}", input_name="loras"
            )
        _check_text(lora.name, "loras")
        _check_float(lora.strength, "loras", low=-100.0, high=100.0)
        if lora.clip_strength is not None:
            _check_float(lora.clip_strength, "loras", low=-100.0, high=100.0)
        return lora


@dataclass(frozen=True, slots=True)
class ControlNet:
    """One ControlNet applied to both prompts (``ControlNetApplyAdvanced``).

    Attributes:
        model: The ControlNet file as the server's ``controlnet`` folder lists it.
        image: The control image's name on the server (as its upload returned it).
        strength: 0 to 10.
        start, end: The part of the sampling it acts on, fractions 0 to 1 (start <= end).
        preprocessor: ``"canny"`` to turn the image into edges first (ComfyUI's core
            ``Canny`` node); ``None`` when the image already is a control map.
        low_threshold, high_threshold: ``Canny``'s thresholds.
    """

    model: str
    image: str
    strength: float = 1.0
    start: float = 0.0
    end: float = 1.0
    preprocessor: Literal["canny"] | None = None
    low_threshold: float = 0.4
    high_threshold: float = 0.8

    def checked(self) -> ControlNet:
        """This setting, after checking every field.

        Raises:
            WorkflowError: A bad field (``input_name="controlnet"``).
        """
        _check_text(self.model, "controlnet")
        _check_text(self.image, "controlnet")
        _check_float(self.strength, "controlnet", low=0.0, high=10.0)
        _check_float(self.start, "controlnet", low=0.0, high=1.0)
        _check_float(self.end, "controlnet", low=0.0, high=1.0)
        if self.start > self.end:
            raise WorkflowError(
                f"controlnet start ({self.start}) must not be after its end ({self.end})",
                input_name="controlnet",
            )
        if self.preprocessor not in (None, "canny"):
            raise WorkflowError(
                f"unknown controlnet preprocessor {self.preprocessor!r}: the core nodes offer "
                "'canny' (or None for an image that already is a control map)",
                input_name="controlnet",
            )
        _check_float(self.low_threshold, "controlnet", low=0.01, high=0.99)
        _check_float(self.high_threshold, "controlnet", low=0.01, high=0.99)
        return self


@dataclass(frozen=True, slots=True)
class HiresFix:
    """txt2img's second pass: upscale the latent, then sample it again at ``denoise``.

    Attributes:
        scale: The latent's upscale factor (``LatentUpscaleBy``), 1 to 8.
        denoise: The second KSampler's denoise, in (0, 1].
        steps: The second pass's steps (the first pass's when None).
        method: ``LatentUpscaleBy``'s ``upscale_method``.
    """

    scale: float = 1.5
    denoise: float = 0.5
    steps: int | None = None
    method: Literal["nearest-exact", "bilinear", "area", "bicubic", "bislerp"] = "nearest-exact"

    def checked(self) -> HiresFix:
        """This setting, after checking every field.

        Raises:
            WorkflowError: A bad field (``input_name="hires"``).
        """
        _check_float(self.scale, "hires", low=1.0, high=8.0)
        _check_float(self.denoise, "hires", low=0.0, high=1.0)
        if self.denoise == 0:
            raise WorkflowError("hires denoise must be above 0", input_name="hires")
        if self.steps is not None:
            _check_int(self.steps, "hires", minimum=1, maximum=10_000)
        if self.method not in ("nearest-exact", "bilinear", "area", "bicubic", "bislerp"):
            raise WorkflowError(f"unknown hires method {self.method!r}", input_name="hires")
        return self


def check_available(names: Iterable[str], available: Sequence[str], what: str, arg: str) -> None:
    """Raise if a name is not among the server's files of one kind.

    Raises:
        WorkflowError: ``the server has no LoRA 'x'; the server has: 'a', 'b'`` (or
            ``(none)``), with ``input_name=arg``.
    """
    for name in names:
        if name not in available:
            raise WorkflowError(
                f"the server has no {what} {name!r}; the server has: {_quoted(list(available))}",
                input_name=arg,
            )


# --------------------------------------------------------------------------- model pieces


def add_loras(
    g: Graph, model: Output, clip: Output, loras: Sequence[Lora], *, model_only: bool
) -> tuple[Output, Output]:
    """Chain ``LoraLoader`` (or ``LoraLoaderModelOnly``) nodes; the last MODEL and CLIP."""
    for lora in loras:
        if model_only:
            node = g.add(
                "LoraLoaderModelOnly",
                title=f"LoRA {lora.name}",
                model=model,
                lora_name=lora.name,
                strength_model=lora.strength,
            )
            model = node.out(0)
            continue
        node = g.add(
            "LoraLoader",
            title=f"LoRA {lora.name}",
            model=model,
            clip=clip,
            lora_name=lora.name,
            strength_model=lora.strength,
            strength_clip=lora.strength if lora.clip_strength is None else lora.clip_strength,
        )
        model, clip = node.out(0), node.out(1)
    return model, clip


def add_controlnets(
    g: Graph, positive: Output, negative: Output, vae: Output, controls: Sequence[ControlNet]
) -> tuple[Output, Output]:
    """Apply each ControlNet to both prompts; the last positive and negative conditioning."""
    for control in controls:
        image = g.add("LoadImage", title="Control Image", image=control.image).out(0)
        if control.preprocessor == "canny":
            image = g.add(
                "Canny",
                title="Canny",
                image=image,
                low_threshold=control.low_threshold,
                high_threshold=control.high_threshold,
            ).out(0)
        loader = g.add(
            "ControlNetLoader", title="Load ControlNet Model", control_net_name=control.model
        )
        applied = g.add(
            "ControlNetApplyAdvanced",
            title="Apply ControlNet",
            positive=positive,
            negative=negative,
            control_net=loader.out(0),
            image=image,
            strength=control.strength,
            start_percent=control.start,
            end_percent=control.end,
            vae=vae,
        )
        positive, negative = applied.out(0), applied.out(1)
    return positive, negative


# --------------------------------------------------------------------------- inpainting


def is_inpaint_model(model: str) -> bool:
    """Whether a model file is an inpainting model (``*inpaint*``, Flux ``*fill*``).

    Such models take the masked image as extra conditioning (``InpaintModelConditioning``).
    """
    name = model.lower().rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
    return "inpaint" in name or "fill" in name


def choose_inpaint_layout(model: str, denoise: float) -> InpaintLayout:
    """How a model repaints the masked area.

    * an inpainting model (:func:`is_inpaint_model`: SD ``*-inpainting``, Flux Fill):
      ``"inpaint_conditioning"`` (``InpaintModelConditioning``, noise mask on), any denoise;
    * another model at denoise 1: ``"encode_for_inpaint"`` (``VAEEncodeForInpaint``: the
      masked pixels are greyed out and drawn anew);
    * another model below denoise 1: ``"noise_mask"`` (``VAEEncode`` + ``SetLatentNoiseMask``:
      the masked pixels are partially re-noised, so some of them survives).

    ``DifferentialDiffusion`` goes on the model in the two noise-mask layouts
    (``inpaint_conditioning``, ``noise_mask``), where it turns a feathered mask edge into a
    gradual strength, as in ComfyUI's Flux Fill template; not with ``VAEEncodeForInpaint``,
    whose masked area must be redrawn entirely.
    """
    if is_inpaint_model(model):
        return "inpaint_conditioning"
    return "encode_for_inpaint" if denoise >= 1.0 else "noise_mask"


def check_mask_edits(grow_mask: object, feather: object) -> tuple[int, int]:
    """``grow_mask`` (0 to 4096 pixels) and ``feather`` (0 to :data:`MAX_FEATHER`)."""
    grow = _check_int(grow_mask, "grow_mask", minimum=0, maximum=4096)
    soft = _check_int(feather, "feather", minimum=0, maximum=MAX_FEATHER)
    return grow, soft


def add_mask_edits(g: Graph, mask: Output, grow: int, feather: int) -> tuple[Output, Output]:
    """The sampling mask and the compositing mask.

    The sampling mask is ``mask`` grown by ``grow`` pixels (``GrowMask``). The compositing
    mask fades inwards over ``feather`` pixels: the sampling mask shrunk by ``feather``
    (``GrowMask``, square corners), then blurred by ``feather`` (``MaskToImage`` →
    ``ImageBlur`` → ``ImageToMask``), so it never reaches past the sampling mask and every
    pixel outside it stays the input's (checked on ComfyUI 0.8.0, where a tapered shrink let
    the blur's square kernel reach one pixel past the grown corners).
    """
    sample = mask
    if grow:
        sample = g.add(
            "GrowMask", title="Grow Mask", mask=mask, expand=grow, tapered_corners=True
        ).out(0)
    if not feather:
        return sample, sample
    # Square corners: eroded by a (2f+1)-pixel square, the mask keeps ImageBlur's square
    # kernel (reach f each way, corners included) inside the sampling mask.
    shrunk = g.add(
        "GrowMask", title="Shrink Mask", mask=sample, expand=-feather, tapered_corners=False
    ).out(0)
    as_image = g.add("MaskToImage", title="Mask to Image", mask=shrunk).out(0)
    blurred = g.add(
        "ImageBlur",
        title="Feather Mask",
        image=as_image,
        blur_radius=feather,
        sigma=round(min(10.0, max(0.1, feather / 2)), 1),
    ).out(0)
    soft = g.add("ImageToMask", title="Image to Mask", image=blurred, channel="red").out(0)
    return sample, soft


@dataclass(frozen=True, slots=True)
class InpaintInputs:
    """What the inpaint sampling pieces link to."""

    model: Output
    positive: Output
    negative: Output
    vae: Output
    pixels: Output
    mask: Output


def add_inpaint_latent(
    g: Graph, parts: InpaintInputs, layout: InpaintLayout
) -> tuple[Output, Output, Output, Output]:
    """The latent to sample for ``layout``: (model, positive, negative, latent)."""
    model, positive, negative = parts.model, parts.positive, parts.negative
    if layout == "encode_for_inpaint":
        latent = g.add(
            "VAEEncodeForInpaint",
            title="VAE Encode (for Inpainting)",
            pixels=parts.pixels,
            vae=parts.vae,
            mask=parts.mask,
            grow_mask_by=6,
        ).out(0)
        return model, positive, negative, latent
    model = g.add("DifferentialDiffusion", title="Differential Diffusion", model=model).out(0)
    if layout == "noise_mask":
        encoded = g.add("VAEEncode", title="VAE Encode", pixels=parts.pixels, vae=parts.vae)
        latent = g.add(
            "SetLatentNoiseMask", title="Set Latent Noise Mask", samples=encoded.out(0),
            mask=parts.mask,
        ).out(0)  # fmt: skip
        return model, positive, negative, latent
    conditioned = g.add(
        "InpaintModelConditioning",
        title="InpaintModelConditioning",
        positive=positive,
        negative=negative,
        vae=parts.vae,
        pixels=parts.pixels,
        mask=parts.mask,
        noise_mask=True,
    )
    return model, conditioned.out(0), conditioned.out(1), conditioned.out(2)


def add_composite(g: Graph, original: Output, repainted: Output, mask: Output) -> Output:
    """``ImageCompositeMasked``: the repainted image over the original, through ``mask``.

    Where the mask is 0 the original's pixels come through untouched, whatever the VAE did.
    """
    return g.add(
        "ImageCompositeMasked",
        title="Keep Unmasked Pixels",
        destination=original,
        source=repainted,
        x=0,
        y=0,
        resize_source=False,
        mask=mask,
    ).out(0)


def check_pad(pad: object) -> tuple[int, int, int, int]:
    """Outpainting's ``(left, top, right, bottom)`` in pixels, each 0 to 16384, not all 0."""
    if not isinstance(pad, tuple | list) or len(pad) != 4:
        raise WorkflowError(
            f"pad must be (left, top, right, bottom) in pixels, not {pad!r}", input_name="pad"
        )
    left, top, right, bottom = (_check_int(side, "pad", minimum=0, maximum=16384) for side in pad)
    if not any((left, top, right, bottom)):
        raise WorkflowError("pad is all zero: nothing to outpaint", input_name="pad")
    return left, top, right, bottom
