"""Node definitions, prompt validation and the cheap image maths of the ComfyUI simulator.

Each simulated node has ComfyUI's real class name, input names, input types, ranges and output
indices, so that ``/object_info`` and validation errors look like the real server's. Running a
node is cheap and deterministic: the "model" is a Pillow blend between the input pixels and a
pattern derived from a hash of the prompt text and seed, with the blend strength = ``denoise``.

Validation follows ComfyUI 0.8.0's rules and error bodies (``invalid_prompt``,
``prompt_no_outputs``, ``prompt_outputs_failed_validation`` with per-node ``node_errors``).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageChops, UnidentifiedImageError

MAX_RESOLUTION = 16384
MAX_SEED = 0xFFFFFFFFFFFFFFFF

SAMPLERS: tuple[str, ...] = (
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2",
    "exp_heun_2_x0", "exp_heun_2_x0_sde", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast",
    "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde",
    "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm",
    "lcm", "ipndm", "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp",
    "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp", "gradient_estimation",
    "gradient_estimation_cfg_pp", "er_sde", "seeds_2", "seeds_3", "sa_solver",
    "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
)  # fmt: skip
SCHEDULERS: tuple[str, ...] = (
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
    "linear_quadratic", "kl_optimal",
)  # fmt: skip

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_ANNOTATION = re.compile(r"^(?P<name>.*) \[(?P<kind>input|output|temp)\]$")


# --------------------------------------------------------------------------------------------
# Values that flow between nodes


@dataclass(frozen=True)
class Model:
    """What CheckpointLoaderSimple's MODEL, CLIP and VAE outputs carry: the checkpoint name."""

    ckpt_name: str
    kind: str


@dataclass(frozen=True)
class Conditioning:
    """An "embedded" prompt: the text itself, plus Flux guidance when set."""

    text: str
    guidance: float | None = None


@dataclass(frozen=True)
class Latent:
    """A fake latent: the pixels themselves.

    ``noise_mask`` (an ``L`` image, 255 = sample here) is what ``SetLatentNoiseMask``,
    ``VAEEncodeForInpaint`` and ``InpaintModelConditioning`` attach: the sampler then changes
    only the masked pixels, as ComfyUI's does in latent space.
    """

    images: tuple[Image.Image, ...]
    empty: bool = False
    noise_mask: Image.Image | None = None


@dataclass(frozen=True)
class Images:
    """An IMAGE batch."""

    images: tuple[Image.Image, ...]


class NodeRuntimeError(Exception):
    """A node failed while running; carries the exception type name ComfyUI would report."""

    def __init__(self, message: str, exception_type: str) -> None:
        super().__init__(message)
        self.exception_type = exception_type


@dataclass
class RunContext:
    """What a running node may use: directories, the checkpoint list and per-step hooks."""

    input_dir: Path
    output_dir: Path
    temp_dir: Path
    prompt_id: str
    node_id: str
    saved: list[dict[str, str]] = field(default_factory=list)
    written: list[bytes] = field(default_factory=list)


@dataclass(frozen=True)
class NodeResult:
    """A node's outputs (by index) and its UI dict (``{"images": [...]}`` for output nodes)."""

    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None = None


@dataclass
class NodeDef:
    """One simulated node class: its ComfyUI interface and a function that runs it.

    ``inputs`` maps category (``required``/``optional``) to ``{name: [type, options]}``; a
    combo's type is the list of choices, computed by ``combo_choices`` when dynamic.
    """

    name: str
    display_name: str
    category: str
    description: str
    inputs: dict[str, dict[str, list[Any]]]
    output: tuple[str, ...]
    output_name: tuple[str, ...]
    run: Callable[[RunContext, dict[str, Any]], NodeResult]
    output_node: bool = False
    python_module: str = "nodes"
    output_tooltips: tuple[str, ...] | None = None
    hidden: dict[str, str] | None = None
    steps_input: str | None = None  # the input holding the step count (KSampler)
    validate: Callable[[dict[str, Any]], str | bool] | None = None
    validate_inputs: tuple[str, ...] = ()

    def input_types(self, registry: NodeRegistry) -> dict[str, dict[str, list[Any]]]:
        """The inputs with dynamic combos (checkpoints, input images) filled in."""
        result: dict[str, dict[str, list[Any]]] = {}
        for category, specs in self.inputs.items():
            result[category] = {}
            for name, spec in specs.items():
                choices = registry.dynamic_choices(self.name, name)
                if choices is not None:
                    result[category][name] = [choices, *spec[1:]]
                else:
                    result[category][name] = list(spec)
        return result

    def object_info(self, registry: NodeRegistry) -> dict[str, Any]:
        """This node's ``/object_info`` entry, in ComfyUI's shape."""
        inputs: dict[str, Any] = dict(self.input_types(registry))
        order: dict[str, list[str]] = {k: list(v) for k, v in inputs.items()}
        if self.hidden:
            inputs["hidden"] = dict(self.hidden)
            order["hidden"] = list(self.hidden)
        info: dict[str, Any] = {
            "input": inputs,
            "input_order": order,
            "output": list(self.output),
            "output_is_list": [False] * len(self.output),
            "output_name": list(self.output_name),
            "name": self.name,
            "display_name": self.display_name,
            "description": self.description,
            "python_module": self.python_module,
            "category": self.category,
            "output_node": self.output_node,
        }
        if self.output_tooltips is not None:
            info["output_tooltips"] = list(self.output_tooltips)
        return info


# --------------------------------------------------------------------------------------------
# Image helpers


def _digest(*parts: object) -> bytes:
    return hashlib.sha256(repr(parts).encode()).digest()


def pattern_image(size: tuple[int, int], text: str, seed: int, index: int) -> Image.Image:
    """A deterministic two-colour gradient derived from ``(text, seed, index)``."""
    d = _digest(text, seed, index)
    first = Image.new("RGB", size, (d[0], d[1], d[2]))
    second = Image.new("RGB", size, (d[3], d[4], d[5]))
    mask = Image.linear_gradient("L").rotate(d[6] % 4 * 90).resize(size)
    return Image.composite(first, second, mask)


def sample_images(
    latent: Latent, text: str, seed: int, denoise: float, fraction: float = 1.0
) -> tuple[Image.Image, ...]:
    """The simulated sampler: blend each latent image towards its pattern by ``denoise``."""
    out = []
    for index, src in enumerate(latent.images):
        target = pattern_image(src.size, text, seed, index)
        out.append(Image.blend(src, target, max(0.0, min(1.0, denoise * fraction))))
    return tuple(out)


def sample_png(
    size: tuple[int, int] = (64, 64), colour: tuple[int, int, int] = (200, 30, 60)
) -> bytes:
    """A small solid-colour PNG, handy as an upload in tests."""
    return encode_png(Image.new("RGB", size, colour))


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of an image, with fixed settings so equal pixels give equal bytes."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def encode_jpeg(image: Image.Image, quality: int = 80) -> bytes:
    """JPEG bytes (used for previews)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def next_counter(folder: Path, name: str) -> int:
    """ComfyUI's SaveImage counter: one more than the highest ``<name>_NNNNN_`` in ``folder``."""
    pattern = re.compile(re.escape(name) + r"_(\d+)_")
    highest = 0
    if folder.is_dir():
        for entry in os.listdir(folder):
            match = pattern.match(entry)
            if match:
                highest = max(highest, int(match.group(1)))
    return highest + 1


def save_images(
    ctx: RunContext, images: Images, prefix: str, base: Path, kind: str
) -> dict[str, Any]:
    """Write a batch as ``<prefix>_NNNNN_.png`` files under ``base``; return the UI dict."""
    normalised = os.path.normpath(prefix)
    subfolder = os.path.dirname(normalised)
    name = os.path.basename(normalised)
    folder = (base / subfolder).resolve()
    if os.path.commonpath((str(base.resolve()), str(folder))) != str(base.resolve()):
        raise NodeRuntimeError(
            "**** ERROR: Saving image outside the output folder is not allowed."
            f"\n full_output_folder: {folder}\n         output_dir: {base}",
            "Exception",
        )
    folder.mkdir(parents=True, exist_ok=True)
    counter = next_counter(folder, name)
    records = []
    for image in images.images:
        filename = f"{name}_{counter:05}_.png"
        data = encode_png(image)
        (folder / filename).write_bytes(data)
        record = {"filename": filename, "subfolder": subfolder, "type": kind}
        records.append(record)
        ctx.saved.append(record)
        ctx.written.append(data)
        counter += 1
    return {"images": records}


def split_annotation(name: str) -> tuple[str, str | None]:
    """``"a.png [output]"`` -> ``("a.png", "output")``; no annotation -> ``(name, None)``."""
    match = _ANNOTATION.match(name)
    return (match.group("name"), match.group("kind")) if match else (name, None)


