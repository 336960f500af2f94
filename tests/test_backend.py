"""Issue 23: one Backend, every front door.

The public ``DreamGenerator`` scenarios run against a ``ComfyUIClient``, against a
two-simulator ``ComfyUIPool`` and against a ``RemoteBackend`` (a real redis-server and a
``dreamgen worker`` subprocess over two simulators; skipped, saying how to install it, without
redis-server) with the same assertions; the pool helpers that raised
``AttributeError: 'ComfyUIPool' object has no attribute 'object_info'`` work.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from _graphs import png_bytes, txt2img
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent / "distributed"))  # the Redis fixtures
from _redis import broker_url_fixture, redis_server_fixture  # noqa: F401 (fixtures)
from _workers import Workers

from dreamgen_async import (
    Backend,
    ComfyUIClient,
    ComfyUIPool,
    DreamGenerator,
    GenerationResult,
    Img2ImgRequest,
    JobFailure,
    NoCapableServerError,
    Progress,
    RetryPolicy,
    Txt2ImgRequest,
    WorkflowError,
)
from dreamgen_async.multiplexer import ReconnectPolicy
from dreamgen_async.protocol import Event
from dreamgen_async.testing import ComfyUISimulator, SimulatorConfig, SimulatorFarm
from dreamgen_async.workflow_io import (
    builder_from_server,
    load_workflow_from_server,
    models_by_server,
    server_models,
)

FAST: dict[str, Any] = {
    "retry": RetryPolicy(attempts=3, initial_delay=0.01, max_delay=0.05, max_time=2.0),
    "reconnect": ReconnectPolicy(max_time=0.5, initial_delay=0.01, max_delay=0.1),
    "health_interval": 0.05,
    "probe_timeout": 2.0,
    "probe_delay": 0.05,
    "max_probe_delay": 0.2,
}
SCHNELL = "flux1-schnell.safetensors"


def cfg(**kwargs: Any) -> SimulatorConfig:
    kwargs.setdefault("step_time", 0.002)
    return SimulatorConfig(**kwargs)


@pytest_asyncio.fixture(params=["client", "pool", "remote"])
async def backend(
    request: pytest.FixtureRequest, comfyui_farm: SimulatorFarm
) -> AsyncIterator[Backend]:
    """One simulator behind a ComfyUIClient, two behind a ComfyUIPool, or two behind a
    worker subprocess that a RemoteBackend sends jobs to through a real redis-server."""
    if request.param == "client":
        await comfyui_farm.start(cfg())
        async with ComfyUIClient(comfyui_farm.urls[0]) as client:
            yield client
    elif request.param == "pool":
        await comfyui_farm.start(cfg(), cfg(speed=0.5))
        async with ComfyUIPool(comfyui_farm.urls, **FAST) as pool:
            yield pool
    else:
        async for remote in _remote(request, comfyui_farm):
            yield remote


async def _remote(
    request: pytest.FixtureRequest, comfyui_farm: SimulatorFarm
) -> AsyncIterator[Backend]:
    from dreamgen_async.distributed import RemoteBackend

    url = request.getfixturevalue("broker_url")  # an emptied database
    await comfyui_farm.start(cfg(), cfg(speed=0.5))
    workers = Workers()
    try:
        await workers.start(url, *comfyui_farm.urls)
        async with RemoteBackend(url) as remote:
            remote_backend: Backend = remote  # mypy: a full Backend
            yield remote_backend
    finally:
        await workers.stop_all()


def _ui_txt2img() -> dict[str, Any]:
    """A UI-format export: checkpoint -> text -> sampler -> decode -> save."""

    def node(
        node_id: int, kind: str, widgets: Any = None, inputs: Any = (), outputs: Any = ()
    ) -> dict[str, Any]:
        return {
            "id": node_id,
            "type": kind,
            "mode": 0,
            "inputs": [{"name": n, "type": t, "link": link} for n, t, link in inputs],
            "outputs": [{"name": n, "type": t, "links": []} for n, t in outputs],
            "widgets_values": widgets if widgets is not None else [],
        }

    return {
        "nodes": [
            node(4, "CheckpointLoaderSimple", [SCHNELL], outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),  # noqa: E501
            node(6, "CLIPTextEncode", ["a fox"], [("clip", "CLIP", 1)], [("CONDITIONING", "CONDITIONING")]),  # noqa: E501
            node(5, "EmptyLatentImage", [64, 64, 1], outputs=[("LATENT", "LATENT")]),
            node(3, "KSampler", [7, "fixed", 2, 1.0, "euler", "simple", 1.0],
                 [("model", "MODEL", 2), ("positive", "CONDITIONING", 3), ("negative", "CONDITIONING", 4), ("latent_image", "LATENT", 5)],  # noqa: E501
                 [("LATENT", "LATENT")]),
            node(8, "VAEDecode", None, [("samples", "LATENT", 7), ("vae", "VAE", 8)], [("IMAGE", "IMAGE")]),  # noqa: E501
            node(9, "SaveImage", ["ui"], [("images", "IMAGE", 9)]),
        ],
        "links": [
            [1, 4, 1, 6, 0, "CLIP"],
            [2, 4, 0, 3, 0, "MODEL"],
            [3, 6, 0, 3, 1, "CONDITIONING"],
            [4, 6, 0, 3, 2, "CONDITIONING"],
            [5, 5, 0, 3, 3, "LATENT"],
            [7, 3, 0, 8, 0, "LATENT"],
            [8, 4, 2, 8, 1, "VAE"],
            [9, 8, 0, 9, 0, "IMAGE"],
        ],
        "version": 0.4,
    }  # fmt: skip


def _media_graph() -> dict[str, Any]:
    graph = txt2img(prompt="a red fox", seed=7, steps=1)
    graph["4"]["inputs"]["batch_size"] = 2
    graph["10"] = {
        "class_type": "SaveAnimatedWEBP",
        "inputs": {"images": ["6", 0], "filename_prefix": "anim", "fps": 6.0, "lossless": True,
                   "quality": 80, "method": "default"},
    }  # fmt: skip
    graph["13"] = {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}}
    return graph


# ---------------------------------------------------------------------------- the protocol


async def test_both_are_backends(backend: Backend) -> None:
    assert isinstance(backend, Backend)
    statuses = await backend.status()
    assert statuses
    assert {s.state for s in statuses} == {"up"}


async def test_txt2img(backend: Backend, tmp_path: Path) -> None:
    gen = DreamGenerator(backend, output_dir=tmp_path / "out")
    result = await gen.generate_from_prompt("a fox", seed=3, width=64, height=64, steps=1)
    assert [p.suffix for p in result.paths] == [".png"]
    with Image.open(result.path) as img:
        assert img.size == (64, 64)
    urls = [s.url for s in await backend.status()]
    assert result.server in urls
    assert result.resubmitted is False


async def test_img2img_batch(backend: Backend, tmp_path: Path) -> None:
    gen = DreamGenerator(backend, output_dir=tmp_path / "out")
    requests = [Img2ImgRequest(png_bytes(i), "ink", seed=i) for i in range(4)]
    outcomes = await gen.generate_many(requests, concurrency=4)
    assert all(isinstance(o, GenerationResult) for o in outcomes)
    assert [o.index for o in outcomes] == [0, 1, 2, 3]
    assert len({p for o in outcomes if isinstance(o, GenerationResult) for p in o.paths}) == 4


async def test_run_an_api_file(backend: Backend, tmp_path: Path) -> None:
    path = tmp_path / "wf_api.json"
    path.write_text(json.dumps(txt2img(seed=5)))
    workflow = await load_workflow_from_server(path, backend)
    gen = DreamGenerator(backend, output_dir=tmp_path / "out")
    result = await gen.run_workflow(workflow.to_api(), name="api")
    assert result.paths
    assert all(p.exists() for p in result.paths)


async def test_run_a_ui_file(backend: Backend, tmp_path: Path) -> None:
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(_ui_txt2img()))
    workflow = await load_workflow_from_server(path, backend)
    assert workflow.to_api()["4"]["inputs"]["ckpt_name"] == SCHNELL
    gen = DreamGenerator(backend, output_dir=tmp_path / "out")
    result = await gen.run_workflow(workflow.to_api(), name="ui")
    assert [p.suffix for p in result.paths] == [".png"]


async def test_models_from_the_server(backend: Backend, tmp_path: Path) -> None:
    models = await server_models(backend)
    assert SCHNELL in models.checkpoints
    builder = await builder_from_server(backend)
    assert builder.checkpoint == SCHNELL
    per_server = await models_by_server(backend)
    assert set(per_server) == {s.url for s in await backend.status()}
    gen = DreamGenerator(backend, output_dir=tmp_path / "out", builder=builder)
    result = await gen.generate_from_prompt("x", seed=1, width=64, height=64, steps=1)
    assert result.paths


async def test_outputs_of_every_kind(backend: Backend, tmp_path: Path) -> None:
    gen = DreamGenerator(backend, output_dir=tmp_path / "out")
    result = await gen.run_workflow(_media_graph(), name="media")
    suffixes = sorted(p.suffix for p in result.paths)
    assert suffixes == [".png", ".png", ".txt", ".webp"]
    text = next(p for p in result.paths if p.suffix == ".txt")
    assert text.read_text() == "a red fox"


async def test_a_journaled_batch(backend: Backend, tmp_path: Path) -> None:
    gen = DreamGenerator(backend, output_dir=tmp_path / "out")
    requests = [Img2ImgRequest(png_bytes(i), "ink", seed=i) for i in range(3)]
    first = await gen.generate_many(requests, journal=tmp_path / "j.sqlite")
    assert not any(isinstance(o, JobFailure) for o in first)
    again = await gen.generate_many(requests, journal=tmp_path / "j.sqlite")
    assert all(isinstance(o, GenerationResult) and o.resumed for o in again)


@pytest.mark.parametrize("joins", ["at once", "once posted"])
async def test_a_listening_caller_gets_the_progress_of_a_run_it_shares(
    backend: Backend, comfyui_farm: SimulatorFarm, tmp_path: Path, joins: str
) -> None:
    """A shared run's backend job reports progress only once a caller listens
    (``BackendJob.listen``): a listening caller joining the run of an identical request
    nobody listened to gets every step, on every backend."""
    gen = DreamGenerator(backend, output_dir=tmp_path / "out")
    await gen.generate_from_prompt("first", seed=1, width=64, height=64, steps=1)  # folder checked
    request = Txt2ImgRequest("twins", seed=78, width=64, height=64, steps=3)
    heard: list[Event] = []
    posted = asyncio.Event()
    for sim in comfyui_farm.sims:
        sim.hold()

    async def first() -> list[GenerationResult | JobFailure]:
        outcomes = gen.enumerate_completed([request], on_job=lambda *_: posted.set())
        return [outcome async for _, outcome in outcomes]

    running = asyncio.create_task(first())
    if joins == "once posted":
        await posted.wait()
    second = asyncio.create_task(gen.generate(request, on_progress=heard.append))
    if joins == "at once":
        await posted.wait()
    for sim in comfyui_farm.sims:
        sim.release()
    (shared,), joined = await asyncio.gather(running, second)
    assert isinstance(shared, GenerationResult)
    assert shared.prompt_id == joined.prompt_id
    assert sum(len(sim.accepted_prompt_ids) for sim in comfyui_farm.sims) == 2
    assert [e.value for e in heard if isinstance(e, Progress)] == [1, 2, 3]


async def _on_any(
    farm: SimulatorFarm, reached: Callable[[ComfyUISimulator], bool]
) -> ComfyUISimulator:
    """Wait until ``reached`` holds on one of the farm's simulators; that one."""
    waits = {
        asyncio.ensure_future(sim.wait_until(functools.partial(reached, sim))): sim
        for sim in farm.sims
    }
    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for wait in pending:
        wait.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return waits[done.pop()]


