"""Tests of the pure workflow builder: golden graphs, argument checks, user-workflow patching."""

from __future__ import annotations

import ast
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dreamgen_async.errors import UIWorkflowError, WorkflowError
from dreamgen_async.workflow_builder import (
    MAX_SEED,
    PRESETS,
    BuiltWorkflow,
    FluxWorkflowBuilder,
    Graph,
    Output,
    Workflow,
    load_workflow,
    parse_set_assignment,
    preset_for_checkpoint,
)

GOLDEN = Path(__file__).parent / "golden"


def _golden(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GOLDEN / f"{name}.json").read_text(encoding="utf-8"))
    return data


# --------------------------------------------------------------------------- golden graphs

GOLDEN_CASES: dict[str, Callable[[], BuiltWorkflow]] = {
    "txt2img_flux_schnell": lambda: FluxWorkflowBuilder().build_txt2img(
        "a red fox in the snow", seed=42
    ),
    "txt2img_flux_dev": lambda: FluxWorkflowBuilder(
        "flux1-dev.safetensors", preset="flux-dev"
    ).build_txt2img("a lighthouse at dusk", "blurry", width=768, height=512, seed=7),
    "img2img_flux_schnell": lambda: FluxWorkflowBuilder().build_img2img(
        "3f9a2c.png", "make it winter", denoise=0.6, seed=123
    ),
    "txt2img_sd15": lambda: FluxWorkflowBuilder(
        "v1-5-pruned-emaonly.safetensors", preset="sd15"
    ).build_txt2img("a bowl of fruit", "ugly", seed=1, batch_size=2),
}


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_graph_matches_golden_file(name: str) -> None:
    built = GOLDEN_CASES[name]()

    assert built.workflow == _golden(name)
    assert json.loads(json.dumps(built.workflow)) == built.workflow  # plain JSON, no tuples


@pytest.mark.parametrize(
    ("name", "kind", "seed", "output_ids"),
    [
        ("txt2img_flux_schnell", "txt2img", 42, ("7",)),
        ("txt2img_flux_dev", "txt2img", 7, ("8",)),
        ("img2img_flux_schnell", "img2img", 123, ("8",)),
        ("txt2img_sd15", "txt2img", 1, ("7",)),
    ],
)
def test_built_workflow_reports_what_it_built(
    name: str, kind: str, seed: int, output_ids: tuple[str, ...]
) -> None:
    built = GOLDEN_CASES[name]()

    assert built.kind == kind
    assert built.seed == seed
    assert built.output_node_ids == output_ids
    assert built.workflow[output_ids[0]]["class_type"] == "SaveImage"
    assert built.to_workflow().output_node_ids() == output_ids


def test_flux_dev_puts_guidance_between_positive_prompt_and_sampler() -> None:
    wf = FluxWorkflowBuilder("flux1-dev.safetensors", preset="flux-dev").build_txt2img("x").workflow
    (guidance_id,) = [i for i, n in wf.items() if n["class_type"] == "FluxGuidance"]
    (sampler,) = [n for n in wf.values() if n["class_type"] == "KSampler"]

    assert wf[guidance_id]["inputs"] == {"conditioning": ["2", 0], "guidance": 3.5}
    assert sampler["inputs"]["positive"] == [guidance_id, 0]
    assert sampler["inputs"]["negative"] == ["3", 0]


def test_random_seed_is_drawn_in_range_and_reported() -> None:
    builder = FluxWorkflowBuilder()
    seeds = {builder.build_txt2img("a cat").seed for _ in range(5)}

    assert len(seeds) > 1
    for seed in seeds:
        assert 0 <= seed < 2**53
    built = builder.build_txt2img("a cat")
    assert built.workflow["5"]["inputs"]["seed"] == built.seed == built.params["seed"]