def resolve_input_path(input_dir: Path, output_dir: Path, temp_dir: Path, name: str) -> Path:
    """Where LoadImage's ``image`` value points (``sub/name.png``, ``name.png [output]``)."""
    base = input_dir
    match = _ANNOTATION.match(name)
    if match:
        name = match.group("name")
        base = {"input": input_dir, "output": output_dir, "temp": temp_dir}[match.group("kind")]
    return base / name


# --------------------------------------------------------------------------------------------
# The nodes


def _checkpoint_loader(ctx: RunContext, inputs: dict[str, Any]) -> NodeResult:
    name = str(inputs["ckpt_name"])
    return NodeResult((Model(name, "MODEL"), Model(name, "CLIP"), Model(name, "VAE")))


def _clip_text_encode(ctx: RunContext, inputs: dict[str, Any]) -> NodeResult:
    return NodeResult((Conditioning(str(inputs["text"])),))


def _flux_guidance(ctx: RunContext, inputs: dict[str, Any]) -> NodeResult:
    cond: Conditioning = inputs["conditioning"]
    return NodeResult((Conditioning(cond.text, float(inputs["guidance"])),))


def _empty_latent(ctx: RunContext, inputs: dict[str, Any]) -> NodeResult:
    size = (int(inputs["width"]), int(inputs["height"]))
    grey = Image.new("RGB", size, (128, 128, 128))
    return NodeResult((Latent(tuple(grey for _ in range(int(inputs["batch_size"]))), True),))


def _load_image(ctx: RunContext, inputs: dict[str, Any]) -> NodeResult:
    path = resolve_input_path(ctx.input_dir, ctx.output_dir, ctx.temp_dir, str(inputs["image"]))
    try:
        with Image.open(path) as img:
            rgba = img.convert("RGBA")
    except UnidentifiedImageError as exc:
        raise NodeRuntimeError(
            f"cannot identify image file '{path}'\n", "PIL.UnidentifiedImageError"
        ) from exc
    except OSError as exc:
        raise NodeRuntimeError(str(exc), type(exc).__name__) from exc
    rgb = rgba.convert("RGB")
    mask = Image.eval(rgba.getchannel("A"), lambda a: 255 - a)
    return NodeResult((Images((rgb,)), Images((mask,))))


def _vae_encode(ctx: RunContext, inputs: dict[str, Any]) -> NodeResult:
    pixels: Images = inputs["pixels"]
    return NodeResult((Latent(tuple(i.convert("RGB") for i in pixels.images)),))


def vae_round_trip(image: Image.Image) -> Image.Image:
    """The simulated VAE's loss: every channel value's lowest bit flips on decode.

    A real VAE never gives back the pixels it encoded; this one changes each by exactly one
    level, so a graph that does not composite the result back onto its input (inpainting)
    visibly loses the "kept" pixels, as it would on a real server.
    """
    return image.convert("RGB").point(lambda v: v ^ 1)


def _vae_decode(ctx: RunContext, inputs: dict[str, Any]) -> NodeResult:
    samples: Latent = inputs["samples"]
    return NodeResult((Images(tuple(vae_round_trip(i) for i in samples.images)),))


def masked_sampling(latent: Latent, sampled: tuple[Image.Image, ...]) -> Latent:
    """The sampler's result where the latent's noise mask allows, the latent elsewhere."""
    if latent.noise_mask is None:
        return Latent(sampled)
    out = []
    for src, new in zip(latent.images, sampled, strict=True):
        mask = latent.noise_mask.convert("L").resize(src.size, Image.Resampling.BILINEAR)
        out.append(Image.composite(new, src.convert("RGB"), mask))
    return Latent(tuple(out))


def _ksampler(ctx: RunContext, inputs: dict[str, Any]) -> NodeResult:
    latent: Latent = inputs["latent_image"]
    positive: Conditioning = inputs["positive"]
    images = sample_images(latent, positive.text, int(inputs["seed"]), float(inputs["denoise"]))
    return NodeResult((masked_sampling(latent, images),))


def _save_image(ctx: RunContext, inputs: dict[str, Any]) -> NodeResult:
    ui = save_images(
        ctx, inputs["images"], str(inputs["filename_prefix"]), ctx.output_dir, "output"
    )
    return NodeResult((), ui)


def _preview_image(ctx: RunContext, inputs: dict[str, Any]) -> NodeResult:
    suffix = hashlib.sha256(f"{ctx.prompt_id}:{ctx.node_id}".encode()).hexdigest()
    letters = "".join(chr(ord("a") + int(c, 16) % 26) for c in suffix[:5])
    ui = save_images(ctx, inputs["images"], f"ComfyUI_temp_{letters}", ctx.temp_dir, "temp")
    return NodeResult((), ui)


_HIDDEN_PNG = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}


# --------------------------------------------------------------------------------------------
# Outputs that are not still images: animated WEBP/PNG, a video-like file, text

#: The first bytes of the simulated ``.webm`` (an EBML header, as a real WebM starts).
WEBM_MAGIC = b"\x1a\x45\xdf\xa3"


def _save_file(ctx: RunContext, prefix: str, suffix: str, data: bytes) -> dict[str, str]:
    """Write one ``<prefix>_NNNNN_.<suffix>`` file in the output folder; return its record."""
    normalised = os.path.normpath(prefix)
    subfolder, name = os.path.dirname(normalised), os.path.basename(normalised)
    base = ctx.output_dir.resolve()
    folder = (base / subfolder).resolve()
    if os.path.commonpath((str(base), str(folder))) != str(base):
        raise NodeRuntimeError("Saving outside the output folder is not allowed.", "Exception")
    folder.mkdir(parents=True, exist_ok=True)
    filename = f"{name}_{next_counter(folder, name):05}_.{suffix}"
    (folder / filename).write_bytes(data)
    record = {"filename": filename, "subfolder": subfolder, "type": "output"}
    ctx.saved.append(record)
    ctx.written.append(data)
    return record


def _animated(fmt: str) -> Callable[[RunContext, dict[str, Any]], NodeResult]:
    """SaveAnimatedWEBP / SaveAnimatedPNG: every frame of the batch in one file."""

    def run(ctx: RunContext, inputs: dict[str, Any]) -> NodeResult:
        frames = [image.convert("RGB") for image in inputs["images"].images]
        buf = io.BytesIO()
        duration = int(1000.0 / float(inputs["fps"]))
        options: dict[str, Any] = {"lossless": True} if fmt == "WEBP" else {"compress_level": 1}
        frames[0].save(
            buf, format=fmt, save_all=True, append_images=frames[1:], duration=duration, **options
        )
        suffix = "webp" if fmt == "WEBP" else "png"
        record = _save_file(ctx, str(inputs["filename_prefix"]), suffix, buf.getvalue())
        return NodeResult((), {"images": [record], "animated": [len(frames) > 1]})

    return run


def _save_webm(ctx: RunContext, inputs: dict[str, Any]) -> NodeResult:
    """SaveWEBM, simulated: an EBML header then the frames' PNGs (a video-like file)."""
    frames = [encode_png(image) for image in inputs["images"].images]
    data = WEBM_MAGIC + b"".join(len(f).to_bytes(4, "big") + f for f in frames)
    record = _save_file(ctx, str(inputs["filename_prefix"]), "webm", data)
    return NodeResult((), {"images": [record], "animated": [True]})


def _preview_any(ctx: RunContext, inputs: dict[str, Any]) -> NodeResult:
    """PreviewAny: the input as text (``{"text": [value]}``)."""
    source = inputs.get("source")
    if isinstance(source, Conditioning):
        value = source.text
    elif isinstance(source, Images | Latent):
        value = f"{len(source.images)} image(s) of {source.images[0].size}"
    else:
        value = str(source)
    return NodeResult((), {"text": [value]})


