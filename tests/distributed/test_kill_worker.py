"""Must-shows with real processes and a real Redis: a worker SIGKILLed mid-batch (the batch
still ends with exactly one prompt per frame, the surviving worker finishing the dead one's
jobs), and a producer SIGKILLed and rerun (the rerun collects, nothing runs twice)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest_asyncio
from _redis import broker_url_fixture, redis_server_fixture, workers_fixture  # noqa: F401 (fixtures)
from _workers import Workers
from PIL import Image

from dreamgen_async.distributed.store import RedisJobStore
from dreamgen_async.testing import ComfyUISimulator, SimulatorConfig

FRAMES = 60


@pytest_asyncio.fixture
async def sims(tmp_path: Path) -> AsyncIterator[list[ComfyUISimulator]]:
    config = SimulatorConfig(step_time=0.02)
    async with (
        ComfyUISimulator(config, root=tmp_path / "a") as a,
        ComfyUISimulator(config, root=tmp_path / "b") as b,
    ):
        yield [a, b]


def write_frames(folder: Path, count: int) -> list[Path]:
    """``count`` distinct small PNGs (distinct inputs: no two frames share a run)."""
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        path = folder / f"frame_{i:03d}.png"
        Image.new("RGB", (64, 64), (i * 4 % 256, 100, 255 - i)).save(path)
        paths.append(path)
    return paths


def finished(sim: ComfyUISimulator) -> Callable[[], bool]:
    return lambda: all(p.status == "success" for p in sim.prompts.values())


async def start_producer(
    frames: Path, broker: str, server: str, out: Path, concurrency: int = 16
) -> asyncio.subprocess.Process:
    """``dreamgen img2img FRAMES ... --broker`` (the model is resolved on ``server``; the
    jobs go through the broker)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dreamgen_async",
        "img2img",
        str(frames),
        "a watercolour",
        "--seed",
        "5",
        "--steps",
        "4",
        "--broker",
        broker,
        "--server",
        server,
        "-o",
        str(out),
        "-j",
        str(concurrency),
        "-q",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def worker_id(workers: Workers, proc: asyncio.subprocess.Process) -> str:
    found = re.search(r"worker (\w+) ready", "".join(workers.logs[proc.pid]))
    assert found is not None
    return found.group(1)


async def test_killing_a_worker_mid_batch(
    sims: list[ComfyUISimulator], workers: Workers, broker_url: str, tmp_path: Path
) -> None:
    urls = [s.url for s in sims]
    doomed = await workers.start(broker_url, *urls, takeover=3.0)
    survivor = await workers.start(broker_url, *urls, takeover=3.0)
    frames = write_frames(tmp_path / "frames", FRAMES)
    out = tmp_path / "out"
    producer = await start_producer(frames[0].parent, broker_url, urls[0], out)
    # Mid-batch: some frames done, most not.
    await sims[0].wait_until(
        lambda: sum(p.status == "success" for p in sims[0].prompts.values()) >= 5, timeout=60
    )
    await workers.kill(doomed)
    _, stderr = await asyncio.wait_for(producer.communicate(), 120)
    assert producer.returncode == 0, stderr.decode()
    assert len(list(out.glob("*.png"))) == FRAMES
    prompt_ids = [pid for sim in sims for pid in sim.prompts]
    assert len(prompt_ids) == FRAMES  # exactly one prompt per frame, on the two servers
    assert len(set(prompt_ids)) == FRAMES
    # The survivor finished what the dead worker held (the records say who ended each job).
    dead, alive = worker_id(workers, doomed), worker_id(workers, survivor)
    store = RedisJobStore(broker_url)
    records = [await store.get(pid) for pid in prompt_ids]
    await store.aclose()
    assert all(r is not None and r.state == "done" for r in records)
    taken_over = [r for r in records if r is not None and r.attempts > 1]
    assert taken_over, "the dead worker held no job when it was killed"
    assert all(r.worker == alive for r in taken_over)
    assert all(r is not None and r.worker in (dead, alive) for r in records)


async def test_killing_the_producer_and_rerunning_it(
    sims: list[ComfyUISimulator], workers: Workers, broker_url: str, tmp_path: Path
) -> None:
    urls = [s.url for s in sims]
    await workers.start(broker_url, *urls)
    await workers.start(broker_url, *urls)
    frames = write_frames(tmp_path / "frames", 30)
    out = tmp_path / "out"
    first = await start_producer(frames[0].parent, broker_url, urls[0], out, concurrency=12)
    await sims[0].wait_until(
        lambda: sum(p.status == "success" for p in sims[0].prompts.values()) >= 3, timeout=60
    )
    first.kill()
    await first.communicate()
    # The workers finish what they hold, with no producer listening.
    for sim in sims:
        await sim.wait_until(finished(sim), timeout=30)
    before = {pid for sim in sims for pid in sim.prompts}
    assert 0 < len(before) < 30
    rerun = await start_producer(frames[0].parent, broker_url, urls[0], out, concurrency=12)
    _, stderr = await asyncio.wait_for(rerun.communicate(), 120)
    assert rerun.returncode == 0, stderr.decode()
    assert len(list(out.glob("*.png"))) == 30
    prompt_ids = [pid for sim in sims for pid in sim.prompts]
    assert len(prompt_ids) == 30  # nothing the first run posted ran again
    assert before <= set(prompt_ids)
