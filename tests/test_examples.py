"""The examples in examples/ run against the simulator."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
from _examples import load_example
from _graphs import png_bytes
from aiohttp.test_utils import TestClient, TestServer

from dreamgen_async import DreamGenerator
from dreamgen_async.testing import ComfyUISimulator


async def test_batch_folder(comfyui_sim: ComfyUISimulator, tmp_path: Path, capsys: object) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(6):
        (folder / f"f{i}.png").write_bytes(png_bytes(i))
    (folder / "broken.png").write_bytes(b"nope")
    batch = load_example("batch_folder")
    failures = await batch.main(
        folder, "a watercolour", out=tmp_path / "out", server=comfyui_sim.url, concurrency=3
    )
    assert failures == 1
    assert len(list((tmp_path / "out").glob("f*.png"))) == 6


async def test_web_service_streams_progress(comfyui_sim: ComfyUISimulator, tmp_path: Path) -> None:
    comfyui_sim.step_time = 0.005
    service = load_example("web_service")
    app = service.make_app(comfyui_sim.url, tmp_path)
    async with TestClient(TestServer(app)) as http:
        form = aiohttp.FormData()
        form.add_field("image", png_bytes(1), filename="cat.png")
        form.add_field("prompt", "an oil painting")
        response = await http.post("/generate", data=form)
        assert response.headers["Content-Type"] == "text/event-stream"
        events = [
            json.loads(line[len("data: ") :])
            for line in (await response.text()).splitlines()
            if line.startswith("data: ")
        ]
        assert events[-1]["event"] == "done"
        assert any(e["event"] == "progress" for e in events)
        image = await http.get(events[-1]["url"])
        assert (await image.read()).startswith(b"\x89PNG")


class FakeMessage:
    """A chat message the bot edits; records every text it showed."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.changed = asyncio.Event()

    async def edit(self, text: str) -> None:
        self.texts.append(text)
        self.changed.set()


async def test_chat_bot_reports_progress_and_cancels(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    bot_module = load_example("chat_bot")
    async with DreamGenerator(comfyui_sim.url, output_dir=tmp_path) as gen:
        bot = bot_module.ImageBot(gen)
        reply = FakeMessage()
        path = await bot.on_message("chat-1", "a red fox", png_bytes(2), reply)
        assert path is not None
        assert path.exists()
        assert reply.texts[0] == "queued…"
        assert reply.texts[-1].startswith("done: ")

        comfyui_sim.hold()
        second = FakeMessage()
        running = asyncio.create_task(bot.on_message("chat-1", "a blue fox", None, second))
        await comfyui_sim.wait_until(lambda: len(comfyui_sim.accepted_prompt_ids) == 2)
        await bot.on_message("chat-1", "/cancel", None, FakeMessage())
        assert await running is None
        assert second.texts[-1] == "cancelled"
        prompt_id = comfyui_sim.accepted_prompt_ids[-1]
        await comfyui_sim.wait_for_status(prompt_id, "deleted")
        comfyui_sim.release()
