"""Issue 23 on real ComfyUI servers (skipped unless two are named).

``DREAMGEN_REAL_COMFYUI_POOL=url1,url2`` names two running servers (see
``shared/REAL_COMFYUI.md``: ComfyUI 0.8.0 or 0.3.64 with the tiny random SD 1.5 checkpoint;
``DREAMGEN_REAL_CHECKPOINT`` if it is not ``tiny-sd15.safetensors``). With
``DREAMGEN_REAL_COMFYUI_KILL_PID`` (the pid of the *second* server's process, one this test
may kill), a pool batch also has that server killed mid-way.

Every frame is told apart by a prompt text unique to the run, so the servers' ``/history``
says how many times each frame ran, whatever else those servers ran meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from _cli import DREAMGEN

URLS = [u for u in os.environ.get("DREAMGEN_REAL_COMFYUI_POOL", "").split(",") if u]
CHECKPOINT = os.environ.get("DREAMGEN_REAL_CHECKPOINT", "tiny-sd15.safetensors")
KILL_PID = os.environ.get("DREAMGEN_REAL_COMFYUI_KILL_PID", "")
FRAMES = 16

pytestmark = pytest.mark.skipif(
    len(URLS) < 2, reason="DREAMGEN_REAL_COMFYUI_POOL names no two servers"
)


def command(text: str, out: Path) -> list[str]:
    return [
        *DREAMGEN, "txt2img", text, "-n", str(FRAMES), "--seed", "0", "--size", "64x64",
        "--steps", "2", "--ckpt", CHECKPOINT, "--preset", "sd15", "-o", str(out), "-j", "4",
        "--json", *[arg for url in URLS for arg in ("--server", url)],
    ]  # fmt: skip


async def runs_per_seed(text: str) -> dict[int, int]:
    """How many times each frame of ``text`` ran to success, on any of the servers."""
    runs: dict[int, int] = {}
    async with aiohttp.ClientSession() as session:
        for url in URLS:
            try:
                async with session.get(f"{url}/history", params={"max_items": "10000"}) as r:
                    history: dict[str, Any] = await r.json()
            except aiohttp.ClientError:
                continue  # a killed server: its runs are gone with it
            for entry in history.values():
                graph = entry["prompt"][2]
                texts = [n["inputs"].get("text") for n in graph.values()]
                if text not in texts or entry.get("status", {}).get("status_str") != "success":
                    continue
                (seed,) = [n["inputs"]["seed"] for n in graph.values() if "seed" in n["inputs"]]
                runs[int(seed)] = runs.get(int(seed), 0) + 1
    return runs


def check_files(out: Path) -> None:
    files = sorted(p.name for p in out.glob("*.png"))
    assert len(files) == FRAMES
    assert sorted(int(name.split("_")[1]) for name in files) == list(range(FRAMES))


async def test_real_pool_batch_sigkilled_then_rerun(tmp_path: Path) -> None:
    text = f"frame {uuid.uuid4().hex[:8]}"
    out = tmp_path / "out"
    proc = await asyncio.create_subprocess_exec(
        *command(text, out), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    for _ in range(4):  # four frames done, then the CLI dies
        await proc.stdout.readline()
    proc.send_signal(signal.SIGKILL)
    await proc.communicate()
    proc = await asyncio.create_subprocess_exec(
        *command(text, out), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()[-3000:]
    records = [json.loads(line) for line in stdout.decode().splitlines()]
    assert len(records) == FRAMES
    check_files(out)
    assert await runs_per_seed(text) == dict.fromkeys(range(FRAMES), 1)


@pytest.mark.skipif(not KILL_PID, reason="DREAMGEN_REAL_COMFYUI_KILL_PID names no server")
async def test_real_pool_batch_with_a_server_killed_midway(tmp_path: Path) -> None:
    text = f"frame {uuid.uuid4().hex[:8]}"
    out = tmp_path / "out"
    proc = await asyncio.create_subprocess_exec(
        *command(text, out), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    records = []
    killed = False
    while line := await proc.stdout.readline():
        records.append(json.loads(line))
        if not killed and any(r["server"] == URLS[1] for r in records):
            os.kill(int(KILL_PID), signal.SIGKILL)  # the second server dies mid-batch
            killed = True
    _, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()[-3000:]
    assert killed, "the second server ran nothing before the batch ended"
    assert len(records) == FRAMES
    check_files(out)
    print(f"{sum(r['resubmitted'] for r in records)} resubmitted", file=sys.stderr)
