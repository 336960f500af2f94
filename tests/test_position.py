"""A job's place in our client-side queue (``position``), so a bot can say "you are 3rd":
through the client, the pool and the generator's job handle."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path

from _graphs import txt2img

from dreamgen_async import ComfyUIClient, ComfyUIPool, DreamGenerator, Txt2ImgRequest
from dreamgen_async.testing import ComfyUISimulator


async def handed_over(predicate: Callable[[], bool], turns: int = 1000) -> None:
    """Let just-created tasks run up to the client's queue: that path does no I/O, so a
    bounded number of loop turns (no time passes) is enough."""
    for _ in range(turns):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("the jobs never reached the client-side queue")


async def test_client_positions_follow_priority_then_arrival(
    comfyui_sim: ComfyUISimulator,
) -> None:
    comfyui_sim.hold()  # the first prompt stays queued on the server: the rest wait here
    async with ComfyUIClient(comfyui_sim.url, max_in_flight=1) as client:
        first = await client.submit(txt2img(seed=1))
        ids = [str(uuid.uuid4()) for _ in range(3)]
        tasks = [
            asyncio.create_task(client.submit(txt2img(seed=10 + i), prompt_id=pid, priority=p))
            for i, (pid, p) in enumerate(zip(ids, (0, 0, 10), strict=True))
        ]
        await handed_over(lambda: client.waiting == 3)
        assert first.position is None  # posted
        assert client.position(first.prompt_id) is None
        assert [client.position(pid) for pid in ids] == [2, 3, 1]
        assert client.position("no-such-prompt") is None
        comfyui_sim.release()
        jobs = await asyncio.gather(*tasks)
        assert all(job.position is None for job in jobs)
        await asyncio.gather(first.result(), *(job.result() for job in jobs))


async def test_pool_job_position_in_the_pool_queue(comfyui_sim: ComfyUISimulator) -> None:
    comfyui_sim.hold()
    async with ComfyUIPool([comfyui_sim.url]) as pool:  # 2 slots on its one server
        placed = [await pool.submit(txt2img(seed=i)) for i in range(2)]
        background = await pool.submit(txt2img(seed=10), priority=-5)
        later = [await pool.submit(txt2img(seed=20 + i)) for i in range(2)]
        assert [j.state for j in placed] == ["posting", "posting"]
        assert all(j.position is None for j in placed)
        assert [j.position for j in later] == [1, 2]
        assert background.position == 3  # a lower priority waits behind
        assert [pool.position(j.prompt_id) for j in later] == [1, 2]
        assert pool.position("no-such-prompt") is None
        comfyui_sim.release()
        everything = (*placed, background, *later)
        await asyncio.gather(*(j.result() for j in everything))
        assert all(j.position is None for j in everything)


async def test_generation_job_says_where_it_waits(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    comfyui_sim.hold()
    async with (
        ComfyUIClient(comfyui_sim.url, max_in_flight=1) as client,
        DreamGenerator(client, output_dir=tmp_path) as gen,
    ):
        first = gen.submit(Txt2ImgRequest("a fox", seed=1))
        await comfyui_sim.wait_until(lambda: len(comfyui_sim.prompts) == 1)
        later = [gen.submit(Txt2ImgRequest("a fox", seed=2 + i)) for i in range(2)]
        urgent = gen.submit(Txt2ImgRequest("a cat", seed=50), priority=10)
        await handed_over(lambda: client.waiting == 3)
        assert first.position is None  # on the server
        assert [job.position for job in later] == [2, 3]
        assert urgent.position == 1
        comfyui_sim.release()
        for job in (first, *later, urgent):
            await job.result()
            assert job.position is None
