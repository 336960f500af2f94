"""Every error a caller can trigger is a DreamgenError, and says what to do (issue 14)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from _graphs import png_bytes, txt2img
from PIL import Image

from dreamgen_async import (
    ClientClosedError,
    ComfyUIClient,
    ConfigError,
    DreamGenerator,
    DreamgenError,
    FluxWorkflowBuilder,
    InputImageError,
    UIWorkflowError,
    Workflow,
    WorkflowError,
    as_api_graph,
)
from dreamgen_async.testing import ComfyUISimulator

UI_EXPORT = {"nodes": [{"id": 1, "type": "KSampler"}], "links": [], "version": 0.4}


# ---------------------------------------------------------------------------- constructor


def test_a_url_without_scheme_is_a_config_error_suggesting_http() -> None:
    with pytest.raises(ConfigError) as info:
        ComfyUIClient("127.0.0.1:8188")
    assert isinstance(info.value, DreamgenError)
    assert isinstance(info.value, ValueError)
    assert "'http://127.0.0.1:8188'" in str(info.value)


@pytest.mark.parametrize(
    "url",
    ["ftp://host:1", "http://", "http://host:notaport", "http://host:99999", "http://host:0"],
)
def test_bad_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        ComfyUIClient(url)


def test_bad_limits_and_headers_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="max_in_flight"):
        ComfyUIClient("http://127.0.0.1:8188", max_in_flight=0)
    with pytest.raises(ConfigError, match="Origin"):
        ComfyUIClient("http://127.0.0.1:8188", headers={"Origin": "http://evil"})


@pytest.mark.parametrize(
    "password", ["pa/ss", "pa#ss", "p@ss", "pa?ss", "a/b#c@d?e", "%2Fescaped", "plain"]
)
def test_url_credentials_never_show_whatever_their_characters(password: str) -> None:
    url = f"http://alice:{password}@127.0.0.1:8188/"
    client = ComfyUIClient(url)
    for text in (client.safe_url, client.base_url, repr(client)):
        assert password not in text
        assert "alice" not in text
    assert client.safe_url == "http://127.0.0.1:8188"
    header = client._http.headers["Authorization"]
    user, _, sent = base64.b64decode(header.removeprefix("Basic ")).decode().partition(":")
    assert user == "alice"
    assert sent == ("/escaped" if password == "%2Fescaped" else password)


@pytest.mark.parametrize(
    "url",
    [
        "alice:s3cr/et@127.0.0.1:8188",  # no scheme
        "http://alice:s3cr#et@host:notaport",  # a bad port
        "ftp://alice:s3cr@et@host",  # a bad scheme
    ],
)
def test_an_invalid_url_is_echoed_without_its_password(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        ComfyUIClient(url)
    message = str(info.value)
    assert "s3cr" not in message
    assert "alice:***@" in message


async def test_a_connect_error_never_shows_a_password_with_odd_characters() -> None:
    from dreamgen_async import ConnectError, RetryPolicy

    fast = RetryPolicy(attempts=1, max_time=1)
    with pytest.raises(ConnectError) as info:
        async with ComfyUIClient("http://bob:x/y#z@127.0.0.1:9", retry=fast):
            pass
    assert "x/y#z" not in str(info.value)
    assert "127.0.0.1:9" in str(info.value)


# ---------------------------------------------------------------------------- workflows


def test_as_api_graph_takes_every_workflow_type_and_refuses_ui_format() -> None:
    graph = txt2img(seed=3)
    assert as_api_graph(graph) is graph  # a plain dict is passed on as it is
    assert as_api_graph(Workflow.from_dict(graph)) == graph
    built = FluxWorkflowBuilder().build_txt2img("x", seed=1)
    assert as_api_graph(built) is built.workflow
    with pytest.raises(UIWorkflowError, match="Export \\(API\\)"):
        as_api_graph(UI_EXPORT)
    with pytest.raises(WorkflowError, match="not list"):
        as_api_graph([1, 2])


async def test_the_client_runs_workflow_objects_and_refuses_ui_format(
    comfyui_sim: ComfyUISimulator,
) -> None:
    built = FluxWorkflowBuilder().build_txt2img("a fox", seed=5, width=64, height=64, steps=1)
    async with ComfyUIClient(comfyui_sim.url) as client:
        for workflow in (built, built.to_workflow(), Workflow.from_dict(txt2img(seed=2))):
            result = await client.run(workflow, timeout=30)
            assert result.images
        prompt_id = await client.queue_prompt(Workflow.from_dict(txt2img(seed=4)))
        assert (await client.wait_for_completion(prompt_id, timeout=30)).images
        posts = len([r for r in comfyui_sim.requests if r.route == "/prompt"])
        with pytest.raises(UIWorkflowError):
            await client.run(UI_EXPORT)
        with pytest.raises(UIWorkflowError):
            await client.submit(UI_EXPORT)
    assert len([r for r in comfyui_sim.requests if r.route == "/prompt"]) == posts


async def test_the_generator_runs_a_built_workflow_and_refuses_ui_format(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    built = FluxWorkflowBuilder().build_txt2img("a fox", seed=5, width=64, height=64, steps=1)
    async with DreamGenerator(comfyui_sim.url, output_dir=tmp_path) as gen:
        result = await gen.run_workflow(built, name="built")
        assert result.path.exists()
        with pytest.raises(UIWorkflowError):
            await gen.run_workflow(UI_EXPORT)


# ---------------------------------------------------------------------------- messages


async def test_a_non_image_input_names_the_file_not_a_buffer(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.png"
    notes.write_text("hello")
    async with DreamGenerator(comfyui_sim.url, output_dir=tmp_path / "out") as gen:
        with pytest.raises(InputImageError) as info:
            await gen.generate_from_image(notes, "x")
        assert str(notes) in str(info.value)
        assert "BytesIO" not in str(info.value)
        truncated = png_bytes(1, size=64)[:80]
        with pytest.raises(InputImageError) as damaged:
            await gen.generate_from_image(truncated, "x")
        assert "BytesIO" not in str(damaged.value)
        assert "<80 bytes>" in str(damaged.value)


async def test_the_pixel_limit_error_names_max_input_pixels(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (300, 200)).save(buffer, format="PNG")
    async with DreamGenerator(
        comfyui_sim.url, output_dir=tmp_path, max_input_pixels=100 * 100
    ) as gen:
        with pytest.raises(InputImageError) as info:
            await gen.generate_from_image(buffer.getvalue(), "x")
    assert "max_input_pixels=10000" in str(info.value)
    assert "300x200" in str(info.value)


async def test_a_generator_used_without_async_with_says_so(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    gen = DreamGenerator(comfyui_sim.url, output_dir=tmp_path)
    with pytest.raises(ClientClosedError) as info:
        await gen.generate_from_prompt("x", seed=1)
    assert "async with DreamGenerator(" in str(info.value)
    assert comfyui_sim.requests == []


async def test_generator_config_errors_are_dreamgen_errors(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    async with DreamGenerator(comfyui_sim.url, output_dir=tmp_path) as gen:
        with pytest.raises(ConfigError):
            await gen.generate_many([], concurrency=0)
    with pytest.raises(ConfigError, match="http://localhost:8188"):
        DreamGenerator("localhost:8188")