async def test_an_identical_request_after_the_last_sharer_left_gets_a_run_of_its_own(
    backend: Backend, comfyui_farm: SimulatorFarm, tmp_path: Path
) -> None:
    """While a run whose every caller gave up is being taken off the server, an identical
    request does not join it (it would end cancelled, or never): it runs anew, on every
    backend."""
    gen = DreamGenerator(backend, output_dir=tmp_path / "out")
    await gen.generate_from_prompt("first", seed=1, width=64, height=64, steps=1)  # folder checked
    before = {p for sim in comfyui_farm.sims for p in sim.accepted_prompt_ids}
    deletes = {id(sim): len(sim.requests_to("/queue", "POST")) for sim in comfyui_farm.sims}
    request = Txt2ImgRequest("a late twin", seed=9, width=64, height=64, steps=1)
    for sim in comfyui_farm.sims:
        sim.hold()
    first = asyncio.create_task(gen.generate(request))
    holder = await _on_any(comfyui_farm, lambda s: bool(set(s.accepted_prompt_ids) - before))
    (first_id,) = set(holder.accepted_prompt_ids) - before
    for sim in comfyui_farm.sims:
        sim.fail_next("/queue", n=2, status=503, method="POST")  # the removal takes a while
    first.cancel()
    await _on_any(comfyui_farm, lambda s: len(s.requests_to("/queue", "POST")) > deletes[id(s)])
    late = asyncio.create_task(gen.generate(request))  # the first run is being removed
    with pytest.raises(asyncio.CancelledError):
        await first
    for sim in comfyui_farm.sims:
        sim.release()
    result = await asyncio.wait_for(late, 20)
    assert result.paths[0].exists()
    assert result.prompt_id != first_id
    accepted = {p for sim in comfyui_farm.sims for p in sim.accepted_prompt_ids} - before
    assert accepted == {first_id, result.prompt_id}


