"""Inpaint, outpaint, LoRA, ControlNet, hires-fix and upscale recipes.

Each recipe's graph is compared with its golden API graph (``tests/golden/recipes``) and
run on the simulator over loopback. The kept-pixel tests check what users of other UIs rely
on: outside the mask the result is the input, byte for byte (the simulated VAE round trip is
lossy, so only the graph's ``ImageCompositeMasked`` can give that), and inside it changed.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from _recipes import (
    ALPHA_IMAGE,
    CHECKPOINTS,
    CONTROL,
    FLUX_FILL,
    GOLDEN,
    IMAGE,
    INFO,
    MASK,
    MODELS,
    RECIPES,
    SD15,
    SD15_INPAINT,
    builder,
)
from PIL import Image, ImageChops, ImageDraw

from dreamgen_async import ComfyUIClient
from dreamgen_async.errors import InputImageError, WorkflowError
from dreamgen_async.testing import ComfyUISimulator, SimulatorConfig
from dreamgen_async.testing.nodes import encode_png, grow_mask
from dreamgen_async.workflows import (
    ControlNet,
    FluxWorkflowBuilder,
    HiresFix,
    MaskAspectWarning,
    MaskError,
    ServerModels,
    alpha_mask,
    choose_inpaint_layout,
    prepare_mask,
)

SIZE = (64, 48)
HOLE = (16, 12, 40, 32)  # the repainted box: left, top, right (excl.), bottom (excl.)


def _photo() -> Image.Image:
    """A busy picture: every pixel differs from its neighbours, so any change shows."""
    image = Image.new("RGB", SIZE)
    image.putdata([((x * 7 + y) % 256, (y * 11) % 256, (x * y) % 256) for y in range(SIZE[1])
                   for x in range(SIZE[0])])  # fmt: skip
    return image


def _mask(size: tuple[int, int] = SIZE) -> Image.Image:
    """White (repaint) in :data:`HOLE`, scaled to ``size``; black elsewhere."""
    sx, sy = size[0] / SIZE[0], size[1] / SIZE[1]
    mask = Image.new("L", size, 0)
    box = (HOLE[0] * sx, HOLE[1] * sy, HOLE[2] * sx - 1, HOLE[3] * sy - 1)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return mask


def _with_alpha_hole() -> Image.Image:
    rgba = _photo().convert("RGBA")
    rgba.putalpha(ImageChops.invert(_mask()))
    return rgba


def _golden(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GOLDEN / f"{name}.json").read_text(encoding="utf-8"))
    return data


@pytest_asyncio.fixture
async def recipe_sim(tmp_path: Path) -> AsyncIterator[ComfyUISimulator]:
    """A simulator with the recipes' models and input files."""
    config = SimulatorConfig(checkpoints=CHECKPOINTS, models=MODELS)
    async with ComfyUISimulator(config, root=tmp_path / "sim") as sim:
        sim.input_dir.mkdir(parents=True, exist_ok=True)
        (sim.input_dir / IMAGE).write_bytes(encode_png(_photo()))
        (sim.input_dir / MASK).write_bytes(prepare_mask(encode_png(_mask()), SIZE).data)
        (sim.input_dir / ALPHA_IMAGE).write_bytes(encode_png(_with_alpha_hole()))
        (sim.input_dir / CONTROL).write_bytes(encode_png(_photo().convert("L")))
        yield sim


async def _run(client: ComfyUIClient, workflow: dict[str, Any]) -> Image.Image:
    result = await client.run(workflow)
    (ref,) = result.images
    with Image.open(io.BytesIO(await client.download(ref))) as img:
        return img.convert("RGB")


def _changed(a: Image.Image, b: Image.Image, box: tuple[int, int, int, int]) -> float:
    """The fraction of pixels in ``box`` that differ between ``a`` and ``b``."""
    diff = ImageChops.difference(a.crop(box), b.crop(box)).convert("L")
    histogram = diff.histogram()
    return 1 - histogram[0] / sum(histogram)


def _outside_identical(result: Image.Image, original: Image.Image, mask: Image.Image) -> None:
    """Every pixel where ``mask`` is 0 is the original's, byte for byte."""
    keep = mask.point(lambda v: 255 if v == 0 else 0)
    blank = Image.new("RGB", result.size)
    kept_result = Image.composite(result, blank, keep)
    kept_original = Image.composite(original.convert("RGB"), blank, keep)
    assert kept_result.tobytes() == kept_original.tobytes()


# --------------------------------------------------------------------------- goldens


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_matches_its_golden_graph(name: str) -> None:
    assert RECIPES[name]().workflow == _golden(name)