def media_nodes() -> list[NodeDef]:
    """SaveAnimatedWEBP, SaveAnimatedPNG, SaveWEBM and PreviewAny, with ComfyUI's inputs."""
    images = ["IMAGE", _t("The images to save.")]
    prefix = ["STRING", {"default": "ComfyUI"}]
    fps = ["FLOAT", {"default": 6.0, "min": 0.01, "max": 1000.0, "step": 0.01}]
    return [
        NodeDef(
            "SaveAnimatedWEBP",
            "SaveAnimatedWEBP",
            "image/animation",
            "",
            {
                "required": {
                    "images": images,
                    "filename_prefix": prefix,
                    "fps": fps,
                    "lossless": ["BOOLEAN", {"default": True}],
                    "quality": ["INT", {"default": 80, "min": 0, "max": 100}],
                    "method": [["default", "fastest", "slowest"]],
                }
            },
            (),
            (),
            _animated("WEBP"),
            output_node=True,
            hidden=dict(_HIDDEN_PNG),
        ),
        NodeDef(
            "SaveAnimatedPNG",
            "SaveAnimatedPNG",
            "image/animation",
            "",
            {
                "required": {
                    "images": images,
                    "filename_prefix": prefix,
                    "fps": fps,
                    "compress_level": ["INT", {"default": 4, "min": 0, "max": 9}],
                }
            },
            (),
            (),
            _animated("PNG"),
            output_node=True,
            hidden=dict(_HIDDEN_PNG),
        ),
        NodeDef(
            "SaveWEBM",
            "SaveWEBM",
            "image/video",
            "",
            {
                "required": {
                    "images": ["IMAGE", {}],
                    "filename_prefix": prefix,
                    "codec": [["vp9", "av1"]],
                    "fps": ["FLOAT", {"default": 24.0, "min": 0.01, "max": 1000.0, "step": 0.01}],
                    "crf": ["FLOAT", {"default": 32.0, "min": 0, "max": 63.0, "step": 1}],
                }
            },
            (),
            (),
            _save_webm,
            output_node=True,
            hidden=dict(_HIDDEN_PNG),
        ),
        NodeDef(
            "PreviewAny",
            "Preview Any",
            "utils",
            "",
            {"required": {"source": ["*", {}]}},
            (),
            (),
            _preview_any,
            output_node=True,
        ),
    ]


def _t(tip: str) -> dict[str, Any]:
    return {"tooltip": tip}


def build_nodes() -> dict[str, NodeDef]:
    """The simulated node classes, by class_type."""
    nodes = [
        NodeDef(
            "CheckpointLoaderSimple",
            "Load Checkpoint",
            "loaders",
            "Loads a diffusion model checkpoint, diffusion models are used to denoise latents.",
            {"required": {"ckpt_name": [[], _t("The name of the checkpoint (model) to load.")]}},
            ("MODEL", "CLIP", "VAE"),
            ("MODEL", "CLIP", "VAE"),
            _checkpoint_loader,
            output_tooltips=(
                "The model used for denoising latents.",
                "The CLIP model used for encoding text prompts.",
                "The VAE model used for encoding and decoding images to and from latent space.",
            ),
        ),
        NodeDef(
            "CLIPTextEncode",
            "CLIP Text Encode (Prompt)",
            "conditioning",
            "Encodes a text prompt using a CLIP model into an embedding that can be used to "
            "guide the diffusion model towards generating specific images.",
            {
                "required": {
                    "text": [
                        "STRING",
                        {
                            "multiline": True,
                            "dynamicPrompts": True,
                            **_t("The text to be encoded."),
                        },
                    ],
                    "clip": ["CLIP", _t("The CLIP model used for encoding the text.")],
                }
            },
            ("CONDITIONING",),
            ("CONDITIONING",),
            _clip_text_encode,
            output_tooltips=(
                "A conditioning containing the embedded text used to guide the diffusion model.",
            ),
        ),
        NodeDef(
            "FluxGuidance",
            "FluxGuidance",
            "advanced/conditioning/flux",
            "",
            {
                "required": {
                    "conditioning": ["CONDITIONING", {}],
                    "guidance": ["FLOAT", {"default": 3.5, "min": 0.0, "max": 100.0, "step": 0.1}],
                }
            },
            ("CONDITIONING",),
            ("CONDITIONING",),
            _flux_guidance,
            python_module="comfy_extras.nodes_flux",
        ),
        NodeDef(
            "EmptyLatentImage",
            "Empty Latent Image",
            "latent",
            "Create a new batch of empty latent images to be denoised via sampling.",
            {
                "required": {
                    "width": [
                        "INT",
                        {
                            "default": 512,
                            "min": 16,
                            "max": MAX_RESOLUTION,
                            "step": 8,
                            **_t("The width of the latent images in pixels."),
                        },
                    ],
                    "height": [
                        "INT",
                        {
                            "default": 512,
                            "min": 16,
                            "max": MAX_RESOLUTION,
                            "step": 8,
                            **_t("The height of the latent images in pixels."),
                        },
                    ],
                    "batch_size": [
                        "INT",
                        {
                            "default": 1,
                            "min": 1,
                            "max": 4096,
                            **_t("The number of latent images in the batch."),
                        },
                    ],
                }
            },
            ("LATENT",),
            ("LATENT",),
            _empty_latent,
            output_tooltips=("The empty latent image batch.",),
        ),
        NodeDef(
            "EmptySD3LatentImage",
            "EmptySD3LatentImage",
            "latent/sd3",
            "",
            {
                "required": {
                    "width": [
                        "INT",
                        {"default": 1024, "min": 16, "max": MAX_RESOLUTION, "step": 16},
                    ],
                    "height": [
                        "INT",
                        {"default": 1024, "min": 16, "max": MAX_RESOLUTION, "step": 16},
                    ],
                    "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}],
                }
            },
            ("LATENT",),
            ("LATENT",),
            _empty_latent,
            python_module="comfy_extras.nodes_sd3",
        ),
        NodeDef(
            "LoadImage",
            "Load Image",
            "image",
            "",
            {"required": {"image": [[], {"image_upload": True}]}},
            ("IMAGE", "MASK"),
            ("IMAGE", "MASK"),
            _load_image,
            validate_inputs=("image",),
        ),
        NodeDef(
            "VAEEncode",
            "VAE Encode",
            "latent",
            "",
            {"required": {"pixels": ["IMAGE", {}], "vae": ["VAE", {}]}},
            ("LATENT",),
            ("LATENT",),
            _vae_encode,
        ),
        NodeDef(
            "KSampler",
            "KSampler",
            "sampling",
            "Uses the provided model, positive and negative conditioning to denoise the latent "
            "image.",
            {
                "required": {
                    "model": ["MODEL", _t("The model used for denoising the input latent.")],
                    "seed": [
                        "INT",
                        {
                            "default": 0,
                            "min": 0,
                            "max": MAX_SEED,
                            "control_after_generate": True,
                            **_t("The random seed used for creating the noise."),
                        },
                    ],
                    "steps": [
                        "INT",
                        {
                            "default": 20,
                            "min": 1,
                            "max": 10000,
                            **_t("The number of steps used in the denoising process."),
                        },
                    ],
                    "cfg": [
                        "FLOAT",
                        {
                            "default": 8.0,
                            "min": 0.0,
                            "max": 100.0,
                            "step": 0.1,
                            "round": 0.01,
                            **_t(
                                "The Classifier-Free Guidance scale balances creativity and "
                                "adherence to the prompt. Higher values result in images more "
                                "closely matching the prompt however too high values will "
                                "negatively impact quality."
                            ),
                        },
                    ],
                    "sampler_name": [
                        list(SAMPLERS),
                        _t(
                            "The algorithm used when sampling, this can affect the quality, "
                            "speed, and style of the generated output."
                        ),
                    ],
                    "scheduler": [
                        list(SCHEDULERS),
                        _t(
                            "The scheduler controls how noise is gradually removed to form the "
                            "image."
                        ),
                    ],
                    "positive": [
                        "CONDITIONING",
                        _t(
                            "The conditioning describing the attributes you want to include in "
                            "the image."
                        ),
                    ],
                    "negative": [
                        "CONDITIONING",
                        _t(
                            "The conditioning describing the attributes you want to exclude "
                            "from the image."
                        ),
                    ],
                    "latent_image": ["LATENT", _t("The latent image to denoise.")],
                    "denoise": [
                        "FLOAT",
                        {
                            "default": 1.0,
                            "min": 0.0,
                            "max": 1.0,
                            "step": 0.01,
                            **_t(
                                "The amount of denoising applied, lower values will maintain the "
                                "structure of the initial image allowing for image to image "
                                "sampling."
                            ),
                        },
                    ],
                }
            },
            ("LATENT",),
            ("LATENT",),
            _ksampler,
            output_tooltips=("The denoised latent.",),
            steps_input="steps",
        ),
        NodeDef(
            "VAEDecode",
            "VAE Decode",
            "latent",
            "Decodes latent images back into pixel space images.",
            {
                "required": {
                    "samples": ["LATENT", _t("The latent to be decoded.")],
                    "vae": ["VAE", _t("The VAE model used for decoding the latent.")],
                }
            },
            ("IMAGE",),
            ("IMAGE",),
            _vae_decode,
            output_tooltips=("The decoded image.",),
        ),
        NodeDef(
            "SaveImage",
            "Save Image",
            "image",
            "Saves the input images to your ComfyUI output directory.",
            {
                "required": {
                    "images": ["IMAGE", _t("The images to save.")],
                    "filename_prefix": [
                        "STRING",
                        {
                            "default": "ComfyUI",
                            **_t(
                                "The prefix for the file to save. This may include formatting "
                                "information such as %date:yyyy-MM-dd% or %Empty Latent "
                                "Image.width% to include values from nodes."
                            ),
                        },
                    ],
                }
            },
            (),
            (),
            _save_image,
            output_node=True,
            hidden=dict(_HIDDEN_PNG),
        ),
        NodeDef(
            "PreviewImage",
            "Preview Image",
            "image",
            "Saves the input images to your ComfyUI output directory.",
            {"required": {"images": ["IMAGE", _t("The images to save.")]}},
            (),
            (),
            _preview_image,
            output_node=True,
            hidden=dict(_HIDDEN_PNG),
        ),
        *media_nodes(),
    ]
    return {node.name: node for node in nodes}


