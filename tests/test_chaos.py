"""Chaos and soak: many jobs through one client while the simulator misbehaves.

Every job must end accounted for — the right image, or a typed error — never lost, never
run twice (except a resubmission after a restart, which the policy allows), never given
another job's image. Each run prints a summary line; ``lost`` and ``duplicated`` must be 0.
"""

from __future__ import annotations

import asyncio
import gc
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from _graphs import img2img, png_bytes, txt2img

from dreamgen_async import (
    ComfyUIClient,
    DreamgenError,
    PromptLost,
    PromptResult,
    ReconnectPolicy,
    RetryPolicy,
)
from dreamgen_async.testing import ComfyUISimulator

RETRY = RetryPolicy(attempts=12, initial_delay=0.01, max_delay=0.1, max_retry_after=0.1)
RECONNECT = ReconnectPolicy(max_time=20.0, initial_delay=0.01, max_delay=0.2)


@dataclass
class Chaos:
    """Injects faults at random moments, driven by how many prompts have finished."""

    sim: ComfyUISimulator
    rng: random.Random
    injected: Counter[str] = field(default_factory=Counter)

    def finished(self) -> int:
        return sum(p.status == "success" for p in self.sim.prompts.values())

    async def run(self, total: int, restarts: int) -> None:
        kinds = ["drop", "503", "429", "latency", "upload503", "view429"]
        points = sorted(self.rng.sample(range(10, total - 20), 14))
        restart_points = set(self.rng.sample(points, restarts))
        for point in points:
            await self.sim.wait_until(lambda: self.finished() >= point, timeout=60)  # noqa: B023
            kind = "restart" if point in restart_points else self.rng.choice(kinds)
            self.injected[kind] += 1
            if kind == "drop":
                await self.sim.drop_websockets()
            elif kind == "503":
                self.sim.fail_next("/prompt", self.rng.randint(1, 4), status=503)
            elif kind == "429":
                self.sim.fail_next("/prompt", 1, status=429, retry_after=0.05)
            elif kind == "upload503":
                self.sim.fail_next("/upload/image", 2, status=503)
            elif kind == "view429":
                self.sim.fail_next("/view", 2, status=429, retry_after=0.02)
            elif kind == "latency":
                self.sim.latency = 0.02 if self.sim.latency == 0 else 0.0
            elif kind == "restart":
                await self.sim.restart()
        self.sim.latency = 0.0


async def one_job(
    client: ComfyUIClient, index: int, gate: asyncio.Semaphore
) -> tuple[PromptResult, list[bytes]] | DreamgenError:
    async with gate:
        try:
            uploaded = await client.upload_image(png_bytes(index % 16), name=f"c{index % 16}.png")
            result = await client.run(
                img2img(uploaded.reference, seed=index, prompt=f"chaos {index}"), timeout=60
            )
            images = await client.get_output_images(result)
            return result, [image.data for image in images]
        except DreamgenError as exc:
            return exc


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
async def test_chaos_nothing_lost_nothing_duplicated(
    comfyui_sim: ComfyUISimulator, seed: int, report_line: Callable[[str], None]
) -> None:
    total = 500
    chaos = Chaos(comfyui_sim, random.Random(seed))
    async with ComfyUIClient(comfyui_sim.url, retry=RETRY, reconnect=RECONNECT) as client:
        gate = asyncio.Semaphore(64)
        async with asyncio.timeout(120):
            injector = asyncio.create_task(chaos.run(total, restarts=2))
            outcomes = await asyncio.gather(*(one_job(client, i, gate) for i in range(total)))
            await injector
        assert client.in_flight == 0
    accepted = Counter(comfyui_sim.accepted_prompt_ids)
    completed = failed = duplicated = 0
    seen_outputs: set[bytes] = set()
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, DreamgenError):
            failed += 1
            # Only a restart may cost a job, and then it says so.
            assert isinstance(outcome, PromptLost), outcome
            continue
        result, images = outcome
        completed += 1
        record = comfyui_sim.prompts[result.prompt_id]
        assert record.graph["5"]["inputs"]["seed"] == index  # our prompt, not another's
        assert images == record.output_bytes  # the bytes the server produced for it
        assert images[0] not in seen_outputs
        seen_outputs.add(images[0])
        allowed = 2 if result.resubmitted else 1
        duplicated += accepted[result.prompt_id] > allowed
    lost = total - completed - failed
    faults = sum(chaos.injected.values())
    report_line(
        f"chaos seed={seed}: jobs={total} faults={faults} {dict(chaos.injected)} "
        f"completed={completed} failed={failed} lost={lost} duplicated={duplicated} "
        f"ws_connections={comfyui_sim.ws_connections_total}"
    )
    assert lost == 0
    assert duplicated == 0
    assert completed >= total * 0.9


@pytest.mark.slow
async def test_soak_memory_returns_to_baseline(
    comfyui_sim: ComfyUISimulator, report_line: Callable[[str], None]
) -> None:
    """5,000 jobs with periodic socket drops: the client keeps nothing per finished job.

    Counted as live objects of the client's own types (jobs, events, results, futures,
    tasks) rather than bytes, because the in-process simulator keeps every prompt it ran.
    """
    total, warmup = 5000, 1200
    async with ComfyUIClient(
        comfyui_sim.url, retry=RETRY, reconnect=RECONNECT, max_in_flight=16
    ) as client:
        gate = asyncio.Semaphore(64)

        async def job(i: int) -> None:
            async with gate:
                await client.run(txt2img(seed=i, steps=1), timeout=60)
                if i % 1000 == 999:
                    await comfyui_sim.drop_websockets()

        await asyncio.gather(*(job(i) for i in range(warmup)))
        baseline = client_objects()
        tasks_before = len(asyncio.all_tasks())
        async with asyncio.timeout(240):
            await asyncio.gather(*(job(i) for i in range(warmup, total)))
        after = client_objects()
        assert client.in_flight == 0
        assert len(asyncio.all_tasks()) <= tasks_before
    growth = {name: after[name] - baseline[name] for name in after if after[name] > baseline[name]}
    report_line(
        f"soak: jobs={total} ws_connections={comfyui_sim.ws_connections_total} "
        f"client objects at warm-up={sum(baseline.values())} after={sum(after.values())} "
        f"growth={growth or 0} lost=0"
    )
    assert growth == {}


def client_objects() -> Counter[str]:
    """Live objects whose class the client defines (the simulator's own excluded)."""
    gc.collect()
    counts: Counter[str] = Counter()
    for o in gc.get_objects():
        module = getattr(type(o), "__module__", None)
        if not isinstance(module, str):
            continue
        if module.startswith("dreamgen_async") and not module.startswith("dreamgen_async.testing"):
            counts[type(o).__qualname__] += 1
    return counts
