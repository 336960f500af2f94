"""``dreamgen inpaint`` / ``upscale`` and ``--lora`` / ``--controlnet``, run as a user would:
the real CLI in a subprocess (``_cli.DREAMGEN``), the simulator in this process.

The must-show: a batch of 20 image + mask pairs with the journal gives one output per pair,
and a rerun after SIGKILL runs nothing again (every pair's image reaches the server in one
prompt, over both runs). Bad masks are usage errors (exit 2) before anything is sent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from _cli import DREAMGEN
from _recipes import CHECKPOINTS, MODELS, SD15
from PIL import Image, ImageDraw

from dreamgen_async.testing import ComfyUISimulator, SimulatorConfig
from dreamgen_async.testing.nodes import encode_png

SIZE = (48, 32)
SD = ("--ckpt", SD15, "--preset", "sd15", "--steps", "2")


@pytest_asyncio.fixture
async def sim(tmp_path: Path) -> AsyncIterator[ComfyUISimulator]:
    config = SimulatorConfig(checkpoints=CHECKPOINTS, models=MODELS)
    async with ComfyUISimulator(config, root=tmp_path / "sim") as server:
        yield server


def _frame(i: int) -> Image.Image:
    image = Image.new("RGB", SIZE)
    image.putdata([((x * 5 + i * 17) % 256, (y * 9 + i) % 256, (x * y + i * 31) % 256)
                   for y in range(SIZE[1]) for x in range(SIZE[0])])  # fmt: skip
    return image


def _mask(i: int = 0, size: tuple[int, int] = SIZE) -> Image.Image:
    mask = Image.new("L", size, 0)
    box = (2 + i % 20, 4, size[0] // 2 + i % 20, size[1] // 2)  # 20 different masks
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return mask


def _write_pairs(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(1, count + 1):
        image = folder / f"frame_{i:04d}.png"
        image.write_bytes(encode_png(_frame(i)))
        (folder / f"frame_{i:04d}_mask.png").write_bytes(encode_png(_mask(i)))
        images.append(image)
    return images


async def _dreamgen(*args: str | Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *DREAMGEN, *map(str, args), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, stdout.decode(), stderr.decode()


def _busy(sim: ComfyUISimulator) -> bool:
    return any(count for route, count in sim.in_progress.items() if route != "/ws")


def _sent(sim: ComfyUISimulator) -> int:
    uploads = sim.requests_to("/upload/image", "POST") + sim.requests_to("/upload/mask", "POST")
    return len(uploads) + len(sim.requests_to("/prompt", "POST"))


def _loaded(sim: ComfyUISimulator, prompt_id: str, class_type: str = "LoadImage") -> list[str]:
    graph = sim.prompts[prompt_id].graph
    return [n["inputs"]["image"] for n in graph.values() if n["class_type"] == class_type]


def _classes(sim: ComfyUISimulator) -> set[str]:
    return {n["class_type"] for p in sim.prompts.values() for n in p.graph.values()}


def _image(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


# --------------------------------------------------------------------------- the must-show


async def test_twenty_pairs_with_the_journal_then_sigkill_then_a_rerun_runs_nothing_again(
    sim: ComfyUISimulator, tmp_path: Path
) -> None:
    images = _write_pairs(tmp_path / "frames", 20)
    out = tmp_path / "out"
    command = (
        *DREAMGEN, "inpaint", str(tmp_path / "frames"), "a red door", *SD, "--seed", "5",
        "-o", str(out), "--server", sim.url, "-j", "4", "--json",
    )  # fmt: skip
    sim.step_time = 0.05  # long enough to be killed halfway
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )

    def finished() -> int:
        return sum(p.status == "success" for p in sim.prompts.values())

    await sim.wait_until(lambda: finished() >= 5 and len(sim.accepted_prompt_ids) >= 8, 60)
    proc.kill()  # SIGKILL: no cleanup at all
    await proc.communicate()
    await sim.wait_until(lambda: not _busy(sim), 30)
    killed_at = len(sim.accepted_prompt_ids)
    assert killed_at < 20, "the batch finished before the kill"
    sim.step_time = 0.0

    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()[-3000:]
    records = [json.loads(line) for line in stdout.decode().splitlines()]
    assert sorted(Path(r["input"]).name for r in records) == [p.name for p in images]
    # Done before the kill: skipped; posted before it: collected, not posted again.
    assert sum(r["resumed"] for r in records) >= 1
    before = set(sim.accepted_prompt_ids[:killed_at])
    assert sum(r["prompt_id"] in before and not r["resumed"] for r in records) >= 1

    # Every pair's image went to the server in exactly one prompt, over both runs.
    accepted = sim.accepted_prompt_ids
    assert len(accepted) == len(set(accepted)) == 20
    per_image = [name for pid in accepted for name in _loaded(sim, pid)]
    assert len(set(per_image)) == 20
    masks = [name for pid in accepted for name in _loaded(sim, pid, "LoadImageMask")]
    assert len(set(masks)) == 20
    # One output per pair, the kept pixels the input's.
    files = sorted(p for p in out.iterdir() if not p.name.startswith("."))
    assert len(files) == 20
    for i, image in enumerate(images, start=1):
        (output,) = [f for f in files if f.name.startswith(f"{image.stem}_5_")]
        keep = _mask(i).point(lambda v: 255 if v == 0 else 0)
        blank = Image.new("RGB", SIZE)
        assert (
            Image.composite(_image(output), blank, keep).tobytes()
            == Image.composite(_frame(i), blank, keep).tobytes()
        )

    # A third run: everything done, nothing sent.
    code, third, errors = await _dreamgen(*command[len(DREAMGEN) :])
    assert code == 0, errors
    assert len(sim.accepted_prompt_ids) == 20
    assert all(json.loads(line)["resumed"] for line in third.splitlines())


# --------------------------------------------------------------------------- pairs


async def test_image_and_mask_arguments_and_the_masks_folder(
    sim: ComfyUISimulator, tmp_path: Path
) -> None:
    photo, mask = tmp_path / "photo.png", tmp_path / "hole.png"
    photo.write_bytes(encode_png(_frame(1)))
    mask.write_bytes(encode_png(_mask(1, (24, 16))))  # half size: resized, no warning
    out = tmp_path / "out"
    code, stdout, stderr = await _dreamgen(
        "inpaint", photo, mask, "a door", *SD, "--seed", "1", "-o", out, "--server", sim.url
    )
    assert code == 0, stderr
    assert "warning" not in stderr
    assert len(list(out.glob("photo_1_*.png"))) == 1

    frames, masks = tmp_path / "frames", tmp_path / "masks"
    frames.mkdir()
    masks.mkdir()
    for i in (1, 2):
        (frames / f"f{i}.png").write_bytes(encode_png(_frame(i)))
        (masks / f"f{i}.png").write_bytes(encode_png(_mask(i)))
    code, stdout, stderr = await _dreamgen(
        "inpaint", frames, "a door", "--masks", masks, *SD, "-o", out, "--server", sim.url,
        "--json",
    )  # fmt: skip
    assert code == 0, stderr
    assert sorted(Path(json.loads(line)["input"]).name for line in stdout.splitlines()) == [
        "f1.png",
        "f2.png",
    ]
    assert len(sim.accepted_prompt_ids) == 3


async def test_an_image_without_a_mask_uses_its_alpha(
    sim: ComfyUISimulator, tmp_path: Path
) -> None:
    rgba = _frame(3).convert("RGBA")
    rgba.putalpha(_mask(3).point(lambda v: 255 - v))
    photo = tmp_path / "cut.png"
    photo.write_bytes(encode_png(rgba))
    out = tmp_path / "out"
    code, _, stderr = await _dreamgen(
        "inpaint", photo, "a door", *SD, "--seed", "2", "-o", out, "--server", sim.url
    )
    assert code == 0, stderr
    (pid,) = sim.accepted_prompt_ids
    assert _loaded(sim, pid, "LoadImageMask") == []


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (b"this is no image", "frame_0001_mask.png is not an image (not PNG, JPEG"),
        (encode_png(Image.new("L", SIZE, 0)), "black everywhere: nothing to repaint"),
        (None, "has no alpha channel to use as a mask"),
    ],
)
async def test_a_bad_mask_is_a_usage_error_before_anything_is_sent(
    sim: ComfyUISimulator, tmp_path: Path, mask: bytes | None, message: str
) -> None:
    frames = tmp_path / "frames"
    _write_pairs(frames, 3)
    target = frames / "frame_0001_mask.png"
    if mask is None:
        target.unlink()
    else:
        target.write_bytes(mask)
    code, _, stderr = await _dreamgen(
        "inpaint", frames, "a door", *SD, "-o", tmp_path / "out", "--server", sim.url
    )
    assert code == 2, stderr
    assert message in stderr
    assert "frame_0001" in stderr
    assert _sent(sim) == 0


async def test_a_mask_of_another_shape_warns_then_runs(
    sim: ComfyUISimulator, tmp_path: Path
) -> None:
    photo, mask = tmp_path / "photo.png", tmp_path / "square.png"
    photo.write_bytes(encode_png(_frame(1)))
    mask.write_bytes(encode_png(_mask(1, (32, 32))))
    code, _, stderr = await _dreamgen(
        "inpaint", photo, mask, "a door", *SD, "-o", tmp_path / "out", "--server", sim.url
    )
    assert code == 0, stderr
    assert "warning: the mask" in stderr
    assert "is 32x32 but the image is 48x32" in stderr
    assert stderr.count("32x32") == 1  # told once, not again as a Python warning


async def test_pad_outpaints(sim: ComfyUISimulator, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(encode_png(_frame(1)))
    out = tmp_path / "out"
    code, _, stderr = await _dreamgen(
        "inpaint", photo, "more sky", "--pad", "8,0,16,8", *SD, "-o", out, "--server", sim.url
    )
    assert code == 0, stderr
    (output,) = out.glob("photo_*.png")
    assert _image(output).size == (SIZE[0] + 24, SIZE[1] + 8)
    code, _, stderr = await _dreamgen("inpaint", photo, "x", "--pad", "1,2", "--server", sim.url)
    assert code == 2
    assert "LEFT,TOP,RIGHT,BOTTOM" in stderr


# --------------------------------------------------------------------------- upscale, LoRA, CN


async def test_upscale(sim: ComfyUISimulator, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(encode_png(_frame(1)))
    out = tmp_path / "out"
    code, _, stderr = await _dreamgen("upscale", photo, "-o", out, "--server", sim.url)
    assert code == 0, stderr
    (output,) = out.glob("photo_*.png")
    assert _image(output).size == (SIZE[0] * 4, SIZE[1] * 4)
    code, _, stderr = await _dreamgen(
        "upscale", photo, "--model", "nope.pth", "-o", out, "--server", sim.url
    )
    assert code == 2
    assert "RealESRGAN_x4plus.safetensors" in stderr
    assert len(sim.accepted_prompt_ids) == 1


async def test_loras_and_a_controlnet_on_txt2img_img2img_and_inpaint(
    sim: ComfyUISimulator, tmp_path: Path
) -> None:
    photo, mask, edges = tmp_path / "p.png", tmp_path / "m.png", tmp_path / "edges.png"
    photo.write_bytes(encode_png(_frame(1)))
    mask.write_bytes(encode_png(_mask(1)))
    edges.write_bytes(encode_png(_frame(2).convert("L")))
    recipe = (
        "--lora", "add_detail.safetensors:0.6", "--lora", "flux_realism_lora.safetensors",
        "--controlnet", f"control_v11p_sd15_canny.safetensors:{edges}:0.5", "--canny",
    )  # fmt: skip
    common = (*SD, "--seed", "1", "-o", tmp_path / "out", "--server", sim.url)
    for args in (
        ("txt2img", "a cat", "--size", "64x64"),
        ("img2img", photo, "a cat"),
        ("inpaint", photo, mask, "a cat"),
    ):
        code, _, stderr = await _dreamgen(*args, *recipe, *common)
        assert code == 0, stderr
    assert len(sim.accepted_prompt_ids) == 3
    for pid in sim.accepted_prompt_ids:
        graph: dict[str, Any] = sim.prompts[pid].graph
        loras = [n["inputs"] for n in graph.values() if n["class_type"] == "LoraLoader"]
        assert [(x["lora_name"], x["strength_model"]) for x in loras] == [
            ("add_detail.safetensors", 0.6),
            ("flux_realism_lora.safetensors", 1.0),
        ]
        (applied,) = [
            n["inputs"] for n in graph.values() if n["class_type"] == "ControlNetApplyAdvanced"
        ]
        assert applied["strength"] == 0.5
    assert "Canny" in _classes(sim)


@pytest.mark.parametrize(
    ("option", "value", "listed"),
    [
        ("--lora", "nope.safetensors", "add_detail.safetensors"),
        ("--controlnet", "nope_cn.safetensors:{edges}", "control_v11p_sd15_canny.safetensors"),
    ],
)
async def test_a_model_the_server_lacks_is_a_usage_error_listing_what_it_has(
    sim: ComfyUISimulator, tmp_path: Path, option: str, value: str, listed: str
) -> None:
    edges = tmp_path / "edges.png"
    edges.write_bytes(encode_png(_frame(2)))
    code, _, stderr = await _dreamgen(
        "txt2img", "a cat", option, value.format(edges=edges), *SD, "--server", sim.url,
        "-o", tmp_path / "out",
    )  # fmt: skip
    assert code == 2, stderr
    assert "the server has" in stderr
    assert listed in stderr
    assert sim.accepted_prompt_ids == []


async def test_bad_recipe_options_are_usage_errors(tmp_path: Path) -> None:
    code, _, stderr = await _dreamgen("txt2img", "x", "--lora", "a.safetensors:lots")
    assert code == 2
    assert "must be a number" in stderr
    code, _, stderr = await _dreamgen("txt2img", "x", "--controlnet", "cn.safetensors:missing.png")
    assert code == 2
    assert "is not a file" in stderr


async def test_dreamgen_resume_finishes_an_inpaint_batch_from_its_journal(
    sim: ComfyUISimulator, tmp_path: Path
) -> None:
    images = _write_pairs(tmp_path / "frames", 4)
    out, journal = tmp_path / "out", tmp_path / "pairs.journal"
    sim.hold()
    proc = await asyncio.create_subprocess_exec(
        *DREAMGEN, "inpaint", str(tmp_path / "frames"), "a red door", *SD, "--seed", "3",
        "-o", str(out), "--server", sim.url, "--journal", str(journal), "-q",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await sim.wait_until(lambda: len(sim.accepted_prompt_ids) >= 4, 30)
    proc.kill()
    await proc.communicate()
    await sim.wait_until(lambda: not _busy(sim), 30)
    sim.release()
    code, stdout, stderr = await _dreamgen("resume", journal, "--json")
    assert code == 0, stderr
    records = [json.loads(line) for line in stdout.splitlines()]
    assert sorted(Path(r["input"]).name for r in records) == [p.name for p in images]
    assert len(sim.accepted_prompt_ids) == len(set(sim.accepted_prompt_ids)) == 4
    assert len([p for p in out.iterdir() if not p.name.startswith(".")]) == 4


def test_find_pairs_by_suffix_by_folder_and_by_argument(tmp_path: Path) -> None:
    from dreamgen_async.cli.recipes import Pair, find_pairs

    frames, masks = tmp_path / "frames", tmp_path / "masks"
    images = _write_pairs(frames, 2)
    (frames / "lonely.png").write_bytes(encode_png(_frame(9)))
    masks.mkdir()
    (masks / "frame_0002.webp").write_bytes(b"")
    by_suffix = find_pairs([str(frames)], "_mask", None)
    assert by_suffix == [
        Pair(images[0], frames / "frame_0001_mask.png"),
        Pair(images[1], frames / "frame_0002_mask.png"),
        Pair(frames / "lonely.png", None),
    ]
    by_folder = find_pairs([str(frames)], "_mask", masks)
    assert Pair(images[1], masks / "frame_0002.webp") in by_folder
    assert Pair(images[0], None) in by_folder
    assert all(p.mask is None for p in find_pairs([str(frames)], "", None))
    assert find_pairs([str(images[0]), str(masks / "frame_0002.webp")], "_mask", None) == [
        Pair(images[0], masks / "frame_0002.webp")
    ]
