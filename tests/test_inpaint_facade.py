"""Inpainting, outpainting, upscaling, LoRAs and ControlNets through the facade.

Over the simulator (with the recipes' models): the kept pixels of ``generate_inpaint`` are the
input's byte for byte, with a mask file and with the image's alpha; bad masks fail before
anything is sent; an :class:`InpaintRequest` works in the batch forms, with the journal and
the cache (its key includes the mask's content); a missing LoRA or ControlNet model names
what the server has.
"""

from __future__ import annotations

import io
import json
import re
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from _recipes import CHECKPOINTS, MODELS, SD15, builder
from PIL import Image
from test_recipes import HOLE, SIZE, _changed, _mask, _outside_identical, _photo, _with_alpha_hole

from dreamgen_async import (
    ControlNetInput,
    DreamGenerator,
    GenerationResult,
    InpaintRequest,
    InputImageError,
    MaskError,
    ResultCache,
    Txt2ImgRequest,
    UpscaleRequest,
    WorkflowError,
)
from dreamgen_async.generator import Img2ImgRequest, Request, request_from_spec, request_spec
from dreamgen_async.testing import ComfyUISimulator, SimulatorConfig
from dreamgen_async.testing.nodes import encode_png
from dreamgen_async.workflows import MaskAspectWarning, prepare_mask


@pytest_asyncio.fixture
async def sim(tmp_path: Path) -> AsyncIterator[ComfyUISimulator]:
    config = SimulatorConfig(checkpoints=CHECKPOINTS, models=MODELS)
    async with ComfyUISimulator(config, root=tmp_path / "sim") as server:
        yield server


@pytest_asyncio.fixture
async def gen(sim: ComfyUISimulator, tmp_path: Path) -> AsyncIterator[DreamGenerator]:
    async with DreamGenerator(sim.url, output_dir=tmp_path / "out", builder=builder(SD15)) as g:
        yield g


def _files(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    paths = {
        "photo": folder / "photo.png",
        "mask": folder / "photo_mask.png",
        "small_mask": folder / "small_mask.png",
        "alpha": folder / "alpha.png",
    }
    paths["photo"].write_bytes(encode_png(_photo()))
    paths["mask"].write_bytes(encode_png(_mask()))
    paths["small_mask"].write_bytes(encode_png(_mask((32, 24))))
    paths["alpha"].write_bytes(encode_png(_with_alpha_hole()))
    return paths


def _image(result: GenerationResult) -> Image.Image:
    with Image.open(result.path) as img:
        return img.convert("RGB")


def _sent(sim: ComfyUISimulator) -> int:
    """How many uploads and prompts the server received."""
    uploads = sim.requests_to("/upload/image", "POST") + sim.requests_to("/upload/mask", "POST")
    return len(uploads) + len(sim.requests_to("/prompt", "POST"))


def _classes(result: GenerationResult) -> list[str]:
    return [node["class_type"] for node in result.workflow.values()]


# --------------------------------------------------------------------------- kept pixels


@pytest.mark.parametrize("denoise", [1.0, 0.6])
async def test_kept_pixels_are_the_inputs_with_a_mask_file(
    gen: DreamGenerator, tmp_path: Path, denoise: float
) -> None:
    files = _files(tmp_path)
    result = await gen.generate_inpaint(
        files["photo"], files["small_mask"], "a red door", denoise=denoise, seed=3
    )

    image = _image(result)
    assert image.size == SIZE
    resized = prepare_mask(files["small_mask"].read_bytes(), SIZE).data  # what was sent
    with Image.open(io.BytesIO(resized)) as region:
        _outside_identical(image, _photo(), region.convert("L"))
    assert _changed(image, _photo(), HOLE) > 0.9
    assert result.path.name.startswith("photo_3_")
    assert "LoadImageMask" in _classes(result)
    assert "ImageCompositeMasked" in _classes(result)


async def test_kept_pixels_are_the_inputs_with_the_images_alpha(
    gen: DreamGenerator, tmp_path: Path
) -> None:
    files = _files(tmp_path)
    result = await gen.generate_inpaint(files["alpha"], None, "a red door", seed=4)

    image = _image(result)
    _outside_identical(image, _photo(), _mask())
    assert _changed(image, _photo(), HOLE) > 0.9
    assert "LoadImageMask" not in _classes(result)


async def test_masks_as_bytes_and_pil_images(gen: DreamGenerator) -> None:
    photo = encode_png(_photo())
    from_bytes = await gen.generate_inpaint(photo, encode_png(_mask()), "a door", seed=5)
    from_pil = await gen.generate_inpaint(_photo(), _mask(), "a door", seed=5)

    assert from_bytes.path.name.startswith("inpaint_5_")
    assert _image(from_bytes).tobytes() == _image(from_pil).tobytes()
    _outside_identical(_image(from_pil), _photo(), _mask())


async def test_the_mask_follows_a_downscaled_image(gen: DreamGenerator, tmp_path: Path) -> None:
    files = _files(tmp_path)
    result = await gen.generate_inpaint(
        files["photo"], files["mask"], "a red door", seed=6, max_side=32
    )
    assert _image(result).size == (32, 24)


async def test_a_mask_of_another_shape_warns_then_is_stretched(
    gen: DreamGenerator, tmp_path: Path
) -> None:
    square = tmp_path / "square_mask.png"
    square.write_bytes(encode_png(_mask((40, 40))))
    photo = tmp_path / "photo.png"
    photo.write_bytes(encode_png(_photo()))
    with pytest.warns(MaskAspectWarning, match="square_mask.png is 40x40 but the image is 64x48"):
        result = await gen.generate_inpaint(photo, square, "a red door", seed=7)
    assert _image(result).size == SIZE


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (b"not an image at all", "the mask <19 bytes>: not a readable image"),
        ("missing.png", "the mask missing.png: no such file"),
        (encode_png(Image.new("L", SIZE, 0)), "black everywhere: nothing to repaint"),
    ],
)
async def test_a_bad_mask_fails_before_anything_is_sent(
    gen: DreamGenerator, sim: ComfyUISimulator, mask: Any, message: str
) -> None:
    with pytest.raises(MaskError, match=message) as caught:
        await gen.generate_inpaint(_photo(), mask, "a red door", seed=1)
    assert isinstance(caught.value, InputImageError)
    assert _sent(sim) == 0


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (_photo(), "has no alpha channel to use as a mask"),
        (_photo().convert("RGBA"), "opaque everywhere"),
    ],
)
async def test_an_alpha_mask_that_masks_nothing_fails_before_anything_is_sent(
    gen: DreamGenerator, sim: ComfyUISimulator, image: Image.Image, message: str
) -> None:
    with pytest.raises(MaskError, match=message):
        await gen.generate_inpaint(image, None, "a red door")
    assert _sent(sim) == 0


