"""Loader layouts chosen from the server's models, presets guessed from model names."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from dreamgen_async import ComfyUIClient, builder_from_server, server_models
from dreamgen_async.errors import WorkflowError
from dreamgen_async.testing import ComfyUISimulator, SimulatorConfig
from dreamgen_async.testing.nodes import NodeRegistry
from dreamgen_async.workflows import (
    FluxWorkflowBuilder,
    LoaderLayout,
    ServerModels,
    choose_loaders,
    guess_preset,
)

GOLDEN = Path(__file__).parent / "golden"
CHECKPOINTS = ["v1-5-pruned-emaonly.safetensors", "flux1-schnell-fp8.safetensors"]
INFO = NodeRegistry(CHECKPOINTS, Path("/nonexistent")).object_info()


def _golden(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GOLDEN / f"{name}.json").read_text(encoding="utf-8"))
    return data


def test_server_models_are_read_from_the_loaders_combos() -> None:
    models = ServerModels.from_object_info(INFO)

    assert models.checkpoints == tuple(CHECKPOINTS)
    assert models.unets == ("flux1-dev.safetensors", "flux1-schnell.safetensors")
    assert "clip_l.safetensors" in models.clips
    assert models.vaes == ("ae.safetensors",)
    assert ServerModels.from_object_info({}) == ServerModels()


@pytest.mark.parametrize(
    ("name", "build"),
    [
        (
            "txt2img_flux_dev_split",
            lambda b: b.build_txt2img("a lighthouse at dusk", seed=7),
        ),
        (
            "img2img_flux_schnell_split",
            lambda b: b.build_img2img("3f9a2c.png", "make it winter", denoise=0.6, seed=123),
        ),
    ],
)
def test_flux_split_layout_matches_golden(name: str, build: Any) -> None:
    model = "flux1-dev.safetensors" if "dev" in name else "flux1-schnell.safetensors"
    builder = FluxWorkflowBuilder.for_server(INFO, model)
    workflow = build(builder).workflow

    assert builder.loaders == LoaderLayout(
        unet=model,
        clip=("clip_l.safetensors", "t5xxl_fp8_e4m3fn.safetensors"),
        vae="ae.safetensors",
    )
    assert workflow == _golden(name)
    loaders = {n["class_type"]: n["inputs"] for n in workflow.values()}
    assert loaders["DualCLIPLoader"]["type"] == "flux"
    assert "CheckpointLoaderSimple" not in loaders


def test_checkpoint_layout_matches_the_plain_builder_golden() -> None:
    builder = FluxWorkflowBuilder.for_server(INFO, "v1-5-pruned-emaonly.safetensors")
    built = builder.build_txt2img("a bowl of fruit", "ugly", seed=1, batch_size=2)

    assert builder.loaders.kind == "checkpoint"
    assert builder.preset.name == "sd15"
    assert built.workflow == _golden("txt2img_sd15")


def test_without_a_model_a_flux_schnell_file_is_preferred() -> None:
    assert choose_loaders(ServerModels.from_object_info(INFO)).model == (
        "flux1-schnell-fp8.safetensors"
    )
    only_sd = ServerModels(checkpoints=("dreamshaper_8.safetensors",))
    assert choose_loaders(only_sd) == LoaderLayout(checkpoint="dreamshaper_8.safetensors")


def test_missing_model_error_lists_what_the_server_has() -> None:
    with pytest.raises(WorkflowError) as info:
        FluxWorkflowBuilder.for_server(INFO, "flux1-schnell.sft")

    message = str(info.value)
    assert info.value.input_name == "checkpoint"
    for name in (*CHECKPOINTS, "flux1-dev.safetensors", "clip_l.safetensors", "ae.safetensors"):
        assert name in message


def test_split_layout_without_text_encoders_says_what_is_missing() -> None:
    models = ServerModels(unets=("flux1-dev.safetensors",), vaes=("ae.safetensors",))

    with pytest.raises(WorkflowError, match="CLIP-L text encoder and a T5 text encoder"):
        choose_loaders(models, "flux1-dev.safetensors")
    with pytest.raises(WorkflowError, match="no model to use"):
        choose_loaders(ServerModels())


@pytest.mark.parametrize(
    ("name", "preset"),
    [
        ("dreamshaper_8.safetensors", "sd15"),
        ("realisticVisionV60B1_v51VAE.safetensors", "sd15"),
        ("anything-v3-fp16-pruned.safetensors", "sd15"),
        ("v15.ckpt", "sd15"),
        ("sd-15.safetensors", "sd15"),
        ("v1-5-pruned-emaonly.safetensors", "sd15"),
        ("sd3.5_large.safetensors", "sd3.5"),
        ("sd3.5_medium_incl_clips_t5xxlfp8scaled.safetensors", "sd3.5"),
        ("sd_xl_base_1.0.safetensors", "sdxl"),
        ("dreamshaperXL_v21TurboDPMSDE.safetensors", "sdxl"),
        ("flux1-dev-fp8.safetensors", "flux-dev"),
        ("flux1-krea-dev_fp8_scaled.safetensors", "flux-dev"),
        ("flux1-schnell-fp8.safetensors", "flux-schnell"),
    ],
)
def test_common_model_names_get_their_family_preset(name: str, preset: str) -> None:
    assert guess_preset(name) == (preset, True)


def test_a_guessed_preset_is_logged_and_a_given_one_is_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="dreamgen_async.workflows.builder"):
        FluxWorkflowBuilder("mystery.ckpt")
        FluxWorkflowBuilder("dreamshaper_8.safetensors", preset="sd15")

    (record,) = caplog.records
    assert "mystery.ckpt" in record.getMessage()
    assert "fallback" in record.getMessage()
    assert guess_preset("mystery.ckpt") == ("flux-schnell", False)


async def test_builder_from_server_builds_a_split_graph_that_runs(tmp_path: Path) -> None:
    config = SimulatorConfig(checkpoints=("v1-5-pruned-emaonly.safetensors",))
    async with (
        ComfyUISimulator(config, root=tmp_path / "sim") as sim,
        ComfyUIClient(sim.url) as client,
    ):
        models = await server_models(client)
        builder = await builder_from_server(client, "flux1-dev.safetensors", steps=2)
        result = await client.run(builder.build_txt2img("a fox", width=64, height=64).workflow)

    assert "flux1-dev.safetensors" in models.unets
    assert builder.loaders.kind == "split"
    assert result.images


async def test_builder_from_server_names_the_missing_model(comfyui_sim: ComfyUISimulator) -> None:
    async with ComfyUIClient(comfyui_sim.url) as client:
        with pytest.raises(WorkflowError, match=r"flux1-dev\.safetensors"):
            await builder_from_server(client, "nope.safetensors")
