"""The recipes under test: one builder call per recipe and loader layout, shared by the
golden-graph tests and the simulator runs (``tests/golden/recipes/<name>.json``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dreamgen_async.testing.nodes import DEFAULT_MODELS, NodeRegistry
from dreamgen_async.workflows import BuiltWorkflow, FluxWorkflowBuilder, HiresFix, PresetName

GOLDEN = Path(__file__).parent / "golden" / "recipes"
SD15 = "v1-5-pruned-emaonly.safetensors"
SD15_INPAINT = "sd-v1-5-inpainting.safetensors"
FLUX_FILL = "flux1-fill-dev.safetensors"
FLUX_SCHNELL = "flux1-schnell.safetensors"
CHECKPOINTS = (SD15, SD15_INPAINT)
MODELS: dict[str, tuple[str, ...]] = {
    **DEFAULT_MODELS,
    "diffusion_models": (*DEFAULT_MODELS["diffusion_models"], FLUX_FILL),
    "loras": ("add_detail.safetensors", "flux_realism_lora.safetensors"),
    "controlnet": ("control_v11p_sd15_canny.safetensors", "flux-canny-controlnet.safetensors"),
}
INFO = NodeRegistry(list(CHECKPOINTS), Path("/nonexistent"), MODELS).object_info()

#: The input files the recipes name (written into the simulator's input folder).
IMAGE, MASK, ALPHA_IMAGE, CONTROL = "photo.png", "photo_mask.png", "photo_alpha.png", "edges.png"


def builder(model: str) -> FluxWorkflowBuilder:
    """A builder for ``model`` as the recipe server offers it, with 2 steps."""
    presets: dict[str, PresetName] = {FLUX_FILL: "flux-dev", FLUX_SCHNELL: "flux-schnell"}
    return FluxWorkflowBuilder.for_server(INFO, model, preset=presets.get(model, "sd15"), steps=2)


Recipe = Callable[[], BuiltWorkflow]

RECIPES: dict[str, Recipe] = {
    "inpaint_sd15_encode_for_inpaint": lambda: builder(SD15).build_inpaint(
        IMAGE, MASK, "a red door", seed=1
    ),
    "inpaint_sd15_noise_mask_grow_feather": lambda: builder(SD15).build_inpaint(
        IMAGE, MASK, "a red door", "blurry", denoise=0.6, seed=2, grow_mask=2, feather=3
    ),
    "inpaint_sd15_alpha": lambda: builder(SD15).build_inpaint(
        ALPHA_IMAGE, None, "a red door", seed=3
    ),
    "inpaint_sd15_inpainting_model": lambda: builder(SD15_INPAINT).build_inpaint(
        IMAGE, MASK, "a red door", denoise=0.8, seed=4
    ),
    "inpaint_flux_fill_split": lambda: builder(FLUX_FILL).build_inpaint(
        IMAGE, MASK, "a red door", seed=5, feather=2
    ),
    "outpaint_sd15": lambda: builder(SD15).build_outpaint(
        IMAGE, "more of the street", (16, 0, 16, 8), seed=6, feathering=8
    ),
    "outpaint_flux_fill_split": lambda: builder(FLUX_FILL).build_outpaint(
        IMAGE, "more of the street", (0, 8, 0, 8), seed=7
    ),
    "txt2img_loras_sd15": lambda: (
        builder(SD15)
        .with_loras([("add_detail.safetensors", 0.8), ("flux_realism_lora.safetensors", 0.3, 1.0)])
        .build_txt2img("a fox", width=64, height=64, seed=8)
    ),
    "txt2img_lora_flux_split": lambda: (
        builder(FLUX_SCHNELL)
        .with_loras([("flux_realism_lora.safetensors", 0.7)])
        .build_txt2img("a fox", width=64, height=64, seed=9)
    ),
    "txt2img_controlnet_canny_sd15": lambda: (
        builder(SD15)
        .with_controlnet("control_v11p_sd15_canny.safetensors", IMAGE, 0.9, 0.0, 0.8, "canny")
        .build_txt2img("a fox", width=64, height=64, seed=10)
    ),
    "img2img_controlnet_flux_split": lambda: (
        builder(FLUX_SCHNELL)
        .with_controlnet("flux-canny-controlnet.safetensors", CONTROL, 0.6)
        .build_img2img(IMAGE, "a fox", denoise=0.7, seed=11)
    ),
    "inpaint_lora_controlnet_sd15": lambda: (
        builder(SD15)
        .with_loras(["add_detail.safetensors"])
        .with_controlnet("control_v11p_sd15_canny.safetensors", IMAGE, preprocessor="canny")
        .build_inpaint(IMAGE, MASK, "a red door", denoise=0.5, seed=12)
    ),
    "inpaint_lora_flux_fill_split": lambda: (
        builder(FLUX_FILL)
        .with_loras(["flux_realism_lora.safetensors"])
        .build_inpaint(ALPHA_IMAGE, None, "a red door", seed=13)
    ),
    "txt2img_hires_sd15": lambda: builder(SD15).build_txt2img(
        "a fox", width=64, height=64, seed=14, hires=HiresFix(scale=2.0, denoise=0.45)
    ),
    "txt2img_hires_flux_split": lambda: builder(FLUX_SCHNELL).build_txt2img(
        "a fox", width=64, height=64, seed=15, hires=HiresFix(steps=1)
    ),
    "upscale": lambda: builder(SD15).build_upscale(IMAGE),
}
