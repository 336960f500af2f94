"""Must-show (issue 23): a CLI batch over a pool, SIGKILLed at random moments, then rerun.

Two simulators of different speeds; the ``dreamgen`` CLI (a real subprocess) with two
``--server``s and its default journal. Each round kills it in one phase of an item's life
(anytime, while prompts are queued, during a POST, while downloading), then waits until the
servers have handled whatever the dead client had sent. The same command, rerun, finishes:
every frame has exactly one file with the bytes of the server that ran it, and the servers
ran exactly one prompt per frame between them.

More with ``DREAMGEN_CRASH_JOBS=200 DREAMGEN_CRASH_KILLS=20``; ``DREAMGEN_CRASH_SEED``
replays a failure.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from _cli import DREAMGEN

from dreamgen_async.testing import ComfyUISimulator, SimulatorConfig, SimulatorFarm

JOBS = int(os.environ.get("DREAMGEN_CRASH_JOBS", "60"))
KILLS = int(os.environ.get("DREAMGEN_CRASH_KILLS", "4"))
SEED = int(os.environ.get("DREAMGEN_CRASH_SEED", random.randrange(1 << 30)))
MODES = ("anytime", "queued", "during_post", "downloading")

pytestmark = pytest.mark.slow


def busy(sims: Sequence[ComfyUISimulator]) -> bool:
    """Whether a server is still handling an HTTP request (a WebSocket is not one)."""
    return any(n for sim in sims for route, n in sim.in_progress.items() if route != "/ws")


def accepted(sims: Sequence[ComfyUISimulator]) -> list[tuple[int, str]]:
    return [(i, pid) for i, sim in enumerate(sims) for pid in sim.accepted_prompt_ids]


def seed_of(sim: ComfyUISimulator, prompt_id: str) -> int:
    graph = sim.prompts[prompt_id].graph
    (seed,) = [n["inputs"]["seed"] for n in graph.values() if n["class_type"] == "KSampler"]
    return int(seed)


async def farm_until(
    sims: Sequence[ComfyUISimulator], cond: Callable[[], bool], timeout: float = 60
) -> None:
    """Wait until ``cond()``, re-checked after every change of any of ``sims``."""
    waits = [asyncio.ensure_future(sim.wait_until(cond, timeout)) for sim in sims]
    try:
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


async def until(
    sims: Sequence[ComfyUISimulator], proc: asyncio.subprocess.Process, cond: Callable[[], bool]
) -> bool:
    """Wait until ``cond()`` (True) or the client exits by itself (False)."""
    reached = asyncio.ensure_future(farm_until(sims, cond))
    exited = asyncio.ensure_future(proc.wait())
    await asyncio.wait({reached, exited}, return_when=asyncio.FIRST_COMPLETED)
    for waiter in (reached, exited):
        if not waiter.done():
            waiter.cancel()
    await asyncio.gather(reached, exited, return_exceptions=True)
    if reached.done() and not reached.cancelled():
        reached.result()  # a timeout is a test failure
        return proc.returncode is None
    return False


async def kill_round(
    sims: Sequence[ComfyUISimulator],
    mode: str,
    rng: random.Random,
    proc: asyncio.subprocess.Process,
) -> bool:
    """Kill the client in ``mode``'s phase; False if it finished first."""
    try:
        before = len(accepted(sims))
        k = rng.randint(1, max(1, (JOBS - before) // 3))
        if not await until(sims, proc, lambda: len(accepted(sims)) >= before + k):
            return False
        if mode == "queued":
            for sim in sims:
                sim.hold()
            if not await until(sims, proc, lambda: sum(s.queue_remaining for s in sims) >= 3):
                return False
        elif mode in ("during_post", "downloading"):
            route = "/prompt" if mode == "during_post" else "/view"
            for sim in sims:
                sim.route_latency[route] = 0.2
            if not await until(sims, proc, lambda: any(s.in_progress[route] for s in sims)):
                return False
        proc.send_signal(signal.SIGKILL)
        await proc.communicate()
        # What the dead client sent is still handled (a POST in flight is accepted).
        await farm_until(sims, lambda: not busy(sims), timeout=30)
        return True
    finally:
        for sim in sims:
            sim.route_latency.clear()
            sim.release()  # held prompts run with no client: collected from /history


def check_outputs(sims: Sequence[ComfyUISimulator], out: Path) -> None:
    """Every frame: exactly one file, its server's bytes; one prompt per frame in all."""
    posted = accepted(sims)
    ids = [pid for _, pid in posted]
    assert len(ids) == len(set(ids)) == JOBS, f"{len(ids)} prompts for {JOBS} frames"
    by_seed = {seed_of(sims[i], pid): (i, pid) for i, pid in posted}
    assert sorted(by_seed) == list(range(JOBS)), "a frame was run twice, or never"
    files = sorted(p for p in out.iterdir() if not p.name.startswith("."))
    assert len(files) == JOBS
    for seed in range(JOBS):
        (path,) = [p for p in files if p.name.startswith(f"txt2img_{seed}_")]
        i, pid = by_seed[seed]
        assert path.read_bytes() == sims[i].prompts[pid].output_bytes[0]
    assert [p.name for p in out.iterdir() if p.name.endswith(".part")] == []


async def test_a_pool_batch_sigkilled_at_random_moments_then_rerun(
    comfyui_farm: SimulatorFarm, tmp_path: Path, report_line: Callable[[str], None]
) -> None:
    sims = await comfyui_farm.start(
        SimulatorConfig(step_time=0.01, speed=2.0), SimulatorConfig(step_time=0.01, speed=0.5)
    )
    rng = random.Random(SEED)
    out = tmp_path / "out"
    command = (
        *DREAMGEN, "txt2img", "frame", "-n", str(JOBS), "--seed", "0", "--steps", "2",
        "--size", "64x64", "-o", str(out), "--server", sims[0].url, "--server", sims[1].url,
        "-j", "6", "-q",
    )  # fmt: skip
    modes = [*rng.sample(MODES, len(MODES)), *(rng.choice(MODES) for _ in range(KILLS))][:KILLS]
    landed: list[str] = []
    for mode in modes:
        proc = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        if not await kill_round(sims, mode, rng, proc):
            await proc.communicate()
            break
        landed.append(mode)
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()[-3000:]
    check_outputs(sims, out)
    ran = [len(sim.accepted_prompt_ids) for sim in sims]
    report_line(
        f"pool crash/rerun: {JOBS} frames over 2 servers, SIGKILL in {landed} (seed {SEED}); "
        f"every frame once, prompts per server {ran}"
    )
    assert all(ran), "both servers should have worked"
    assert len(landed) >= min(KILLS, 2)


def check_ran_once(sims: Sequence[ComfyUISimulator], out: Path) -> list[int]:
    """Every frame: exactly one successful prompt in all, and one file with its bytes.

    (A server's restart loses the prompts it held: they are posted again, so the servers
    accepted more prompts than frames, but ran each frame once.)"""
    ran: dict[int, list[tuple[int, str]]] = {}
    for i, sim in enumerate(sims):
        for prompt in sim.prompts.values():
            if prompt.status == "success":
                ran.setdefault(seed_of(sim, prompt.prompt_id), []).append((i, prompt.prompt_id))
    twice = {seed: where for seed, where in ran.items() if len(where) > 1}
    assert not twice, f"frames run more than once: {twice}"
    assert sorted(ran) == list(range(JOBS))
    files = sorted(p for p in out.iterdir() if not p.name.startswith("."))
    assert len(files) == JOBS
    for seed in range(JOBS):
        (path,) = [p for p in files if p.name.startswith(f"txt2img_{seed}_")]
        ((i, pid),) = ran[seed]
        assert path.read_bytes() == sims[i].prompts[pid].output_bytes[0]
    return [sum(p.status == "success" for p in sim.prompts.values()) for sim in sims]


async def test_a_pool_batch_with_a_server_restarted_midway_then_sigkilled(
    comfyui_farm: SimulatorFarm, tmp_path: Path, report_line: Callable[[str], None]
) -> None:
    sims = await comfyui_farm.start(
        SimulatorConfig(step_time=0.01, speed=2.0), SimulatorConfig(step_time=0.01, speed=0.5)
    )
    rng = random.Random(SEED + 7)
    out = tmp_path / "out"
    command = (
        *DREAMGEN, "txt2img", "frame", "-n", str(JOBS), "--seed", "0", "--steps", "2",
        "--size", "64x64", "-o", str(out), "--server", sims[0].url, "--server", sims[1].url,
        "-j", "6", "-q",
    )  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    slow = sims[1]
    restarted = await until(
        sims, proc, lambda: slow.queue_remaining >= 1 and len(accepted(sims)) >= 5
    )
    if restarted:
        await slow.restart()  # its queue and history are lost; the CLI lives on
    landed: list[str] = []
    for mode in [rng.choice(MODES) for _ in range(KILLS)]:
        if proc.returncode is None and await kill_round(sims, mode, rng, proc):
            landed.append(mode)
        else:
            await proc.communicate()
            break
        proc = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
    if proc.returncode is None:
        await proc.communicate()
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()[-3000:]
    ran = check_ran_once(sims, out)
    report_line(
        f"pool crash/rerun with a server restarted: {JOBS} frames, SIGKILL in {landed} "
        f"(seed {SEED}); every frame ran once, per server {ran}"
    )
    assert restarted
    assert landed
