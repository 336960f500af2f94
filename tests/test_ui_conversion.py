# ruff: noqa: E501  (hand-built UI graphs read best one node / link per line)
"""UI-format -> API-format conversion rules, on small hand-built graphs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from dreamgen_async.errors import UIWorkflowError, WorkflowError
from dreamgen_async.testing.nodes import NodeRegistry
from dreamgen_async.workflows import Workflow, load_workflow
from dreamgen_async.workflows.ui import convert_ui_workflow, process_dynamic_prompt, widget_names

INFO = NodeRegistry(["m.safetensors"], Path("/nonexistent")).object_info()


def _node(
    node_id: int,
    node_type: str,
    widgets: list[Any] | None = None,
    inputs: list[tuple[str, str, int | None]] = (),  # type: ignore[assignment]
    outputs: list[tuple[str, str]] = (),  # type: ignore[assignment]
    mode: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "id": node_id,
        "type": node_type,
        "mode": mode,
        "inputs": [{"name": n, "type": t, "link": link} for n, t, link in inputs],
        "outputs": [{"name": n, "type": t, "links": []} for n, t in outputs],
        "widgets_values": widgets if widgets is not None else [],
        **extra,
    }


def _basic() -> dict[str, Any]:
    """Checkpoint -> text -> sampler -> decode -> save, with a Reroute on the VAE."""
    return {
        "nodes": [
            _node(4, "CheckpointLoaderSimple", ["m.safetensors"], outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
            _node(6, "CLIPTextEncode", ["a fox"], [("clip", "CLIP", 1)], [("CONDITIONING", "CONDITIONING")], title="Positive"),
            _node(5, "EmptyLatentImage", [64, 64, 1], outputs=[("LATENT", "LATENT")]),
            _node(3, "KSampler", [7, "randomize", 2, 1.0, "euler", "simple", 1.0],
                  [("model", "MODEL", 2), ("positive", "CONDITIONING", 3), ("negative", "CONDITIONING", 4), ("latent_image", "LATENT", 5)],
                  [("LATENT", "LATENT")]),
            _node(20, "Reroute", None, [("", "*", 6)], [("", "VAE")]),
            _node(8, "VAEDecode", None, [("samples", "LATENT", 7), ("vae", "VAE", 8)], [("IMAGE", "IMAGE")]),
            _node(9, "SaveImage", ["out"], [("images", "IMAGE", 9)]),
            _node(30, "MarkdownNote", ["# read me"]),
        ],
        "links": [
            [1, 4, 1, 6, 0, "CLIP"],
            [2, 4, 0, 3, 0, "MODEL"],
            [3, 6, 0, 3, 1, "CONDITIONING"],
            [4, 6, 0, 3, 2, "CONDITIONING"],
            [5, 5, 0, 3, 3, "LATENT"],
            [6, 4, 2, 20, 0, "VAE"],
            [7, 3, 0, 8, 0, "LATENT"],
            [8, 20, 0, 8, 1, "VAE"],
            [9, 8, 0, 9, 0, "IMAGE"],
        ],
        "version": 0.4,
    }  # fmt: skip


def test_widgets_are_mapped_by_the_node_definition_and_control_values_skipped() -> None:
    api = convert_ui_workflow(_basic(), INFO)

    assert api["3"]["inputs"] == {
        "seed": 7,
        "steps": 2,
        "cfg": 1.0,
        "sampler_name": "euler",
        "scheduler": "simple",
        "denoise": 1.0,
        "model": ["4", 0],
        "positive": ["6", 0],
        "negative": ["6", 0],
        "latent_image": ["5", 0],
    }
    assert api["6"]["_meta"] == {"title": "Positive"}
    assert api["5"]["_meta"] == {"title": "Empty Latent Image"}  # the class's display name
    assert widget_names(INFO["KSampler"]) == [
        "seed", "steps", "cfg", "sampler_name", "scheduler", "denoise"
    ]  # fmt: skip


def test_reroutes_are_followed_and_notes_dropped() -> None:
    api = convert_ui_workflow(_basic(), INFO)

    assert api["8"]["inputs"]["vae"] == ["4", 2]
    assert set(api) == {"3", "4", "5", "6", "8", "9"}


def test_primitive_node_gives_its_value_to_a_converted_widget() -> None:
    data = _basic()
    data["nodes"].append(_node(40, "PrimitiveNode", [33, "fixed"], outputs=[("INT", "INT")]))
    data["nodes"][3]["inputs"].append(
        {"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": 10}
    )
    data["links"].append([10, 40, 0, 3, 4, "INT"])  # fmt: skip

    api = convert_ui_workflow(data, INFO)

    assert api["3"]["inputs"]["seed"] == 33
    assert "40" not in api


def test_muted_node_is_not_sent_and_links_to_it_are_dropped() -> None:
    data = _basic()
    data["nodes"][5]["mode"] = 2  # VAEDecode muted

    api = convert_ui_workflow(data, INFO)

    assert "8" not in api
    assert "images" not in api["9"]["inputs"]


def test_bypassed_node_passes_its_matching_input_through() -> None:
    data = _basic()
    data["nodes"].append(
        _node(50, "FluxGuidance", [3.5], [("conditioning", "CONDITIONING", 11)], [("CONDITIONING", "CONDITIONING")], mode=4)
    )  # fmt: skip
    data["links"][2] = [3, 50, 0, 3, 1, "CONDITIONING"]
    data["links"].append([11, 6, 0, 50, 0, "CONDITIONING"])

    api = convert_ui_workflow(data, INFO)

    assert "50" not in api
    assert api["3"]["inputs"]["positive"] == ["6", 0]


def test_unknown_class_names_node_and_class_unless_muted() -> None:
    data = _basic()
    data["nodes"].append(_node(77, "SuperUpscaler9000", [1]))

    with pytest.raises(WorkflowError, match="SuperUpscaler9000") as info:
        convert_ui_workflow(data, INFO, source="my.json")
    assert info.value.node_id == "77"
    assert "node 77" in str(info.value)

    data["nodes"][-1]["mode"] = 4
    assert "77" not in convert_ui_workflow(data, INFO)


def _subgraph_workflow(instance_widgets: list[Any], properties: dict[str, Any]) -> dict[str, Any]:
    """Root: checkpoint + subgraph 12 (text encode + sampler inside) + decode + save."""
    sub: dict[str, Any] = {
        "id": "sub-1",
        "name": "Sample",
        "inputs": [
            {"name": "model", "type": "MODEL", "linkIds": [101]},
            {"name": "clip", "type": "CLIP", "linkIds": [102]},
            {"name": "latent", "type": "LATENT", "linkIds": [103]},
            {"name": "seed", "type": "INT", "linkIds": [104]},
        ],
        "outputs": [{"name": "LATENT", "type": "LATENT", "linkIds": [105]}],
        "nodes": [
            _node(
                5,
                "CLIPTextEncode",
                ["inside"],
                [("clip", "CLIP", 102)],
                [("CONDITIONING", "CONDITIONING")],
            ),
            _node(
                7,
                "KSampler",
                [1, "fixed", 2, 1.0, "euler", "simple", 1.0],
                [
                    ("model", "MODEL", 101),
                    ("positive", "CONDITIONING", 106),
                    ("negative", "CONDITIONING", 107),
                    ("latent_image", "LATENT", 103),
                    ("seed", "INT", 104),
                ],
                [("LATENT", "LATENT")],
            ),
        ],
        "links": [
            {
                "id": 101,
                "origin_id": -10,
                "origin_slot": 0,
                "target_id": 7,
                "target_slot": 0,
                "type": "MODEL",
            },
            {
                "id": 102,
                "origin_id": -10,
                "origin_slot": 1,
                "target_id": 5,
                "target_slot": 0,
                "type": "CLIP",
            },
            {
                "id": 103,
                "origin_id": -10,
                "origin_slot": 2,
                "target_id": 7,
                "target_slot": 3,
                "type": "LATENT",
            },
            {
                "id": 104,
                "origin_id": -10,
                "origin_slot": 3,
                "target_id": 7,
                "target_slot": 4,
                "type": "INT",
            },
            {
                "id": 105,
                "origin_id": 7,
                "origin_slot": 0,
                "target_id": -20,
                "target_slot": 0,
                "type": "LATENT",
            },
            {
                "id": 106,
                "origin_id": 5,
                "origin_slot": 0,
                "target_id": 7,
                "target_slot": 1,
                "type": "CONDITIONING",
            },
            {
                "id": 107,
                "origin_id": 5,
                "origin_slot": 0,
                "target_id": 7,
                "target_slot": 2,
                "type": "CONDITIONING",
            },
        ],
    }
    sub["nodes"][1]["inputs"][4]["widget"] = {"name": "seed"}
    instance = _node(
        12,
        "sub-1",
        instance_widgets,
        [
            ("model", "MODEL", 1),
            ("clip", "CLIP", 2),
            ("latent", "LATENT", 3),
            ("seed", "INT", None),
        ],
        [("LATENT", "LATENT")],
        properties=properties,
    )
    instance["inputs"][3]["widget"] = {"name": "seed"}
    return {
        "nodes": [
            _node(4, "CheckpointLoaderSimple", ["m.safetensors"], outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
            _node(3, "EmptyLatentImage", [64, 64, 1], outputs=[("LATENT", "LATENT")]),
            instance,
            _node(8, "VAEDecode", None, [("samples", "LATENT", 4), ("vae", "VAE", 5)], [("IMAGE", "IMAGE")]),
            _node(9, "SaveImage", ["out"], [("images", "IMAGE", 6)]),
        ],
        "links": [[1, 4, 0, 12, 0, "MODEL"], [2, 4, 1, 12, 1, "CLIP"], [3, 3, 0, 12, 2, "LATENT"],
                  [4, 12, 0, 8, 0, "LATENT"], [5, 4, 2, 8, 1, "VAE"], [6, 8, 0, 9, 0, "IMAGE"]],
        "definitions": {"subgraphs": [sub]},
    }  # fmt: skip


def test_subgraph_nodes_get_instance_prefixed_ids_and_links_cross_the_boundary() -> None:
    api = convert_ui_workflow(_subgraph_workflow([], {"proxyWidgets": [["7", "seed"]]}), INFO)

    assert set(api) == {"4", "3", "12:5", "12:7", "8", "9"}
    assert api["12:7"]["inputs"]["model"] == ["4", 0]
    assert api["12:7"]["inputs"]["latent_image"] == ["3", 0]
    assert api["12:7"]["inputs"]["positive"] == ["12:5", 0]
    assert api["12:5"]["inputs"]["clip"] == ["4", 1]
    assert api["8"]["inputs"]["samples"] == ["12:7", 0]
    assert api["12:7"]["inputs"]["seed"] == 1  # proxy widget: the inner value


def test_subgraph_instance_widget_value_wins_over_the_inner_one() -> None:
    api = convert_ui_workflow(_subgraph_workflow([99], {}), INFO)

    assert api["12:7"]["inputs"]["seed"] == 99


@pytest.mark.parametrize("mode", [2, 4])
def test_muted_or_bypassed_subgraph_sends_none_of_its_nodes(mode: int) -> None:
    data = _subgraph_workflow([], {})
    data["nodes"][2]["mode"] = mode

    api = convert_ui_workflow(data, INFO)

    assert not [i for i in api if i.startswith("12:")]
    if mode == 4:  # bypassed: the LATENT input goes straight through
        assert api["8"]["inputs"]["samples"] == ["3", 0]


def test_nested_subgraph_ids_chain_the_instances() -> None:
    data = _subgraph_workflow([], {})
    outer = copy.deepcopy(data["definitions"]["subgraphs"][0])
    outer["id"] = "outer"
    outer["nodes"] = [_node(30, "sub-1", [], [("model", "MODEL", 201), ("clip", "CLIP", 202), ("latent", "LATENT", 203), ("seed", "INT", None)], [("LATENT", "LATENT")])]  # fmt: skip
    outer["links"] = [
        {"id": 201, "origin_id": -10, "origin_slot": 0, "target_id": 30, "target_slot": 0, "type": "MODEL"},
        {"id": 202, "origin_id": -10, "origin_slot": 1, "target_id": 30, "target_slot": 1, "type": "CLIP"},
        {"id": 203, "origin_id": -10, "origin_slot": 2, "target_id": 30, "target_slot": 2, "type": "LATENT"},
        {"id": 105, "origin_id": 30, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "LATENT"},
    ]  # fmt: skip
    outer["inputs"][1]["linkIds"], outer["inputs"][2]["linkIds"] = [202], [203]
    outer["inputs"][0]["linkIds"] = [201]
    data["definitions"]["subgraphs"].append(outer)
    data["nodes"][2]["type"] = "outer"

    api = convert_ui_workflow(data, INFO)

    assert {"12:30:5", "12:30:7"} <= set(api)
    assert api["8"]["inputs"]["samples"] == ["12:30:7", 0]
    assert api["12:30:7"]["inputs"]["model"] == ["4", 0]


def test_group_node_is_expanded_with_index_ids() -> None:
    data = _basic()
    # Replace the sampler + decode pair by a group node "SD" holding them.
    data["nodes"] = [n for n in data["nodes"] if n["id"] not in (3, 8)]
    data["nodes"].append(
        _node(60, "workflow>SD", [5, "fixed", 2, 1.0, "euler", "simple", 1.0],
              [("model", "MODEL", 2), ("positive", "CONDITIONING", 3), ("negative", "CONDITIONING", 4),
               ("latent_image", "LATENT", 5), ("vae", "VAE", 8)], [("IMAGE", "IMAGE")])
    )  # fmt: skip
    data["links"] = [link for link in data["links"] if link[0] not in (7, 9)]
    for link in data["links"]:
        if link[3] == 3:
            link[3] = 60
    data["links"].append([8, 20, 0, 60, 4, "VAE"])
    data["links"].append([9, 60, 0, 9, 0, "IMAGE"])
    data["extra"] = {
        "groupNodes": {
            "SD": {
                "nodes": [
                    {"index": 0, "type": "KSampler", "inputs": [{"name": n, "type": t} for n, t in
                        [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent_image", "LATENT")]],
                     "outputs": [{"name": "LATENT", "type": "LATENT"}], "widgets_values": [0, "fixed", 20, 8, "euler", "normal", 1]},
                    {"index": 1, "type": "VAEDecode", "inputs": [{"name": "samples", "type": "LATENT"}, {"name": "vae", "type": "VAE"}],
                     "outputs": [{"name": "IMAGE", "type": "IMAGE"}], "widgets_values": []},
                ],
                "links": [[0, 0, 1, 0, 3, "LATENT"]],
                "external": [],
            }
        }
    }  # fmt: skip

    api = convert_ui_workflow(data, INFO)

    assert api["60:0"]["inputs"]["seed"] == 5  # the instance's widget values
    assert api["60:0"]["inputs"]["model"] == ["4", 0]
    assert api["60:1"]["inputs"] == {"samples": ["60:0", 0], "vae": ["4", 2]}
    assert api["9"]["inputs"]["images"] == ["60:1", 0]


def test_list_widget_values_are_wrapped_not_read_as_links() -> None:
    info = {
        **INFO,
        "Lister": {
            "input": {"required": {"values": ["STRING", {}]}},
            "output": [],
            "name": "Lister",
        },
    }
    data = {"nodes": [_node(1, "Lister", [["a", "b"]])], "links": []}

    assert convert_ui_workflow(data, info)["1"]["inputs"] == {"values": {"__value__": ["a", "b"]}}


def test_load_workflow_needs_object_info_for_ui_files(tmp_path: Path) -> None:
    path = tmp_path / "ui.json"
    import json

    path.write_text(json.dumps(_basic()), encoding="utf-8")

    with pytest.raises(UIWorkflowError, match="object_info"):
        load_workflow(path)
    wf = load_workflow(path, object_info=INFO)
    assert isinstance(wf, Workflow)
    assert wf.output_node_ids() == ("9",)
    assert Workflow.load(path, object_info=INFO).to_api() == wf.to_api()


def test_broken_link_is_a_workflow_error() -> None:
    data = _basic()
    data["links"] = [link for link in data["links"] if link[0] != 9]

    with pytest.raises(WorkflowError, match="link 9"):
        convert_ui_workflow(data, INFO)


@pytest.mark.parametrize(
    ("text", "draw", "expected"),
    [
        ("/*\nStart\n*/Hello /* a comment */ world!\n// it\nEnd", 0.0, "Hello  world!\n\nEnd"),
        ("{option1|option2}", 0.0, "option1"),
        ("{option1|option2}", 0.99, "option2"),
        ("{a|}", 0.99, ""),
        ("{|a}", 0.0, ""),
        ("{a|{b||c}|}", 0.5, ""),
        ("{a|{b|{c|d}}}", 0.0, "a"),
        ("{a|{b|{c|d}}}", 0.99, "d"),
        ("\\{a|b\\}", 0.5, "{a|b}"),
        ("a\\|b", 0.5, "a|b"),
        ("{a|\\}", 0.99, "}"),
        (
            "<{option1|option2}>/*c*/ ({something|else}:2) \\{escaped\\}!",
            0.99,
            "<option2> (else:2) {escaped}!",
        ),
        ("{option1|option2|{nested1|nested2", 0.4, "option2"),
        ("{option1|option2|{nested1|nested2", 0.99, "nested2"),
        ("{a|{b|{c|{d|{e|{f|{g}}1}2}3}4}5}", 0.99, "g12345"),
        ("1{a|b|{c|d}}2{e|f}3", 0.5, "1b2f3"),
        ("plain text", 0.5, "plain text"),
    ],
)
def test_dynamic_prompts_are_processed_as_the_frontend_does(
    text: str, draw: float, expected: str
) -> None:
    assert process_dynamic_prompt(text, lambda: draw) == expected


def test_dynamic_prompt_widgets_are_processed_at_conversion() -> None:
    data = _basic()
    data["nodes"][1]["widgets_values"] = ["a {red|blue} fox // draft"]

    assert convert_ui_workflow(data, INFO, rng=lambda: 0.9)["6"]["inputs"]["text"] == "a blue fox "
    raw = convert_ui_workflow(data, INFO, rng=None)["6"]["inputs"]["text"]
    assert raw == "a {red|blue} fox // draft"


def test_widgets_missing_from_the_file_get_their_defaults() -> None:
    data = _basic()
    data["nodes"][3]["widgets_values"] = [7, "fixed", 2]  # saved before cfg... existed

    inputs = convert_ui_workflow(data, INFO)["3"]["inputs"]

    assert (inputs["seed"], inputs["steps"], inputs["cfg"], inputs["denoise"]) == (7, 2, 8.0, 1.0)
    assert inputs["sampler_name"] == "euler"  # a combo's first choice


def test_proxy_widget_of_the_instance_itself_holds_its_value() -> None:
    data = _subgraph_workflow([1234], {"proxyWidgets": [["-1", "seed"]]})

    assert convert_ui_workflow(data, INFO)["12:7"]["inputs"]["seed"] == 1234


def test_unpromoted_subgraph_input_leaves_the_inner_value() -> None:
    data = _subgraph_workflow([], {"proxyWidgets": []})

    assert convert_ui_workflow(data, INFO)["12:7"]["inputs"]["seed"] == 1


def test_legacy_promoted_values_follow_the_subgraph_inputs_even_if_the_file_omits_slots() -> None:
    data = _subgraph_workflow([4321], {})
    data["nodes"][2]["inputs"] = data["nodes"][2]["inputs"][:3]  # the seed slot not saved

    assert convert_ui_workflow(data, INFO)["12:7"]["inputs"]["seed"] == 4321


# --------------------------------------------------------------------------- template regressions
# Five of ComfyUI's own templates (ComfyUI 0.8.0's template packages) converted to graphs the
# server rejects; each case below is the smallest graph with the same shape.

_MOONVALLEY = {
    # As ComfyUI 0.8.0 lists MoonvalleyVideo2VideoNode: `steps` (required) was added after the
    # template was saved, and the seed's control widget is switched off explicitly.
    "input": {
        "required": {
            "prompt": ["STRING", {"multiline": True}],
            "negative_prompt": ["STRING", {"multiline": True, "default": "blurry"}],
            "seed": ["INT", {"default": 9, "min": 0, "max": 4294967295, "control_after_generate": False}],
            "video": ["VIDEO", {}],
            "steps": ["INT", {"default": 33, "min": 1, "max": 100}],
        },
        "optional": {
            "control_type": ["COMBO", {"options": ["Motion Transfer", "Pose Transfer"], "default": "Motion Transfer"}],
            "motion_intensity": ["INT", {"default": 100, "min": 0, "max": 100}],
        },
    },
    "input_order": {"required": ["prompt", "negative_prompt", "seed", "video", "steps"], "optional": ["control_type", "motion_intensity"]},
    "output": ["VIDEO"],
    "name": "MoonvalleyVideo2VideoNode",
}  # fmt: skip


def test_moonvalley_values_saved_before_a_widget_was_added_are_realigned() -> None:
    """api_moonvalley_video_to_video_motion_transfer: positionally `steps` got "Motion Transfer"
    and `control_type` 100; the value that fits no widget in order marks the added one."""
    node = _node(38, "MoonvalleyVideo2VideoNode", ["a horse", "ugly", 3711400033, "randomize", "Motion Transfer", 100], [("video", "VIDEO", None)])  # fmt: skip
    data = {"nodes": [node], "links": []}

    inputs = convert_ui_workflow(data, {**INFO, "MoonvalleyVideo2VideoNode": _MOONVALLEY})["38"][
        "inputs"
    ]

    assert inputs == {
        "prompt": "a horse", "negative_prompt": "ugly", "seed": 3711400033, "steps": 33,
        "control_type": "Motion Transfer", "motion_intensity": 100,
    }  # fmt: skip


def test_values_that_fit_their_widgets_are_never_realigned() -> None:
    node = _node(38, "MoonvalleyVideo2VideoNode", ["a", "b", 5, 20, "Pose Transfer", 50], [("video", "VIDEO", None)])  # fmt: skip

    inputs = convert_ui_workflow({"nodes": [node], "links": []}, {**INFO, "MoonvalleyVideo2VideoNode": _MOONVALLEY})["38"]["inputs"]  # fmt: skip

    assert (inputs["seed"], inputs["steps"], inputs["control_type"], inputs["motion_intensity"]) == (5, 20, "Pose Transfer", 50)  # fmt: skip


def test_proxy_widget_values_are_indexed_like_the_proxy_list() -> None:
    """flux_fill_inpaint_example: `widgets_values[i]` belongs to `proxyWidgets[i]`; counting only
    the instance's own entries sent KSampler.seed = None."""
    proxy = [["5", "text"], ["-1", "seed"], ["7", "control_after_generate"], ["-1", "$$canvas-image-preview"]]  # fmt: skip
    data = _subgraph_workflow([None, 656821733471329], {"proxyWidgets": proxy})

    assert convert_ui_workflow(data, INFO)["12:7"]["inputs"]["seed"] == 656821733471329