async def test_pad_with_a_mask_is_refused(gen: DreamGenerator, sim: ComfyUISimulator) -> None:
    with pytest.raises(WorkflowError, match="give no mask") as caught:
        await gen.generate_inpaint(_photo(), _mask(), "sky", pad=(8, 0, 8, 0))
    assert caught.value.input_name == "mask"
    assert _sent(sim) == 0


async def test_a_missing_lora_or_controlnet_model_lists_what_the_server_has(
    gen: DreamGenerator, sim: ComfyUISimulator
) -> None:
    with pytest.raises(WorkflowError, match=re.escape("'add_detail.safetensors'")) as caught:
        await gen.generate_from_prompt("a cat", loras=[("nope.safetensors", 0.5)])
    assert "the server has no LoRA 'nope.safetensors'" in str(caught.value)
    control = ControlNetInput("nope_cn.safetensors", encode_png(_photo()))
    with pytest.raises(WorkflowError, match=re.escape("control_v11p_sd15_canny.safetensors")):
        await gen.generate_inpaint(_photo(), _mask(), "a door", controlnet=control)
    assert _sent(sim) == 0


# --------------------------------------------------------------------------- recipes


async def test_outpainting_extends_the_canvas(gen: DreamGenerator) -> None:
    result = await gen.generate_inpaint(_photo(), None, "more street", pad=(16, 0, 8, 8), seed=1)
    assert _image(result).size == (SIZE[0] + 24, SIZE[1] + 8)
    assert "ImagePadForOutpaint" in _classes(result)


async def test_upscale(gen: DreamGenerator, tmp_path: Path) -> None:
    files = _files(tmp_path)
    result = await gen.generate_upscale(files["photo"])
    assert _image(result).size == (SIZE[0] * 4, SIZE[1] * 4)
    assert result.seed is None
    assert result.path.name.startswith("photo_")
    with pytest.raises(WorkflowError, match=re.escape("RealESRGAN_x4plus.safetensors")):
        await gen.generate_upscale(files["photo"], model="nope.pth")


async def test_loras_and_a_controlnet_on_every_kind(
    gen: DreamGenerator, sim: ComfyUISimulator
) -> None:
    control = ControlNetInput(
        "control_v11p_sd15_canny.safetensors", _photo(), 0.8, 0.0, 0.7, preprocessor="canny"
    )
    loras = [("add_detail.safetensors", 0.7)]
    results = [
        await gen.generate_from_prompt("a cat", seed=1, loras=loras, controlnet=control),
        await gen.generate_from_image(_photo(), "a cat", seed=1, loras=loras, controlnet=control),
        await gen.generate_inpaint(_photo(), _mask(), "a cat", seed=1, loras=loras,
                                   controlnet=control),
    ]  # fmt: skip
    for result in results:
        classes = _classes(result)
        assert {"LoraLoader", "ControlNetApplyAdvanced", "Canny"} <= set(classes)
        (lora,) = [n for n in result.workflow.values() if n["class_type"] == "LoraLoader"]
        assert lora["inputs"]["strength_model"] == 0.7
    # The photo (input and control image alike) and the mask, each uploaded once.
    assert len(sim.requests_to("/upload/image", "POST")) == 2