@pytest.mark.parametrize(
    ("preset", "steps", "cfg", "scheduler", "size"),
    [
        ("flux-schnell", 4, 1.0, "simple", 1024),
        ("flux-dev", 20, 1.0, "simple", 1024),
        ("sd15", 20, 7.0, "normal", 512),
        ("sdxl", 25, 7.0, "normal", 1024),
    ],
)
def test_presets_set_sampler_defaults(
    preset: Any, steps: int, cfg: float, scheduler: str, size: int
) -> None:
    built = FluxWorkflowBuilder("model.safetensors", preset=preset).build_txt2img("x", seed=0)
    (sampler,) = [n for n in built.workflow.values() if n["class_type"] == "KSampler"]
    (latent,) = [n for n in built.workflow.values() if n["class_type"] == "EmptyLatentImage"]

    assert sampler["inputs"]["steps"] == steps
    assert sampler["inputs"]["cfg"] == cfg
    assert sampler["inputs"]["sampler_name"] == "euler"
    assert sampler["inputs"]["scheduler"] == scheduler
    assert (latent["inputs"]["width"], latent["inputs"]["height"]) == (size, size)
    assert PRESETS[preset].steps == steps


def test_builder_and_call_overrides_win_over_preset() -> None:
    builder = FluxWorkflowBuilder(
        preset="flux-schnell",
        sampler="dpmpp_2m",
        scheduler="karras",
        filename_prefix="run1",
        steps=8,
        cfg=2.0,
        guidance=4.0,
    )
    default = builder.build_txt2img("x", seed=0).workflow
    per_call = builder.build_txt2img("x", steps=3, cfg=1.5, seed=0).workflow

    assert default["6"]["inputs"] | {"model": None} == {
        "model": None,
        "positive": ["4", 0],
        "negative": ["3", 0],
        "latent_image": ["5", 0],
        "seed": 0,
        "steps": 8,
        "cfg": 2.0,
        "sampler_name": "dpmpp_2m",
        "scheduler": "karras",
        "denoise": 1.0,
    }
    assert default["4"]["inputs"]["guidance"] == 4.0
    assert default["8"]["inputs"]["filename_prefix"] == "run1"
    assert (per_call["6"]["inputs"]["steps"], per_call["6"]["inputs"]["cfg"]) == (3, 1.5)


@pytest.mark.parametrize(
    ("checkpoint", "preset"),
    [
        ("flux1-schnell.safetensors", "flux-schnell"),
        ("flux1-dev-fp8.safetensors", "flux-dev"),
        ("sd_xl_base_1.0.safetensors", "sdxl"),
        ("v1-5-pruned-emaonly.safetensors", "sd15"),
        ("mystery.ckpt", "flux-schnell"),
    ],
)
def test_preset_is_guessed_from_checkpoint_name(checkpoint: str, preset: str) -> None:
    assert preset_for_checkpoint(checkpoint) == preset
    assert FluxWorkflowBuilder(checkpoint).preset.name == preset


def test_flux_size_multiple_of_8_is_accepted() -> None:
    built = FluxWorkflowBuilder().build_txt2img("x", width=1000, height=1016, seed=0)

    assert built.workflow["4"]["inputs"]["width"] == 1000


# --------------------------------------------------------------------------- argument checks

BAD_TXT2IMG: list[tuple[dict[str, Any], str]] = [
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   \n"}, "prompt"),
    ({"prompt": None}, "prompt"),
    ({"negative": None}, "negative"),
    ({"width": 0}, "width"),
    ({"width": -512}, "width"),
    ({"width": 1001}, "width"),
    ({"width": 512.0}, "width"),
    ({"height": 1020}, "height"),
    ({"height": 32768}, "height"),
    ({"steps": 0}, "steps"),
    ({"steps": 2.5}, "steps"),
    ({"steps": True}, "steps"),
    ({"cfg": -0.5}, "cfg"),
    ({"cfg": float("nan")}, "cfg"),
    ({"cfg": "7"}, "cfg"),
    ({"seed": -1}, "seed"),
    ({"seed": MAX_SEED + 1}, "seed"),
    ({"seed": 1.0}, "seed"),
    ({"seed": "42"}, "seed"),
    ({"batch_size": 0}, "batch_size"),
]


