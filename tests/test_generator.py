"""DreamGenerator against the simulator: real inputs, real PNG outputs, batches, the cache."""

from __future__ import annotations

import asyncio
import gc
import json
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath

import pytest
from _graphs import png_bytes, txt2img
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dreamgen_async import (
    ComfyUIClient,
    InputImageError,
    Progress,
    PromptTimeout,
    ServerError,
    WorkflowError,
)
from dreamgen_async.cache import ResultCache
from dreamgen_async.generator import (
    BatchProgress,
    DreamGenerator,
    GenerationResult,
    Img2ImgRequest,
    JobFailure,
    Txt2ImgRequest,
    safe_stem,
)
from dreamgen_async.jobs import Job
from dreamgen_async.testing import ComfyUISimulator


@pytest.fixture
async def gen(comfyui_sim: ComfyUISimulator, tmp_path: Path) -> AsyncIterator[DreamGenerator]:
    async with DreamGenerator(
        comfyui_sim.url, output_dir=tmp_path / "out", max_in_flight=64
    ) as generator:
        yield generator


def ksampler_seed(sim: ComfyUISimulator, prompt_id: str | None) -> int:
    graph = sim.prompts[prompt_id or ""].graph
    (seed,) = [n["inputs"]["seed"] for n in graph.values() if n["class_type"] == "KSampler"]
    return int(seed)


