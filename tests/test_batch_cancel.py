"""Cancelling batches: no orphaned task and no unretrieved exception is left behind."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dreamgen_async import DreamGenerator, Txt2ImgRequest
from dreamgen_async.testing import ComfyUISimulator


@pytest.fixture
async def gen(comfyui_sim: ComfyUISimulator, tmp_path: Path) -> AsyncIterator[DreamGenerator]:
    async with DreamGenerator(
        comfyui_sim.url, output_dir=tmp_path / "out", max_in_flight=64
    ) as generator:
        yield generator


def pending_queue_gets() -> list[asyncio.Task[object]]:
    """Tasks still waiting in an ``asyncio.Queue.get`` (a batch's consumer left behind)."""
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done() and getattr(task.get_coro(), "__qualname__", "") == "Queue.get"
    ]


async def test_cancelling_a_started_batch_leaves_no_pending_task(
    gen: DreamGenerator, comfyui_sim: ComfyUISimulator
) -> None:
    comfyui_sim.hold()
    requests = [Txt2ImgRequest(f"p{i}", seed=i, width=64, height=64) for i in range(4)]
    batch = gen.start_batch(requests, concurrency=4)
    await comfyui_sim.wait_until(lambda: len(comfyui_sim.accepted_prompt_ids) == 4)
    await batch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await batch.results()
    comfyui_sim.release()
    assert pending_queue_gets() == []


async def test_cancelling_a_batch_twice_logs_no_unretrieved_exception(
    gen: DreamGenerator, comfyui_sim: ComfyUISimulator, caplog: pytest.LogCaptureFixture
) -> None:
    comfyui_sim.hold()
    requests = [Txt2ImgRequest(f"p{i}", seed=i, width=64, height=64) for i in range(4)]
    running = asyncio.create_task(gen.generate_many(requests, concurrency=4))
    await comfyui_sim.wait_until(lambda: len(comfyui_sim.accepted_prompt_ids) == 4)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        running.cancel()
        # "In quick succession": one loop turn apart, so the second cancel lands while the
        # batch waits for its workers to take their prompts back (a turn, not a wait).
        await asyncio.sleep(0)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        await comfyui_sim.wait_until(
            lambda: all(p.status == "deleted" for p in comfyui_sim.prompts.values())
        )
        # An unretrieved exception is logged when its future is collected, once the done-
        # callbacks that settle it have run: a few loop turns (they are the loop's own work,
        # there is no event to await), then a collection.
        for _ in range(3):
            await asyncio.sleep(0)
            gc.collect()
    comfyui_sim.release()
    assert [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()] == []
