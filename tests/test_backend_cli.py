"""Issue 23 on the command line: several ``--server``s are one backend."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from pathlib import Path

import pytest
import pytest_asyncio
from _cli import DREAMGEN
from _graphs import png_bytes, txt2img

from dreamgen_async.testing import ComfyUISimulator, SimulatorConfig, SimulatorFarm

DEAD = "http://127.0.0.1:9"


async def dreamgen(*args: str, cwd: Path | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *DREAMGEN,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "160", "DREAMGEN_TOKEN": ""},
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def journal_servers(path: Path) -> list[str | None]:
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return [row[0] for row in db.execute("SELECT server FROM items ORDER BY idx")]
    finally:
        db.close()


async def test_a_duplicate_server_is_a_usage_error(tmp_path: Path) -> None:
    url = "http://127.0.0.1:8188"
    code, _, err = await dreamgen("status", "--server", url, "--server", url + "/")
    assert code == 2
    assert "given twice" in err
    assert "Traceback" not in err
    code, _, err = await dreamgen("txt2img", "x", "-o", str(tmp_path), "--server", f"{url},{url}")
    assert code == 2
    assert "given twice" in err


async def test_a_dead_first_server_is_no_obstacle(
    comfyui_farm: SimulatorFarm, tmp_path: Path
) -> None:
    (live,) = await comfyui_farm.start(SimulatorConfig(step_time=0.001))
    out = tmp_path / "out"
    code, _, err = await dreamgen(
        "txt2img", "a fox", "-n", "3", "--size", "64x64", "--steps", "2", "-o", str(out),
        "--server", DEAD, "--server", live.url, "-q",
    )  # fmt: skip
    assert code == 0, err
    assert len(list(out.glob("*.png"))) == 3
    down = [line for line in err.splitlines() if "is down" in line]
    assert len(down) == 1, err
    assert DEAD in down[0]
    # the journal is kept with several servers, each item naming its server
    journal = out / ".dreamgen-journal.sqlite"
    assert journal_servers(journal) == [live.url] * 3


async def test_a_ui_file_is_converted_by_whichever_server_answers(
    comfyui_farm: SimulatorFarm, tmp_path: Path
) -> None:
    from test_backend import _ui_txt2img

    (live,) = await comfyui_farm.start(SimulatorConfig(step_time=0.001))
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps(_ui_txt2img()))
    code, _, err = await dreamgen(
        "run", str(workflow), "-o", str(tmp_path / "out"), "--server", DEAD,
        "--server", live.url, "-q",
    )  # fmt: skip
    assert code == 0, err
    assert len(list((tmp_path / "out").glob("*.png"))) == 1


async def test_resume_alone_reruns_a_pool_batch_on_its_servers(
    comfyui_farm: SimulatorFarm, tmp_path: Path
) -> None:
    sims = await comfyui_farm.start(
        SimulatorConfig(step_time=0.001), SimulatorConfig(step_time=0.001)
    )
    out = tmp_path / "out"
    for sim in sims:
        sim.hold()
    proc = await asyncio.create_subprocess_exec(
        *DREAMGEN, "txt2img", "frame", "-n", "10", "--seed", "0", "--size", "64x64",
        "--steps", "2", "-o", str(out), "--server", sims[0].url, "--server", sims[1].url,
        "-q", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip

    def queued() -> bool:
        return sum(len(sim.accepted_prompt_ids) for sim in sims) >= 4

    waits = [asyncio.ensure_future(sim.wait_until(queued, 30)) for sim in sims]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in waits:
        task.cancel()
    await asyncio.gather(*waits, return_exceptions=True)
    proc.kill()
    await proc.communicate()
    for sim in sims:
        sim.release()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code, _, err = await dreamgen(
        "resume", str(out / ".dreamgen-journal.sqlite"), "-q", cwd=elsewhere
    )
    assert code == 0, err
    ids = [pid for sim in sims for pid in sim.accepted_prompt_ids]
    assert len(ids) == len(set(ids)) == 10
    assert len(list(out.glob("*.png"))) == 10
    assert list(elsewhere.iterdir()) == []


async def killed_with_prompts_on_b(
    farm: SimulatorFarm, tmp_path: Path
) -> tuple[ComfyUISimulator, ComfyUISimulator, Path, tuple[str, ...]]:
    """A journaled CLI batch over servers a and b, SIGKILLed once b (held: it accepts prompts
    and sits on them) has at least two: the servers, the output folder and the command."""
    a, b = await farm.start(SimulatorConfig(step_time=0.001), SimulatorConfig(step_time=0.001))
    out = tmp_path / "out"
    command = (
        "txt2img", "frame", "-n", "8", "--seed", "0", "--size", "64x64", "--steps", "2",
        "-o", str(out), "--server", a.url, "--server", b.url, "--json",
    )  # fmt: skip
    b.hold()
    proc = await asyncio.create_subprocess_exec(
        *DREAMGEN, *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    await b.wait_until(lambda: len(b.accepted_prompt_ids) >= 2, timeout=30)
    proc.kill()
    await proc.communicate()
    return a, b, out, command


async def test_a_server_gone_at_resume_its_items_run_elsewhere_marked_resubmitted(
    comfyui_farm: SimulatorFarm, tmp_path: Path
) -> None:
    a, b, out, command = await killed_with_prompts_on_b(comfyui_farm, tmp_path)
    on_b = set(b.accepted_prompt_ids)
    await b.stop()  # gone, with its queue
    code, stdout, err = await dreamgen(*command)
    assert code == 0, err
    records = [json.loads(line) for line in stdout.splitlines()]
    again = [r for r in records if not r["resumed"]]
    assert {r["server"] for r in again} == {a.url}
    resubmitted = {r["prompt_id"] for r in again if r["resubmitted"]}
    assert len(resubmitted) == len(on_b)
    assert not resubmitted & on_b  # posted again under new prompt ids
    assert len(list(out.glob("*.png"))) == 8


# ------------------------------------------------------------------ one suite, two backends


@pytest_asyncio.fixture(params=[1, 2], ids=["one-server", "two-servers"])
async def servers(request: pytest.FixtureRequest, comfyui_farm: SimulatorFarm) -> list[str]:
    configs = [SimulatorConfig(step_time=0.001, speed=s) for s in (1.0, 0.5)][: request.param]
    await comfyui_farm.start(*configs)
    return comfyui_farm.urls


def server_args(urls: list[str]) -> list[str]:
    return [arg for url in urls for arg in ("--server", url)]


async def test_cli_txt2img(servers: list[str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, stdout, err = await dreamgen(
        "txt2img", "a fox", "-n", "3", "--seed", "1", "--size", "64x64", "--steps", "2",
        "-o", str(out), "--json", *server_args(servers),
    )  # fmt: skip
    assert code == 0, err
    records = [json.loads(line) for line in stdout.splitlines()]
    assert len(records) == 3
    assert {r["server"] for r in records} <= set(servers)
    assert len(list(out.glob("*.png"))) == 3


async def test_cli_img2img_batch(servers: list[str], tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(4):
        (frames / f"f{i}.png").write_bytes(png_bytes(i))
    out = tmp_path / "out"
    code, _, err = await dreamgen(
        "img2img", str(frames), "ink", "--seed", "2", "--steps", "2", "-o", str(out), "-q",
        *server_args(servers),
    )  # fmt: skip
    assert code == 0, err
    assert sorted(p.name[:2] for p in out.glob("*.png")) == ["f0", "f1", "f2", "f3"]


@pytest.mark.parametrize("kind", ["api", "ui"])
async def test_cli_run_a_file(servers: list[str], tmp_path: Path, kind: str) -> None:
    from test_backend import _ui_txt2img

    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps(txt2img(seed=4) if kind == "api" else _ui_txt2img()))
    out = tmp_path / "out"
    code, _, err = await dreamgen("run", str(workflow), "-o", str(out), "-q", *server_args(servers))
    assert code == 0, err
    assert len(list(out.glob("*.png"))) == 1


async def test_cli_status_lists_the_models(servers: list[str]) -> None:
    code, stdout, err = await dreamgen("status", *server_args(servers))
    assert code == 0, err
    assert "flux1-schnell.safetensors" in stdout


async def test_a_server_down_at_resume_that_comes_back_does_not_run_its_items_too(
    comfyui_farm: SimulatorFarm, tmp_path: Path
) -> None:
    a, b, out, command = await killed_with_prompts_on_b(comfyui_farm, tmp_path)
    on_b = set(b.accepted_prompt_ids)
    b.fail_next("/object_info", n=10**6, status=503)  # b cannot join the rerun's pool...
    a.hold()
    with (tmp_path / "stdout").open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            *DREAMGEN, *command, "--debug", stdout=sink, stderr=asyncio.subprocess.PIPE
        )
    assert proc.stderr is not None
    # ... so it gives up on b's prompts (to run them on a, held there) ...
    gave_up = 0
    while gave_up < len(on_b):
        line = await asyncio.wait_for(proc.stderr.readline(), 60)
        assert line, "the rerun ended early"
        gave_up += b"cannot be collected" in line
    drain = asyncio.ensure_future(proc.stderr.read())
    b.clear_faults()  # ... then b is back: it must not run them too
    await b.wait_until(lambda: all(b.prompts[p].status == "deleted" for p in on_b), timeout=60)
    a.release()
    b.release()
    await proc.wait()
    stderr = await drain
    stdout = (tmp_path / "stdout").read_bytes()
    assert proc.returncode == 0, stderr.decode()[-3000:]
    records = [json.loads(line) for line in stdout.decode().splitlines()]
    assert sum(r["resubmitted"] for r in records) == len(on_b)
    ran: dict[int, int] = {}
    for sim in (a, b):
        for prompt in sim.prompts.values():
            if prompt.status == "success":
                graph = prompt.graph
                (seed,) = [n["inputs"]["seed"] for n in graph.values() if "seed" in n["inputs"]]
                ran[seed] = ran.get(seed, 0) + 1
    assert ran == dict.fromkeys(range(8), 1)
    assert len(list(out.glob("*.png"))) == 8


async def test_a_job_only_a_dead_server_could_run_fails_within_join_timeout(
    comfyui_farm: SimulatorFarm, tmp_path: Path
) -> None:
    (live,) = await comfyui_farm.start(SimulatorConfig(step_time=0.001))
    graph = txt2img(seed=1)
    graph["1"]["inputs"]["ckpt_name"] = "elsewhere.safetensors"
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps(graph))
    loop = asyncio.get_running_loop()
    started = loop.time()
    code, _, err = await dreamgen(
        "run", str(workflow), "-o", str(tmp_path / "out"), "--server", live.url,
        "--server", DEAD, "--join-timeout", "1",
    )  # fmt: skip
    assert code == 1, err
    assert loop.time() - started < 1 + 10
    assert f"{DEAD} down since" in err
    assert f"{live.url} lacks ckpt_name 'elsewhere.safetensors'" in err
    assert live.accepted_prompt_ids == []
