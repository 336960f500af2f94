"""Issue 19: the CLI and the facade as people run them — SIGTERM, reruns, unwritable outputs,
priorities, ``dreamgen run --input``, and the smaller things. The CLI runs as a real
subprocess against the simulator in this process; the assertions are on exit statuses,
files, and what the server saw.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from _cli import DREAMGEN
from _graphs import CHECKPOINT, png_bytes
from test_storage import read_only  # noqa: F401 - the fixture, shared

from dreamgen_async.comfyui_api import ComfyUIClient
from dreamgen_async.errors import DreamgenError
from dreamgen_async.generator import DreamGenerator, Txt2ImgRequest
from dreamgen_async.testing import ComfyUISimulator
from dreamgen_async.workflow_builder import FluxWorkflowBuilder
from dreamgen_async.workflows.ui import convert_ui_workflow


async def start(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *DREAMGEN,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "120", "DREAMGEN_TOKEN": "", **(env or {})},
    )


async def dreamgen(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await start(*args, env=env)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def images(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


# ---------------------------------------------------------------------------- 1. SIGTERM


async def test_sigterm_takes_our_prompts_back_keeps_the_journal_and_exits_143(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    sim = comfyui_sim
    sim.step_time = 0.05  # 20 steps: a second a job, the batch far from over when stopped
    out = tmp_path / "out"
    proc = await start(
        "txt2img", "a fox", "-n", "16", "--seed", "0", "--steps", "20", "--size", "64x64",
        "-o", str(out), "--server", sim.url, "-j", "4", "-q",
    )  # fmt: skip
    await sim.wait_until(lambda: sim.queue_remaining >= 4, timeout=30)
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    await sim.wait_until(lambda: sim.queue_remaining == 0, timeout=1.0)
    emptied = time.monotonic() - sent
    _, stderr = await proc.communicate()
    assert proc.returncode == 143, stderr.decode()
    assert emptied < 1.0
    assert sim.requests_to("/interrupt", "POST")  # the running one was interrupted
    assert "stopped by SIGTERM" in stderr.decode()
    assert (out / ".dreamgen-journal.sqlite").exists()  # kept: a rerun finishes the batch
    assert "Traceback" not in stderr.decode()


async def test_a_second_sigterm_exits_at_once(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    sim = comfyui_sim
    sim.hold()
    sim.route_latency["/queue"] = 30.0  # taking the prompts back would take half a minute
    proc = await start(
        "txt2img", "a fox", "-n", "8", "--seed", "0", "--size", "64x64",
        "-o", str(tmp_path / "out"), "--server", sim.url, "-q",
    )  # fmt: skip
    await sim.wait_until(lambda: sim.queue_remaining >= 8, timeout=30)
    proc.send_signal(signal.SIGTERM)
    await sim.wait_until(lambda: sim.in_progress["/queue"] > 0, timeout=10)
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    await proc.communicate()
    assert time.monotonic() - sent < 5
    assert proc.returncode == 143
    sim.route_latency.clear()
    sim.release()


APP = """
import asyncio, os, signal, sys
from dreamgen_async.signals import stop_on_signals

async def main():
    with stop_on_signals():
        try:
            print("ready", flush=True)
            await asyncio.Event().wait()
        finally:
            print("cleaned up", flush=True)
            if sys.argv[1] == "slow":
                await asyncio.sleep(30)

asyncio.run(main())
"""


@pytest.mark.parametrize("mode", ["once", "twice"])
async def test_an_application_embeds_the_same_handling(mode: str) -> None:
    """``stop_on_signals()``: the first SIGTERM cancels the application's task (its cleanup
    runs), then the process exits 143; a second one during a slow cleanup exits at once."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", APP, "slow" if mode == "twice" else "fast",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    assert await proc.stdout.readline() == b"ready\n"
    proc.send_signal(signal.SIGTERM)
    assert await proc.stdout.readline() == b"cleaned up\n"
    if mode == "twice":
        proc.send_signal(signal.SIGTERM)
    _, stderr = await proc.communicate()
    assert proc.returncode == 143, stderr.decode()
    assert stderr == b""


# ---------------------------------------------------------------------------- 3. reruns


