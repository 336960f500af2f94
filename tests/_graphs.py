"""Hand-written API-format graphs for client tests (independent of the workflow builder)."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image

CHECKPOINT = "flux1-schnell.safetensors"


def png_bytes(seed: int = 0, size: int = 32) -> bytes:
    """A small, real PNG whose pixels depend on ``seed``."""
    colour = ((seed * 53) % 256, (seed * 97) % 256, (seed * 193) % 256)
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def txt2img(prompt: str = "a red fox", seed: int = 1, steps: int = 2) -> dict[str, Any]:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1},
        },
        "5": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "seed": seed,
                "steps": steps,
                "cfg": 1.0,
                "sampler_name": "euler",
                "scheduler": "simple",
                "positive": ["2", 0],
                "negative": ["3", 0],
                "latent_image": ["4", 0],
                "denoise": 1.0,
            },
        },
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "t"}},
    }


def img2img(
    image: str, prompt: str = "an oil painting", seed: int = 1, denoise: float = 0.6
) -> dict[str, Any]:
    graph = txt2img(prompt, seed)
    del graph["4"]
    graph["8"] = {"class_type": "LoadImage", "inputs": {"image": image}}
    graph["9"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["8", 0], "vae": ["1", 2]}}
    graph["5"]["inputs"]["latent_image"] = ["9", 0]
    graph["5"]["inputs"]["denoise"] = denoise
    return graph
