"""Kept-pixel identity on a real ComfyUI (skipped unless one is named).

Set ``DREAMGEN_REAL_COMFYUI`` to a running server's URL (see ``shared/REAL_COMFYUI.md``: a
ComfyUI 0.8.0 with the tiny random SD 1.5 checkpoint), and ``DREAMGEN_REAL_CHECKPOINT`` if it
is not ``tiny-sd15.safetensors``. Its images are noise, which is all this needs: outside the
mask the result must be the input byte for byte (a real VAE round trip changes every pixel),
inside it must have changed.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from typing import Any

import aiohttp
import pytest
from PIL import Image, ImageChops
from test_recipes import HOLE, SIZE, _changed, _mask, _outside_identical, _photo, _with_alpha_hole

from dreamgen_async import ComfyUIClient
from dreamgen_async.testing.nodes import encode_png
from dreamgen_async.workflows import FluxWorkflowBuilder, prepare_mask

URL = os.environ.get("DREAMGEN_REAL_COMFYUI", "")
CHECKPOINT = os.environ.get("DREAMGEN_REAL_CHECKPOINT", "tiny-sd15.safetensors")

pytestmark = pytest.mark.skipif(not URL, reason="DREAMGEN_REAL_COMFYUI names no server")


def _builder(info: dict[str, Any]) -> FluxWorkflowBuilder:
    return FluxWorkflowBuilder.for_server(
        info, CHECKPOINT, preset="sd15", steps=2, filename_prefix="dreamgen_recipes_test"
    )


async def _run(client: ComfyUIClient, workflow: dict[str, Any]) -> Image.Image:
    result = await client.run(workflow, timeout=120)
    (ref,) = result.images
    with Image.open(io.BytesIO(await client.download(ref))) as img:
        return img.convert("RGB")


def _name(stem: str) -> str:
    return f"dreamgen_recipes_{stem}_{uuid.uuid4().hex[:8]}.png"


@pytest.mark.parametrize(("denoise", "grow", "feather"), [(1.0, 0, 0), (0.6, 0, 0), (0.8, 2, 3)])
async def test_real_kept_pixels_with_a_mask_file(denoise: float, grow: int, feather: int) -> None:
    async with ComfyUIClient(URL) as client:
        builder = _builder(await client.object_info())
        photo = await client.upload_image(encode_png(_photo()), name=_name("photo"))
        mask_data = prepare_mask(encode_png(_mask((32, 24))), SIZE).data
        mask = await client.upload_image(mask_data, name=_name("mask"))
        built = builder.build_inpaint(
            photo.reference, mask.reference, "a red door", denoise=denoise, seed=1,
            grow_mask=grow, feather=feather,
        )  # fmt: skip
        result = await _run(client, built.workflow)

    with Image.open(io.BytesIO(mask_data)) as uploaded:
        region = uploaded.convert("L")
    if grow:
        from dreamgen_async.testing.nodes import grow_mask

        region = grow_mask(region, grow, True)
    _outside_identical(result, _photo(), region)
    assert _changed(result, _photo(), HOLE) > 0.5


async def test_real_kept_pixels_with_the_images_alpha() -> None:
    async with ComfyUIClient(URL) as client:
        builder = _builder(await client.object_info())
        photo = await client.upload_image(encode_png(_with_alpha_hole()), name=_name("alpha"))
        built = builder.build_inpaint(photo.reference, None, "a red door", seed=2)
        result = await _run(client, built.workflow)

    _outside_identical(result, _photo(), _mask())
    assert _changed(result, _photo(), HOLE) > 0.5


async def test_real_vae_round_trip_changes_the_kept_pixels_without_the_composite() -> None:
    async with ComfyUIClient(URL) as client:
        builder = _builder(await client.object_info())
        photo = await client.upload_image(encode_png(_with_alpha_hole()), name=_name("control"))
        graph = builder.build_inpaint(photo.reference, None, "a red door", seed=3).workflow
        (composite,) = [k for k, n in graph.items() if n["class_type"] == "ImageCompositeMasked"]
        (save,) = [n for n in graph.values() if n["class_type"] == "SaveImage"]
        save["inputs"]["images"] = graph.pop(composite)["inputs"]["source"]
        result = await _run(client, graph)

    assert _changed(result, _photo(), (0, 0, 12, 48)) > 0.5


async def test_real_outpaint_keeps_the_original_away_from_the_seam() -> None:
    async with ComfyUIClient(URL) as client:
        builder = _builder(await client.object_info())
        photo = await client.upload_image(encode_png(_photo()), name=_name("outpaint"))
        built = builder.build_outpaint(photo.reference, "more", (16, 8, 8, 0), seed=4, feathering=4)
        result = await _run(client, built.workflow)

    assert result.size == (64 + 24, 48 + 8)
    inner = result.crop((16 + 4, 8 + 4, 16 + 64 - 4, 8 + 48))
    assert inner.tobytes() == _photo().crop((4, 4, 60, 48)).tobytes()


async def test_real_upload_mask_route_puts_the_mask_in_the_images_alpha() -> None:
    painted = Image.new("RGBA", SIZE, (0, 0, 0, 255))
    painted.putalpha(ImageChops.invert(_mask()))
    async with ComfyUIClient(URL) as client, aiohttp.ClientSession() as http:
        builder = _builder(await client.object_info())
        photo = await client.upload_image(encode_png(_photo()), name=_name("base"))
        form = aiohttp.FormData()
        form.add_field("image", encode_png(painted), filename=_name("clipspace"))
        form.add_field("original_ref", json.dumps({"filename": photo.name, "type": "input"}))
        form.add_field("type", "input")
        async with http.post(f"{URL}/upload/mask", data=form) as response:
            assert response.status == 200
            answer = await response.json()
        built = builder.build_inpaint(answer["name"], None, "a red door", seed=5)
        result = await _run(client, built.workflow)

    _outside_identical(result, _photo(), _mask())
    assert _changed(result, _photo(), HOLE) > 0.5
