"""Per-job limits that count execution, not the queue (issue 19, item 2), on the simulator.

``max_run_time`` counts from ``execution_start``: jobs that wait longer than it in a queue
still succeed, one that runs longer is interrupted on the server. ``queue_timeout`` counts
the wait (client-side for a slot, then the server's queue): a job still queued is deleted,
never a running one. No sleeps: each test awaits the outcome or the simulator's state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from _graphs import CHECKPOINT, txt2img
from test_cli import dreamgen_piped

from dreamgen_async import (
    ComfyUIClient,
    ConfigError,
    DreamGenerator,
    PromptTimeout,
    Txt2ImgRequest,
)
from dreamgen_async.pool import ComfyUIPool
from dreamgen_async.testing import ComfyUISimulator, SimulatorConfig, SimulatorFarm

JOB = 0.3  # seconds a job runs on the simulator: 2 steps of STEP
STEP = JOB / 2


@pytest.fixture
async def client(comfyui_sim: ComfyUISimulator) -> AsyncIterator[ComfyUIClient]:
    async with ComfyUIClient(comfyui_sim.url, max_in_flight=4) as c:
        yield c


async def test_jobs_that_wait_longer_than_the_run_limit_still_succeed(
    comfyui_sim: ComfyUISimulator, client: ComfyUIClient
) -> None:
    """The issue's scenario: four jobs at once on one GPU, a run limit of 1.5 job times."""
    comfyui_sim.step_time = STEP
    limit = 1.5 * JOB
    submitted = time.time()
    jobs = [
        await client.submit(txt2img(seed=seed, steps=2), max_run_time=limit) for seed in range(4)
    ]
    results = await asyncio.gather(*(job.result() for job in jobs))
    waits = [r.started_at - submitted for r in results if r.started_at is not None]
    assert len(waits) == 4
    assert sum(wait > limit for wait in waits) >= 2, waits  # most waited longer than the limit
    assert {p.status for p in comfyui_sim.prompts.values()} == {"success"}
    assert not comfyui_sim.requests_to("/interrupt")


async def test_a_job_that_runs_longer_than_max_run_time_is_interrupted(
    comfyui_sim: ComfyUISimulator, client: ComfyUIClient
) -> None:
    comfyui_sim.stall_next()  # runs until interrupted
    job = await client.submit(txt2img(seed=11), max_run_time=0.3)
    with pytest.raises(PromptTimeout, match=r"ran for more than 0.3 s") as caught:
        await job.result()
    assert caught.value.prompt_id == job.prompt_id
    assert isinstance(caught.value, TimeoutError)
    await comfyui_sim.wait_for_status(job.prompt_id, "interrupted")
    assert len(comfyui_sim.requests_to("/interrupt")) == 1
    assert job.state == "cancelled"


async def test_a_queue_timeout_removes_a_queued_job_and_not_the_running_one(
    comfyui_sim: ComfyUISimulator, client: ComfyUIClient
) -> None:
    comfyui_sim.stall_next()  # the first job runs until interrupted
    running = await client.submit(txt2img(seed=21), queue_timeout=0.3)
    await comfyui_sim.wait_for_status(running.prompt_id, "running")
    queued = await client.submit(txt2img(seed=22), queue_timeout=0.3)
    with pytest.raises(PromptTimeout, match=r"waited in the queue more than 0.3 s"):
        await queued.result()
    assert comfyui_sim.prompts[queued.prompt_id].status == "deleted"
    # The running job's queue limit passed too (it was armed first): it keeps running.
    assert running.state == "running"
    assert comfyui_sim.prompts[running.prompt_id].status == "running"
    assert not comfyui_sim.requests_to("/interrupt")
    await running.cancel()
    await comfyui_sim.wait_for_status(running.prompt_id, "interrupted")


async def test_the_wait_for_a_slot_counts_as_queue_time(comfyui_sim: ComfyUISimulator) -> None:
    comfyui_sim.stall_next()
    async with ComfyUIClient(comfyui_sim.url, max_in_flight=1) as client:
        running = await client.submit(txt2img(seed=31))
        await comfyui_sim.wait_for_status(running.prompt_id, "running")
        with pytest.raises(PromptTimeout, match="waited in the queue"):
            await client.submit(txt2img(seed=32), queue_timeout=0.2)  # never got a slot
        assert len(comfyui_sim.requests_to("/prompt", "POST")) == 1  # nothing else was sent
        await running.cancel()


