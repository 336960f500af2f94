"""The simulator's pool knobs: a per-server speed and a model-switch cost, in its history."""

from __future__ import annotations

import functools

import aiohttp
from _graphs import txt2img

from dreamgen_async.testing import ComfyUISimulator, SimulatorConfig, SimulatorFarm

CKPTS = ("a.safetensors", "b.safetensors")


def has_three(sim: ComfyUISimulator) -> bool:
    return len(sim.engine.history) == 3


def graph(ckpt: str, seed: int) -> dict[str, object]:
    g = txt2img(seed=seed)
    g["1"]["inputs"]["ckpt_name"] = ckpt
    return g


async def test_speed_and_model_switch_cost_in_history(comfyui_farm: SimulatorFarm) -> None:
    fast, slow = await comfyui_farm.start(
        SimulatorConfig(step_time=0.01, checkpoints=CKPTS, speed=2.0, model_load_time=0.05),
        SimulatorConfig(step_time=0.01, checkpoints=CKPTS, speed=0.5, model_load_time=0.05),
    )
    assert comfyui_farm.urls == [fast.url, slow.url]
    async with aiohttp.ClientSession() as http:
        for sim in (fast, slow):
            for i, ckpt in enumerate(["a.safetensors", "a.safetensors", "b.safetensors"]):
                body = {"prompt": graph(ckpt, i), "prompt_id": f"p{i}"}
                async with http.post(sim.url + "/prompt", json=body) as r:
                    assert r.status == 200
            await sim.wait_until(functools.partial(has_three, sim))
            timings = [sim.history[f"p{i}"]["sim_timings"] for i in range(3)]
            assert [t["model_load"] for t in timings] == [0.05, 0.0, 0.05]
            assert [t["model"] for t in timings] == list(CKPTS[:1] * 2 + CKPTS[1:])
            assert sim.model_loads == 2
            assert sim.loaded_model == "b.safetensors"
            assert sim.prompts["p1"].model_load == 0.0
    plain = [fast.prompts["p1"], slow.prompts["p1"]]
    durations = [(p.finished_at or 0) - (p.started_at or 0) for p in plain]
    # 2 steps of 10 ms: ~10 ms at 2x, ~40 ms at 0.5x.
    assert durations[1] > 2 * durations[0]