class NodeRegistry:
    """The node classes plus the dynamic combo choices (checkpoints, input images)."""

    def __init__(
        self,
        checkpoints: list[str],
        input_dir: Path,
        models: Mapping[str, tuple[str, ...] | list[str]] | None = None,
    ) -> None:
        self.nodes = build_nodes()
        self.nodes.update(build_extra_nodes())
        self.checkpoints = checkpoints
        self.input_dir = input_dir
        self.models = {
            k: list(v) for k, v in (DEFAULT_MODELS if models is None else models).items()
        }

    def get(self, class_type: str) -> NodeDef | None:
        """The node class named ``class_type``, if simulated."""
        return self.nodes.get(class_type)

    def input_files(self) -> list[str]:
        """Image files at the top of the input directory, sorted (LoadImage's choices)."""
        if not self.input_dir.is_dir():
            return []
        return sorted(
            entry.name
            for entry in self.input_dir.iterdir()
            if entry.is_file() and entry.suffix.lower() in _IMAGE_SUFFIXES
        )

    def dynamic_choices(self, class_type: str, input_name: str) -> list[str] | None:
        """Choices of a combo that depend on the server's files, else None."""
        if input_name == "ckpt_name" and class_type == "CheckpointLoaderSimple":
            return list(self.checkpoints)
        if input_name == "image" and class_type in ("LoadImage", "LoadImageMask"):
            return self.input_files()
        folder = MODEL_INPUTS.get((class_type, input_name))
        if folder is not None:
            return list(self.models.get(folder, []))
        return None

    def object_info(self) -> dict[str, Any]:
        """The full ``/object_info`` answer."""
        return {name: node.object_info(self) for name, node in self.nodes.items()}


# --------------------------------------------------------------------------------------------
# Validation


def _error(kind: str, message: str, details: str, extra_info: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": dict(extra_info)}


@dataclass
class Validation:
    """The outcome of validating a prompt.

    ``error`` set means HTTP 400 with ``{"error": error, "node_errors": node_errors}``;
    otherwise the prompt is queued with ``outputs`` and ``node_errors`` (possibly non-empty).
    """

    error: dict[str, Any] | None
    node_errors: dict[str, Any]
    outputs: list[str]


class _InnerFailure(Exception):
    """A link to a node that does not exist (propagates to the caller, like ComfyUI)."""


def _load_image_check(value: Any, dirs: tuple[Path, Path, Path]) -> str:
    path = resolve_input_path(dirs[0], dirs[1], dirs[2], str(value))
    if not path.is_file():
        return f"Invalid image file: {value}"
    return ""


def validate_prompt(
    graph: Any,
    registry: NodeRegistry,
    dirs: tuple[Path, Path, Path],
    targets: list[str] | None = None,
) -> Validation:
    """Validate an API-format graph the way ComfyUI 0.8.0 does.

    Raises:
        TypeError, AttributeError: on a graph that is not a dict of dicts (the real server
            answers those with a 500).
    """
    if not isinstance(graph, dict):
        raise TypeError("prompt must be an object")
    outputs: list[str] = []
    for node_id, node in graph.items():
        if not isinstance(node, dict) or "class_type" not in node:
            return Validation(
                _error(
                    "invalid_prompt",
                    "Cannot execute because a node is missing the class_type property.",
                    f"Node ID '#{node_id}'",
                    {},
                ),
                {},
                [],
            )
        node_def = registry.get(node["class_type"])
        if node_def is None:
            return Validation(
                _error(
                    "invalid_prompt",
                    f"Cannot execute because node {node['class_type']} does not exist.",
                    f"Node ID '#{node_id}'",
                    {},
                ),
                {},
                [],
            )
        if node_def.output_node and (targets is None or node_id in targets):
            outputs.append(node_id)
    if not outputs:
        return Validation(_error("prompt_no_outputs", "Prompt has no outputs", "", {}), {}, [])

    validated: dict[str, tuple[bool, list[dict[str, Any]]]] = {}
    good: list[str] = []
    failures: list[tuple[str, list[dict[str, Any]]]] = []
    node_errors: dict[str, Any] = {}
    for out in outputs:
        try:
            ok, reasons = _validate_node(graph, registry, dirs, out, validated)
        except Exception as exc:
            ok = False
            reasons = [
                _error(
                    "exception_during_validation",
                    "Exception when validating node",
                    str(exc),
                    {
                        "exception_type": type(exc).__name__,
                        "traceback": traceback.format_tb(exc.__traceback__),
                    },
                )
            ]
            validated[out] = (False, reasons)
        if ok:
            good.append(out)
            continue
        failures.append((out, reasons))
        for node_id, (valid, node_reasons) in validated.items():
            if not valid and node_reasons:
                entry = node_errors.setdefault(
                    node_id,
                    {
                        "errors": node_reasons,
                        "dependent_outputs": [],
                        "class_type": graph[node_id]["class_type"],
                    },
                )
                entry["dependent_outputs"].append(out)
    if good:
        return Validation(None, node_errors, good)
    details = "\n".join(f"{r['message']}: {r['details']}" for _, rs in failures for r in rs)
    return Validation(
        _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details, {}),
        node_errors,
        [],
    )


#: How ComfyUI converts a literal of a primitive input type before checking its range.
_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "INT": int,
    "FLOAT": float,
    "STRING": str,
    "BOOLEAN": bool,
}


def _validate_link(
    graph: dict[str, Any],
    registry: NodeRegistry,
    dirs: tuple[Path, Path, Path],
    name: str,
    info: list[Any],
    value: list[Any],
    validated: dict[str, tuple[bool, list[dict[str, Any]]]],
) -> tuple[bool, dict[str, Any] | None]:
    """A linked input: its shape, its type against the source's output, then the source itself.

    Returns whether the source validated, and this input's own error (if any).
    """
    if len(value) != 2:
        return True, _error(
            "bad_linked_input",
            "Bad linked input, must be a length-2 list of [node_id, slot_index]",
            name,
            {"input_name": name, "input_config": info, "received_value": value},
        )
    input_type = info[0]
    source_id = str(value[0])
    source_def = registry.get(graph[source_id]["class_type"])
    if source_def is None:
        raise KeyError(graph[source_id]["class_type"])
    received = source_def.output[int(value[1])]
    if received != input_type and input_type != "*":
        return True, _error(
            "return_type_mismatch",
            "Return type mismatch between linked nodes",
            f"{name}, received_type({received}) mismatch input_type({input_type})",
            {
                "input_name": name,
                "input_config": info,
                "received_type": received,
                "linked_node": value,
            },
        )
    try:
        ok, _ = _validate_node(graph, registry, dirs, source_id, validated)
    except Exception as exc:
        validated[source_id] = (
            False,
            [
                _error(
                    "exception_during_inner_validation",
                    "Exception when validating inner node",
                    str(exc),
                    {
                        "input_name": name,
                        "input_config": info,
                        "exception_message": str(exc),
                        "exception_type": type(exc).__name__,
                        "traceback": traceback.format_tb(exc.__traceback__),
                        "linked_node": value,
                    },
                )
            ],
        )
        return False, None
    return ok, None


def _convert(name: str, info: list[Any], value: Any) -> tuple[Any, dict[str, Any] | None]:
    """A literal converted to its primitive input type (INT, FLOAT...), or the error saying it
    cannot be."""
    input_type = info[0]
    if not isinstance(input_type, str) or input_type not in _CONVERTERS:
        return value, None
    try:
        return _CONVERTERS[input_type](value), None
    except Exception as exc:
        return value, _error(
            "invalid_input_type",
            f"Failed to convert an input value to a {input_type} value",
            f"{name}, {value}, {exc}",
            {
                "input_name": name,
                "input_config": info,
                "received_value": value,
                "exception_message": str(exc),
            },
        )


