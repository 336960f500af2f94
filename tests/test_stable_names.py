"""Output names come from the request, never the prompt id: a rerun never duplicates a file."""

from __future__ import annotations

from pathlib import Path

from _graphs import png_bytes, txt2img

from dreamgen_async.generator import (
    DreamGenerator,
    GenerationResult,
    Img2ImgRequest,
    Request,
    Txt2ImgRequest,
    WorkflowRequest,
)
from dreamgen_async.testing import ComfyUISimulator


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


async def test_the_same_request_writes_the_same_name_hit_or_miss(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    request = Img2ImgRequest(png_bytes(3), "stable", seed=11, name="frame")
    names = []
    for cache in (None, tmp_path / "cache", tmp_path / "cache"):  # miss, miss, hit
        async with DreamGenerator(comfyui_sim.url, output_dir=out, cache=cache) as gen:
            result = await gen.generate(request)
        names.append(result.path.name)
    assert result.cached
    assert len(set(names)) == 1
    assert names[0].startswith("frame_11_")
    assert files(out) == names[:1]
    assert len(comfyui_sim.accepted_prompt_ids) == 2  # the third run was a cache hit


async def test_a_rerun_of_a_batch_replaces_its_files(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    """Requests with a seed write the same names again; seedless ones (issue 19) are new
    requests in each run: new seeds, new names, nothing of the first run overwritten."""
    out = tmp_path / "out"
    requests: list[Request] = [
        *(Txt2ImgRequest(f"fox {i}", seed=i, width=64, height=64) for i in range(3)),
        # Seedless repeats are distinct images: each gets its own name (with its seed).
        *[Txt2ImgRequest("any fox", width=64, height=64, name="free")] * 3,
        WorkflowRequest(txt2img("mine", seed=5), name="mine"),
    ]
    runs = []
    for _ in range(2):
        async with DreamGenerator(comfyui_sim.url, output_dir=out) as gen:
            outcomes = await gen.generate_many(requests, concurrency=4)
        assert all(isinstance(o, GenerationResult) for o in outcomes)
        runs.append(files(out))
    seeded = [name for name in runs[0] if not name.startswith("free_")]
    assert [name for name in runs[1] if not name.startswith("free_")] == seeded
    assert len(runs[0]) == len(requests)
    assert sum(name.startswith("free_") for name in runs[0]) == 3
    assert sum(name.startswith("free_") for name in runs[1]) == 6
    assert set(runs[0]) < set(runs[1])
    assert sum(name.startswith("mine_5_") for name in runs[0]) == 1


async def test_workflow_requests_are_cached_unless_they_load_a_server_file(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    async with DreamGenerator(
        comfyui_sim.url, output_dir=tmp_path / "out", cache=tmp_path / "cache"
    ) as gen:
        first = await gen.run_workflow(txt2img("cached graph", seed=9))
        again = await gen.run_workflow(txt2img("cached graph", seed=9))
    assert not first.cached
    assert again.cached
    assert again.path == first.path
    # A hit reports the original run's timings, so `finished - queued` works on it too.
    assert again.timings.queued is not None
    assert again.timings.finished is not None
    assert again.timings.finished - again.timings.queued >= 0
