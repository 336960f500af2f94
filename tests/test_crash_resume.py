"""Must-show: a batch client killed at random moments resumes without re-running anything.

The client is a real subprocess (``_batch_child.py``, or the ``dreamgen`` CLI), the server the
simulator in this process. Each round kills the client in one phase of an item's life, then
waits until the server has finished handling whatever the dead client had sent (a POST the
client died during is still accepted, as on a real server). The last run completes the batch.

Defaults keep CI short; more with ``DREAMGEN_CRASH_JOBS=200 DREAMGEN_CRASH_KILLS=20`` (and
``DREAMGEN_CRASH_SEED`` replays a failure).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from _cli import DREAMGEN
from _graphs import png_bytes

from dreamgen_async.testing import ComfyUISimulator

CHILD = Path(__file__).with_name("_batch_child.py")
JOBS = int(os.environ.get("DREAMGEN_CRASH_JOBS", "200"))
KILLS = int(os.environ.get("DREAMGEN_CRASH_KILLS", "5"))
SEED = int(os.environ.get("DREAMGEN_CRASH_SEED", random.randrange(1 << 30)))
CONCURRENCY = 8
MODES = ("before_post", "during_post", "queued", "downloading", "anytime")

pytestmark = pytest.mark.slow


def busy(sim: ComfyUISimulator) -> bool:
    """Whether the server is still handling an HTTP request (a WebSocket is not one)."""
    return any(count for route, count in sim.in_progress.items() if route != "/ws")


def seed_of(sim: ComfyUISimulator, prompt_id: str) -> int:
    graph = sim.prompts[prompt_id].graph
    (seed,) = [n["inputs"]["seed"] for n in graph.values() if n["class_type"] == "KSampler"]
    return int(seed)


def journal_items(path: Path) -> list[tuple[str, str | None]]:
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return db.execute("SELECT state, prompt_id FROM items").fetchall()
    finally:
        db.close()


async def until(
    sim: ComfyUISimulator, proc: asyncio.subprocess.Process, cond: Callable[[], bool]
) -> bool:
    """Wait until ``cond()`` (True) or the client exits by itself (False)."""
    reached = asyncio.ensure_future(sim.wait_until(cond, timeout=60))
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
    sim: ComfyUISimulator,
    mode: str,
    rng: random.Random,
    proc: asyncio.subprocess.Process,
    sig: signal.Signals,
) -> dict[str, int] | None:
    """Kill the client in ``mode``'s phase; ``None`` if it finished first. Observations."""
    try:
        return await _kill_round(sim, mode, rng, proc, sig)
    finally:
        sim.route_latency.clear()