def _check_value(name: str, info: list[Any], value: Any) -> dict[str, Any] | None:
    """A literal input against its spec: convertible, within min/max, one of a combo's choices."""
    value, error = _convert(name, info, value)
    if error is not None:
        return error
    input_type = info[0]
    options: dict[str, Any] = info[1] if len(info) > 1 else {}
    if "min" in options and value < options["min"]:
        return _error(
            "value_smaller_than_min",
            f"Value {value} smaller than min of {options['min']}",
            name,
            {"input_name": name, "input_config": info, "received_value": value},
        )
    if "max" in options and value > options["max"]:
        return _error(
            "value_bigger_than_max",
            f"Value {value} bigger than max of {options['max']}",
            name,
            {"input_name": name, "input_config": info, "received_value": value},
        )
    if isinstance(input_type, list) and value not in input_type:
        config: Any = info
        listing = str(input_type)
        if len(input_type) > 20:
            listing = f"(list of length {len(input_type)})"
            config = None
        return _error(
            "value_not_in_list",
            "Value not in list",
            f"{name}: '{value}' not in {listing}",
            {"input_name": name, "input_config": config, "received_value": value},
        )
    return None


def _custom_validation(
    node_def: NodeDef, inputs: dict[str, Any], dirs: tuple[Path, Path, Path]
) -> list[dict[str, Any]]:
    """The node's own checks of its literal inputs (LoadImage: the file exists)."""
    errors = []
    for name in node_def.validate_inputs:
        if name in inputs and not isinstance(inputs[name], list):
            message = _load_image_check(inputs[name], dirs)
            if message:
                errors.append(
                    _error(
                        "custom_validation_failed",
                        "Custom validation failed for node",
                        f"{name} - {message}",
                        {"input_name": name},
                    )
                )
    return errors


def _validate_node(
    graph: dict[str, Any],
    registry: NodeRegistry,
    dirs: tuple[Path, Path, Path],
    node_id: str,
    validated: dict[str, tuple[bool, list[dict[str, Any]]]],
) -> tuple[bool, list[dict[str, Any]]]:
    if node_id in validated:
        return validated[node_id]
    node = graph[node_id]
    node_def = registry.get(node["class_type"])
    if node_def is None:
        raise KeyError(node["class_type"])
    inputs: dict[str, Any] = node.get("inputs", {})
    specs = node_def.input_types(registry)
    errors: list[dict[str, Any]] = []
    valid = True
    for category in ("required", "optional"):
        for name, info in specs.get(category, {}).items():
            if name not in inputs:
                if category == "required":
                    errors.append(
                        _error(
                            "required_input_missing",
                            "Required input is missing",
                            name,
                            {"input_name": name},
                        )
                    )
                continue
            value = inputs[name]
            if isinstance(value, list):
                linked_ok, error = _validate_link(
                    graph, registry, dirs, name, info, value, validated
                )
                valid = valid and linked_ok
            elif name in node_def.validate_inputs:
                error = _convert(name, info, value)[1]
            else:
                error = _check_value(name, info, value)
            if error is not None:
                errors.append(error)
    errors.extend(_custom_validation(node_def, inputs, dirs))
    result = (valid and not errors, errors)
    validated[node_id] = result
    return result


# --------------------------------------------------------------------------------------------
# More node classes: split model loaders, LoRA, upscale, inpaint, ControlNet and what ComfyUI's
# own workflow templates use around them. Input specs follow ComfyUI 0.8.0 (nodes.py and
# comfy_extras); running them is a cheap fake that keeps images flowing.

#: Model files per models folder, for the loaders' combos (``/models/<folder>`` too).
DEFAULT_MODELS: dict[str, tuple[str, ...]] = {
    "diffusion_models": ("flux1-dev.safetensors", "flux1-schnell.safetensors"),
    "text_encoders": (
        "clip_l.safetensors",
        "t5xxl_fp16.safetensors",
        "t5xxl_fp8_e4m3fn.safetensors",
    ),
    "vae": ("ae.safetensors",),
    "loras": (),
    "upscale_models": ("RealESRGAN_x4plus.safetensors",),
    "controlnet": (),
}

#: Which loader input lists which models folder.
MODEL_INPUTS: dict[tuple[str, str], str] = {
    ("UNETLoader", "unet_name"): "diffusion_models",
    ("DualCLIPLoader", "clip_name1"): "text_encoders",
    ("DualCLIPLoader", "clip_name2"): "text_encoders",
    ("CLIPLoader", "clip_name"): "text_encoders",
    ("VAELoader", "vae_name"): "vae",
    ("LoraLoader", "lora_name"): "loras",
    ("LoraLoaderModelOnly", "lora_name"): "loras",
    ("UpscaleModelLoader", "model_name"): "upscale_models",
    ("ControlNetLoader", "control_net_name"): "controlnet",
}

UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
CLIP_TYPES = [
    "stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart",
    "cosmos", "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image",
    "hunyuan_image", "flux2", "ovis",
]  # fmt: skip
DUAL_CLIP_TYPES = [
    "sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image", "hunyuan_video_15",
    "kandinsky5", "kandinsky5_image", "newbie",
]  # fmt: skip
_RES = {"min": 0, "max": MAX_RESOLUTION, "step": 1}


def _loaded(kind: str, input_name: str) -> Callable[[RunContext, dict[str, Any]], NodeResult]:
    def run(ctx: RunContext, inputs: dict[str, Any]) -> NodeResult:
        return NodeResult((Model(str(inputs[input_name]), kind),))

    return run


def _passthrough(*names: str) -> Callable[[RunContext, dict[str, Any]], NodeResult]:
    def run(ctx: RunContext, inputs: dict[str, Any]) -> NodeResult:
        return NodeResult(tuple(inputs.get(name) for name in names))

    return run


def _resized(images: Images, size: tuple[int, int], method: str = "bilinear") -> Images:
    resample = Image.Resampling.LANCZOS if method == "lanczos" else Image.Resampling.BILINEAR
    size = (max(1, size[0]), max(1, size[1]))
    return Images(tuple(i.resize(size, resample) for i in images.images))


def _image_scale(ctx: RunContext, inputs: dict[str, Any]) -> NodeResult:
    images: Images = inputs["image"]
    width, height = int(inputs["width"]), int(inputs["height"])
    first = images.images[0]
    if width == 0 and height == 0:
        return NodeResult((images,))
    if width == 0:
        width = round(first.width * height / first.height)
    if height == 0:
        height = round(first.height * width / first.width)
    return NodeResult((_resized(images, (width, height), str(inputs["upscale_method"])),))


def _image_scale_by(ctx: RunContext, inputs: dict[str, Any]) -> NodeResult:
    images: Images = inputs["image"]
    scale = float(inputs["scale_by"])
    first = images.images[0]
    size = (round(first.width * scale), round(first.height * scale))
    return NodeResult((_resized(images, size, str(inputs["upscale_method"])),))


def _upscale_with_model(ctx: RunContext, inputs: dict[str, Any]) -> NodeResult:
    images: Images = inputs["image"]
    model: Model = inputs["upscale_model"]
    factor = 4 if "x4" in model.ckpt_name.lower() or "4x" in model.ckpt_name.lower() else 2
    first = images.images[0]
    return NodeResult((_resized(images, (first.width * factor, first.height * factor)),))


def _load_image_mask(ctx: RunContext, inputs: dict[str, Any]) -> NodeResult:
    path = resolve_input_path(ctx.input_dir, ctx.output_dir, ctx.temp_dir, str(inputs["image"]))
    try:
        with Image.open(path) as img:
            rgba = img.convert("RGBA")
    except (UnidentifiedImageError, OSError) as exc:
        raise NodeRuntimeError(str(exc), type(exc).__name__) from exc
    channel = {"alpha": "A", "red": "R", "green": "G", "blue": "B"}[str(inputs["channel"])]
    band = rgba.getchannel(channel)
    mask = Image.eval(band, lambda a: 255 - a) if channel == "A" else band
    return NodeResult((Images((mask,)),))


def _mask_of(masks: Images, size: tuple[int, int]) -> Image.Image:
    """The first mask of a MASK batch as an ``L`` image of ``size`` (bilinear, as ComfyUI)."""
    mask = masks.images[0].convert("L")
    return mask if mask.size == size else mask.resize(size, Image.Resampling.BILINEAR)


def _inpaint_conditioning(ctx: RunContext, inputs: dict[str, Any]) -> NodeResult:
    pixels: Images = inputs["pixels"]
    images = tuple(i.convert("RGB") for i in pixels.images)
    noise_mask = _mask_of(inputs["mask"], images[0].size) if inputs.get("noise_mask") else None
    latent = Latent(images, noise_mask=noise_mask)
    return NodeResult((inputs["positive"], inputs["negative"], latent))


def _encode_for_inpaint(ctx: RunContext, inputs: dict[str, Any]) -> NodeResult:
    """VAEEncodeForInpaint: grow the mask, grey out the masked pixels, attach the mask."""
    pixels: Images = inputs["pixels"]
    size = pixels.images[0].size
    mask = grow_mask(_mask_of(inputs["mask"], size), int(inputs["grow_mask_by"]), True)
    hard = mask.point(lambda v: 255 if v >= 128 else 0)
    grey = Image.new("RGB", size, (128, 128, 128))
    images = tuple(Image.composite(grey, i.convert("RGB"), hard) for i in pixels.images)
    return NodeResult((Latent(images, noise_mask=mask),))


