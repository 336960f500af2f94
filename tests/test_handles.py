"""One waiter rule for every job handle: ``Job``, ``PoolJob`` and ``GenerationJob`` alike.

The same tests run against the three handles (all ``handles.JobHandle``): a caller's timeout
ends only that caller's wait; the last waiter leaving cancels the job; ``await cancel()``
cancels it for everyone, takes the prompt off the server, and the state then says
``cancelled``. Each asserts on the handle and on what the simulator saw.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from _graphs import txt2img

from dreamgen_async import ComfyUIClient, DreamGenerator, Txt2ImgRequest
from dreamgen_async.errors import PromptTimeout
from dreamgen_async.handles import JobHandle, Waiters
from dreamgen_async.pool import ComfyUIPool
from dreamgen_async.testing import ComfyUISimulator

Handle = JobHandle[Any]


@dataclass
class Front:
    """One kind of handle: how to start a job on ``sim`` and get it."""

    sim: ComfyUISimulator
    start: Callable[[int], Awaitable[Handle]]


@pytest_asyncio.fixture(params=["client", "pool", "generator"])
async def front(
    request: pytest.FixtureRequest, comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> AsyncIterator[Front]:
    async with AsyncExitStack() as stack:
        start: Callable[[int], Awaitable[Handle]]
        if request.param == "client":
            client = await stack.enter_async_context(ComfyUIClient(comfyui_sim.url))

            async def start(seed: int) -> Handle:
                return await client.submit(txt2img(seed=seed))

        elif request.param == "pool":
            pool = await stack.enter_async_context(ComfyUIPool([comfyui_sim.url]))

            async def start(seed: int) -> Handle:
                return await pool.submit(txt2img(seed=seed))

        else:
            gen = await stack.enter_async_context(
                DreamGenerator(comfyui_sim.url, output_dir=tmp_path / "out")
            )

            async def start(seed: int) -> Handle:
                return gen.submit(Txt2ImgRequest("a fox", seed=seed, width=64, height=64))

        yield Front(comfyui_sim, start)


def state(handle: Handle) -> str:
    value = handle.state  # type: ignore[attr-defined]
    return str(getattr(value, "value", value))


async def waiters(handle: Handle, count: int) -> None:
    """Give the loop turns until ``count`` callers are inside ``result()``."""
    while handle.waiters < count:  # noqa: ASYNC110 - loop turns, not a timed wait
        await asyncio.sleep(0)


async def queued(sim: ComfyUISimulator) -> str:
    """The one prompt the server accepted, once it is there."""
    await sim.wait_until(lambda: len(sim.accepted_prompt_ids) == 1)
    (prompt_id,) = sim.accepted_prompt_ids
    return prompt_id


async def test_one_waiter_timing_out_leaves_the_job_to_the_other(front: Front) -> None:
    front.sim.hold()  # nothing starts until released: the job stays queued
    handle = await front.start(1)
    prompt_id = await queued(front.sim)
    patient = asyncio.create_task(handle.result())
    await waiters(handle, 1)

    with pytest.raises(PromptTimeout, match="another caller still waits"):
        await handle.result(timeout=0.05)

    assert not handle.done()
    front.sim.release()
    assert await patient is not None
    assert state(handle) == "done"
    assert front.sim.prompts[prompt_id].status == "success"


async def test_the_last_waiter_leaving_cancels_the_job(front: Front) -> None:
    front.sim.hold()
    handle = await front.start(2)
    prompt_id = await queued(front.sim)

    with pytest.raises(PromptTimeout, match="removed from the server"):
        await handle.result(timeout=0.05)

    assert state(handle) == "cancelled"
    await front.sim.wait_for_status(prompt_id, "deleted")
    front.sim.release()


async def test_await_cancel_cancels_for_every_waiter_once(front: Front) -> None:
    front.sim.hold()
    handle = await front.start(3)
    prompt_id = await queued(front.sim)
    callers = [asyncio.create_task(handle.result()) for _ in range(2)]
    await waiters(handle, 2)

    await asyncio.gather(handle.cancel(), handle.cancel())
    await handle.cancel()  # idempotent

    for caller in callers:
        with pytest.raises(asyncio.CancelledError):
            await caller
    assert handle.done()
    assert state(handle) == "cancelled"
    await front.sim.wait_for_status(prompt_id, "deleted")
    assert len(front.sim.requests_to("/queue", "POST")) == 1  # one removal for three cancels
    front.sim.release()


async def test_waiters_wake_every_wait_and_keep_few_given_up_ones() -> None:
    """What a job's result() and wait_for() wait on: each caller's own future, all woken at
    once; a caller that gives up (a timeout, a cancel) is skipped and not kept for long."""
    waiters = Waiters()
    kept = [waiters.wait() for _ in range(3)]
    for _ in range(100):
        waiters.wait().cancel()
    assert waiters.pending == 3
    assert waiters.held <= 3 + 17
    waiters.wake()
    assert [future.result() for future in kept] == [None, None, None]
    assert (waiters.pending, waiters.held) == (0, 0)
    waiters.wake()  # idempotent: nobody left to wake
