"""The ``dreamgen`` command, run as a real subprocess against the simulator."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
import sys
from pathlib import Path

from _cli import DREAMGEN
from _graphs import png_bytes, txt2img
from click.testing import CliRunner

from dreamgen_async.cli import cli, main
from dreamgen_async.testing import ComfyUISimulator


async def dreamgen(*args: str, stdout: int = asyncio.subprocess.PIPE) -> asyncio.subprocess.Process:
    env = {**os.environ, "COLUMNS": "120", "DREAMGEN_TOKEN": ""}
    return await asyncio.create_subprocess_exec(
        *DREAMGEN,
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
    assert proc.returncode == 2  # a usage error (issue 19), before anything is sent
    assert comfyui_sim.accepted_prompt_ids == []
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
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps(txt2img(seed=1)))
    proc = await dreamgen(
        "run", str(workflow), "--set", "1.ckpt_name=nope.safetensors",
        "--server", comfyui_sim.url, "-o", str(tmp_path),
    )  # fmt: skip
    stdout, stderr = await proc.communicate()
    text = stdout.decode() + stderr.decode()
    assert proc.returncode == 1
    assert "input 'ckpt_name'" in text
    assert "[ckpt_name: 'nope.safetensors' not in" in text
    assert "the server has: flux1-schnell.safetensors" in text
    assert "Traceback" not in text


# ---------------------------------------------------------------------------- issue 14


async def dreamgen_piped(*args: str) -> tuple[int, str, str]:
    """Run the real ``dreamgen`` off a terminal (pipes), COLUMNS=60; (status, out, err)."""
    env = {**os.environ, "COLUMNS": "60", "DREAMGEN_TOKEN": ""}
    env.pop("DREAMGEN_SERVER", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dreamgen_async", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    stdout, stderr = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, stdout.decode(), stderr.decode()


async def test_a_server_without_scheme_is_a_usage_error_with_the_fix() -> None:
    code, _out, err = await dreamgen_piped("status", "--server", "127.0.0.1:8195")
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert "http://127.0.0.1:8195" in err


async def test_swapped_img2img_arguments_hint_at_the_order(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    inputs = make_inputs(tmp_path / "frames", 2)
    code, _out, err = await dreamgen_piped(
        "img2img", "a pencil sketch", str(inputs), "--server", comfyui_sim.url
    )
    assert code == 2, err
    assert "INPUTS... PROMPT" in " ".join(err.split())
    assert comfyui_sim.requests == []


async def test_an_output_file_instead_of_a_folder_is_a_usage_error_before_any_job(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    existing = tmp_path / "ok.png"
    existing.write_bytes(png_bytes(1))
    for target in (existing, tmp_path / "new.png"):
        code, _out, err = await dreamgen_piped(
            "txt2img", "a fox", "-o", str(target), "--server", comfyui_sim.url
        )
        assert code == 2, err
        assert "--output" in err
        assert "folder" in err
    assert comfyui_sim.requests == []
    assert existing.read_bytes() == png_bytes(1)


async def test_a_bad_size_is_one_usage_error_not_one_per_job(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    code, out, err = await dreamgen_piped(
        "txt2img", "a fox", "--size", "65x64", "-n", "4", "--server", comfyui_sim.url,
        "-o", str(tmp_path),
    )  # fmt: skip
    assert code == 2, err
    assert "multiple of 8" in " ".join(err.split())
    assert "--size" in err
    assert out == ""
    assert comfyui_sim.requests == []


async def test_off_a_terminal_one_unwrapped_line_per_job_on_stdout_and_problems_on_stderr(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    inputs = make_inputs(tmp_path / ("a-rather-long-folder-name-" * 3), 3)
    (inputs / "broken.png").write_text("not an image")
    out = tmp_path / ("an-output-folder-with-a-long-name-" * 2)
    code, stdout, stderr = await dreamgen_piped(
        "img2img", str(inputs), "a pencil sketch " * 8, "--server", comfyui_sim.url,
        "-o", str(out), "--seed", "3",
    )  # fmt: skip
    assert code == 1, stderr
    lines = stdout.splitlines()
    assert len(lines) == 3  # one per successful job, nothing else
    for line in lines:
        assert line.startswith(f"ok {inputs}")
        assert line.endswith("(seed 3)")
        assert len(line) > 60  # COLUMNS=60, and still one line
    errors = stderr.splitlines()
    assert any(line.startswith(f"error {inputs / 'broken.png'}: ") for line in errors)
    assert errors[-1] == "1 job(s) failed"
    assert "\x1b[" not in stdout + stderr


def partial_graph(tmp_path: Path) -> Path:
    graph = txt2img()
    graph["30"] = {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0]}}  # no vae
    graph["31"] = {
        "class_type": "SaveImage",
        "inputs": {"images": ["30", 0], "filename_prefix": "p"},
    }
    path = tmp_path / "partial.json"
    path.write_text(json.dumps(graph))
    return path


async def test_a_partial_prompt_is_a_warning_line_and_exit_status_3(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    workflow = partial_graph(tmp_path)
    code, stdout, stderr = await dreamgen_piped(
        "run", str(workflow), "--server", comfyui_sim.url, "-o", str(tmp_path / "o")
    )
    assert code == 3, stderr
    assert len(stdout.splitlines()) == 1
    assert stdout.startswith(f"ok {workflow} -> ")
    (warning,) = [line for line in stderr.splitlines() if line.startswith("warning")]
    assert "dropped output node(s) 31 (SaveImage)" in warning
    assert "node 30 (VAEDecode), input 'vae'" in warning
    assert "PartialPromptWarning" not in stderr
    assert "warnings.warn" not in stderr
    assert ".py:" not in stderr  # no Python warning pointing into the library
    # A fresh folder: rerun in the same one, the journal would find the job done (resumed).
    code, stdout, _ = await dreamgen_piped(
        "run", str(workflow), "--server", comfyui_sim.url, "-o", str(tmp_path / "o2"), "--json"
    )
    assert code == 3
    assert "dropped output node(s) 31" in json.loads(stdout)["warning"]


async def test_set_reports_its_count_and_refuses_an_ambiguous_title(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    graph = txt2img(prompt="a cat")
    for node in ("2", "3"):  # ComfyUI's default title for both prompts
        graph[node]["_meta"] = {"title": "CLIP Text Encode (Prompt)"}
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps(graph))
    common = ("--server", comfyui_sim.url, "-o", str(tmp_path / "o"), "--json")
    code, stdout, stderr = await dreamgen_piped(
        "run", str(workflow), "--set", "CLIP Text Encode (Prompt).text=a dog", *common
    )
    assert code == 2, stderr
    text = " ".join(stderr.split())
    assert "names 2 nodes (2 (CLIPTextEncode), 3 (CLIPTextEncode))" in text
    assert "--set-all" in text
    assert comfyui_sim.requests == []

    code, stdout, stderr = await dreamgen_piped(
        "run", str(workflow), "--set", "2.text=a dog", "--set", "KSampler.steps=1", *common
    )
    assert code == 0, stderr
    assert "--set 2.text=a dog: changed 1 node(s) (2)" in stderr
    assert "--set KSampler.steps=1: changed 1 node(s) (5)" in stderr
    sent = comfyui_sim.prompts[json.loads(stdout)["prompt_id"]].graph
    assert (sent["2"]["inputs"]["text"], sent["3"]["inputs"]["text"]) == ("a dog", "")

    code, stdout, stderr = await dreamgen_piped(
        "run", str(workflow), "--set", "CLIP Text Encode (Prompt).text=x", "--set-all", *common
    )
    assert code == 0, stderr
    assert "changed 2 node(s) (2, 3)" in stderr


def help_of(*command: str) -> str:
    result = CliRunner().invoke(cli, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0
    return result.output


def test_every_subcommand_lists_only_options_that_apply() -> None:
    status = help_of("status")
    for option in ("--concurrency", "-j,", "--timeout", "--quiet"):
        assert option not in status
    assert "--server" in status
    assert "--json" in status
    assert "--server" not in help_of("demo")
    img2img = help_of("img2img")
    ckpt = next(line for line in img2img.splitlines() if "--ckpt" in line)
    assert "Model file on the server" in ckpt


async def test_status_json_works(comfyui_sim: ComfyUISimulator) -> None:
    code, stdout, stderr = await dreamgen_piped("status", "--server", comfyui_sim.url, "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["server"] == comfyui_sim.url


async def test_timeout_applies_to_each_job(comfyui_sim: ComfyUISimulator, tmp_path: Path) -> None:
    # A held server never starts the job: --timeout (the run limit, issue 19) does not
    # apply, --queue-timeout does (see test_run_limits.py for --timeout).
    comfyui_sim.hold()
    code, stdout, stderr = await dreamgen_piped(
        "txt2img", "a fox", "--size", "64x64", "--queue-timeout", "0.5",
        "--server", comfyui_sim.url, "-o", str(tmp_path),
    )  # fmt: skip
    comfyui_sim.release()
    assert code == 1, stderr
    assert stdout == ""
    assert "waited in the queue more than 0.5 s" in stderr
    assert {p.status for p in comfyui_sim.prompts.values()} == {"deleted"}


async def test_the_console_script_and_both_module_forms_start_the_same_command() -> None:
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "dreamgen"]
    assert script.value == "dreamgen_async.cli:main"
    assert script.load() is main
    for module in ("dreamgen_async", "dreamgen_async.cli"):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, "--version", stdout=asyncio.subprocess.PIPE
        )
        out, _ = await proc.communicate()
        assert (proc.returncode, out.decode().split()[0]) == (0, "dreamgen,")
