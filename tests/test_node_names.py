"""Outputs of several nodes are named by their node (title, else id), on a cache hit too."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

from _graphs import txt2img

from dreamgen_async import DreamGenerator
from dreamgen_async.cache import ResultCache
from dreamgen_async.files import node_labels
from dreamgen_async.testing import ComfyUISimulator


def two_outputs(first_title: str | None, second_title: str | None) -> dict[str, Any]:
    graph = txt2img(seed=7)
    graph["8"] = {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "u"}}
    for node_id, title in (("7", first_title), ("8", second_title)):
        if title is not None:
            graph[node_id]["_meta"] = {"title": title}
    return graph


def names(paths: tuple[Path, ...]) -> list[str]:
    return sorted(p.name for p in paths)


def test_labels_are_titles_unless_shared_then_ids() -> None:
    graph = two_outputs("Final image", "Depth map")
    assert node_labels(graph, ["7", "8", "8"]) == ["Final_image", "Depth_map", "Depth_map"]
    same = two_outputs("Save Image", "Save Image")
    assert node_labels(same, ["7", "8"]) == ["7", "8"]
    assert node_labels(two_outputs(None, "x"), ["7", "8"]) == ["7", "x"]
    assert node_labels(graph, ["7", "7"]) == [None, None]  # one node: names as before


async def test_outputs_of_two_nodes_are_named_by_node(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    async with DreamGenerator(comfyui_sim.url, output_dir=tmp_path) as gen:
        result = await gen.run_workflow(two_outputs("Final image", "Depth map"), name="fox")
        plain = await gen.run_workflow(txt2img(seed=7), name="fox")
    found = names(result.paths)
    assert len(found) == 2
    assert any("_Final_image_0." in n for n in found)
    assert any("_Depth_map_0." in n for n in found)
    (single,) = plain.paths  # one output node: the name it always had
    assert single.name.endswith("_0.png")
    assert "Final" not in single.name


async def test_a_cache_hit_names_files_as_the_miss_did(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    cache = ResultCache(tmp_path / "cache")
    graph = two_outputs("Save Image", "Save Image")  # same titles: named by node id
    async with DreamGenerator(comfyui_sim.url, output_dir=tmp_path / "a", cache=cache) as gen:
        miss = await gen.run_workflow(graph, name="fox")
    async with DreamGenerator(comfyui_sim.url, output_dir=tmp_path / "b", cache=cache) as gen:
        hit = await gen.run_workflow(graph, name="fox")
    assert not miss.cached
    assert hit.cached
    assert names(hit.paths) == names(miss.paths)
    assert any("_7_0." in n for n in names(miss.paths))
    assert any("_8_0." in n for n in names(miss.paths))
    assert len(comfyui_sim.prompts) == 1


async def test_an_entry_stored_without_nodes_still_reads(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path)
    await cache.put("old", [(".png", b"a"), (".png", b"b")])  # the earlier format: names only
    await cache.put("new", [(".png", b"a"), (".png", b"b")], nodes=["7", "8"])
    # closing(): a connection's own ``with`` only commits, and 3.13 warns of an unclosed one.
    with contextlib.closing(sqlite3.connect(tmp_path / "index.sqlite")) as db:
        files = dict(db.execute("SELECT key, files FROM entries"))
    assert json.loads(files["old"]) == ["0000.png", "0001.png"]
    old = await cache.get_entry("old")
    new = await cache.get_entry("new")
    assert old is not None
    assert new is not None
    assert old.images == new.images == ((".png", b"a"), (".png", b"b"))
    assert old.nodes == ()
    assert new.nodes == ("7", "8")
    paths = await cache.get("new")  # the paths-only reader takes both forms
    assert paths is not None
    assert [p.name for p in paths] == ["0000.png", "0001.png"]
