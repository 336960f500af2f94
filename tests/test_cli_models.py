"""The CLI and the server's models: --ckpt / --preset, status listing, UI-format files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _examples import load_example
from _graphs import png_bytes
from click.testing import CliRunner

from dreamgen_async.cli import cli
from dreamgen_async.errors import WorkflowError
from dreamgen_async.testing import ComfyUISimulator, SimulatorConfig

GOLDEN = Path(__file__).parent / "golden" / "templates"


@pytest.fixture
def sd15_sim(tmp_path: Path) -> ComfyUISimulator:
    """A simulator whose only checkpoint is an SD 1.5 community model (not started)."""
    config = SimulatorConfig(checkpoints=("dreamshaper_8.safetensors",), models={})
    return ComfyUISimulator(config, root=tmp_path / "sim")


def test_help_documents_ckpt_and_preset() -> None:
    for command in ("txt2img", "img2img"):
        result = CliRunner().invoke(cli, [command, "--help"])
        assert result.exit_code == 0
        assert "--ckpt" in result.output
        assert "--preset" in result.output
        assert "sd15" in result.output
        assert "Flux diffusion model" in result.output


def test_unknown_preset_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["txt2img", "a cat", "--preset", "sd3"])

    assert result.exit_code == 2
    assert "sd3.5" in result.output


async def _invoke(*args: str) -> tuple[int, str]:
    import asyncio
    import os
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dreamgen_async", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    stdout, stderr = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, stdout.decode() + stderr.decode()


async def test_txt2img_uses_the_servers_model_and_its_family_preset(
    sd15_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    async with sd15_sim:
        code, text = await _invoke(
            "txt2img", "a fox", "--size", "64x64", "--steps", "2", "--json",
            "--server", sd15_sim.url, "-o", str(tmp_path / "out"),
        )  # fmt: skip
        assert code == 0, text
        (prompt,) = sd15_sim.prompts.values()

    nodes = {n["class_type"]: n["inputs"] for n in prompt.graph.values()}
    assert nodes["CheckpointLoaderSimple"]["ckpt_name"] == "dreamshaper_8.safetensors"
    assert nodes["KSampler"]["cfg"] == 7.0  # the sd15 preset, guessed from the name
    assert nodes["KSampler"]["scheduler"] == "normal"


async def test_flux_split_files_and_an_explicit_preset(tmp_path: Path) -> None:
    config = SimulatorConfig(checkpoints=("v1-5-pruned-emaonly.safetensors",))
    async with ComfyUISimulator(config, root=tmp_path / "sim") as sim:
        code, text = await _invoke(
            "txt2img", "a fox", "--ckpt", "flux1-dev.safetensors", "--preset", "flux-schnell",
            "--size", "64x64", "--json", "--server", sim.url, "-o", str(tmp_path / "out"),
        )  # fmt: skip
        assert code == 0, text
        (prompt,) = sim.prompts.values()

    nodes = {n["class_type"]: n["inputs"] for n in prompt.graph.values()}
    assert "CheckpointLoaderSimple" not in nodes
    assert nodes["UNETLoader"]["unet_name"] == "flux1-dev.safetensors"
    assert nodes["DualCLIPLoader"]["type"] == "flux"
    assert nodes["VAELoader"]["vae_name"] == "ae.safetensors"
    assert nodes["KSampler"]["steps"] == 4  # flux-schnell, as asked


async def test_missing_model_is_one_line_listing_the_servers_models(
    sd15_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    (tmp_path / "x.png").write_bytes(png_bytes(1))  # a missing input is a usage error first
    async with sd15_sim:
        code, text = await _invoke(
            "img2img", str(tmp_path / "x.png"), "a fox", "--ckpt", "flux1-schnell-fp8.safetensors",
            "--server", sd15_sim.url, "-o", str(tmp_path / "out"),
        )  # fmt: skip
        posted = [r for r in sd15_sim.requests if r.route == "/prompt"]

    assert code == 1
    assert "no model 'flux1-schnell-fp8.safetensors'" in text
    assert "dreamshaper_8.safetensors" in text
    assert "diffusion models (UNETLoader): (none)" in text
    assert "Traceback" not in text
    assert not posted


async def test_status_lists_the_servers_model_files(comfyui_sim: ComfyUISimulator) -> None:
    code, text = await _invoke("status", "--server", comfyui_sim.url)
    assert code == 0, text
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert "flux1-schnell.safetensors" in lines["checkpoints"]
    assert "flux1-dev.safetensors" in lines["unets"]
    assert "clip_l.safetensors" in lines["clip"]
    assert "ae.safetensors" in lines["vae"]

    code, text = await _invoke("status", "--json", "--server", comfyui_sim.url)
    models = json.loads(text)["models"]
    assert models["vae"] == ["ae.safetensors"]
    assert "v1-5-pruned-emaonly.safetensors" in models["checkpoints"]


async def test_run_takes_a_ui_format_file(comfyui_sim: ComfyUISimulator, tmp_path: Path) -> None:
    templates = pytest.importorskip("comfyui_workflow_templates_json")
    source = Path(templates.__file__).parent / "templates" / "default.json"
    ui = json.loads(source.read_text(encoding="utf-8"))
    for node in ui["nodes"]:  # use a checkpoint the simulator has, and a small image
        if node["type"] == "CheckpointLoaderSimple":
            node["widgets_values"] = ["v1-5-pruned-emaonly.safetensors"]
        if node["type"] == "EmptyLatentImage":
            node["widgets_values"] = [64, 64, 1]
    workflow = tmp_path / "default.json"
    workflow.write_text(json.dumps(ui), encoding="utf-8")

    code, text = await _invoke(
        "run", str(workflow), "--set", "KSampler.steps=2", "--json",
        "--server", comfyui_sim.url, "-o", str(tmp_path / "out"),
    )  # fmt: skip

    assert code == 0, text
    (prompt,) = comfyui_sim.prompts.values()
    expected = json.loads((GOLDEN / "default.json").read_text(encoding="utf-8"))
    expected["4"]["inputs"]["ckpt_name"] = "v1-5-pruned-emaonly.safetensors"
    expected["5"]["inputs"].update(width=64, height=64)
    expected["3"]["inputs"]["steps"] = 2
    # The file's seed is "control after generate: randomize": each run draws one (issue 19).
    assert prompt.graph["3"]["inputs"]["seed"] != expected["3"]["inputs"]["seed"]
    expected["3"]["inputs"]["seed"] = prompt.graph["3"]["inputs"]["seed"]
    assert prompt.graph == expected


async def test_batch_example_takes_model_and_preset(
    sd15_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    from _graphs import png_bytes

    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "a.png").write_bytes(png_bytes(1))
    batch = load_example("batch_folder")
    async with sd15_sim:
        failures = await batch.main(
            folder, "ink", out=tmp_path / "out", server=sd15_sim.url,
            model="dreamshaper_8.safetensors", preset="sd15",
        )  # fmt: skip
        (prompt,) = sd15_sim.prompts.values()
        with pytest.raises(WorkflowError, match=r"dreamshaper_8\.safetensors"):
            await batch.main(folder, "ink", out=tmp_path / "o2", server=sd15_sim.url, model="x")

    assert failures == 0
    (sampler,) = [n for n in prompt.graph.values() if n["class_type"] == "KSampler"]
    assert sampler["inputs"]["cfg"] == 7.0


async def test_web_service_example_takes_model_from_arguments(
    sd15_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    service = load_example("web_service")
    async with sd15_sim:
        app = service.make_app(sd15_sim.url, tmp_path, "dreamshaper_8.safetensors", "sd15")
        async with TestClient(TestServer(app)):
            pass  # start-up resolved the model against the server
        object_info_calls = [r for r in sd15_sim.requests if r.route == "/object_info"]

    assert len(object_info_calls) == 1