# ---------------------------------------------------------------------------- pool only


async def test_a_pool_says_which_server_has_what(comfyui_farm: SimulatorFarm) -> None:
    await comfyui_farm.start(
        cfg(checkpoints=("a.safetensors",)), cfg(checkpoints=("b.safetensors", SCHNELL))
    )
    a, b = comfyui_farm.urls
    async with ComfyUIPool(comfyui_farm.urls, **FAST) as pool:
        models = await server_models(pool)
        assert set(models.checkpoints) == {"a.safetensors", "b.safetensors", SCHNELL}
        per_server = await models_by_server(pool)
        assert per_server[a].checkpoints == ("a.safetensors",)
        assert set(per_server[b].checkpoints) == {"b.safetensors", SCHNELL}
        # a model only one server has: the pool as a whole can run it
        builder = await builder_from_server(pool, "a.safetensors")
        assert builder.checkpoint == "a.safetensors"
        with pytest.raises(WorkflowError) as info:
            await builder_from_server(pool, "c.safetensors")
    message = str(info.value)
    assert f"{a} has checkpoints: 'a.safetensors'" in message
    assert f"{b} has checkpoints:" in message


async def test_a_pool_with_a_dead_server_asks_the_live_one(
    comfyui_farm: SimulatorFarm, tmp_path: Path
) -> None:
    await comfyui_farm.start(cfg())
    dead = "http://127.0.0.1:9"
    async with ComfyUIPool([dead, comfyui_farm.urls[0]], **FAST) as pool:
        assert SCHNELL in (await server_models(pool)).checkpoints
        path = tmp_path / "wf.json"
        path.write_text(json.dumps(_ui_txt2img()))
        workflow = await load_workflow_from_server(path, pool)
        assert workflow.to_api()["9"]["class_type"] == "SaveImage"
        states = {s.url: s.state for s in await pool.status()}
        assert states[dead] == "down"
        down = next(s for s in await pool.status() if s.url == dead)
        assert down.down_since is not None
        assert down.error