@pytest.mark.parametrize(("overrides", "input_name"), BAD_TXT2IMG)
def test_txt2img_rejects_bad_argument(overrides: dict[str, Any], input_name: str) -> None:
    kwargs: dict[str, Any] = {"prompt": "a cat", **overrides}

    with pytest.raises(WorkflowError) as info:
        FluxWorkflowBuilder().build_txt2img(**kwargs)

    assert info.value.input_name == input_name
    assert input_name in str(info.value)


BAD_IMG2IMG: list[tuple[dict[str, Any], str]] = [
    ({"image": ""}, "image"),
    ({"image": "  "}, "image"),
    ({"prompt": ""}, "prompt"),
    ({"denoise": 0}, "denoise"),
    ({"denoise": -0.1}, "denoise"),
    ({"denoise": 1.01}, "denoise"),
    ({"denoise": "0.5"}, "denoise"),
    ({"steps": -3}, "steps"),
    ({"cfg": -1}, "cfg"),
    ({"seed": -5}, "seed"),
]


@pytest.mark.parametrize(("overrides", "input_name"), BAD_IMG2IMG)
def test_img2img_rejects_bad_argument(overrides: dict[str, Any], input_name: str) -> None:
    kwargs: dict[str, Any] = {"image": "in.png", "prompt": "a cat", **overrides}

    with pytest.raises(WorkflowError) as info:
        FluxWorkflowBuilder().build_img2img(**kwargs)

    assert info.value.input_name == input_name


@pytest.mark.parametrize("denoise", [1, 1.0, 0.01])
def test_img2img_accepts_denoise_in_range(denoise: float) -> None:
    built = FluxWorkflowBuilder().build_img2img("in.png", "x", denoise=denoise, seed=0)

    assert built.workflow["6"]["inputs"]["denoise"] == denoise


def test_seed_bounds_are_accepted() -> None:
    builder = FluxWorkflowBuilder()

    assert builder.build_txt2img("x", seed=0).seed == 0
    assert builder.build_txt2img("x", seed=MAX_SEED).seed == MAX_SEED


def test_flux_size_error_recommends_multiple_of_16() -> None:
    with pytest.raises(WorkflowError, match="multiples of 16"):
        FluxWorkflowBuilder().build_txt2img("x", width=1001)


@pytest.mark.parametrize(
    ("kwargs", "input_name"),
    [
        ({"checkpoint": ""}, "checkpoint"),
        ({"checkpoint": " "}, "checkpoint"),
        ({"preset": "sd3"}, "preset"),
        ({"sampler": " "}, "sampler"),
        ({"filename_prefix": ""}, "filename_prefix"),
        ({"steps": 0}, "steps"),
        ({"cfg": -1.0}, "cfg"),
        ({"guidance": -2.0}, "guidance"),
    ],
)
def test_builder_rejects_bad_setting(kwargs: dict[str, Any], input_name: str) -> None:
    with pytest.raises(WorkflowError) as info:
        FluxWorkflowBuilder(**kwargs)

    assert info.value.input_name == input_name


# --------------------------------------------------------------------------- typed graph


def test_graph_links_serialise_as_node_id_and_index() -> None:
    g = Graph()
    ckpt = g.add("CheckpointLoaderSimple", title="Load Checkpoint", ckpt_name="m.safetensors")
    text = g.add("CLIPTextEncode", text="hi", clip=ckpt.out("CLIP"))
    custom = g.add("MyNode", node_id="ten", values=[1, 2], options={"a": 1}, vae=ckpt.out(2))
    after = g.add("MyOtherNode", anything=custom.out(7))

    api = g.to_api()
    assert (ckpt.id, text.id, custom.id, after.id) == ("1", "2", "ten", "3")
    assert ckpt.out(1) == Output("1", 1, "CLIP")
    assert api["2"] == {
        "class_type": "CLIPTextEncode",
        "inputs": {"text": "hi", "clip": ["1", 1]},
        "_meta": {"title": "CLIPTextEncode"},
    }
    assert api["ten"]["inputs"] == {
        "values": {"__value__": [1, 2]},
        "options": {"a": 1},
        "vae": ["1", 2],
    }
    assert api["3"]["inputs"] == {"anything": ["ten", 7]}  # unknown class: any index
    assert g.output_node_ids() == ()


