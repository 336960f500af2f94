"""Outputs of every kind: parsed, downloaded, checked and written with their own suffix."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from _graphs import png_bytes, txt2img
from PIL import Image

from dreamgen_async import ComfyUIClient, DreamGenerator, OutputContentError
from dreamgen_async.protocol import (
    Executed,
    ImageRef,
    OutputFile,
    parse_history,
    parse_output_files,
    parse_text,
    sniff_image_format,
    verify_output,
)
from dreamgen_async.testing import ComfyUISimulator
from dreamgen_async.testing.nodes import WEBM_MAGIC


def ref(name: str, type: str = "output") -> dict[str, str]:
    return {"filename": name, "subfolder": "", "type": type}


@pytest.mark.parametrize(
    ("ui", "kinds"),
    [
        ({"images": [ref("a.png"), ref("b.png")]}, ["image", "image"]),
        ({"images": [ref("a.png", "temp")], "animated": [False]}, ["image"]),  # PreviewImage
        ({"images": [ref("a.webp")], "animated": [True]}, ["animated"]),  # SaveAnimatedWEBP
        ({"images": [ref("a.png")], "animated": [True]}, ["animated"]),  # SaveAnimatedPNG
        ({"images": [ref("v.webm")], "animated": [True]}, ["video"]),  # SaveWEBM, SaveVideo
        ({"gifs": [{**ref("v.mp4"), "format": "video/h264-mp4"}]}, ["video"]),  # VHS
        ({"gifs": [{**ref("g.gif"), "format": "image/gif"}]}, ["animated"]),
        ({"audio": [ref("a.flac")]}, ["audio"]),
        ({"text": ["hello", "world"]}, ["text", "text"]),
        ({"3d": [ref("mesh.glb")]}, ["other"]),
        (
            {"images": [ref("a.png")], "text": ["t"], "audio": [ref("s.mp3")]},
            ["image", "text", "audio"],
        ),
        ({"images": [{"no": "filename"}, 3, ref("ok.png")], "custom": {"x": 1}}, ["image"]),
        ({"result": ["mesh.glb", {"camera": 1}, None]}, []),  # Preview3D: not file records
    ],
)
def test_every_ui_key_parses_to_typed_outputs(ui: dict[str, Any], kinds: list[str]) -> None:
    files = parse_output_files("9", ui)
    assert [f.kind for f in files] == kinds
    assert all(f.node_id == "9" for f in files)
    for f in files:
        assert (f.ref is None) == (f.kind == "text")


def test_executed_and_history_carry_the_files() -> None:
    frame = (
        '{"type": "executed", "data": {"node": "12", "prompt_id": "p", "output": '
        '{"images": [{"filename": "v_00001_.webm", "subfolder": "", "type": "output"}], '
        '"animated": [true]}}}'
    )
    event = parse_text(frame)
    assert isinstance(event, Executed)
    (file,) = event.files
    assert (file.kind, file.filename, file.node_id) == ("video", "v_00001_.webm", "12")
    record = parse_history(
        "p",
        {"p": {"outputs": {"3": {"text": ["hi"]}, "4": {"audio": [ref("s.flac")]}}, "status": {}}},
    )
    assert record is not None
    assert [(f.node_id, f.kind) for f in record.files] == [("3", "text"), ("4", "audio")]
    assert record.files[0].text == "hi"


def test_image_bytes_are_checked_against_their_name() -> None:
    png = png_bytes(1)
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="JPEG")
    jpeg = buffer.getvalue()
    image = OutputFile("9", "image", ImageRef("x.png"))
    assert verify_output(image, png) == "png"
    assert sniff_image_format(jpeg) == "jpeg"
    with pytest.raises(OutputContentError) as info:
        verify_output(image, b"<html><body>secrets</body></html>")
    assert info.value.filename == "x.png"
    assert info.value.detected is None
    with pytest.raises(OutputContentError, match="should be png but the server sent jpeg"):
        verify_output(image, jpeg)
    assert verify_output(OutputFile("9", "image", ImageRef("x.custom")), jpeg) == "jpeg"
    assert verify_output(OutputFile("9", "video", ImageRef("v.webm")), b"anything") is None


def media_graph() -> dict[str, Any]:
    """txt2img with a 3-frame batch, saved as a still, animated WEBP/PNG, a video and text."""
    graph = txt2img(prompt="a red fox", seed=7, steps=1)
    graph["4"]["inputs"]["batch_size"] = 3
    frames = ["6", 0]
    graph["10"] = {
        "class_type": "SaveAnimatedWEBP",
        "inputs": {"images": frames, "filename_prefix": "anim", "fps": 6.0, "lossless": True,
                   "quality": 80, "method": "default"},
    }  # fmt: skip
    graph["11"] = {
        "class_type": "SaveAnimatedPNG",
        "inputs": {"images": frames, "filename_prefix": "apng", "fps": 6.0, "compress_level": 4},
    }
    graph["12"] = {
        "class_type": "SaveWEBM",
        "inputs": {"images": frames, "filename_prefix": "video", "codec": "vp9", "fps": 24.0,
                   "crf": 32.0},
    }  # fmt: skip
    graph["13"] = {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}}
    return graph


async def test_the_client_reports_and_downloads_every_kind(comfyui_sim: ComfyUISimulator) -> None:
    async with ComfyUIClient(comfyui_sim.url) as client:
        result = await client.run(media_graph(), timeout=30)
        kinds = {(f.node_id, f.kind) for f in result.files}
        assert kinds == {
            ("7", "image"),
            ("10", "animated"),
            ("11", "animated"),
            ("12", "video"),
            ("13", "text"),
        }
        outputs = await client.get_outputs(result)
        images = await client.get_output_images(result)
    by_node: dict[str, list[bytes]] = {}
    for output in outputs:
        by_node.setdefault(output.node_id, []).append(output.data)
    assert len(by_node["7"]) == 3  # SaveImage: one file per frame
    for node in ("10", "11"):
        (data,) = by_node[node]
        with Image.open(io.BytesIO(data)) as img:
            assert getattr(img, "n_frames", 1) == 3
    assert by_node["12"][0].startswith(WEBM_MAGIC)
    assert by_node["13"] == [b"a red fox"]
    assert {i.node_id for i in images} == {"7", "10", "11", "12"}


async def test_the_generator_writes_each_kind_with_its_own_suffix(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    async with DreamGenerator(comfyui_sim.url, output_dir=out) as gen:
        result = await gen.run_workflow(media_graph(), name="media")
    suffixes = sorted(p.suffix for p in result.paths)
    assert suffixes == [".png", ".png", ".png", ".png", ".txt", ".webm", ".webp"]
    webp = next(p for p in result.paths if p.suffix == ".webp")
    with Image.open(webp) as img:
        assert getattr(img, "n_frames", 1) == 3
    text = next(p for p in result.paths if p.suffix == ".txt")
    assert text.read_text() == "a red fox"
    assert sorted(out.iterdir()) == sorted(result.paths)


async def test_a_server_serving_non_images_as_images_gets_nothing_written(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    async with DreamGenerator(comfyui_sim.url, output_dir=out) as gen:
        comfyui_sim.fail_next("/view", 1, status=200, body="<html>the server's secrets</html>")
        with pytest.raises(OutputContentError) as info:
            await gen.generate_from_prompt("x", seed=1, width=64, height=64, steps=1)
    assert info.value.detected is None
    assert info.value.filename.endswith(".png")
    assert not out.exists() or not any(out.iterdir())
    async with ComfyUIClient(comfyui_sim.url) as client:
        result = await client.run(txt2img(seed=3), timeout=30)
        comfyui_sim.fail_next("/view", 1, status=200, body="#!/bin/sh\nrm -rf ~")
        with pytest.raises(OutputContentError):
            await client.get_output_images(result)
