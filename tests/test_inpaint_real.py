"""Kept-pixel identity through the facade on a real ComfyUI (skipped unless one is named).

``DREAMGEN_REAL_COMFYUI`` names a running server (see ``shared/REAL_COMFYUI.md``: ComfyUI
0.8.0 with the tiny random SD 1.5 checkpoint, ``DREAMGEN_REAL_CHECKPOINT`` if another).
``generate_inpaint`` reads, checks and uploads the image and its mask (a file of another
size, and the image's own alpha) as a user's call does; outside the mask the written file
must be the input byte for byte, inside it must have changed.
"""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from PIL import Image
from test_recipes import HOLE, SIZE, _changed, _mask, _outside_identical, _photo, _with_alpha_hole

from dreamgen_async import (
    ComfyUIClient,
    DreamGenerator,
    GenerationResult,
    InpaintRequest,
    builder_from_server,
)
from dreamgen_async.generator import Request
from dreamgen_async.testing.nodes import encode_png
from dreamgen_async.workflows import prepare_mask

URL = os.environ.get("DREAMGEN_REAL_COMFYUI", "")
CHECKPOINT = os.environ.get("DREAMGEN_REAL_CHECKPOINT", "tiny-sd15.safetensors")

pytestmark = pytest.mark.skipif(not URL, reason="DREAMGEN_REAL_COMFYUI names no server")


@pytest_asyncio.fixture
async def gen(tmp_path: Path) -> AsyncIterator[DreamGenerator]:
    async with ComfyUIClient(URL) as client:
        builder = await builder_from_server(
            client, CHECKPOINT, preset="sd15", steps=2, filename_prefix="dreamgen_facade_test"
        )
        async with DreamGenerator(client, output_dir=tmp_path / "out", builder=builder) as g:
            yield g


def _image(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


async def test_real_facade_kept_pixels_with_a_mask_file_and_with_alpha(
    gen: DreamGenerator, tmp_path: Path
) -> None:
    photo, mask, cut = tmp_path / "photo.png", tmp_path / "photo_mask.png", tmp_path / "cut.png"
    photo.write_bytes(encode_png(_photo()))
    mask.write_bytes(encode_png(_mask((32, 24))))  # half size: resized to the image's
    cut.write_bytes(encode_png(_with_alpha_hole()))
    file_result = await gen.generate_inpaint(photo, mask, "a red door", seed=11, timeout=120)
    alpha_result = await gen.generate_inpaint(cut, None, "a red door", seed=12, timeout=120)

    sent_mask = prepare_mask(mask.read_bytes(), SIZE).data
    with Image.open(io.BytesIO(sent_mask)) as region:
        _outside_identical(_image(file_result.path), _photo(), region.convert("L"))
    assert _changed(_image(file_result.path), _photo(), HOLE) > 0.5
    _outside_identical(_image(alpha_result.path), _photo(), _mask())
    assert _changed(_image(alpha_result.path), _photo(), HOLE) > 0.5


async def test_real_facade_inpaint_requests_in_a_journaled_batch(
    gen: DreamGenerator, tmp_path: Path
) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(encode_png(_photo()))
    masks = []
    for i in range(3):
        path = tmp_path / f"mask_{i}.png"
        region = Image.new("L", SIZE, 0)
        region.paste(255, (8 * i, 8, 8 * i + 16, 24))
        path.write_bytes(encode_png(region))
        masks.append((path, region))
    requests: list[Request] = [
        InpaintRequest(photo, path, "a red door", seed=20 + i, name=f"m{i}")
        for i, (path, _) in enumerate(masks)
    ]
    journal = tmp_path / "batch.journal"
    first = await gen.generate_many(requests, journal=journal)
    again = await gen.generate_many(requests, journal=journal)

    for outcome, (_, region) in zip(first, masks, strict=True):
        assert isinstance(outcome, GenerationResult), outcome
        _outside_identical(_image(outcome.path), _photo(), region)
    assert all(isinstance(r, GenerationResult) and r.resumed for r in again)