@pytest.mark.parametrize(
    ("class_type", "index"),
    [("CheckpointLoaderSimple", 3), ("KSampler", 1), ("SaveImage", 0), ("LoadImage", 5)],
)
def test_unknown_output_index_of_known_class_is_rejected(class_type: str, index: int) -> None:
    node = Graph().add(class_type)

    with pytest.raises(WorkflowError, match="unknown output index") as info:
        node.out(index)

    assert info.value.node_id == node.id
    assert class_type in str(info.value)


def test_unknown_output_name_is_rejected() -> None:
    node = Graph().add("CheckpointLoaderSimple")

    with pytest.raises(WorkflowError, match="'MODEL', 'CLIP', 'VAE'"):
        node.out("LATENT")


def test_dangling_link_names_node_and_input() -> None:
    g = Graph()
    g.add("VAEDecode", samples=Output("99", 0), vae=Output("98", 2))

    with pytest.raises(WorkflowError, match="'99'") as info:
        g.validate()

    assert (info.value.node_id, info.value.input_name) == ("1", "samples")
    with pytest.raises(WorkflowError):
        g.to_api()


def test_link_to_missing_output_of_known_class_is_rejected() -> None:
    g = Graph()
    g.add("KSampler")
    g.add("VAEDecode", samples=Output("1", 4))

    with pytest.raises(WorkflowError, match="unknown output index 4") as info:
        g.validate()

    assert (info.value.node_id, info.value.input_name) == ("2", "samples")


def test_graph_rejects_duplicate_id_and_bad_values() -> None:
    g = Graph()
    node = g.add("KSampler", node_id="5")

    with pytest.raises(WorkflowError, match="already"):
        g.add("KSampler", node_id="5")
    with pytest.raises(WorkflowError, match=r"node\.out") as info:
        g.add("VAEDecode", samples=node)  # type: ignore[arg-type]
    assert info.value.input_name == "samples"
    with pytest.raises(WorkflowError):
        g.add("")


# --------------------------------------------------------------------------- user workflows


def _user_api() -> dict[str, Any]:
    """A typical exported workflow_api.json, with ComfyUI's usual (non-sequential) ids."""
    return {
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": 1,
                "steps": 20,
                "cfg": 8,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1,
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
            "_meta": {"title": "KSampler"},
        },
        "4": {
            "class_type": "CheckpointLoaderSimple",
            "inputs": {"ckpt_name": "v1-5.safetensors"},
            "_meta": {"title": "Load Checkpoint"},
        },
        "5": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": 512, "height": 512, "batch_size": 1},
            "_meta": {"title": "Empty Latent Image"},
        },
        "6": {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": "a cat", "clip": ["4", 1]},
            "_meta": {"title": "Positive Prompt"},
        },
        "7": {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": "", "clip": ["4", 1]},
            "_meta": {"title": "Negative Prompt"},
        },
        "8": {
            "class_type": "VAEDecode",
            "inputs": {"samples": ["3", 0], "vae": ["4", 2]},
            "_meta": {"title": "VAE Decode"},
        },
        "9": {
            "class_type": "SaveImage",
            "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]},
            "_meta": {"title": "Save Image"},
        },
        "10": {
            "class_type": "KSampler",
            "inputs": {"seed": 5, "model": ["4", 0]},
            "_meta": {"title": "Refiner"},
        },
        "11": {
            "class_type": "LoadImage",
            "inputs": {"image": "a.png"},
            "_meta": {"title": "Load Image"},
        },
        "12": {"class_type": "LoadImage", "inputs": {"image": "b.png"}},
        "13": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }


def test_workflow_copies_its_input_and_its_output() -> None:
    data = _user_api()
    wf = Workflow.from_dict(data)
    data["3"]["inputs"]["seed"] = 999

    api = wf.to_api()
    api["3"]["inputs"]["seed"] = 777

    assert wf.get("3", "seed") == 1
    assert wf.output_node_ids() == ("9", "13")
    assert wf.node_ids[-3:] == ("11", "12", "13")  # numeric order


