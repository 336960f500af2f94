"""Optional input downscaling: ``max_side=`` and ``dreamgen img2img --max-side``."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from pathlib import Path

import pytest
from PIL import Image

from dreamgen_async import DreamGenerator, Img2ImgRequest, InputImageError, WorkflowError
from dreamgen_async.generator import fit_within
from dreamgen_async.testing import ComfyUISimulator


def image_bytes(width: int, height: int, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 120, 200)).save(buffer, format=fmt)
    return buffer.getvalue()


def uploaded_sizes(sim: ComfyUISimulator) -> list[tuple[int, int]]:
    sizes = []
    for path in sorted((sim.input_dir / "dreamgen").iterdir()):
        with Image.open(path) as img:
            sizes.append(img.size)
    return sizes


@pytest.mark.parametrize(
    ("size", "max_side", "multiple", "expected"),
    [
        ((4000, 3000), 1024, 16, (1024, 768)),
        ((3000, 4000), 1024, 8, (768, 1024)),
        ((500, 400), 1024, 16, (500, 400)),  # fits: untouched (never upscaled)
        ((4000, 100), 1000, 16, (992, 32)),  # sides stay multiples, within max_side
        ((1000, 1), 100, 8, (96, 8)),
    ],
)
def test_fit_within_keeps_the_aspect_and_the_multiple(
    size: tuple[int, int], max_side: int, multiple: int, expected: tuple[int, int]
) -> None:
    result = fit_within(*size, max_side, multiple)
    assert result == expected
    if result != size:
        assert max(result) <= max_side
        assert all(side % multiple == 0 for side in result)


async def test_a_large_input_is_downscaled_before_upload(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    big = image_bytes(4000, 3000, "JPEG")
    async with DreamGenerator(
        comfyui_sim.url, output_dir=tmp_path / "out", max_input_pixels=2_000_000
    ) as gen:
        with pytest.raises(InputImageError, match="max_input_pixels"):
            await gen.generate_from_image(big, "ink", seed=1, steps=1)
        result = await gen.generate_from_image(big, "ink", seed=1, steps=1, max_side=1024)
        batch = await gen.generate_many(
            [Img2ImgRequest(image_bytes(300, 600), "ink", seed=2, steps=1, max_side=128)]
        )
    assert sorted(uploaded_sizes(comfyui_sim)) == [(64, 128), (1024, 768)]
    with Image.open(result.path) as out:
        assert out.size == (1024, 768)
    assert not isinstance(batch[0], Exception)


async def test_a_bad_max_side_fails_before_any_network_call(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    async with DreamGenerator(comfyui_sim.url, output_dir=tmp_path) as gen:
        for bad in (0, 8, "512", True):
            with pytest.raises(WorkflowError) as info:
                await gen.generate_from_image(image_bytes(64, 64), "x", max_side=bad)  # type: ignore[arg-type]
            assert info.value.input_name == "max_side"
    assert not [r for r in comfyui_sim.requests if r.route in ("/upload/image", "/prompt")]


async def test_the_cli_max_side_option(comfyui_sim: ComfyUISimulator, tmp_path: Path) -> None:
    source = tmp_path / "wide.png"
    source.write_bytes(image_bytes(400, 200))
    env = {**os.environ, "COLUMNS": "60", "DREAMGEN_TOKEN": ""}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dreamgen_async", "img2img", str(source), "ink", "--max-side",
        "64", "--server", comfyui_sim.url, "-o", str(tmp_path / "out"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    assert stdout.decode().startswith(f"ok {source} -> ")
    assert uploaded_sizes(comfyui_sim) == [(64, 32)]