def _set_noise_mask(ctx: RunContext, inputs: dict[str, Any]) -> NodeResult:
    samples: Latent = inputs["samples"]
    mask = _mask_of(inputs["mask"], samples.images[0].size)
    return NodeResult((Latent(samples.images, samples.empty, mask),))


def _zero_out(ctx: RunContext, inputs: dict[str, Any]) -> NodeResult:
    return NodeResult((Conditioning(""),))


def _ksampler_advanced(ctx: RunContext, inputs: dict[str, Any]) -> NodeResult:
    latent: Latent = inputs["latent_image"]
    positive: Conditioning = inputs["positive"]
    denoise = 1.0 if inputs.get("add_noise") == "enable" else 0.5
    images = sample_images(latent, positive.text, int(inputs["noise_seed"]), denoise)
    return NodeResult((masked_sampling(latent, images),))


def _canny(ctx: RunContext, inputs: dict[str, Any]) -> NodeResult:
    from PIL import ImageFilter

    images: Images = inputs["image"]
    edges = tuple(
        i.convert("L").filter(ImageFilter.FIND_EDGES).convert("RGB") for i in images.images
    )
    return NodeResult((Images(edges),))


def _outpaint_feather(
    size: tuple[int, int], pad: tuple[int, int, int, int], feathering: int
) -> Image.Image:
    """ImagePadForOutpaint's mask over the original: ``((f - d) / f)**2`` within ``f``
    pixels of a padded side (``d`` the distance to it), 0 beyond; none when the image is
    not wider and taller than twice ``f``."""
    width, height = size
    left, top, right, bottom = pad
    mask = Image.new("L", size, 0)
    if not (feathering > 0 and feathering * 2 < height and feathering * 2 < width):
        return mask
    rows = [min(i if top else height, height - i if bottom else height) for i in range(height)]
    cols = [min(j if left else width, width - j if right else width) for j in range(width)]

    def level(d: int) -> int:
        return 0 if d >= feathering else round(255 * ((feathering - d) / feathering) ** 2)

    mask.putdata([level(min(r, c)) for r in rows for c in cols])
    return mask


def _pad_for_outpaint(ctx: RunContext, inputs: dict[str, Any]) -> NodeResult:
    images: Images = inputs["image"]
    left, top = int(inputs["left"]), int(inputs["top"])
    right, bottom = int(inputs["right"]), int(inputs["bottom"])
    feathering = int(inputs["feathering"])
    padded, masks = [], []
    for image in images.images:
        size = (image.width + left + right, image.height + top + bottom)
        canvas = Image.new("RGB", size, (128, 128, 128))
        canvas.paste(image.convert("RGB"), (left, top))
        mask = Image.new("L", size, 255)
        inner = _outpaint_feather(image.size, (left, top, right, bottom), feathering)
        mask.paste(inner, (left, top))
        padded.append(canvas)
        masks.append(mask)
    return NodeResult((Images(tuple(padded)), Images(tuple(masks))))


def _image_compare(ctx: RunContext, inputs: dict[str, Any]) -> NodeResult:
    return NodeResult((), {"images": []})


def _model_spec(kind: str, **options: Any) -> list[Any]:
    return [kind, dict(options)]


# -- masks, compositing and latent upscaling (ComfyUI's comfy_extras/nodes_mask.py,
#    nodes_post_processing.py and nodes.py): real pixel maths, so that inpainting tests can
#    check which pixels changed.


def grow_mask(mask: Image.Image, expand: int, tapered_corners: bool) -> Image.Image:
    """GrowMask: dilate (``expand`` > 0) or erode (< 0) by ``|expand|`` pixels."""
    from PIL import ImageFilter

    if expand == 0:
        return mask
    grow = expand > 0
    out = mask
    if tapered_corners:  # a cross kernel, one pixel per step (as ComfyUI)
        for _ in range(abs(expand)):
            shifted = [out]
            for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                shifted.append(_shift(out, dx, dy, 0 if grow else 255))
            out = shifted[0]
            for other in shifted[1:]:
                out = ImageChops.lighter(out, other) if grow else ImageChops.darker(out, other)
        return out
    size = 2 * abs(expand) + 1
    rank = ImageFilter.MaxFilter(size) if grow else ImageFilter.MinFilter(size)
    return out.filter(rank)


def _shift(image: Image.Image, dx: int, dy: int, fill: int) -> Image.Image:
    canvas = Image.new(image.mode, image.size, fill)
    canvas.paste(image, (dx, dy))
    return canvas


def _grow_mask(ctx: RunContext, inputs: dict[str, Any]) -> NodeResult:
    masks: Images = inputs["mask"]
    expand, tapered = int(inputs["expand"]), bool(inputs["tapered_corners"])
    grown = tuple(grow_mask(m.convert("L"), expand, tapered) for m in masks.images)
    return NodeResult((Images(grown),))


def _edge_rates(length: int, before: int, after: int) -> list[float]:
    """FeatherMask's factor along one axis: ramps of ``before`` and ``after`` pixels."""
    rates = []
    for i in range(length):
        rate = 1.0
        if i < before:
            rate *= (i + 1) / before
        if length - 1 - i < after:
            rate *= (length - i) / after
        rates.append(rate)
    return rates


