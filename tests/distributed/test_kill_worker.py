"""Must-show: a worker SIGKILLed mid-batch; the batch still ends with exactly one prompt per
frame, the surviving worker finishing the dead one's jobs (real processes, real Redis)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
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
    producer = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dreamgen_async",
        "img2img",
        str(frames[0].parent),
        "a watercolour",
        "--seed",
        "5",
        "--steps",
        "4",
        "--broker",
        broker_url,
        "--server",
        urls[0],  # the model is resolved there; the jobs go through the broker
        "-o",
        str(out),
        "-j",
        "16",
        "-q",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
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