@pytest.mark.parametrize("name", sorted(RECIPES))
async def test_recipe_golden_graph_runs_on_the_simulator(
    name: str, recipe_sim: ComfyUISimulator
) -> None:
    async with ComfyUIClient(recipe_sim.url) as client:
        image = await _run(client, _golden(name))

    if name.startswith("outpaint"):
        pad = RECIPES[name]().params["pad"]
        assert image.size == (SIZE[0] + pad[0] + pad[2], SIZE[1] + pad[1] + pad[3])
    elif name.startswith("upscale"):
        assert image.size == (SIZE[0] * 4, SIZE[1] * 4)
    elif "hires" in name:
        scale = RECIPES[name]().params["hires"]["scale"]
        assert image.size == (round(64 * scale), round(64 * scale))
    elif name.startswith("txt2img"):
        assert image.size == (64, 64)
    else:
        assert image.size == SIZE


# --------------------------------------------------------------------------- kept pixels


@pytest.mark.parametrize(
    ("model", "denoise"), [(SD15, 1.0), (SD15, 0.6), (SD15_INPAINT, 1.0), (FLUX_FILL, 1.0)]
)
async def test_kept_pixels_are_exact_with_a_mask_file(
    model: str, denoise: float, recipe_sim: ComfyUISimulator
) -> None:
    small_mask = prepare_mask(encode_png(_mask((32, 24))), SIZE)  # any size: resized
    async with ComfyUIClient(recipe_sim.url) as client:
        photo = await client.upload_image(encode_png(_photo()), name="kept.png")
        mask = await client.upload_image(small_mask.data, name="kept_mask.png")
        built = builder(model).build_inpaint(
            photo.reference, mask.reference, "a red door", denoise=denoise, seed=3
        )
        result = await _run(client, built.workflow)

    assert small_mask.resized
    with Image.open(io.BytesIO(small_mask.data)) as uploaded:
        _outside_identical(result, _photo(), uploaded.convert("L"))
    assert _changed(result, _photo(), HOLE) > 0.9


async def test_kept_pixels_are_exact_with_the_images_alpha(recipe_sim: ComfyUISimulator) -> None:
    data = encode_png(_with_alpha_hole())
    checked = alpha_mask(data)
    async with ComfyUIClient(recipe_sim.url) as client:
        photo = await client.upload_image(data, name="alpha_in.png")
        built = builder(SD15).build_inpaint(photo.reference, None, "a red door", seed=4)
        result = await _run(client, built.workflow)

    assert checked.coverage == pytest.approx(24 * 20 / (64 * 48))
    _outside_identical(result, _photo(), _mask())
    assert _changed(result, _photo(), HOLE) > 0.9


async def test_grown_and_feathered_mask_keeps_pixels_outside_the_grown_mask(
    recipe_sim: ComfyUISimulator,
) -> None:
    async with ComfyUIClient(recipe_sim.url) as client:
        built = builder(SD15).build_inpaint(
            IMAGE, MASK, "a red door", denoise=0.7, seed=5, grow_mask=3, feather=4
        )
        result = await _run(client, built.workflow)

    _outside_identical(result, _photo(), grow_mask(_mask(), 3, True))
    assert _changed(result, _photo(), HOLE) > 0.5
    assert _changed(result, _photo(), (0, 0, 12, 48)) == 0


async def test_without_the_composite_the_vae_round_trip_loses_the_kept_pixels(
    recipe_sim: ComfyUISimulator,
) -> None:
    """The control: the simulator's VAE is lossy, so the kept-pixel test means something."""
    graph = builder(SD15).build_inpaint(IMAGE, MASK, "a red door", seed=6).workflow
    (composite,) = [k for k, n in graph.items() if n["class_type"] == "ImageCompositeMasked"]
    (save,) = [n for n in graph.values() if n["class_type"] == "SaveImage"]
    save["inputs"]["images"] = graph[composite]["inputs"]["source"]
    del graph[composite]
    async with ComfyUIClient(recipe_sim.url) as client:
        result = await _run(client, graph)

    assert _changed(result, _photo(), (0, 0, 12, 48)) > 0.9


async def test_outpaint_keeps_the_original_away_from_the_seam(
    recipe_sim: ComfyUISimulator,
) -> None:
    async with ComfyUIClient(recipe_sim.url) as client:
        built = builder(SD15).build_outpaint(IMAGE, "more", (16, 8, 8, 0), seed=7, feathering=4)
        result = await _run(client, built.workflow)

    assert result.size == (64 + 24, 48 + 8)
    inner = result.crop((16 + 4, 8 + 4, 16 + 64 - 4, 8 + 48))
    assert inner.tobytes() == _photo().crop((4, 4, 60, 48)).tobytes()
    seam = result.crop((16, 8 + 4, 17, 8 + 48))  # the original's first column: feathered
    assert seam.tobytes() != _photo().crop((0, 4, 1, 48)).tobytes()
    border = result.crop((0, 0, 16, 56))
    assert len(border.getcolors(maxcolors=4096) or ()) != 1  # painted, not the flat grey