def test_proxy_widget_value_is_not_taken_from_a_neighbours_slot() -> None:
    """image_qwen_image_edit_2509_relight: the own entries' values interleave with inner ones;
    LoraLoaderModelOnly.strength_model got the LoRA's file name, one entry to the left."""
    proxy = [["-1", "prompt"], ["-1", "lora_name"], ["7", "control_after_generate"], ["-1", "other"], ["-1", "seed"]]  # fmt: skip
    data = _subgraph_workflow(["", "relight.safetensors", None, "x.safetensors", 1], {"proxyWidgets": proxy})  # fmt: skip

    assert convert_ui_workflow(data, INFO)["12:7"]["inputs"]["seed"] == 1


def test_proxy_widget_after_inner_entries_gets_its_value() -> None:
    """image_qwen_image_instantx_controlnet: the own entry comes after three inner ones, whose
    slots hold null; ContronNetApplyAdvanced.strength was sent as None."""
    proxy = [["5", "text"], ["7", "steps"], ["7", "control_after_generate"], ["-1", "seed"]]
    data = _subgraph_workflow([None, None, None, 42], {"proxyWidgets": proxy})

    assert convert_ui_workflow(data, INFO)["12:7"]["inputs"]["seed"] == 42


def test_a_null_proxy_widget_value_leaves_the_inner_widgets_value() -> None:
    data = _subgraph_workflow([None], {"proxyWidgets": [["-1", "seed"]]})

    assert convert_ui_workflow(data, INFO)["12:7"]["inputs"]["seed"] == 1


def test_an_unfinished_workflow_with_no_runnable_output_is_refused() -> None:
    """gsc_starter_1 asks the user to draw the last link: SaveImage.images is unconnected in
    the file, so ComfyUI would reject the graph (required input missing)."""
    data = _basic()
    data["nodes"][6]["inputs"][0]["link"] = None
    data["links"] = [link for link in data["links"] if link[0] != 9]

    with pytest.raises(WorkflowError, match=r"node 9 \(SaveImage\) input 'images' is not connected") as info:  # fmt: skip
        convert_ui_workflow(data, INFO)

    assert (info.value.node_id, info.value.input_name) == ("9", "images")


def test_an_unfinished_branch_beside_a_runnable_output_still_converts() -> None:
    data = _basic()
    data["nodes"].append(_node(10, "SaveImage", ["unfinished"], [("images", "IMAGE", None)]))

    api = convert_ui_workflow(data, INFO)

    assert api["10"]["inputs"] == {"filename_prefix": "unfinished"}
    assert api["9"]["inputs"]["images"] == ["8", 0]