# --------------------------------------------------------------------------- batches


async def test_inpaint_requests_in_a_journaled_batch_with_the_cache(
    sim: ComfyUISimulator, tmp_path: Path
) -> None:
    files = _files(tmp_path)
    other_mask = tmp_path / "in" / "other_mask.png"
    other = Image.new("L", SIZE, 0)
    other.paste(255, (0, 0, 8, 8))
    other_mask.write_bytes(encode_png(other))
    requests: list[Request] = [
        InpaintRequest(files["photo"], files["mask"], "a red door", seed=1, name="a"),
        InpaintRequest(files["photo"], other_mask, "a red door", seed=1, name="b"),
        InpaintRequest(files["alpha"], None, "a red door", seed=1, name="c"),
        UpscaleRequest(files["photo"], name="d"),
    ]
    cache = ResultCache(tmp_path / "cache")
    journal = tmp_path / "batch.journal"
    async with DreamGenerator(
        sim.url, output_dir=tmp_path / "out", builder=builder(SD15), cache=cache
    ) as gen:
        first = await gen.generate_many(requests, journal=journal)
        assert all(isinstance(r, GenerationResult) for r in first), first
        assert len(sim.accepted_prompt_ids) == 4  # two masks: two keys, two prompts
        again = await gen.generate_many(requests, journal=journal)
        resumed = [r.resumed for r in again if isinstance(r, GenerationResult)]
        assert resumed == [True] * 4
        from_cache = [r async for r in gen.as_completed(requests)]
        assert all(isinstance(r, GenerationResult) and r.cached for r in from_cache)
        batch = gen.start_batch(requests[:1], journal=tmp_path / "other.journal")
        (started,) = await batch.results()
    assert isinstance(started, GenerationResult)
    assert started.cached
    assert len(sim.accepted_prompt_ids) == 4
    assert len({r.path for r in first if isinstance(r, GenerationResult)}) == 4


async def test_a_batch_reports_a_bad_mask_by_the_image(
    sim: ComfyUISimulator, tmp_path: Path
) -> None:
    files = _files(tmp_path)
    requests = [
        InpaintRequest(files["photo"], b"junk", "a door", seed=1),
        InpaintRequest(files["photo"], files["mask"], "a door", seed=1),
    ]
    async with DreamGenerator(sim.url, output_dir=tmp_path / "out", builder=builder(SD15)) as gen:
        bad, good = await gen.generate_many(requests)
    assert isinstance(good, GenerationResult)
    assert not isinstance(bad, GenerationResult)
    assert isinstance(bad.error, MaskError)
    assert bad.source == "<4 bytes>"


def test_request_records_round_trip(tmp_path: Path) -> None:
    control = ControlNetInput("cn.safetensors", b"\x89PNG-ish", 0.5, preprocessor="canny")
    requests: list[Any] = [
        InpaintRequest(tmp_path / "a.png", tmp_path / "a_mask.png", "x", 0.8, seed=2,
                       grow_mask=4, feather=3, loras=(("l.safetensors", 0.5),),
                       controlnet=control),
        InpaintRequest(b"\x89PNG", None, "x", pad=(8, 0, 8, 0)),
        UpscaleRequest(tmp_path / "b.png", "up.pth", name="b"),
        Txt2ImgRequest("x", seed=1, loras=("l.safetensors",), controlnet=control),
        Img2ImgRequest(b"\x89PNG", "x", loras=(("l.safetensors", 0.5, 0.2),)),
    ]  # fmt: skip
    for request in requests:
        spec = json.loads(json.dumps(request_spec(request)))  # what a journal keeps
        back = request_from_spec(spec)
        assert type(back) is type(request)
        assert request_spec(back) == spec
        if isinstance(back, InpaintRequest | Txt2ImgRequest) and back.controlnet is not None:
            assert back.controlnet.image == control.image
            assert back.controlnet.preprocessor == "canny"


def test_an_unsupported_mask_stays_unusable_after_a_round_trip() -> None:
    spec = request_spec(InpaintRequest(b"\x89PNG", object(), "x"))
    back = request_from_spec(spec)
    assert isinstance(back, InpaintRequest)
    assert back.mask is not None


async def test_inpaint_warning_free_run(gen: DreamGenerator) -> None:
    """The same shape (a resize only) warns nothing."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = await gen.generate_inpaint(
            encode_png(_photo()), io.BytesIO(encode_png(_mask((32, 24)))).getvalue(), "x", seed=9
        )
    assert _image(result).size == SIZE