async def test_a_mask_uploaded_through_upload_mask_lands_in_the_images_alpha(
    recipe_sim: ComfyUISimulator, http: aiohttp.ClientSession
) -> None:
    """ComfyUI's mask editor path: the upload's alpha onto a copy of the original image."""
    painted = Image.new("RGBA", SIZE, (0, 0, 0, 255))
    painted.putalpha(ImageChops.invert(_mask()))  # transparent = repaint
    form = aiohttp.FormData()
    form.add_field("image", encode_png(painted), filename="clipspace-mask.png")
    form.add_field("original_ref", json.dumps({"filename": IMAGE, "type": "input"}))
    form.add_field("type", "input")
    async with http.post(f"{recipe_sim.url}/upload/mask", data=form) as response:
        assert response.status == 200
        answer = await response.json()
    async with ComfyUIClient(recipe_sim.url) as client:
        built = builder(SD15).build_inpaint(answer["name"], None, "a red door", seed=8)
        result = await _run(client, built.workflow)

    with Image.open(recipe_sim.input_dir / answer["name"]) as merged:
        assert merged.convert("RGB").tobytes() == _photo().tobytes()
    _outside_identical(result, _photo(), _mask())
    assert _changed(result, _photo(), HOLE) > 0.9


# --------------------------------------------------------------------------- decisions


def test_the_inpaint_layout_follows_the_model_and_the_denoise() -> None:
    assert choose_inpaint_layout(SD15, 1.0) == "encode_for_inpaint"
    assert choose_inpaint_layout(SD15, 0.5) == "noise_mask"
    assert choose_inpaint_layout(SD15_INPAINT, 0.5) == "inpaint_conditioning"
    assert choose_inpaint_layout(FLUX_FILL, 1.0) == "inpaint_conditioning"


def test_flux_fill_gets_guidance_30_unless_set() -> None:
    def guidance(b: FluxWorkflowBuilder) -> float:
        graph = b.build_inpaint(IMAGE, MASK, "x", seed=1).workflow
        (node,) = [n for n in graph.values() if n["class_type"] == "FluxGuidance"]
        return float(node["inputs"]["guidance"])

    assert guidance(builder(FLUX_FILL)) == 30.0
    assert guidance(FluxWorkflowBuilder.for_server(INFO, FLUX_FILL, guidance=12.0)) == 12.0


def test_builders_with_loras_and_controlnets_are_copies() -> None:
    plain = builder(SD15)
    styled = plain.with_loras([("add_detail.safetensors", 0.5)])
    both = styled.with_controlnet("control_v11p_sd15_canny.safetensors", IMAGE)

    assert plain.loras == ()
    assert plain.controlnets == ()
    assert both.loras == styled.loras
    assert both.controlnets == (ControlNet("control_v11p_sd15_canny.safetensors", IMAGE),)
    assert (
        styled.with_loras([]).build_txt2img("a", seed=1).workflow
        == plain.build_txt2img("a", seed=1).workflow
    )


# --------------------------------------------------------------------------- bad input


def test_a_missing_lora_lists_the_servers_loras() -> None:
    with pytest.raises(WorkflowError) as info:
        builder(SD15).with_loras([("nope.safetensors", 1.0)])

    assert info.value.input_name == "loras"
    assert "the server has: 'add_detail.safetensors', 'flux_realism_lora.safetensors'" in str(
        info.value
    )


def test_a_server_without_loras_says_none() -> None:
    bare = FluxWorkflowBuilder.for_server(NodeRegistryInfo.without_loras(), SD15, preset="sd15")
    with pytest.raises(WorkflowError, match=r"no LoRA 'x\.safetensors'; the server has: \(none\)"):
        bare.with_loras(["x.safetensors"])


def test_a_missing_controlnet_or_upscale_model_lists_what_the_server_has() -> None:
    with pytest.raises(WorkflowError, match=r"control_v11p_sd15_canny\.safetensors") as info:
        builder(SD15).with_controlnet("canny.pth", IMAGE)
    assert info.value.input_name == "controlnet"
    with pytest.raises(WorkflowError, match=r"RealESRGAN_x4plus\.safetensors"):
        builder(SD15).build_upscale(IMAGE, "4x-UltraSharp.pth")