async def test_generate_from_image_writes_a_real_png(
    gen: DreamGenerator, comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    source = tmp_path / "cat.png"
    source.write_bytes(png_bytes(5, size=64))
    result = await gen.generate_from_image(source, "an oil painting", denoise=0.6, seed=42)
    assert result.path.parent == tmp_path / "out"
    assert result.path.name.startswith("cat_42_")
    with Image.open(result.path) as img:
        assert img.format == "PNG"
    assert result.path.read_bytes() == comfyui_sim.prompts[result.prompt_id or ""].output_bytes[0]
    assert result.seed == 42 == ksampler_seed(comfyui_sim, result.prompt_id)
    assert result.workflow == comfyui_sim.prompts[result.prompt_id or ""].graph
    t = result.timings
    assert t.queued is not None
    assert t.finished is not None
    assert t.downloaded is not None
    assert t.submitted <= t.queued <= t.finished <= t.downloaded
    assert not result.cached
    # The input went up once, under its content hash.
    uploads = [r for r in comfyui_sim.requests if r.route == "/upload/image"]
    assert len(uploads) == 1
    await gen.generate_from_image(source, "again", seed=43)
    assert len([r for r in comfyui_sim.requests if r.route == "/upload/image"]) == 1


async def test_an_output_folder_removed_between_jobs_is_made_again(
    gen: DreamGenerator, tmp_path: Path
) -> None:
    """The folder is not checked before each write; a write that finds it gone makes it."""
    first = await gen.generate_from_prompt("a fox", width=64, height=64, steps=1, seed=1)
    assert first.path.exists()
    shutil.rmtree(tmp_path / "out")
    second = await gen.generate_from_prompt("a fox", width=64, height=64, steps=1, seed=2)
    assert second.path.parent == tmp_path / "out"
    with Image.open(second.path) as img:
        assert img.format == "PNG"
    assert [p.name for p in (tmp_path / "out").iterdir()] == [second.path.name]  # no staging


async def test_a_finished_request_leaves_no_reference_cycle(gen: DreamGenerator) -> None:
    """Its backend job (and the outputs and tasks it holds) is freed by reference counting
    alone: a cycle (the job's progress callback into the shared run that holds the job) would
    keep it until the garbage collector's next pass, whose every pass then walks it."""
    prompt_ids: set[str] = set()
    requests = [Txt2ImgRequest("a fox", width=64, height=64, steps=1, seed=i) for i in range(3)]
    gc.collect()
    gc.disable()
    try:
        async for _, outcome in gen.enumerate_completed(
            requests, on_job=lambda _, job, __: prompt_ids.add(job.prompt_id)
        ):
            assert isinstance(outcome, GenerationResult)
        del outcome
        await asyncio.sleep(0)  # the shared runs' done callbacks
        assert len(prompt_ids) == 3
        alive = [o for o in gc.get_objects() if isinstance(o, Job) and o.prompt_id in prompt_ids]
        assert alive == []
    finally:
        gc.enable()


async def test_an_input_dir_shared_with_the_server_replaces_the_upload(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    """``input_dir``: the input is copied (atomically, once per content) into the server's
    input folder, and nothing is uploaded."""
    async with DreamGenerator(
        comfyui_sim.url, output_dir=tmp_path / "out", input_dir=comfyui_sim.input_dir
    ) as generator:
        first = await generator.generate_from_image(png_bytes(4), "a fox", seed=1)
        second = await generator.generate_from_image(png_bytes(4), "a fox", seed=2)
    assert first.path.exists()
    assert second.path.exists()
    assert not [r for r in comfyui_sim.requests if r.route == "/upload/image"]
    copied = list((comfyui_sim.input_dir / "dreamgen").iterdir())
    assert len(copied) == 1  # one content, one file; no staging file left
    assert copied[0].read_bytes() == png_bytes(4)
    loads = [
        n["inputs"]["image"] for n in first.workflow.values() if n["class_type"] == "LoadImage"
    ]
    assert loads == [f"dreamgen/{copied[0].name}"]


async def test_pil_and_bytes_inputs_and_a_random_seed(gen: DreamGenerator) -> None:
    with Image.new("RGB", (48, 48), (10, 200, 30)) as pil:
        from_pil = await gen.generate_from_image(pil, "a meadow")
    from_bytes = await gen.generate_from_image(png_bytes(9), "a meadow", name="../../../evil")
    assert from_pil.seed is not None
    assert from_pil.path.exists()
    assert from_bytes.path.parent == gen.output_dir
    assert from_bytes.path.name.startswith("evil_")


async def test_generate_from_prompt(gen: DreamGenerator, comfyui_sim: ComfyUISimulator) -> None:
    result = await gen.generate_from_prompt("a lighthouse", width=64, height=64, steps=1, seed=3)
    assert result.path.exists()
    assert ksampler_seed(comfyui_sim, result.prompt_id) == 3


async def test_bad_arguments_fail_before_any_network_call(
    gen: DreamGenerator, comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    with pytest.raises(WorkflowError) as info:
        await gen.generate_from_image(png_bytes(1), "x", denoise=1.5)
    assert info.value.input_name == "denoise"
    with pytest.raises(InputImageError) as missing:
        await gen.generate_from_image(tmp_path / "nope.png", "x")
    assert missing.value.source == str(tmp_path / "nope.png")
    assert "no such file" in str(missing.value)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(InputImageError, match="empty"):
        await gen.generate_from_image(empty, "x")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(InputImageError, match="not a readable image"):
        await gen.generate_from_image(text, "x")
    assert comfyui_sim.requests == []


async def test_five_hundred_mixed_jobs_land_with_their_seeds(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    inputs = []
    for i in range(8):
        path = tmp_path / f"in{i}.png"
        path.write_bytes(png_bytes(i))
        inputs.append(path)
    requests: list[Txt2ImgRequest | Img2ImgRequest] = []
    for i in range(500):
        if i % 2:
            requests.append(Img2ImgRequest(inputs[i % 8], f"job {i}", 0.5, seed=i, steps=1))
        else:
            requests.append(Txt2ImgRequest(f"job {i}", seed=i, width=64, height=64, steps=1))
    progress: list[BatchProgress] = []
    async with DreamGenerator(
        comfyui_sim.url, output_dir=tmp_path / "out", max_in_flight=64
    ) as gen:
        outcomes = await gen.generate_many(
            requests, concurrency=64, on_batch_progress=progress.append
        )
    assert len(outcomes) == 500
    for i, outcome in enumerate(outcomes):
        assert isinstance(outcome, GenerationResult), outcome
        assert outcome.request is requests[i]
        assert outcome.seed == i == ksampler_seed(comfyui_sim, outcome.prompt_id)
        assert outcome.path.exists()
    assert len(list((tmp_path / "out").iterdir())) == 500
    assert progress[-1].done == 500
    assert progress[-1].total == 500
    assert max(p.running for p in progress) <= 64


async def test_a_batch_with_bad_inputs_finishes_the_rest(
    gen: DreamGenerator, tmp_path: Path
) -> None:
    good = tmp_path / "good.png"
    good.write_bytes(png_bytes(1))
    broken = tmp_path / "broken.png"
    broken.write_bytes(png_bytes(2)[:40])
    requests = [
        Img2ImgRequest(good, "a", seed=1),
        Img2ImgRequest(tmp_path / "missing.png", "b", seed=2),
        Img2ImgRequest(broken, "c", seed=3),
        Img2ImgRequest(good, "d", seed=4),
    ]
    outcomes = await gen.generate_many(requests, concurrency=4)
    assert [type(o).__name__ for o in outcomes] == [
        "GenerationResult",
        "JobFailure",
        "JobFailure",
        "GenerationResult",
    ]
    failures = [o for o in outcomes if isinstance(o, JobFailure)]
    assert [f.source for f in failures] == [str(tmp_path / "missing.png"), str(broken)]
    assert all(isinstance(f.error, InputImageError) for f in failures)


async def test_return_exceptions_false_raises_and_cancels_the_rest(
    gen: DreamGenerator, comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    comfyui_sim.hold()
    requests: list[Txt2ImgRequest | Img2ImgRequest]
    requests = [Txt2ImgRequest(f"p{i}", seed=i, width=64, height=64) for i in range(4)]
    requests.append(Img2ImgRequest(tmp_path / "missing.png", "x"))
    with pytest.raises(InputImageError):
        await gen.generate_many(requests, concurrency=5, return_exceptions=False)
    await comfyui_sim.wait_until(
        lambda: all(p.status == "deleted" for p in comfyui_sim.prompts.values())
    )
    comfyui_sim.release()
    assert not any(p.name.endswith(".part") for p in gen.output_dir.glob(".*"))


async def test_as_completed_yields_results_as_they_finish(gen: DreamGenerator) -> None:
    requests = (Txt2ImgRequest(f"p{i}", seed=i, width=64, height=64) for i in range(10))
    seeds = [o.seed async for o in gen.as_completed(requests, concurrency=3)]  # type: ignore[union-attr]
    assert sorted(s for s in seeds if s is not None) == list(range(10))


async def test_cancelling_leaves_no_partial_files_and_no_prompts(
    gen: DreamGenerator, comfyui_sim: ComfyUISimulator
) -> None:
    comfyui_sim.hold()
    requests = [Txt2ImgRequest(f"p{i}", seed=i, width=64, height=64) for i in range(6)]
    batch = asyncio.create_task(gen.generate_many(requests, concurrency=6))
    await comfyui_sim.wait_until(lambda: len(comfyui_sim.accepted_prompt_ids) == 6)
    batch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await batch
    await comfyui_sim.wait_until(
        lambda: all(p.status == "deleted" for p in comfyui_sim.prompts.values())
    )
    comfyui_sim.release()
    assert not gen.output_dir.exists() or list(gen.output_dir.iterdir()) == []


# ---------------------------------------------------------------------------- the cache


async def test_cache_hit_does_not_reach_the_server(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    async with DreamGenerator(
        comfyui_sim.url, output_dir=tmp_path / "out", cache=tmp_path / "cache"
    ) as gen:
        first = await gen.generate_from_image(png_bytes(4), "cached", seed=8)
        again = await gen.generate_from_image(png_bytes(4), "cached", seed=8)
        unseeded = await gen.generate_from_image(png_bytes(4), "cached")
    assert not first.cached
    assert again.cached
    assert again.prompt_id is None
    assert again.path.read_bytes() == first.path.read_bytes()
    assert not unseeded.cached
    assert len(comfyui_sim.accepted_prompt_ids) == 2
    # A new generator (another process, say) answers from the same cache without any request.
    before = len(comfyui_sim.requests)
    async with DreamGenerator(
        comfyui_sim.url, output_dir=tmp_path / "out2", cache=tmp_path / "cache"
    ) as fresh:
        hit = await fresh.generate_from_image(png_bytes(4), "cached", seed=8)
    assert hit.cached
    # Nothing but the new client's WebSocket (recorded when it closes, if it has yet).
    assert [r.route for r in comfyui_sim.requests[before:] if r.route != "/ws"] == []


async def test_concurrent_identical_requests_share_one_prompt(
    gen: DreamGenerator, comfyui_sim: ComfyUISimulator
) -> None:
    request = Txt2ImgRequest("twins", seed=77, width=64, height=64, name="twin")
    outcomes = await gen.generate_many([request] * 5, concurrency=5)
    assert len(comfyui_sim.accepted_prompt_ids) == 1
    paths = {o.path for o in outcomes if isinstance(o, GenerationResult)}
    assert len(paths) == 1  # same request, same name: the same file


async def test_cache_eviction_keeps_the_size_limit(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path / "cache", max_bytes=10_000)
    for i in range(10):
        await cache.put(f"{i:064x}", [(".png", bytes(3000))])
    assert cache.size() <= 10_000
    assert await cache.get(f"{9:064x}") is not None
    assert await cache.get(f"{0:064x}") is None


# ---------------------------------------------------------------------------- hostile servers


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../../x", "x"),
        ("/etc/passwd", "passwd"),
        ("a\0b", "ab"),
        ("..", "image"),
        ("x" * 500, "x" * 80),
        ("C:\\Windows\\evil", "evil"),
    ],
)
def test_safe_stem(name: str, expected: str) -> None:
    assert safe_stem(name) == expected


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet="/\\.ab \0_-", max_size=14))
def test_safe_stem_takes_the_last_part_as_a_posix_path_would(name: str) -> None:
    """The stem is read off the string (no path built per request): the same last part a
    ``PurePosixPath`` gives, dots, separators and empty parts included."""
    last = PurePosixPath(name.replace("\\", "/")).name.replace("\0", "")
    expected = re.sub(r"[^A-Za-z0-9._-]+", "_", last).lstrip(".")[:80].strip("_") or "image"
    assert safe_stem(name) == expected


async def test_a_hostile_output_name_cannot_escape_output_dir(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    out = tmp_path / "deep" / "out"
    async with ComfyUIClient(comfyui_sim.url) as client:
        gen = DreamGenerator(client, output_dir=out)
        comfyui_sim.hold()
        job = asyncio.create_task(gen.run_workflow(txt2img(seed=5), name="w"))
        await comfyui_sim.wait_until(lambda: len(comfyui_sim.accepted_prompt_ids) == 1)
        (prompt_id,) = comfyui_sim.accepted_prompt_ids
        hostile = {
            "type": "executed",
            "data": {
                "node": "99",
                "prompt_id": prompt_id,
                "output": {
                    "images": [{"filename": "../../x.png", "subfolder": "..", "type": "output"}]
                },
            },
        }
        await comfyui_sim.send_raw(json.dumps(hostile))
        comfyui_sim.release()
        with pytest.raises(ServerError) as info:
            await job
    assert "../../x.png" in str(info.value)
    assert not list(tmp_path.rglob("x.png"))
    assert not out.exists() or list(out.iterdir()) == []


# ---------------------------------------------------------------------------- handles


async def test_a_submitted_job_streams_its_progress(
    gen: DreamGenerator, comfyui_sim: ComfyUISimulator
) -> None:
    job = gen.submit(Txt2ImgRequest("fox", seed=12, width=64, height=64, steps=3))
    steps = [e.value async for e in job.events() if isinstance(e, Progress)]
    result = await job.result()
    assert steps == [1, 2, 3]
    assert result.path.exists()
    assert job.done()


async def test_cancelling_a_submitted_job_takes_it_off_the_server(
    gen: DreamGenerator, comfyui_sim: ComfyUISimulator
) -> None:
    comfyui_sim.hold()
    job = gen.submit(Txt2ImgRequest("fox", seed=13, width=64, height=64))
    await comfyui_sim.wait_until(lambda: len(comfyui_sim.accepted_prompt_ids) == 1)
    await job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job.result()
    (prompt_id,) = comfyui_sim.accepted_prompt_ids
    await comfyui_sim.wait_for_status(prompt_id, "deleted")
    comfyui_sim.release()


async def test_a_batch_reports_progress_as_an_async_iterator(gen: DreamGenerator) -> None:
    requests = [Txt2ImgRequest(f"p{i}", seed=i, width=64, height=64) for i in range(12)]
    batch = gen.start_batch(requests, concurrency=4)
    states = [state async for state in batch.progress()]
    outcomes = await batch.results()
    assert states[-1] == BatchProgress(total=12, done=12, failed=0, running=0, cached=0)
    assert max(s.running for s in states) <= 4
    assert [o.seed for o in outcomes if isinstance(o, GenerationResult)] == list(range(12))


async def test_a_submitted_job_follows_the_waiter_rule(
    gen: DreamGenerator, comfyui_sim: ComfyUISimulator
) -> None:
    comfyui_sim.hold()
    job = gen.submit(Txt2ImgRequest("fox", seed=14, width=64, height=64))
    patient = asyncio.create_task(job.result())
    with pytest.raises(PromptTimeout, match="another caller still waits"):
        await job.result(timeout=0.05)
    assert not job.done()  # one caller's timeout ended only its own wait
    comfyui_sim.release()
    result = await patient
    assert result.path.exists()
    assert job.state == "done"


async def test_the_last_waiter_leaving_cancels_a_submitted_job(
    gen: DreamGenerator, comfyui_sim: ComfyUISimulator
) -> None:
    comfyui_sim.hold()
    job = gen.submit(Txt2ImgRequest("fox", seed=15, width=64, height=64))
    await comfyui_sim.wait_until(lambda: len(comfyui_sim.accepted_prompt_ids) == 1)
    with pytest.raises(PromptTimeout, match="removed from the server"):
        await job.result(timeout=0.05)
    assert job.state == "cancelled"
    (prompt_id,) = comfyui_sim.accepted_prompt_ids
    await comfyui_sim.wait_for_status(prompt_id, "deleted")
    comfyui_sim.release()


async def test_a_submitted_job_says_where_it_is(
    gen: DreamGenerator, comfyui_sim: ComfyUISimulator
) -> None:
    job = gen.submit(Txt2ImgRequest("fox", seed=16, width=64, height=64))
    assert (job.state, job.prompt_id, job.server) == ("waiting", None, None)
    result = await job.result()
    (prompt_id,) = comfyui_sim.accepted_prompt_ids
    assert (job.state, job.prompt_id, result.prompt_id) == ("done", prompt_id, prompt_id)
    assert isinstance(gen.client, ComfyUIClient)
    assert job.server == gen.client.base_url
    assert job.resubmitted is False


async def test_cancelling_a_submitted_job_twice_is_one_cancel(
    gen: DreamGenerator, comfyui_sim: ComfyUISimulator
) -> None:
    comfyui_sim.hold()
    job = gen.submit(Txt2ImgRequest("fox", seed=17, width=64, height=64))
    await comfyui_sim.wait_until(lambda: len(comfyui_sim.accepted_prompt_ids) == 1)
    await asyncio.gather(job.cancel(), job.cancel())
    await job.cancel()
    assert job.state == "cancelled"
    with pytest.raises(asyncio.CancelledError):
        await job.result()
    comfyui_sim.release()