async def test_a_job_only_an_unjoined_server_could_run_fails_within_join_timeout(
    comfyui_farm: SimulatorFarm,
) -> None:
    await comfyui_farm.start(cfg(checkpoints=("a.safetensors",)))
    dead = "http://127.0.0.1:9"
    async with ComfyUIPool([comfyui_farm.urls[0], dead], **FAST, join_timeout=0.5) as pool:
        graph = txt2img(seed=1)
        graph["1"]["inputs"]["ckpt_name"] = "elsewhere.safetensors"
        job = await pool.submit(graph)  # the dead server might have it, once it joins
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(NoCapableServerError) as info:
            await job.result(timeout=10)
        assert loop.time() - started < 0.5 + 3
        other = txt2img(seed=2)
        other["1"]["inputs"]["ckpt_name"] = "a.safetensors"
        ok = await pool.run(other, timeout=10)
    message = str(info.value)
    assert f"{comfyui_farm.urls[0]} lacks ckpt_name 'elsewhere.safetensors'" in message
    assert f"{dead} down since" in message
    assert ok.prompt_id


async def test_failover_records_the_new_server_before_the_new_post(
    comfyui_farm: SimulatorFarm, tmp_path: Path
) -> None:
    from dreamgen_async.journal import BatchJournal

    a, b = await comfyui_farm.start(cfg(), cfg())
    a.hold()  # a accepts its prompts and sits on them, then goes away
    journal_path = tmp_path / "j.sqlite"
    async with ComfyUIPool([a.url, b.url], **FAST) as pool:
        gen = DreamGenerator(pool, output_dir=tmp_path / "out")
        requests = [Img2ImgRequest(png_bytes(i), "ink", seed=i) for i in range(6)]
        batch = asyncio.create_task(
            gen.generate_many(requests, concurrency=6, journal=journal_path)
        )
        await a.wait_until(lambda: len(a.accepted_prompt_ids) >= 2, timeout=10)
        moved = set(a.accepted_prompt_ids)
        await a.stop()
        outcomes = await asyncio.wait_for(batch, 30)
    async with await BatchJournal.open(journal_path) as journal:
        items = {item.prompt_id: item for item in await journal.items()}
    results = [o for o in outcomes if isinstance(o, GenerationResult)]
    assert len(results) == 6
    for result in results:
        assert result.server == b.url
        assert items[result.prompt_id].server == b.url
        assert result.resubmitted == (result.prompt_id in moved)
    assert moved <= set(b.accepted_prompt_ids)  # the same prompt ids, posted again on b