def test_patch_by_id_title_and_class() -> None:
    wf = Workflow.from_dict(_user_api())

    assert wf.patch("3.steps", 4) == 1
    assert wf.patch("Positive Prompt.text", "a dog") == 1
    assert wf.patch("KSampler.seed", 42) == 2
    assert wf.set_by_title("Negative Prompt", "text", "blurry") == 1
    assert wf.set_by_class("CheckpointLoaderSimple", "ckpt_name", "flux.safetensors") == 1
    wf.set("5", "width", 768)

    api = wf.to_api()
    assert api["3"]["inputs"]["steps"] == 4
    assert api["6"]["inputs"]["text"] == "a dog"
    assert (api["3"]["inputs"]["seed"], api["10"]["inputs"]["seed"]) == (42, 42)
    assert api["7"]["inputs"]["text"] == "blurry"
    assert api["4"]["inputs"]["ckpt_name"] == "flux.safetensors"
    assert api["5"]["inputs"]["width"] == 768
    assert wf.nodes_by_class("KSampler") == ["3", "10"]
    assert wf.nodes_by_title("Refiner") == ["10"]


def test_replace_image_and_set_seed_touch_every_matching_node() -> None:
    wf = Workflow.from_dict(_user_api())

    assert wf.replace_image("uploaded.png") == 2
    assert wf.set_seed(MAX_SEED) == 2
    api = wf.to_api()
    assert {api[i]["inputs"]["image"] for i in ("11", "12")} == {"uploaded.png"}
    assert {api[i]["inputs"]["seed"] for i in ("3", "10")} == {MAX_SEED}


def test_set_keeps_links_and_wraps_literal_lists() -> None:
    wf = Workflow.from_dict(_user_api())

    wf.set("8", "samples", ["10", 0])
    wf.set("9", "images", Output("13", 0))
    wf.set("5", "sizes", [512, 768], create=True)

    api = wf.to_api()
    assert api["8"]["inputs"]["samples"] == ["10", 0]
    assert api["9"]["inputs"]["images"] == ["13", 0]
    assert api["5"]["inputs"]["sizes"] == {"__value__": [512, 768]}


@pytest.mark.parametrize(
    ("action", "names"),
    [
        (lambda wf: wf.set("99", "seed", 1), ["'99'", "'3'", "'13'"]),
        (lambda wf: wf.set("3", "sead", 1), ["'sead'", "'seed'"]),
        (lambda wf: wf.set("8", "samples", ["42", 0]), ["'42'"]),
        (lambda wf: wf.set_by_title("Nope", "text", "x"), ["'Nope'", "'Positive Prompt'"]),
        (lambda wf: wf.set_by_class("KSamplerAdvanced", "seed", 1), ["'KSampler'"]),
        (lambda wf: wf.patch("Nowhere.seed", 1), ["'Nowhere'", "'Refiner'", "'SaveImage'"]),
        (lambda wf: wf.patch("KSampler.steps", 1), ["node 10", "'steps'"]),
        (lambda wf: wf.patch("noinput", 1), ["node.input"]),
    ],
)
def test_patch_errors_name_the_culprit_and_the_alternatives(
    action: Callable[[Workflow], object], names: list[str]
) -> None:
    wf = Workflow.from_dict(_user_api())

    with pytest.raises(WorkflowError) as info:
        action(wf)

    for name in names:
        assert name in str(info.value)
    assert wf.to_api() == _user_api()  # nothing half-applied