def _feather_mask(ctx: RunContext, inputs: dict[str, Any]) -> NodeResult:
    """FeatherMask: fade the mask towards the image's borders, ``left`` pixels on the left..."""
    masks: Images = inputs["mask"]
    out = []
    for mask in masks.images:
        width, height = mask.size
        xs = _edge_rates(width, int(inputs["left"]), int(inputs["right"]))
        ys = _edge_rates(height, int(inputs["top"]), int(inputs["bottom"]))
        values = list(mask.convert("L").tobytes())
        faded = Image.new("L", mask.size)
        faded.putdata([round(v * xs[i % width] * ys[i // width]) for i, v in enumerate(values)])
        out.append(faded)
    return NodeResult((Images(tuple(out)),))


def _mask_to_image(ctx: RunContext, inputs: dict[str, Any]) -> NodeResult:
    masks: Images = inputs["mask"]
    return NodeResult((Images(tuple(m.convert("L").convert("RGB") for m in masks.images)),))


def _image_to_mask(ctx: RunContext, inputs: dict[str, Any]) -> NodeResult:
    images: Images = inputs["image"]
    band = {"red": "R", "green": "G", "blue": "B", "alpha": "A"}[str(inputs["channel"])]
    return NodeResult((Images(tuple(i.convert("RGBA").getchannel(band) for i in images.images)),))


def _invert_mask(ctx: RunContext, inputs: dict[str, Any]) -> NodeResult:
    masks: Images = inputs["mask"]
    return NodeResult((Images(tuple(ImageChops.invert(m.convert("L")) for m in masks.images)),))


def _image_blur(ctx: RunContext, inputs: dict[str, Any]) -> NodeResult:
    """ImageBlur, as a box blur of the same reach (``blur_radius`` pixels each way)."""
    from PIL import ImageFilter

    images: Images = inputs["image"]
    radius = int(inputs["blur_radius"])
    blur = ImageFilter.BoxBlur(radius)
    return NodeResult((Images(tuple(i.convert("RGB").filter(blur) for i in images.images)),))


def _composite_masked(ctx: RunContext, inputs: dict[str, Any]) -> NodeResult:
    """ImageCompositeMasked: ``source`` over ``destination`` at (x, y) through ``mask``.

    Where the mask is 0 the destination's pixels come through unchanged.
    """
    destination: Images = inputs["destination"]
    source: Images = inputs["source"]
    x, y = int(inputs["x"]), int(inputs["y"])
    masks: Images | None = inputs.get("mask")
    out = []
    for index, dest in enumerate(destination.images):
        src = source.images[min(index, len(source.images) - 1)].convert("RGB")
        if inputs.get("resize_source"):
            src = src.resize(dest.size, Image.Resampling.BILINEAR)
        mask = Image.new("L", src.size, 255) if masks is None else _mask_of(masks, src.size)
        result = dest.convert("RGB").copy()
        result.paste(src, (x, y), mask)
        out.append(result)
    return NodeResult((Images(tuple(out)),))


def _latent_upscale(ctx: RunContext, inputs: dict[str, Any]) -> NodeResult:
    samples: Latent = inputs["samples"]
    first = samples.images[0]
    if "scale_by" in inputs:
        scale = float(inputs["scale_by"])
        size = (round(first.width * scale / 8) * 8, round(first.height * scale / 8) * 8)
    else:
        size = (int(inputs["width"]), int(inputs["height"]))
        if size[0] == 0:
            size = (round(first.width * size[1] / first.height), size[1])
        if size[1] == 0:
            size = (size[0], round(first.height * size[0] / first.width))
    images = _resized(Images(samples.images), size).images
    return NodeResult((Latent(images),))


def recipe_nodes() -> list[NodeDef]:
    """Masks, compositing, blur and latent upscaling, for the inpaint / hires-fix recipes."""
    res = {"min": -MAX_RESOLUTION, "max": MAX_RESOLUTION, "step": 1}
    side = {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 1}
    latent_methods = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]
    return [
        NodeDef(
            "ImageCompositeMasked", "ImageCompositeMasked", "image", "",
            {
                "required": {
                    "destination": ["IMAGE", {}],
                    "source": ["IMAGE", {}],
                    "x": _model_spec("INT", default=0, min=0, max=MAX_RESOLUTION, step=1),
                    "y": _model_spec("INT", default=0, min=0, max=MAX_RESOLUTION, step=1),
                    "resize_source": ["BOOLEAN", {"default": False}],
                },
                "optional": {"mask": ["MASK", {}]},
            },
            ("IMAGE",), ("IMAGE",), _composite_masked, python_module="comfy_extras.nodes_mask",
        ),
        NodeDef(
            "GrowMask", "GrowMask", "mask", "",
            {
                "required": {
                    "mask": ["MASK", {}],
                    "expand": _model_spec("INT", default=0, **res),
                    "tapered_corners": ["BOOLEAN", {"default": True}],
                }
            },
            ("MASK",), ("MASK",), _grow_mask, python_module="comfy_extras.nodes_mask",
        ),
        NodeDef(
            "FeatherMask", "FeatherMask", "mask", "",
            {
                "required": {
                    "mask": ["MASK", {}],
                    **{side_name: _model_spec("INT", **side)
                       for side_name in ("left", "top", "right", "bottom")},
                }
            },
            ("MASK",), ("MASK",), _feather_mask, python_module="comfy_extras.nodes_mask",
        ),
        NodeDef(
            "MaskToImage", "Convert Mask to Image", "mask", "",
            {"required": {"mask": ["MASK", {}]}},
            ("IMAGE",), ("IMAGE",), _mask_to_image, python_module="comfy_extras.nodes_mask",
        ),
        NodeDef(
            "ImageToMask", "Convert Image to Mask", "mask", "",
            {
                "required": {
                    "image": ["IMAGE", {}],
                    "channel": [["red", "green", "blue", "alpha"], {}],
                }
            },
            ("MASK",), ("MASK",), _image_to_mask, python_module="comfy_extras.nodes_mask",
        ),
        NodeDef(
            "InvertMask", "InvertMask", "mask", "",
            {"required": {"mask": ["MASK", {}]}},
            ("MASK",), ("MASK",), _invert_mask, python_module="comfy_extras.nodes_mask",
        ),
        NodeDef(
            "ImageBlur", "Image Blur", "image/postprocessing", "",
            {
                "required": {
                    "image": ["IMAGE", {}],
                    "blur_radius": _model_spec("INT", default=1, min=1, max=31, step=1),
                    "sigma": _model_spec("FLOAT", default=1.0, min=0.1, max=10.0, step=0.1),
                }
            },
            ("IMAGE",), ("IMAGE",), _image_blur,
            python_module="comfy_extras.nodes_post_processing",
        ),
        NodeDef(
            "LatentUpscale", "Upscale Latent", "latent", "",
            {
                "required": {
                    "samples": ["LATENT", {}],
                    "upscale_method": [list(latent_methods), {}],
                    "width": _model_spec("INT", default=512, min=0, max=MAX_RESOLUTION, step=8),
                    "height": _model_spec("INT", default=512, min=0, max=MAX_RESOLUTION, step=8),
                    "crop": [["disabled", "center"], {}],
                }
            },
            ("LATENT",), ("LATENT",), _latent_upscale,
        ),
        NodeDef(
            "LatentUpscaleBy", "Upscale Latent By", "latent", "",
            {
                "required": {
                    "samples": ["LATENT", {}],
                    "upscale_method": [list(latent_methods), {}],
                    "scale_by": _model_spec("FLOAT", default=1.5, min=0.01, max=8.0, step=0.01),
                }
            },
            ("LATENT",), ("LATENT",), _latent_upscale,
        ),
    ]  # fmt: skip


def build_extra_nodes() -> dict[str, NodeDef]:
    """Node classes beyond txt2img/img2img: loaders, LoRA, upscale, inpaint, ControlNet."""
    weight_dtypes = ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]
    device = [["default", "cpu"], {"advanced": True}]
    strength = {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}
    nodes = [
        NodeDef(
            "UNETLoader", "Load Diffusion Model", "advanced/loaders", "",
            {"required": {"unet_name": [[], {}], "weight_dtype": [weight_dtypes, {}]}},
            ("MODEL",), ("MODEL",), _loaded("MODEL", "unet_name"),
        ),
        NodeDef(
            "DualCLIPLoader", "DualCLIPLoader", "advanced/loaders",
            "[Recipes]\n\nsdxl: clip-l, clip-g\nsd3: clip-l, clip-g / clip-l, t5 / clip-g, t5\n"
            "flux: clip-l, t5\nhidream: at least one of t5 or llama, recommended t5 and llama",
            {
                "required": {
                    "clip_name1": [[], {}],
                    "clip_name2": [[], {}],
                    "type": [list(DUAL_CLIP_TYPES), {}],
                },
                "optional": {"device": list(device)},
            },
            ("CLIP",), ("CLIP",), _loaded("CLIP", "clip_name1"),
        ),
        NodeDef(
            "CLIPLoader", "Load CLIP", "advanced/loaders", "",
            {
                "required": {"clip_name": [[], {}], "type": [list(CLIP_TYPES), {}]},
                "optional": {"device": list(device)},
            },
            ("CLIP",), ("CLIP",), _loaded("CLIP", "clip_name"),
        ),
        NodeDef(
            "VAELoader", "Load VAE", "loaders", "",
            {"required": {"vae_name": [[], {}]}},
            ("VAE",), ("VAE",), _loaded("VAE", "vae_name"),
        ),
        NodeDef(
            "LoraLoader", "Load LoRA", "loaders",
            "LoRAs are used to modify diffusion and CLIP models, altering the way in which "
            "latents are denoised such as applying styles. Multiple LoRA nodes can be linked "
            "together.",
            {
                "required": {
                    "model": ["MODEL", _t("The diffusion model the LoRA will be applied to.")],
                    "clip": ["CLIP", _t("The CLIP model the LoRA will be applied to.")],
                    "lora_name": [[], _t("The name of the LoRA.")],
                    "strength_model": ["FLOAT", dict(strength)],
                    "strength_clip": ["FLOAT", dict(strength)],
                }
            },
            ("MODEL", "CLIP"), ("MODEL", "CLIP"), _passthrough("model", "clip"),
        ),
        NodeDef(
            "LoraLoaderModelOnly", "LoraLoaderModelOnly", "loaders", "",
            {
                "required": {
                    "model": ["MODEL", {}],
                    "lora_name": [[], {}],
                    "strength_model": ["FLOAT", dict(strength)],
                }
            },
            ("MODEL",), ("MODEL",), _passthrough("model"),
        ),
        NodeDef(
            "UpscaleModelLoader", "Load Upscale Model", "loaders", "",
            {"required": {"model_name": [[], {}]}},
            ("UPSCALE_MODEL",), ("UPSCALE_MODEL",), _loaded("UPSCALE_MODEL", "model_name"),
            python_module="comfy_extras.nodes_upscale_model",
        ),
        NodeDef(
            "ImageUpscaleWithModel", "Upscale Image (using Model)", "image/upscaling", "",
            {"required": {"upscale_model": ["UPSCALE_MODEL", {}], "image": ["IMAGE", {}]}},
            ("IMAGE",), ("IMAGE",), _upscale_with_model,
            python_module="comfy_extras.nodes_upscale_model",
        ),
        NodeDef(
            "ImageScale", "Upscale Image", "image/upscaling", "",
            {
                "required": {
                    "image": ["IMAGE", {}],
                    "upscale_method": [list(UPSCALE_METHODS), {}],
                    "width": _model_spec("INT", default=512, **_RES),
                    "height": _model_spec("INT", default=512, **_RES),
                    "crop": [["disabled", "center"], {}],
                }
            },
            ("IMAGE",), ("IMAGE",), _image_scale,
        ),
        NodeDef(
            "ImageScaleBy", "Upscale Image By", "image/upscaling", "",
            {
                "required": {
                    "image": ["IMAGE", {}],
                    "upscale_method": [list(UPSCALE_METHODS), {}],
                    "scale_by": _model_spec("FLOAT", default=1.0, min=0.01, max=8.0, step=0.01),
                }
            },
            ("IMAGE",), ("IMAGE",), _image_scale_by,
        ),
        NodeDef(
            "VAEEncodeForInpaint", "VAE Encode (for Inpainting)", "latent/inpaint", "",
            {
                "required": {
                    "pixels": ["IMAGE", {}],
                    "vae": ["VAE", {}],
                    "mask": ["MASK", {}],
                    "grow_mask_by": _model_spec("INT", default=6, min=0, max=64, step=1),
                }
            },
            ("LATENT",), ("LATENT",), _encode_for_inpaint,
        ),
        NodeDef(
            "LoadImageMask", "Load Image (as Mask)", "mask", "",
            {
                "required": {
                    "image": [[], {"image_upload": True}],
                    "channel": [["alpha", "red", "green", "blue"], {}],
                }
            },
            ("MASK",), ("MASK",), _load_image_mask, validate_inputs=("image",),
        ),
        NodeDef(
            "SetLatentNoiseMask", "Set Latent Noise Mask", "latent/inpaint", "",
            {"required": {"samples": ["LATENT", {}], "mask": ["MASK", {}]}},
            ("LATENT",), ("LATENT",), _set_noise_mask,
        ),
        NodeDef(
            "InpaintModelConditioning", "InpaintModelConditioning", "conditioning/inpaint", "",
            {
                "required": {
                    "positive": ["CONDITIONING", {}],
                    "negative": ["CONDITIONING", {}],
                    "vae": ["VAE", {}],
                    "pixels": ["IMAGE", {}],
                    "mask": ["MASK", {}],
                    "noise_mask": [
                        "BOOLEAN",
                        {
                            "default": True,
                            "tooltip": "Add a noise mask to the latent so sampling will only "
                            "happen within the mask. Might improve results or completely break "
                            "things depending on the model.",
                        },
                    ],
                }
            },
            ("CONDITIONING", "CONDITIONING", "LATENT"), ("positive", "negative", "latent"),
            _inpaint_conditioning,
        ),
        NodeDef(
            "DifferentialDiffusion", "Differential Diffusion", "_for_testing", "",
            {
                "required": {"model": ["MODEL", {}]},
                "optional": {
                    "strength": _model_spec("FLOAT", default=1.0, min=0.0, max=1.0, step=0.01)
                },
            },
            ("MODEL",), ("MODEL",), _passthrough("model"),
            python_module="comfy_extras.nodes_differential_diffusion",
        ),
        NodeDef(
            "ControlNetLoader", "Load ControlNet Model", "loaders", "",
            {"required": {"control_net_name": [[], {}]}},
            ("CONTROL_NET",), ("CONTROL_NET",), _loaded("CONTROL_NET", "control_net_name"),
        ),
        NodeDef(
            "ControlNetApplyAdvanced", "Apply ControlNet", "conditioning/controlnet", "",
            {
                "required": {
                    "positive": ["CONDITIONING", {}],
                    "negative": ["CONDITIONING", {}],
                    "control_net": ["CONTROL_NET", {}],
                    "image": ["IMAGE", {}],
                    "strength": _model_spec("FLOAT", default=1.0, min=0.0, max=10.0, step=0.01),
                    "start_percent": _model_spec(
                        "FLOAT", default=0.0, min=0.0, max=1.0, step=0.001
                    ),
                    "end_percent": _model_spec("FLOAT", default=1.0, min=0.0, max=1.0, step=0.001),
                },
                "optional": {"vae": ["VAE", {}]},
            },
            ("CONDITIONING", "CONDITIONING"), ("positive", "negative"),
            _passthrough("positive", "negative"),
        ),
        NodeDef(
            "Canny", "Canny", "image/preprocessors", "",
            {
                "required": {
                    "image": ["IMAGE", {}],
                    "low_threshold": _model_spec(
                        "FLOAT", default=0.4, min=0.01, max=0.99, step=0.01
                    ),
                    "high_threshold": _model_spec(
                        "FLOAT", default=0.8, min=0.01, max=0.99, step=0.01
                    ),
                }
            },
            ("IMAGE",), ("IMAGE",), _canny, python_module="comfy_extras.nodes_canny",
        ),
        NodeDef(
            "ConditioningZeroOut", "ConditioningZeroOut", "advanced/conditioning", "",
            {"required": {"conditioning": ["CONDITIONING", {}]}},
            ("CONDITIONING",), ("CONDITIONING",), _zero_out,
        ),
        NodeDef(
            "KSamplerAdvanced", "KSampler (Advanced)", "sampling", "",
            {
                "required": {
                    "model": ["MODEL", {}],
                    "add_noise": [["enable", "disable"], {}],
                    "noise_seed": _model_spec(
                        "INT", default=0, min=0, max=MAX_SEED, control_after_generate=True
                    ),
                    "steps": _model_spec("INT", default=20, min=1, max=10000),
                    "cfg": _model_spec(
                        "FLOAT", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01
                    ),
                    "sampler_name": [list(SAMPLERS), {}],
                    "scheduler": [list(SCHEDULERS), {}],
                    "positive": ["CONDITIONING", {}],
                    "negative": ["CONDITIONING", {}],
                    "latent_image": ["LATENT", {}],
                    "start_at_step": _model_spec("INT", default=0, min=0, max=10000),
                    "end_at_step": _model_spec("INT", default=10000, min=0, max=10000),
                    "return_with_leftover_noise": [["disable", "enable"], {}],
                }
            },
            ("LATENT",), ("LATENT",), _ksampler_advanced,
        ),
        NodeDef(
            "ModelSamplingAuraFlow", "ModelSamplingAuraFlow", "advanced/model", "",
            {
                "required": {
                    "model": ["MODEL", {}],
                    "shift": _model_spec("FLOAT", default=1.73, min=0.0, max=100.0, step=0.01),
                }
            },
            ("MODEL",), ("MODEL",), _passthrough("model"),
            python_module="comfy_extras.nodes_model_advanced",
        ),
        NodeDef(
            "ImagePadForOutpaint", "Pad Image for Outpainting", "image", "",
            {
                "required": {
                    "image": ["IMAGE", {}],
                    "left": _model_spec("INT", default=0, min=0, max=MAX_RESOLUTION, step=8),
                    "top": _model_spec("INT", default=0, min=0, max=MAX_RESOLUTION, step=8),
                    "right": _model_spec("INT", default=0, min=0, max=MAX_RESOLUTION, step=8),
                    "bottom": _model_spec("INT", default=0, min=0, max=MAX_RESOLUTION, step=8),
                    "feathering": _model_spec(
                        "INT", default=40, min=0, max=MAX_RESOLUTION, step=1
                    ),
                }
            },
            ("IMAGE", "MASK"), ("IMAGE", "MASK"), _pad_for_outpaint,
        ),
        NodeDef(
            "FluxKontextImageScale", "FluxKontextImageScale", "advanced/conditioning/flux",
            "This node resizes the image to one that is more optimal for flux kontext.",
            {"required": {"image": ["IMAGE", {}]}},
            ("IMAGE",), ("IMAGE",), _passthrough("image"),
            python_module="comfy_extras.nodes_flux",
        ),
        NodeDef(
            "ReferenceLatent", "ReferenceLatent", "advanced/conditioning/edit_models",
            "This node sets the guiding latent for an edit model.",
            {
                "required": {"conditioning": ["CONDITIONING", {}]},
                "optional": {"latent": ["LATENT", {}]},
            },
            ("CONDITIONING",), ("CONDITIONING",), _passthrough("conditioning"),
            python_module="comfy_extras.nodes_edit_model",
        ),
        NodeDef(
            "ImageStitch", "Image Stitch", "image/transform", "",
            {
                "required": {
                    "image1": ["IMAGE", {}],
                    "direction": [["right", "down", "left", "up"], {"default": "right"}],
                    "match_image_size": ["BOOLEAN", {"default": True}],
                    "spacing_width": _model_spec("INT", default=0, min=0, max=1024, step=2),
                    "spacing_color": [["white", "black", "red", "green", "blue"], {}],
                },
                "optional": {"image2": ["IMAGE", {}]},
            },
            ("IMAGE",), ("IMAGE",), _passthrough("image1"),
            python_module="comfy_extras.nodes_images",
        ),
        NodeDef(
            "ImageCompare", "Image Compare", "image", "",
            {"required": {}, "optional": {"image_a": ["IMAGE", {}], "image_b": ["IMAGE", {}]}},
            (), (), _image_compare, output_node=True,
            python_module="comfy_extras.nodes_image_compare",
        ),
        *recipe_nodes(),
    ]  # fmt: skip
    return {node.name: node for node in nodes}
