"""ComfyUI's own workflow templates (UI format) converted, compared, and queued.

The templates come from the installed ``comfyui-workflow-templates-json`` package (a test
dependency; not copied into the repository). Each is converted with the simulator's node
definitions and compared with the expected API graph in ``tests/golden/templates``; then
the graph is queued on the simulator: with its default models the only validation errors
are missing model (and input image) files, and with those files present it runs to images.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dreamgen_async import ComfyUIClient, PromptRejected, load_workflow
from dreamgen_async.testing import ComfyUISimulator, SimulatorConfig
from dreamgen_async.testing.nodes import MODEL_INPUTS, NodeRegistry, sample_png
from dreamgen_async.workflows.ui import convert_ui_workflow

templates_pkg = pytest.importorskip("comfyui_workflow_templates_json")
TEMPLATES = Path(templates_pkg.__file__).parent / "templates"
GOLDEN = Path(__file__).parent / "golden" / "templates"

#: name -> (what it covers, has subgraphs)
CORPUS: dict[str, tuple[str, bool]] = {
    "default": ("txt2img SD1.5, all-in-one checkpoint", False),
    "flux_schnell": ("txt2img Flux schnell, all-in-one checkpoint", False),
    "sd3.5_simple_example": ("txt2img SD3.5", False),
    "sdxl_simple_example": ("txt2img SDXL base + refiner, PrimitiveNode, converted widgets", False),
    "flux_dev_full_text_to_image": ("txt2img Flux dev, split files", True),
    "flux1_krea_dev": ("txt2img Flux Krea, split files", True),
    "image_z_image_turbo": ("txt2img, proxy-promoted widgets", True),
    "flux_fill_inpaint_example": ("inpaint, Flux fill", True),
    "flux_fill_outpaint_example": ("outpaint, Flux fill", False),
    "sd3.5_large_canny_controlnet_example": ("ControlNet + ImageScale", False),
    "flux_kontext_dev_basic": ("img2img edit, bypassed LoadImage", True),
    "utility_interpolation_image_upscale": ("upscale (ImageScaleBy)", False),
}

_OBJECT_INFO = NodeRegistry(["x.safetensors"], Path("/nonexistent")).object_info()


def _template(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((TEMPLATES / f"{name}.json").read_text(encoding="utf-8"))
    return data


def _golden(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GOLDEN / f"{name}.json").read_text(encoding="utf-8"))
    return data


def test_corpus_covers_flat_and_subgraph_templates() -> None:
    assert len(CORPUS) >= 10
    flags = {name: bool(_template(name).get("definitions", {}).get("subgraphs")) for name in CORPUS}
    assert flags == {name: sub for name, (_, sub) in CORPUS.items()}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_template_converts_to_the_expected_api_graph(name: str) -> None:
    api = convert_ui_workflow(_template(name), _OBJECT_INFO, source=name)

    assert api == _golden(name)
    notes = [n for n in _template(name)["nodes"] if n["type"] in ("Note", "MarkdownNote")]
    assert not {str(n["id"]) for n in notes} & set(api)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_load_workflow_accepts_the_template_file_with_object_info(
    name: str, tmp_path: Path
) -> None:
    info_file = tmp_path / "object_info.json"
    info_file.write_text(json.dumps(_OBJECT_INFO), encoding="utf-8")

    from_dict = load_workflow(TEMPLATES / f"{name}.json", object_info=_OBJECT_INFO)
    from_file = load_workflow(TEMPLATES / f"{name}.json", object_info=info_file)

    assert from_dict.to_api() == from_file.to_api() == _golden(name)
    assert from_dict.output_node_ids()


def _files(api: dict[str, Any]) -> tuple[dict[str, set[str]], set[str]]:
    """Model files by folder, and input images, that a converted graph names."""
    folders: dict[str, set[str]] = {}
    images: set[str] = set()
    for node in api.values():
        cls, inputs = node["class_type"], node["inputs"]
        if cls == "CheckpointLoaderSimple":
            folders.setdefault("checkpoints", set()).add(inputs["ckpt_name"])
        if cls in ("LoadImage", "LoadImageMask"):
            images.add(inputs["image"])
        for (class_type, input_name), folder in MODEL_INPUTS.items():
            if cls == class_type and isinstance(inputs.get(input_name), str):
                folders.setdefault(folder, set()).add(inputs[input_name])
    return folders, images


_MISSING_FILE_INPUTS = {name for (_, name) in MODEL_INPUTS} | {"ckpt_name", "image"}


@pytest.mark.parametrize("name", sorted(CORPUS))
async def test_template_queues_with_only_missing_files_as_errors(
    name: str, comfyui_sim: ComfyUISimulator
) -> None:
    api = _golden(name)
    rejected: PromptRejected | None = None
    async with ComfyUIClient(comfyui_sim.url) as client:
        try:
            await client.run(api, timeout=30)
        except PromptRejected as exc:
            rejected = exc

    errors = rejected.node_errors if rejected is not None else ()
    assert rejected is None or errors
    for error in errors:
        assert error.type in ("value_not_in_list", "custom_validation_failed"), error
        assert error.input_name in _MISSING_FILE_INPUTS, error


@pytest.mark.parametrize("name", sorted(CORPUS))
async def test_template_runs_to_images_when_the_files_are_there(name: str, tmp_path: Path) -> None:
    api = _golden(name)
    folders, images = _files(api)
    config = SimulatorConfig(
        checkpoints=tuple(sorted(folders.pop("checkpoints", set()))),
        models={folder: tuple(sorted(names)) for folder, names in folders.items()},
    )
    async with ComfyUISimulator(config, root=tmp_path / "sim") as sim:
        for image in images:
            (sim.input_dir / image).write_bytes(sample_png((32, 32)))
        async with ComfyUIClient(sim.url) as client:
            result = await client.run(api, timeout=60)

    assert result.images


def _all_ui_templates() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(TEMPLATES.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            continue
        if isinstance(data, dict) and isinstance(data.get("nodes"), list):
            found.append((path.stem, data))
    return found


def test_every_template_of_the_package_converts_without_dangling_links() -> None:
    """All of them (hundreds, many with custom or API nodes the simulator lacks): the classes
    the simulator does not define get a stand-in definition built from the file's own input
    slots, so this checks the graph handling (subgraphs, bypass, reroutes...), not widgets."""
    templates = _all_ui_templates()
    info: dict[str, Any] = {}
    for _, data in templates:
        subgraphs = (data.get("definitions") or {}).get("subgraphs") or []
        for node in data["nodes"] + [n for s in subgraphs for n in s.get("nodes", [])]:
            slots = node.get("inputs") or []
            # Link slots are optional in a stand-in: whether the class requires them, the
            # files cannot say (one template links an input that another leaves free).
            stand_in = {
                "input": {
                    "required": {str(x["name"]): ["STRING", {}] for x in slots if x.get("widget")},
                    "optional": {
                        str(x["name"]): [x["type"], {}] for x in slots if not x.get("widget")
                    },
                },
                "output": [],
            }
            info.setdefault(node["type"], stand_in)
    info.update(_OBJECT_INFO)

    converted = 0
    for name, data in templates:
        api = convert_ui_workflow(data, info, source=name, rng=None)
        for node_id, node in api.items():
            for input_name, value in node["inputs"].items():
                if isinstance(value, list):
                    assert value[0] in api, (name, node_id, input_name, value)
        converted += 1
    assert converted >= 400
