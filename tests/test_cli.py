"""The ``dreamgen`` command, run as a real subprocess against the simulator."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
import sys
from pathlib import Path

from _graphs import png_bytes, txt2img
from click.testing import CliRunner

from dreamgen_async.cli import cli
from dreamgen_async.testing import ComfyUISimulator


async def dreamgen(*args: str, stdout: int = asyncio.subprocess.PIPE) -> asyncio.subprocess.Process:
    env = {**os.environ, "COLUMNS": "120", "DREAMGEN_TOKEN": ""}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dreamgen_async",
        *args,
        stdout=stdout,
        stderr=asyncio.subprocess.PIPE if stdout == asyncio.subprocess.PIPE else stdout,
        env=env,
    )


def make_inputs(folder: Path, count: int) -> Path:
    folder.mkdir()
    for i in range(count):
        (folder / f"frame_{i:03d}.png").write_bytes(png_bytes(i))
    return folder


async def test_img2img_over_a_folder_writes_every_output_and_json_lines(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    inputs = make_inputs(tmp_path / "frames", 50)
    out = tmp_path / "out"
    proc = await dreamgen(
        "img2img", str(inputs), "a pencil sketch", "--denoise", "0.5", "--seed", "7",
        "-o", str(out), "--server", comfyui_sim.url, "--concurrency", "8", "--json",
    )  # fmt: skip
    stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    records = [json.loads(line) for line in stdout.decode().splitlines()]
    assert len(records) == 50
    assert {Path(r["input"]).name for r in records} == {f"frame_{i:03d}.png" for i in range(50)}
    for record in records:
        (output,) = record["outputs"]
        assert Path(output).name.startswith(Path(record["input"]).stem + "_7_")
        assert record["seed"] == 7
    assert len(list(out.glob("*.png"))) == 50
    assert len(comfyui_sim.accepted_prompt_ids) == 50


async def test_progress_is_shown_on_a_terminal(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    inputs = make_inputs(tmp_path / "frames", 5)
    comfyui_sim.step_time = 0.01
    master, slave = pty.openpty()
    proc = await dreamgen(
        "img2img", str(inputs), "ink", "--server", comfyui_sim.url, "-o", str(tmp_path / "o"),
        stdout=slave,
    )  # fmt: skip
    os.close(slave)
    chunks = []
    loop = asyncio.get_running_loop()
    while True:
        try:
            chunk = await loop.run_in_executor(None, os.read, master, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert await proc.wait() == 0
    screen = b"".join(chunks).decode(errors="replace")
    assert "done 5  failed 0" in screen
    assert "\x1b[" in screen  # a live display, not plain lines


async def test_ctrl_c_leaves_no_prompt_of_ours_and_no_partial_file(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    inputs = make_inputs(tmp_path / "frames", 12)
    out = tmp_path / "out"
    comfyui_sim.hold()
    proc = await dreamgen(
        "img2img", str(inputs), "ink", "--server", comfyui_sim.url, "-o", str(out),
        "--concurrency", "4",
    )  # fmt: skip
    await comfyui_sim.wait_until(lambda: len(comfyui_sim.accepted_prompt_ids) == 4, timeout=30)
    proc.send_signal(signal.SIGINT)
    _, stderr = await proc.communicate()
    assert proc.returncode == 130, stderr.decode()
    assert "Traceback" not in stderr.decode()
    statuses = {p.status for p in comfyui_sim.prompts.values()}
    assert statuses == {"deleted"}
    assert comfyui_sim.queue_remaining == 0
    # Nothing but the batch's journal (which the next run resumes from).
    assert {p.name for p in out.iterdir()} <= {
        ".dreamgen-journal.sqlite",
        ".dreamgen-journal.sqlite.lock",
    }
    comfyui_sim.release()


async def test_a_missing_input_is_one_readable_line(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    missing = tmp_path / "nope.png"
    proc = await dreamgen("img2img", str(missing), "x", "--server", comfyui_sim.url)
    stdout, stderr = await proc.communicate()
    assert proc.returncode == 1
    text = stdout.decode() + stderr.decode()
    assert f"{missing}: no such file" in text
    assert "Traceback" not in text


async def test_status_and_run_with_set(comfyui_sim: ComfyUISimulator, tmp_path: Path) -> None:
    proc = await dreamgen("status", "--server", comfyui_sim.url)
    stdout, _ = await proc.communicate()
    assert proc.returncode == 0
    assert "reachable" in stdout.decode()
    assert "queue    0 running, 0 pending" in stdout.decode()

    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps(txt2img(seed=1)))
    proc = await dreamgen(
        "run", str(workflow), "--set", "5.seed=99", "--set", "KSampler.steps=1",
        "--server", comfyui_sim.url, "-o", str(tmp_path / "o"), "--json",
    )  # fmt: skip
    stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    (record,) = [json.loads(line) for line in stdout.decode().splitlines()]
    graph = comfyui_sim.prompts[record["prompt_id"]].graph
    assert graph["5"]["inputs"]["seed"] == 99
    assert graph["5"]["inputs"]["steps"] == 1


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["txt2img", "a cat", "--size", "big"])
    assert result.exit_code == 2
    assert "WIDTHxHEIGHT" in result.output
    result = runner.invoke(cli, ["img2img", "x.png", "a cat", "--denoise", "2"])
    assert result.exit_code == 2


def test_server_down_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["status", "--server", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert "cannot connect to http://127.0.0.1:9" in result.output
    assert "Traceback" not in result.output


def test_demo_writes_images(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["demo", "--count", "4", "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert len(list(tmp_path.glob("*.png"))) == 4
    assert "wrote 4 images" in result.output


async def test_a_rejected_prompt_names_node_input_and_choices(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    proc = await dreamgen(
        "txt2img", "a fox", "--ckpt", "nope.safetensors", "--size", "64x64",
        "--server", comfyui_sim.url, "-o", str(tmp_path),
    )  # fmt: skip
    stdout, stderr = await proc.communicate()
    text = stdout.decode() + stderr.decode()
    assert proc.returncode == 1
    assert "input 'ckpt_name'" in text
    assert "[ckpt_name: 'nope.safetensors' not in" in text
    assert "the server has: flux1-schnell.safetensors" in text
    assert "Traceback" not in text
