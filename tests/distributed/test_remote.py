"""DreamGenerator over RemoteBackend: a producer, a worker subprocess, two simulators, Redis."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from _graphs import txt2img
from _redis import broker_url_fixture, redis_server_fixture, workers_fixture  # noqa: F401 (fixtures)
from _workers import Workers
from PIL import Image

from dreamgen_async import DreamGenerator
from dreamgen_async.distributed import NoWorkerError, RedisJobStore, RemoteBackend
from dreamgen_async.errors import ConnectError, NoCapableServerError, PromptTimeout
from dreamgen_async.protocol import Event, Progress
from dreamgen_async.testing import ComfyUISimulator, SimulatorConfig, sample_png


@pytest_asyncio.fixture
async def sims(tmp_path: Path) -> AsyncIterator[list[ComfyUISimulator]]:
    async with (
        ComfyUISimulator(SimulatorConfig(), root=tmp_path / "a") as a,
        ComfyUISimulator(SimulatorConfig(), root=tmp_path / "b") as b,
    ):
        yield [a, b]


def ran(sims: list[ComfyUISimulator]) -> list[str]:
    """Every prompt the servers ran (or run), across all of them."""
    return [pid for sim in sims for pid in sim.prompts]


async def test_txt2img_and_img2img_through_a_worker(
    sims: list[ComfyUISimulator], workers: Workers, broker_url: str, tmp_path: Path
) -> None:
    await workers.start(broker_url, *(s.url for s in sims))
    src = tmp_path / "frame.png"
    src.write_bytes(sample_png())
    events: list[Event] = []
    async with RemoteBackend(broker_url) as backend:
        gen = DreamGenerator(backend, output_dir=tmp_path / "out")
        text = await gen.generate_from_prompt("a lighthouse", seed=7, on_progress=events.append)
        image = await gen.generate_from_image(src, "an oil painting", 0.6, seed=8)
        again = await gen.generate_from_image(src, "a watercolour", 0.6, seed=9)
    assert text.prompt_id is not None
    assert image.prompt_id is not None
    owner = {pid: sim for sim in sims for pid in sim.prompts}
    assert text.path.read_bytes() == owner[text.prompt_id].prompts[text.prompt_id].output_bytes[0]
    assert (
        image.path.read_bytes() == owner[image.prompt_id].prompts[image.prompt_id].output_bytes[0]
    )
    assert Image.open(io.BytesIO(image.path.read_bytes())).size[0] > 0
    assert sorted(ran(sims)) == sorted(str(r.prompt_id) for r in (text, image, again))
    assert any(isinstance(e, Progress) for e in events)  # step progress reached the producer
    store = RedisJobStore(broker_url)
    record = await store.get(image.prompt_id)
    await store.aclose()
    assert record is not None
    assert record.state == "done"
    assert record.server == next(s.url for s in sims if image.prompt_id in s.prompts)
    # The input went to each server at most once (content-addressed).
    uploads = sum(len(s.requests_to("/upload/image")) for s in sims)
    assert 1 <= uploads <= 2


async def test_an_unreachable_broker_fails_at_open() -> None:
    backend = RemoteBackend("redis://127.0.0.1:1/0")
    with pytest.raises(ConnectError, match=r"cannot reach the broker at redis://127\.0\.0\.1:1/0"):
        await backend.open()


async def test_no_worker_listening_is_said_after_a_bounded_wait(
    broker_url: str, tmp_path: Path
) -> None:
    async with RemoteBackend(broker_url, pickup_timeout=0.5) as backend:
        gen = DreamGenerator(backend, output_dir=tmp_path / "out")
        started = time.monotonic()
        with pytest.raises(NoWorkerError, match="is `dreamgen worker --broker"):
            await gen.generate_from_prompt("nobody home", seed=1)
    assert time.monotonic() - started < 5


async def test_no_capable_server_comes_back_to_the_producer(
    sims: list[ComfyUISimulator], workers: Workers, broker_url: str, tmp_path: Path
) -> None:
    await workers.start(broker_url, *(s.url for s in sims))
    workflow = {
        "1": {"class_type": "NoSuchNode", "inputs": {}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    async with RemoteBackend(broker_url) as backend:
        gen = DreamGenerator(backend, output_dir=tmp_path / "out")
        with pytest.raises(NoCapableServerError) as caught:
            await gen.run_workflow(workflow)
    assert "NoSuchNode" in str(caught.value)
    assert caught.value.missing
    assert ran(sims) == []


async def test_cancel_on_the_producer_takes_the_prompt_off_its_server(
    sims: list[ComfyUISimulator], workers: Workers, broker_url: str, tmp_path: Path
) -> None:
    await workers.start(broker_url, *(s.url for s in sims))
    for sim in sims:
        sim.stall_next()  # the prompt runs until interrupted
    async with RemoteBackend(broker_url) as backend:
        gen = DreamGenerator(backend, output_dir=tmp_path / "out")
        job = gen.submit(gen_request())
        holder = await _running_on(sims)
        started = time.monotonic()
        await job.cancel()
        await holder.wait_until(lambda: not _active(holder), timeout=2.0)
        assert time.monotonic() - started < 2.0
    assert job.state == "cancelled"
    assert not list((tmp_path / "out").glob("*.png")) if (tmp_path / "out").exists() else True


async def test_a_run_limit_travels_to_the_worker(
    sims: list[ComfyUISimulator], workers: Workers, broker_url: str, tmp_path: Path
) -> None:
    await workers.start(broker_url, *(s.url for s in sims))
    for sim in sims:
        sim.stall_next()  # the prompt runs until interrupted
    async with RemoteBackend(broker_url) as backend:
        gen = DreamGenerator(backend, output_dir=tmp_path / "out")
        with pytest.raises(PromptTimeout, match="ran for more than"):
            await gen.generate(gen_request(), max_run_time=0.5)
    (holder,) = [s for s in sims if s.prompts]
    assert [p.status for p in holder.prompts.values()] == ["interrupted"]


def gen_request() -> Any:
    from dreamgen_async.generator import Txt2ImgRequest

    return Txt2ImgRequest("a slow one", seed=3)


def _active(sim: ComfyUISimulator) -> bool:
    return any(p.status in ("pending", "running") for p in sim.prompts.values())


async def _running_on(sims: list[ComfyUISimulator]) -> ComfyUISimulator:
    """The simulator the prompt is running on, once it runs."""
    found: asyncio.Future[ComfyUISimulator] = asyncio.get_running_loop().create_future()

    async def watch(sim: ComfyUISimulator) -> None:
        await sim.wait_until(lambda: any(p.status == "running" for p in sim.prompts.values()))
        if not found.done():
            found.set_result(sim)

    tasks = [asyncio.create_task(watch(s)) for s in sims]
    try:
        return await asyncio.wait_for(found, 20)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_slow_job_on_a_live_worker_is_never_run_twice(
    workers: Workers, broker_url: str, tmp_path: Path
) -> None:
    # Its message is reclaimed (idle past the 1 s takeover) while it runs: the other
    # worker sees the holder alive and waits for it.
    async with ComfyUISimulator(SimulatorConfig(step_time=0.6), root=tmp_path / "s") as sim:
        await workers.start(broker_url, sim.url, takeover=1.0)
        await workers.start(broker_url, sim.url, takeover=1.0)
        async with RemoteBackend(broker_url) as backend:
            gen = DreamGenerator(backend, output_dir=tmp_path / "out")
            result = await gen.generate_from_prompt("slow", seed=1, steps=6)
        assert list(sim.prompts) == [result.prompt_id]
        assert result.path.read_bytes() == sim.prompts[str(result.prompt_id)].output_bytes[0]
    logs = "".join(line for lines in workers.logs.values() for line in lines)
    assert "taken over" not in logs


async def test_hundreds_of_jobs_at_once_wait_for_a_connection(
    sims: list[ComfyUISimulator], workers: Workers, broker_url: str
) -> None:
    # Each job reads its record while it waits: the producer's Redis connections are a
    # bounded pool that makes them queue, never "Too many connections".
    await workers.start(broker_url, *(s.url for s in sims))
    async with RemoteBackend(broker_url) as backend:
        jobs = await asyncio.gather(*(backend.submit(txt2img(seed=i, steps=1)) for i in range(300)))
        results = await asyncio.gather(*(job.result() for job in jobs))
        outputs = await backend.get_outputs(results[0])
    assert len({r.prompt_id for r in results}) == 300
    assert len(ran(sims)) == 300
    assert outputs[0].data.startswith(b"\x89PNG")


async def test_sigterm_stops_a_worker_cleanly(
    sims: list[ComfyUISimulator], workers: Workers, broker_url: str
) -> None:
    proc = await workers.start(broker_url, sims[0].url)
    store = RedisJobStore(broker_url)
    try:
        assert await store.workers() == 1
        proc.terminate()
        try:
            code = await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            raise AssertionError("".join(workers.logs[proc.pid])) from None
        assert code == 0
        assert await store.workers() == 0  # its heartbeat is retired at once
    finally:
        await store.aclose()
