"""The ``dreamgen`` command with several servers (a pool), as a real subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from _cli import DREAMGEN

from dreamgen_async.testing import SimulatorConfig, SimulatorFarm


async def dreamgen(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dreamgen_async",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "160", "DREAMGEN_TOKEN": "", **(env or {})},
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_txt2img_over_two_servers_from_the_environment(
    comfyui_farm: SimulatorFarm, tmp_path: Path
) -> None:
    sims = await comfyui_farm.start(SimulatorConfig(), SimulatorConfig())
    env = {"DREAMGEN_SERVER": ",".join(comfyui_farm.urls)}
    code, out, err = await dreamgen(
        "txt2img", "a fox", "-n", "12", "--steps", "1", "-o", str(tmp_path), "--json", env=env
    )
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 12
    assert all(not r.get("error") for r in records)
    assert all(sim.prompts for sim in sims)  # both servers worked


async def test_status_one_row_per_server(comfyui_farm: SimulatorFarm) -> None:
    up_a, up_b = await comfyui_farm.start(SimulatorConfig(), SimulatorConfig())
    args = ["status", "--server", up_a.url, "--server", up_b.url, "--server", "http://127.0.0.1:9"]
    code, out, err = await dreamgen(*args)
    assert code == 1, err  # issue 23: a server down is exit status 1
    lines = out.splitlines()
    assert any(up_a.url in line and " up " in line for line in lines)
    assert any(up_b.url in line and "0 running, 0 pending" in line for line in lines)
    assert any("127.0.0.1:9" in line and " down " in line for line in lines)
    assert "2 of 3 servers up" in out
    assert f"models of {up_a.url}: " in out
    code, out, _ = await dreamgen(*args, "--json")
    assert [json.loads(line)["state"] for line in out.splitlines()] == ["up", "up", "down"]


async def test_sim_servers_starts_a_farm() -> None:
    proc = await asyncio.create_subprocess_exec(
        *DREAMGEN,
        "sim",
        "--port",
        "0",
        "--servers",
        "2",
        "--speeds",
        "2,0.5",
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        lines = [(await proc.stderr.readline()).decode() for _ in range(3)]
        urls = [line.split()[4] for line in lines[:2]]
        assert "(speed 2)" in lines[0]
        assert "(speed 0.5)" in lines[1]
        assert f"DREAMGEN_SERVER={','.join(urls)}" in lines[2]
        code, out, _ = await dreamgen("status", "--server", ",".join(urls))
        assert code == 0
        assert "2 of 2 servers up" in out
    finally:
        proc.send_signal(signal.SIGINT)
        await proc.wait()


async def test_readme_many_gpus_example_runs(comfyui_farm: SimulatorFarm, tmp_path: Path) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Many GPUs", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    configs = [SimulatorConfig(speed=s, model_load_time=0.05) for s in (2, 1, 1, 0.5)]
    await comfyui_farm.start(*configs)
    urls = repr(comfyui_farm.urls)
    line = next(ln for ln in code.splitlines() if ln.startswith("URLS = "))
    script = tmp_path / "many_gpus.py"
    script.write_text(code.replace(line, f"URLS = {urls}"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert out.decode().count("bytes") == 24
    assert sum(len(sim.prompts) for sim in comfyui_farm.sims) == 24