async def test_the_generator_passes_the_limits(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    comfyui_sim.stall_next()
    async with DreamGenerator(comfyui_sim.url, output_dir=tmp_path) as gen:
        with pytest.raises(PromptTimeout, match=r"ran for more than 0\.2 s") as caught:
            await gen.generate_from_prompt(
                "a fox", seed=1, width=64, height=64, steps=2, max_run_time=0.2
            )
        await comfyui_sim.wait_for_status(str(caught.value.prompt_id), "interrupted")
        job = gen.submit(_request(), max_run_time=30, queue_timeout=30)
        assert (await job.result()).path.exists()
        with pytest.raises(ConfigError, match="max_run_time"):
            await gen.generate_from_prompt("a fox", max_run_time=0)
    assert not list(tmp_path.glob("*fox*_1*"))  # the interrupted job left no file


def _request() -> Txt2ImgRequest:
    return Txt2ImgRequest("a cat", seed=2, width=64, height=64, steps=2)


async def test_the_pool_passes_the_limits_and_times_its_own_queue(
    comfyui_farm: SimulatorFarm,
) -> None:
    (sim,) = await comfyui_farm.start(SimulatorConfig(checkpoints=(CHECKPOINT,)))
    sim.stall_next()
    async with ComfyUIPool(comfyui_farm.urls, over_queue=0, health_interval=0.05) as pool:
        running = await pool.submit(txt2img(seed=41), max_run_time=0.4)
        await sim.wait_until(lambda: running.prompt_id in sim.prompts)
        await sim.wait_for_status(running.prompt_id, "running")
        waiting = await pool.submit(txt2img(seed=42), queue_timeout=0.2)  # no room: it waits
        with pytest.raises(PromptTimeout, match=r"waited in the queue more than 0\.2 s"):
            await waiting.result()
        assert waiting.prompt_id not in sim.prompts  # never posted
        with pytest.raises(PromptTimeout, match=r"ran for more than 0\.4 s"):
            await running.result()
        await sim.wait_for_status(running.prompt_id, "interrupted")
        with pytest.raises(ConfigError, match="queue_timeout"):
            await pool.submit(txt2img(seed=43), queue_timeout=-1)


# ---------------------------------------------------------------------------- the CLI


async def test_cli_timeout_is_per_job_execution(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    """``-j 4 --timeout`` of 1.5 job times: every job succeeds, queued or not."""
    comfyui_sim.step_time = STEP
    code, stdout, stderr = await dreamgen_piped(
        "txt2img", "a fox", "-n", "4", "-j", "4", "--steps", "2", "--size", "64x64",
        "--timeout", str(1.5 * JOB), "--server", comfyui_sim.url, "-o", str(tmp_path),
        "--no-journal",
    )  # fmt: skip
    assert code == 0, stderr
    assert len(stdout.splitlines()) == 4
    assert len(list(tmp_path.glob("*.png"))) == 4
    assert {p.status for p in comfyui_sim.prompts.values()} == {"success"}


async def test_cli_timeout_interrupts_a_job_that_runs_too_long(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    comfyui_sim.stall_next()
    code, stdout, stderr = await dreamgen_piped(
        "txt2img", "a fox", "--size", "64x64", "--timeout", "0.3",
        "--server", comfyui_sim.url, "-o", str(tmp_path),
    )  # fmt: skip
    assert code == 1, stderr
    assert stdout == ""
    assert "ran for more than 0.3 s" in stderr
    assert {p.status for p in comfyui_sim.prompts.values()} == {"interrupted"}


async def test_cli_queue_timeout_removes_what_never_started(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    comfyui_sim.hold()  # nothing starts
    code, stdout, stderr = await dreamgen_piped(
        "txt2img", "a fox", "-n", "2", "--size", "64x64", "--queue-timeout", "0.5",
        "--timeout", "0.1", "--server", comfyui_sim.url, "-o", str(tmp_path),
    )  # fmt: skip
    comfyui_sim.release()
    assert code == 1, stderr
    assert stdout == ""
    assert stderr.count("waited in the queue more than 0.5 s") == 2, stderr
    assert {p.status for p in comfyui_sim.prompts.values()} == {"deleted"}


async def test_cli_help_names_both_limits() -> None:
    code, stdout, _ = await dreamgen_piped("txt2img", "--help")
    assert code == 0
    assert "--timeout" in stdout
    assert "--queue-timeout" in stdout