async def test_two_runs_of_a_seedless_command_make_four_distinct_files(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    for flags, out in (((), tmp_path / "journaled"), (("--no-journal",), tmp_path / "plain")):
        stdouts, stderrs = [], []
        for _ in range(2):
            code, stdout, err = await dreamgen(
                "txt2img", "a fox", "-n", "2", "--size", "64x64", "-o", str(out),
                "--server", comfyui_sim.url, *flags,
            )  # fmt: skip
            assert code == 0, err
            stdouts.append(stdout)
            stderrs.append(err)
        files = images(out)
        assert len(files) == 4, files
        assert len({(out / f).read_bytes() for f in files}) == 4
        if not flags:
            assert "new batch" in stderrs[0]
            assert "run again" in stderrs[1]
            assert "done earlier" not in stdouts[1]
    assert len(comfyui_sim.accepted_prompt_ids) == 8


async def test_an_interrupted_seedless_run_resumes_and_only_then_runs_again(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    sim = comfyui_sim
    out = tmp_path / "out"
    args = ("txt2img", "a fox", "-n", "4", "--size", "64x64", "-o", str(out), "--server", sim.url)
    sim.hold()
    proc = await start(*args, "-j", "2")
    await sim.wait_until(lambda: len(sim.accepted_prompt_ids) >= 2, timeout=30)
    proc.send_signal(signal.SIGTERM)
    await proc.communicate()
    assert proc.returncode == 143
    sim.release()
    code, _, err = await dreamgen(*args)
    assert code == 0, err
    assert "resuming the unfinished batch" in err
    assert len(images(out)) == 4
    code, _, err = await dreamgen(*args)
    assert code == 0, err
    assert "run again" in err
    assert len(images(out)) == 8


# ---------------------------------------------------------------------------- 4. unwritable


@pytest.mark.parametrize("journal", ["default", "none", "elsewhere"])
async def test_an_unwritable_folder_is_a_usage_error_and_nothing_is_posted(
    comfyui_sim: ComfyUISimulator,
    tmp_path: Path,
    read_only: Callable[[Path], None],  # noqa: F811
    journal: str,
) -> None:
    out, locked = tmp_path / "out", tmp_path / "locked"
    read_only(locked)
    flags: tuple[str, ...] = ()
    if journal == "default":
        out = locked
    elif journal == "none":
        out, flags = locked, ("--no-journal",)
    else:  # a writable output folder, a journal that cannot be written
        flags = ("--journal", str(locked / "batch.journal"))
    code, _, err = await dreamgen(
        "txt2img", "a fox", "-n", "40", "--seed", "1", "-o", str(out),
        "--server", comfyui_sim.url, *flags,
    )  # fmt: skip
    assert code == 2, err
    assert str(locked) in err
    assert "Traceback" not in err
    assert comfyui_sim.requests_to("/prompt", "POST") == []


async def test_the_facade_checks_its_output_folder_before_posting(
    comfyui_sim: ComfyUISimulator,
    tmp_path: Path,
    read_only: Callable[[Path], None],  # noqa: F811
) -> None:
    from dreamgen_async.errors import StorageError

    locked = tmp_path / "locked"
    read_only(locked)
    async with DreamGenerator(comfyui_sim.url, output_dir=locked) as gen:
        with pytest.raises(StorageError):
            await gen.generate_from_prompt("x", seed=1, width=64, height=64)
        with pytest.raises(StorageError):
            await gen.generate_many([Txt2ImgRequest("x", seed=1)] * 3)
    async with DreamGenerator(comfyui_sim.url, output_dir=tmp_path / "out") as gen:
        with pytest.raises(StorageError):
            await gen.generate_many([Txt2ImgRequest("x", seed=1)], journal=locked / "j.sqlite")
    assert comfyui_sim.requests_to("/prompt", "POST") == []


# ---------------------------------------------------------------------------- 5. priority


async def test_a_higher_priority_request_overtakes_a_running_batch(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    sim = comfyui_sim
    sim.step_time = 0.02
    steps = 10  # a job: ~0.2 s
    job_time = steps * sim.step_time
    batch = [
        Txt2ImgRequest(f"batch {i}", seed=i, steps=steps, width=64, height=64) for i in range(16)
    ]
    async with DreamGenerator(sim.url, output_dir=tmp_path / "out", max_in_flight=1) as gen:
        running = gen.start_batch(batch, concurrency=16)
        await sim.wait_until(lambda: len(sim.accepted_prompt_ids) >= 2, timeout=30)
        started = time.monotonic()
        result = await gen.generate_from_prompt(
            "a user waits", seed=99, steps=steps, width=64, height=64, priority=10
        )
        waited = time.monotonic() - started
        job = gen.submit(Txt2ImgRequest("another user", seed=98, steps=steps), priority=10)
        await job.result()
        outcomes = await running.results()
        assert len(outcomes) == 16
    assert result.path.exists()
    assert waited < 2 * job_time + 0.25, f"waited {waited:.2f} s for a {job_time:.2f} s job"
    # The batch was still running when the interactive ones finished.
    order = sim.accepted_prompt_ids
    assert order.index(result.prompt_id or "") < 6
    assert order.index(job.prompt_id or "") < 16


# ---------------------------------------------------------------------------- 7. --input


def img2img_file(folder: Path) -> Path:
    built = FluxWorkflowBuilder(preset="sd15").build_img2img("placeholder.png", "ink", seed=3)
    path = folder / "i2i.json"
    path.write_text(json.dumps(built.workflow))
    return path


async def test_run_input_uploads_by_content_hash_one_run_per_file(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    sim = comfyui_sim
    workflow = img2img_file(tmp_path)
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        (frames / f"f{i:03d}.png").write_bytes(png_bytes(i))
    (frames / "copy.png").write_bytes(png_bytes(0))  # same bytes as f000: uploaded once
    out = tmp_path / "out"
    code, stdout, err = await dreamgen(
        "run", str(workflow), "--input", f"LoadImage={frames}", "-o", str(out),
        "--server", sim.url, "--json",
    )  # fmt: skip
    assert code == 0, err
    records = [json.loads(line) for line in stdout.splitlines()]
    assert sorted(Path(r["input"]).name for r in records) == sorted(
        p.name for p in frames.iterdir()
    )
    assert len(sim.accepted_prompt_ids) == 4
    uploads = sim.requests_to("/upload/image", "POST")
    assert len(uploads) == 3  # three distinct contents
    loaded = sorted(
        {
            node["inputs"]["image"]
            for pid in sim.accepted_prompt_ids
            for node in sim.prompts[pid].graph.values()
            if node["class_type"] == "LoadImage"
        }
    )
    assert len(loaded) == 3
    assert all(name.startswith("dreamgen/") for name in loaded)
    assert len(images(out)) == 4
    assert any(name.startswith("i2i_f001_") for name in images(out))


async def test_run_input_errors_are_usage_errors(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    workflow = img2img_file(tmp_path)
    for value, expected in (
        (f"LoadImage={tmp_path / 'nope.png'}", "no such file"),
        ("LoadImage", "NODE=PATH"),
        (f"KSampler={workflow}", "no 'image' input"),
        (f"NoSuchNode={workflow}", "no node"),
    ):
        code, _, err = await dreamgen(
            "run", str(workflow), "--input", value, "--server", comfyui_sim.url,
            "-o", str(tmp_path / "out"),
        )  # fmt: skip
        assert code == 2, (value, err)
        assert expected in err, (value, err)
    assert comfyui_sim.accepted_prompt_ids == []


# ---------------------------------------------------------------------------- 8. small things


async def test_a_missing_input_and_a_tiny_size_are_usage_errors(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "a.png").write_bytes(png_bytes(1))
    code, _, err = await dreamgen(
        "img2img", str(frames / "a.png"), str(tmp_path / "gone.png"), "ink",
        "--server", comfyui_sim.url, "-o", str(tmp_path / "out"),
    )  # fmt: skip
    assert code == 2, err
    assert "gone.png: no such file" in err
    code, _, err = await dreamgen(
        "txt2img", "x", "--size", "8x8", "--server", comfyui_sim.url, "-o", str(tmp_path / "o")
    )
    assert code == 2, err
    assert "at least 16" in err
    assert comfyui_sim.requests_to("/prompt", "POST") == []


async def test_status_rows_are_whole_in_a_pipe(comfyui_sim: ComfyUISimulator) -> None:
    down = "http://127.0.0.1:9/a/rather/long/path/to/make/the/error/longer/than/eighty/columns"
    try:
        async with ComfyUIClient(down) as client:
            await client.system_stats()
    except DreamgenError as exc:
        expected = str(exc)
    assert len(expected) > 80
    code, stdout, err = await dreamgen("status", "--server", comfyui_sim.url, "--server", down)
    assert code == 1, err  # a server is down (issue 23)
    (line,) = [line for line in stdout.splitlines() if " down " in line]
    assert expected in line


async def test_a_refused_login_without_a_token_names_dreamgen_token(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    comfyui_sim.fail_next("/object_info", n=5, status=401)
    code, _, err = await dreamgen(
        "txt2img", "x", "--server", comfyui_sim.url, "-o", str(tmp_path / "out")
    )
    assert code == 1, err
    assert "DREAMGEN_TOKEN" in err


# ---------------------------------------------------------------------------- 3. UI randomize


def test_the_conversion_keeps_randomize_controls_only_when_asked() -> None:
    from test_ui_conversion import INFO, _basic

    assert "randomize" not in convert_ui_workflow(_basic(), INFO)["3"]["_meta"]
    kept = convert_ui_workflow(_basic(), INFO, controls=True)
    assert kept["3"]["_meta"]["randomize"] == ["seed"]
    assert kept["3"]["inputs"]["seed"] == 7


async def test_a_ui_workflow_with_a_randomize_seed_makes_new_images_each_run(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    from test_ui_conversion import _basic

    data = _basic()
    data["nodes"][0]["widgets_values"] = [CHECKPOINT]
    workflow = tmp_path / "ui.json"
    workflow.write_text(json.dumps(data))
    out = tmp_path / "out"
    for _ in range(2):
        code, _, err = await dreamgen(
            "run", str(workflow), "-o", str(out), "--server", comfyui_sim.url
        )
        assert code == 0, err
    seeds = [
        node["inputs"]["seed"]
        for pid in comfyui_sim.accepted_prompt_ids
        for node in comfyui_sim.prompts[pid].graph.values()
        if node["class_type"] == "KSampler"
    ]
    assert len(set(seeds)) == 2
    assert 7 not in seeds
    files = images(out)
    assert len(files) == 2
    assert all(any(f"_{seed}_" in name for name in files) for seed in seeds)
