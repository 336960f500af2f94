"""Bad inputs and misbehaving servers: a clear, typed error naming the problem; nothing lost."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import pytest
from _graphs import txt2img
from PIL import Image

from dreamgen_async import (
    ComfyUIClient,
    DreamGenerator,
    InputImageError,
    PromptRejected,
    ServerError,
    UIWorkflowError,
    Workflow,
    WorkflowError,
)
from dreamgen_async.protocol import Progress
from dreamgen_async.testing import ComfyUISimulator


async def test_a_huge_image_is_refused_before_upload(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    big = tmp_path / "huge.png"
    buffer = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buffer, format="PNG")
    big.write_bytes(buffer.getvalue())
    async with DreamGenerator(
        comfyui_sim.url, output_dir=tmp_path / "out", max_input_pixels=4096 * 4096
    ) as gen:
        with pytest.raises(InputImageError) as info:
            await gen.generate_from_image(big, "x")
    assert str(big) in str(info.value)
    assert "5000x5000" in str(info.value)
    assert not [r for r in comfyui_sim.requests if r.route == "/upload/image"]


async def test_a_500_text_plain_answer_is_a_server_error_with_its_body(
    comfyui_sim: ComfyUISimulator,
) -> None:
    async with ComfyUIClient(comfyui_sim.url) as client:
        comfyui_sim.fail_next("/prompt", 1, status=500, body="Server got itself in trouble")
        with pytest.raises(ServerError) as info:
            await client.run(txt2img(seed=1))
        assert info.value.status == 500
        assert "Server got itself in trouble" in info.value.body
        assert client.in_flight == 0


async def test_a_dangling_link_fails_before_any_network_call(
    comfyui_sim: ComfyUISimulator,
) -> None:
    graph = txt2img()
    graph["6"]["inputs"]["samples"] = ["99", 0]
    with pytest.raises(WorkflowError) as info:
        Workflow.from_dict(graph)
    assert info.value.node_id == "6"
    assert "99" in str(info.value)
    # Sent raw, the server names the node and input too.
    async with ComfyUIClient(comfyui_sim.url) as client:
        with pytest.raises(PromptRejected) as rejected:
            await client.run(graph)
    assert any(e.node_id in ("6", "99") for e in rejected.value.node_errors)


def test_a_ui_format_workflow_says_how_to_export_the_api_format() -> None:
    with pytest.raises(UIWorkflowError, match="API"):
        Workflow.from_dict({"nodes": [], "links": [], "version": 0.4})


async def test_malformed_and_unknown_frames_do_not_stop_the_reader(
    comfyui_sim: ComfyUISimulator,
) -> None:
    seen: list[int | None] = []  # the client's queue length when the marker arrived
    async with ComfyUIClient(comfyui_sim.url) as client:

        def on_progress(event: object) -> None:
            if isinstance(event, Progress) and event.value == 7:
                seen.append(client.queue_remaining)

        comfyui_sim.hold()
        job = await client.submit(txt2img(seed=2), on_progress=on_progress)
        marker = {"value": 7, "max": 9, "prompt_id": job.prompt_id, "node": "6"}
        for frame in (
            "not json",
            '{"type": "progress", "data": {"value": "x"}}',
            '{"type": "some.custom_node.event", "data": {}}',
            '{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 41}}}}',
            '{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": "x"}}}}',
            '{"type": "status", "data": []}',
            '{"type": "status", "data": {"status": null}}',
            struct.pack(">II", 4, 1 << 30) + b"{}",
            struct.pack(">I", 77) + b"payload",
            b"\x00",
            json.dumps({"type": "progress", "data": marker}),
        ):
            await comfyui_sim.send_raw(frame)
        comfyui_sim.release()
        result = await job.result(timeout=10)
    assert result.images
    # Frames are read in order: the well-formed status was read, the malformed ones skipped.
    assert seen == [41]
    assert comfyui_sim.ws_connections_total == 1