def test_set_seed_and_replace_image_need_a_target() -> None:
    wf = Workflow.from_dict({"1": {"class_type": "SaveImage", "inputs": {}}})

    with pytest.raises(WorkflowError, match="seed"):
        wf.set_seed(1)
    with pytest.raises(WorkflowError, match="LoadImage"):
        wf.replace_image("x.png")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3.seed=42", ("3", "seed", 42)),
        ("KSampler.cfg=3.5", ("KSampler", "cfg", 3.5)),
        ("Positive Prompt.text=a red fox", ("Positive Prompt", "text", "a red fox")),
        ("Positive Prompt.text=a=b", ("Positive Prompt", "text", "a=b")),
        ("v1.5 Loader.ckpt_name=x.safetensors", ("v1.5 Loader", "ckpt_name", "x.safetensors")),
        ("9.enabled=True", ("9", "enabled", True)),
        ("9.enabled=false", ("9", "enabled", False)),
        ("9.extra=null", ("9", "extra", None)),
        ('9.text="42"', ("9", "text", "42")),
        ("9.sizes=[1, 2]", ("9", "sizes", [1, 2])),
        ("9.text=", ("9", "text", "")),
        ("9.x=NaN", ("9", "x", "NaN")),
    ],
)
def test_parse_set_assignment(text: str, expected: tuple[str, str, Any]) -> None:
    assert parse_set_assignment(text) == expected


@pytest.mark.parametrize("text", ["3.seed", "seed=4", ".seed=4", "3.=4", ""])
def test_parse_set_assignment_rejects_malformed(text: str) -> None:
    with pytest.raises(WorkflowError):
        parse_set_assignment(text)


def test_apply_assignment_keeps_text_inputs_as_text() -> None:
    wf = Workflow.from_dict(_user_api())

    assert wf.apply_assignment("Positive Prompt.text=42") == 1
    assert wf.apply_assignment("3.cfg=4.5") == 1

    assert wf.get("6", "text") == "42"
    assert wf.get("3", "cfg") == 4.5


# --------------------------------------------------------------------------- loading


def _ui_export() -> dict[str, Any]:
    return {
        "last_node_id": 9,
        "last_link_id": 9,
        "nodes": [{"id": 3, "type": "KSampler", "widgets_values": [1, "fixed", 20]}],
        "links": [[1, 4, 0, 3, 0, "MODEL"]],
        "version": 0.4,
    }


def test_ui_format_is_rejected_with_export_instructions(tmp_path: Path) -> None:
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(_ui_export()), encoding="utf-8")

    loaders: list[Callable[[], Workflow]] = [
        lambda: Workflow.from_dict(_ui_export()),
        lambda: load_workflow(path),
    ]
    for load in loaders:
        with pytest.raises(UIWorkflowError) as info:
            load()
        message = str(info.value)
        assert "Export (API)" in message
        assert "workflow_api.json" in message
        assert "Dev mode" in message


def test_load_reads_api_format_file(tmp_path: Path) -> None:
    path = tmp_path / "workflow_api.json"
    path.write_text(json.dumps(_user_api()), encoding="utf-8")

    assert Workflow.load(path).to_api() == _user_api()
    assert load_workflow(str(path)).output_node_ids() == ("9", "13")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "JSON object"),
        ("{}", "no nodes"),
        ('{"1": {"inputs": {}}}', "class_type"),
        ('{"1": {"class_type": "X", "inputs": []}}', "inputs"),
        ('{"prompt": {"1": {"class_type": "X", "inputs": {}}}}', "POST /prompt"),
    ],
)
def test_load_rejects_invalid_files(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")

    with pytest.raises(WorkflowError, match=match) as info:
        load_workflow(path)

    assert "bad.json" in str(info.value)


def test_load_missing_file_is_a_workflow_error(tmp_path: Path) -> None:
    with pytest.raises(WorkflowError, match="cannot read") as info:
        load_workflow(tmp_path / "missing.json")

    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_dangling_link_in_user_workflow_names_node_and_input() -> None:
    data = _user_api()
    data["8"]["inputs"]["vae"] = ["40", 2]

    with pytest.raises(WorkflowError, match="'40'") as info:
        Workflow.from_dict(data)

    assert (info.value.node_id, info.value.input_name) == ("8", "vae")


def test_module_imports_no_io_library() -> None:
    import dreamgen_async.workflow_builder as module

    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}

    assert not {name.split(".")[0] for name in imported} & {"asyncio", "aiohttp", "aiofiles"}