@pytest.mark.parametrize(
    ("call", "input_name"),
    [
        (lambda b: b.with_loras([("a.safetensors", "strong")]), "loras"),
        (lambda b: b.with_loras([42]), "loras"),
        (lambda b: b.with_controlnet("c.safetensors", IMAGE, start=0.8, end=0.2), "controlnet"),
        (lambda b: b.with_controlnet("c.safetensors", IMAGE, preprocessor="depth"), "controlnet"),
        (lambda b: b.build_inpaint(IMAGE, MASK, "x", grow_mask=-1), "grow_mask"),
        (lambda b: b.build_inpaint(IMAGE, MASK, "x", feather=40), "feather"),
        (lambda b: b.build_inpaint(IMAGE, "", "x"), "mask"),
        (lambda b: b.build_inpaint(IMAGE, MASK, "x", denoise=0), "denoise"),
        (lambda b: b.build_outpaint(IMAGE, "x", (0, 0, 0, 0)), "pad"),
        (lambda b: b.build_outpaint(IMAGE, "x", (8, 8)), "pad"),
        (lambda b: b.build_txt2img("x", hires=HiresFix(scale=0.5)), "hires"),
        (lambda b: b.build_upscale(IMAGE), "model"),
    ],
)
def test_bad_recipe_arguments_raise_before_anything_is_sent(call: Any, input_name: str) -> None:
    offline = FluxWorkflowBuilder(SD15, preset="sd15")  # no server models: names unchecked

    with pytest.raises(WorkflowError) as info:
        call(offline)

    assert info.value.input_name == input_name


def test_a_mask_that_is_not_an_image_is_a_typed_error() -> None:
    with pytest.raises(MaskError, match="not an image") as info:
        prepare_mask(b"<html>oops</html>", SIZE, source="mask.png")

    assert isinstance(info.value, InputImageError)
    assert info.value.source == "mask.png"


def test_an_empty_mask_is_a_typed_error() -> None:
    with pytest.raises(MaskError, match="nothing to repaint"):
        prepare_mask(encode_png(Image.new("L", SIZE, 0)), SIZE)
    transparent = Image.new("RGBA", SIZE, (255, 255, 255, 0))  # transparent counts as black
    with pytest.raises(MaskError, match="nothing to repaint"):
        prepare_mask(encode_png(transparent), SIZE)


def test_an_alpha_mask_needs_transparent_pixels() -> None:
    with pytest.raises(MaskError, match="no alpha channel"):
        alpha_mask(encode_png(_photo()))
    with pytest.raises(MaskError, match="opaque everywhere"):
        alpha_mask(encode_png(_photo().convert("RGBA")))
    with pytest.raises(MaskError, match="not an image"):
        alpha_mask(b"GIF89a-broken")


def test_a_mask_of_another_shape_warns_then_is_resized() -> None:
    with pytest.warns(MaskAspectWarning, match="32x32 but the image is 64x48"):
        prepared = prepare_mask(encode_png(_mask((32, 32))), SIZE)

    assert prepared.resized
    with Image.open(io.BytesIO(prepared.data)) as img:
        assert img.size == SIZE
        assert img.mode == "L"


class NodeRegistryInfo:
    """Object-info variants for the error-message tests."""

    @staticmethod
    def without_loras() -> dict[str, Any]:
        info = json.loads(json.dumps(INFO))
        info["LoraLoader"]["input"]["required"]["lora_name"][0] = []
        info["LoraLoaderModelOnly"]["input"]["required"]["lora_name"][0] = []
        assert ServerModels.from_object_info(info).loras == ()
        return dict(info)


def test_a_mask_is_read_upright_as_comfyuis_loaders_read_it() -> None:
    """EXIF orientation 6 (a portrait phone shot): 48x64 stored, 64x48 shown and loaded."""
    stored = _mask().transpose(Image.Transpose.ROTATE_90)  # what the camera wrote
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    stored.save(buf, format="PNG", exif=exif.tobytes())

    prepared = prepare_mask(buf.getvalue(), SIZE)

    assert not prepared.resized
    with Image.open(io.BytesIO(prepared.data)) as img:
        assert img.tobytes() == _mask().tobytes()


async def test_the_feathered_composite_mask_stays_inside_the_grown_mask(
    recipe_sim: ComfyUISimulator,
) -> None:
    """The geometry itself, saved as an image: ImageBlur's square kernel reaches its corners,
    so the shrink before it must be square too (a tapered one leaked one pixel on ComfyUI)."""
    graph = (
        builder(SD15)
        .build_inpaint(IMAGE, MASK, "x", denoise=0.7, seed=9, grow_mask=2, feather=3)
        .workflow
    )
    (composite,) = [n for n in graph.values() if n["class_type"] == "ImageCompositeMasked"]
    (save,) = [n for n in graph.values() if n["class_type"] == "SaveImage"]
    graph["99"] = {"class_type": "MaskToImage", "inputs": {"mask": composite["inputs"]["mask"]}}
    save["inputs"]["images"] = ["99", 0]
    async with ComfyUIClient(recipe_sim.url) as client:
        soft = (await _run(client, graph)).convert("L")

    grown = grow_mask(_mask(), 2, True)
    outside = ImageChops.multiply(soft, ImageChops.invert(grown.point(lambda v: 255 if v else 0)))
    assert outside.getextrema() == (0, 0)
    assert soft.getextrema()[1] == 255