async def _kill_round(
    sim: ComfyUISimulator,
    mode: str,
    rng: random.Random,
    proc: asyncio.subprocess.Process,
    sig: signal.Signals,
) -> dict[str, int] | None:
    accepted = len(sim.accepted_prompt_ids)
    left = JOBS - accepted
    k = rng.randint(1, max(1, left // 3))
    if not await until(sim, proc, lambda: len(sim.accepted_prompt_ids) >= accepted + k):
        return None
    seen: dict[str, int] = {}
    if mode == "before_post":
        # The next POSTs answer 503 + Retry-After: their prompt_ids are committed, the
        # server has none of them, and the workers sleep before posting again.
        fails = len([r for r in sim.requests_to("/prompt", "POST") if r.status == 503])
        sim.fail_next("/prompt", n=2, status=503, retry_after=30, method="POST")
        reached = await until(
            sim,
            proc,
            lambda: (
                len([r for r in sim.requests_to("/prompt", "POST") if r.status == 503]) >= fails + 2
            ),
        )
        if not reached:
            return None
    elif mode == "during_post":
        sim.route_latency["/prompt"] = 0.2  # the server takes its time before accepting
        if not await until(sim, proc, lambda: sim.in_progress["/prompt"] > 0):
            return None
    elif mode == "queued":
        sim.hold()
        if not await until(sim, proc, lambda: sim.queue_remaining >= 3):
            sim.release()
            return None
    elif mode == "downloading":
        sim.route_latency["/view"] = 0.2  # downloads take their time
        if not await until(sim, proc, lambda: sim.in_progress["/view"] > 0):
            return None
    proc.send_signal(sig)
    seen["accepted_at_kill"] = len(sim.accepted_prompt_ids)
    await proc.communicate()
    # What the dead client sent is still handled (a POST in flight is accepted): wait for it.
    await sim.wait_until(lambda: not busy(sim), timeout=30)
    seen["accepted_after"] = len(sim.accepted_prompt_ids)
    return seen


async def start_child(
    sim: ComfyUISimulator, out: Path, journal: Path
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, str(CHILD), sim.url, str(out), str(journal), str(JOBS), str(CONCURRENCY),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


def check_outputs(sim: ComfyUISimulator, out: Path) -> None:
    """Every item: exactly one file, the server's bytes; every prompt accepted exactly once."""
    accepted = sim.accepted_prompt_ids
    assert len(accepted) == len(set(accepted)) == JOBS, "a prompt was posted twice"
    by_seed = {seed_of(sim, pid): pid for pid in accepted}
    assert sorted(by_seed) == list(range(JOBS)), "an item was run twice, or never"
    files = sorted(p for p in out.iterdir() if not p.name.startswith("."))
    assert len(files) == JOBS
    for seed in range(JOBS):
        (path,) = [p for p in files if p.name.startswith(f"txt2img_{seed}_")]
        assert path.read_bytes() == sim.prompts[by_seed[seed]].output_bytes[0]
    leftovers = [p.name for p in out.iterdir() if p.name.endswith(".part")]
    assert leftovers == []


async def test_sigkill_at_random_moments_then_resume(
    comfyui_sim: ComfyUISimulator, tmp_path: Path, report_line: Callable[[str], None]
) -> None:
    sim = comfyui_sim
    sim.step_time = 0.002  # ~10 ms a job: the batch lasts long enough to be hit
    rng = random.Random(SEED)
    out, journal = tmp_path / "out", tmp_path / "batch.journal"
    modes = [*rng.sample(MODES, len(MODES)), *(rng.choice(MODES) for _ in range(KILLS))][:KILLS]
    landed: list[str] = []
    held = False  # prompts left queued behind a kill, released once the next run adopts them

    async def start() -> asyncio.subprocess.Process:
        nonlocal held
        queue_checks = len(sim.requests_to("/queue", "GET"))
        proc = await start_child(sim, out, journal)
        if held:  # released only when the new run asks the server about them: it waits
            await until(sim, proc, lambda: len(sim.requests_to("/queue", "GET")) > queue_checks)
            sim.release()
            held = False
        return proc

    for mode in modes:
        proc = await start()
        seen = await kill_round(sim, mode, rng, proc, signal.SIGKILL)
        if seen is None:  # the batch finished before this kill
            await proc.communicate()
            break
        landed.append(mode)
        if mode == "queued":
            held = rng.random() < 0.5
            if not held:  # they run with no client connected: collected from /history
                sim.release()
        items = journal_items(journal)
        not_sent = [pid for state, pid in items if state == "posted" and pid not in sim.prompts]
        if mode == "before_post":
            assert not_sent, "the kill should leave committed prompt_ids the server never saw"
        if mode == "during_post":
            assert seen["accepted_after"] > seen["accepted_at_kill"], "no POST was in flight"
    proc = await start()
    stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()[-3000:]
    summary = json.loads(stdout)
    assert summary["ok"] == JOBS, summary
    check_outputs(sim, out)
    report_line(
        f"crash/resume: {JOBS} jobs, SIGKILL in {landed} (seed {SEED}); every item once, "
        f"{len(sim.accepted_prompt_ids)} prompts accepted"
    )
    assert len(landed) >= min(KILLS, 3)


async def test_ctrl_c_in_the_cli_then_the_same_command_finishes(
    comfyui_sim: ComfyUISimulator, tmp_path: Path, report_line: Callable[[str], None]
) -> None:
    sim = comfyui_sim
    sim.step_time = 0.01  # the CLI batch must outlast several interrupts
    rng = random.Random(SEED + 1)
    out = tmp_path / "out"
    jobs = min(JOBS, 100)
    command = (
        *DREAMGEN, "txt2img", "frame", "-n", str(jobs), "--seed", "0",
        "--size", "64x64", "-o", str(out), "--server", sim.url, "-j", "4", "-q",
    )  # fmt: skip
    interrupted = 0
    for _ in range(max(3, KILLS // 2)):
        proc = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        mode = rng.choice(("anytime", "queued", "during_post"))
        seen = await kill_round(sim, mode, rng, proc, signal.SIGINT)
        if mode == "queued":
            sim.release()
        if seen is None:
            await proc.communicate()
            break
        assert proc.returncode == 130
        interrupted += 1
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()[-3000:]
    files = sorted(p for p in out.iterdir() if not p.name.startswith("."))
    assert len(files) == jobs  # no duplicate
    # Ctrl-C takes our queued prompts off the server (and interrupts the running one), so
    # those are posted again; but nothing that finished ran twice, and no prompt_id twice.
    finished = [p for p in sim.prompts.values() if p.status == "success"]
    assert sorted(seed_of(sim, p.prompt_id) for p in finished) == list(range(jobs))
    assert len(sim.accepted_prompt_ids) == len(set(sim.accepted_prompt_ids))
    for seed in range(jobs):
        (path,) = [p for p in files if p.name.startswith(f"txt2img_{seed}_")]
        (done,) = [p for p in finished if seed_of(sim, p.prompt_id) == seed]
        assert path.read_bytes() == done.output_bytes[0]
    report_line(f"ctrl-c/rerun: {jobs} jobs, {interrupted} interrupts (seed {SEED}); no re-run")
    assert interrupted >= 2


async def test_dreamgen_resume_finishes_a_batch_from_its_journal_alone(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    sim = comfyui_sim
    out, journal = tmp_path / "out", tmp_path / "frames.journal"
    inputs = tmp_path / "frames"
    inputs.mkdir()
    for i in range(12):
        (inputs / f"frame_{i:02d}.png").write_bytes(png_bytes(i))
    sim.hold()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dreamgen_async", "img2img", str(inputs), "ink", "--seed", "3",
        "--steps", "2", "-o", str(out), "--server", sim.url, "--journal", str(journal), "-q",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await sim.wait_until(lambda: len(sim.accepted_prompt_ids) >= 8, timeout=30)
    proc.kill()
    await proc.communicate()
    await sim.wait_until(lambda: not busy(sim))
    sim.release()
    # From another folder, with nothing but the journal: server, folder, model, requests.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dreamgen_async", "resume", str(journal), "--json",
        cwd=elsewhere, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    records = [json.loads(line) for line in stdout.decode().splitlines()]
    assert sorted(Path(r["input"]).name for r in records) == sorted(
        p.name for p in inputs.iterdir()
    )
    assert len(sim.accepted_prompt_ids) == len(set(sim.accepted_prompt_ids)) == 12
    files = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert len(files) == 12
    assert all(name.startswith("frame_") and "_3_" in name for name in files)
    assert list(elsewhere.iterdir()) == []
