"""The simulator's control and fault-injection API, its files, and a plain client session."""

from __future__ import annotations

import asyncio
import io
import json
import struct
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

import dreamgen_async.testing as testing
from dreamgen_async.testing import ComfyUISimulator, SimulatorConfig, sample_png, serve
from dreamgen_async.testing.traces import RecordingSocket, describe


def node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def schnell_txt2img(prefix: str = "dreamgen/run", seed: int = 7) -> dict[str, Any]:
    """A Flux schnell txt2img graph, written from docs/PROTOCOL.md section 9."""
    return {
        "1": node("CheckpointLoaderSimple", ckpt_name="flux1-schnell.safetensors"),
        "2": node("CLIPTextEncode", text="a red fox", clip=["1", 1]),
        "3": node("CLIPTextEncode", text="", clip=["1", 1]),
        "4": node("EmptySD3LatentImage", width=64, height=48, batch_size=1),
        "5": node(
            "KSampler", model=["1", 0], seed=seed, steps=4, cfg=1.0, sampler_name="euler",
            scheduler="simple", positive=["2", 0], negative=["3", 0], latent_image=["4", 0],
            denoise=1.0,
        ),
        "6": node("VAEDecode", samples=["5", 0], vae=["1", 2]),
        "7": node("SaveImage", images=["6", 0], filename_prefix=prefix),
    }  # fmt: skip


def img2img(image: str, prefix: str = "i2i", seed: int = 1, denoise: float = 0.6) -> dict[str, Any]:
    """LoadImage -> VAEEncode -> KSampler(denoise) -> VAEDecode -> SaveImage (Flux dev)."""
    return {
        "1": node("CheckpointLoaderSimple", ckpt_name="flux1-dev.safetensors"),
        "2": node("CLIPTextEncode", text="oil painting", clip=["1", 1]),
        "8": node("FluxGuidance", conditioning=["2", 0], guidance=3.5),
        "3": node("CLIPTextEncode", text="", clip=["1", 1]),
        "10": node("LoadImage", image=image),
        "11": node("VAEEncode", pixels=["10", 0], vae=["1", 2]),
        "5": node(
            "KSampler", model=["1", 0], seed=seed, steps=2, cfg=1.0, sampler_name="euler",
            scheduler="simple", positive=["8", 0], negative=["3", 0], latent_image=["11", 0],
            denoise=denoise,
        ),
        "6": node("VAEDecode", samples=["5", 0], vae=["1", 2]),
        "7": node("SaveImage", images=["6", 0], filename_prefix=prefix),
    }  # fmt: skip


async def post(
    http: aiohttp.ClientSession, sim: ComfyUISimulator, graph: dict[str, Any], **extra: Any
) -> str:
    async with http.post(sim.url + "/prompt", json={"prompt": graph, **extra}) as resp:
        assert resp.status == 200, await resp.text()
        prompt_id: str = (await resp.json())["prompt_id"]
        return prompt_id


async def upload(
    http: aiohttp.ClientSession, sim: ComfyUISimulator, name: str, data: bytes, **fields: str
) -> dict[str, Any]:
    form = aiohttp.FormData()
    form.add_field("image", data, filename=name, content_type="image/png")
    for key, value in fields.items():
        form.add_field(key, value)
    async with http.post(sim.url + "/api/upload/image", data=form) as resp:
        assert resp.status == 200
        answer: dict[str, Any] = await resp.json()
        return answer


# ------------------------------------------------------------------------------------------


def test_public_names() -> None:
    assert set(testing.__all__) == {
        "DEFAULT_CHECKPOINTS",
        "ComfyUISimulator",
        "RecordedRequest",
        "SimPrompt",
        "SimulatorConfig",
        "SimulatorFarm",
        "run_simulator",
        "sample_png",
        "serve",
        "serve_many",
    }
    assert all(hasattr(testing, name) for name in testing.__all__)


async def test_plain_client_txt2img_and_img2img_get_real_pngs(
    comfyui_sim: ComfyUISimulator, http: aiohttp.ClientSession
) -> None:
    """A client written from docs/PROTOCOL.md alone: upload, queue, WebSocket, /view."""
    sim = comfyui_sim
    client_id = "plain-client"
    async with http.ws_connect(f"{sim.url}/ws?clientId={client_id}") as ws:
        greeting = json.loads((await ws.receive()).data)
        assert greeting["data"]["sid"] == client_id
        src = sample_png((64, 48), (10, 200, 30))
        uploaded = await upload(http, sim, "src.png", src, subfolder="dreamgen", overwrite="true")
        assert uploaded == {"name": "src.png", "subfolder": "dreamgen", "type": "input"}

        results: dict[str, list[dict[str, str]]] = {}
        graphs = {
            "t2i": schnell_txt2img(),
            "i2i": img2img(f"{uploaded['subfolder']}/{uploaded['name']}"),
        }
        for name, graph in graphs.items():
            prompt_id = await post(http, sim, graph, client_id=client_id)
            async for msg in ws:
                data = json.loads(msg.data) if msg.type == aiohttp.WSMsgType.TEXT else None
                if data and data["type"] == "executed" and data["data"]["prompt_id"] == prompt_id:
                    results[name] = data["data"]["output"]["images"]
                if (
                    data
                    and data["type"] == "executing"
                    and data["data"]
                    == {
                        "node": None,
                        "prompt_id": prompt_id,
                    }
                ):
                    break
    assert results["t2i"] == [
        {"filename": "run_00001_.png", "subfolder": "dreamgen", "type": "output"}
    ]
    images = []
    for name in ("t2i", "i2i"):
        (record,) = results[name]
        async with http.get(sim.url + "/view", params=record) as resp:
            assert resp.status == 200
            data = await resp.read()
        image = Image.open(io.BytesIO(data))
        assert image.format == "PNG"
        assert image.size == (64, 48)
        images.append(image.convert("RGB"))
    assert images[1].tobytes() != Image.open(io.BytesIO(src)).convert("RGB").tobytes()
    assert (sim.output_dir / "dreamgen" / "run_00001_.png").is_file()


async def test_same_inputs_give_identical_bytes(
    comfyui_sim: ComfyUISimulator, http: aiohttp.ClientSession
) -> None:
    sim = comfyui_sim
    await upload(http, sim, "in.png", sample_png())
    first = await post(http, sim, img2img("in.png", prefix="a"))
    await sim.wait_for_status(first, "success")
    await http.post(sim.url + "/free", json={"unload_models": True})
    second = await post(http, sim, img2img("in.png", prefix="b"))
    third = await post(http, sim, img2img("in.png", prefix="c", seed=2))
    await sim.wait_for_status(third, "success")
    assert sim.prompts[first].output_bytes == sim.prompts[second].output_bytes
    assert sim.prompts[first].output_bytes != sim.prompts[third].output_bytes
    assert sim.prompts[second].outputs[0]["filename"] == "b_00001_.png"


async def test_upload_names(comfyui_sim: ComfyUISimulator, http: aiohttp.ClientSession) -> None:
    sim = comfyui_sim
    one, two = sample_png(colour=(1, 2, 3)), sample_png(colour=(4, 5, 6))
    assert (await upload(http, sim, "x.png", one))["name"] == "x.png"
    assert (await upload(http, sim, "x.png", one))["name"] == "x.png"
    assert (await upload(http, sim, "x.png", two))["name"] == "x (1).png"
    assert (await upload(http, sim, "x.png", two))["name"] == "x (1).png"
    assert (await upload(http, sim, "x.png", two, overwrite="true"))["name"] == "x.png"
    assert (await upload(http, sim, "t.png", one, type="temp"))["type"] == "temp"
    assert sim.input_files() == ["x (1).png", "x.png"]
    assert (sim.input_dir / "x.png").read_bytes() == two
    form = aiohttp.FormData()
    form.add_field("type", "input")
    async with http.post(sim.url + "/upload/image", data=form) as resp:
        assert resp.status == 400
    async with http.get(sim.url + "/view", params={"filename": "x.png", "type": "input"}) as resp:
        assert await resp.read() == two


async def test_fail_next_and_retry_after(
    comfyui_sim: ComfyUISimulator, http: aiohttp.ClientSession
) -> None:
    sim = comfyui_sim
    sim.fail_next("/prompt", 2, status=503)
    sim.fail_next("/upload/image", 1, status=429, retry_after=1.5)
    sim.fail_next("/history/*", 1, status=500, method="GET")
    graph = schnell_txt2img()
    async with http.post(sim.url + "/prompt", json={"prompt": graph}) as resp:
        assert resp.status == 503
    async with http.post(sim.url + "/api/prompt", json={"prompt": graph}) as resp:
        assert resp.status == 503
    prompt_id = await post(http, sim, graph)
    form = aiohttp.FormData()
    form.add_field("image", b"x", filename="x.png")
    async with http.post(sim.url + "/upload/image", data=form) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "1.5"
    async with http.get(f"{sim.url}/history/{prompt_id}") as resp:
        assert resp.status == 500
    async with http.get(f"{sim.url}/history/{prompt_id}") as resp:
        assert resp.status == 200
    statuses = [(r.path, r.route, r.status) for r in sim.requests_to("/prompt", "POST")]
    assert statuses == [
        ("/prompt", "/prompt", 503),
        ("/api/prompt", "/prompt", 503),
        ("/prompt", "/prompt", 200),
    ]
    assert sim.accepted_prompt_ids == [prompt_id]
    assert sim.requests_to("/prompt")[2].json == {"prompt": graph}


async def test_latency_applies_to_answers(
    comfyui_sim: ComfyUISimulator, http: aiohttp.ClientSession
) -> None:
    sim = comfyui_sim
    sim.latency = 0.05
    sim.route_latency["/queue"] = 0.05
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with http.get(sim.url + "/queue") as resp:
        assert resp.status == 200
    assert loop.time() - start >= 0.1


async def test_hold_and_release_keep_queue_order(
    comfyui_sim: ComfyUISimulator, http: aiohttp.ClientSession
) -> None:
    sim = comfyui_sim
    sim.hold()
    ids = [await post(http, sim, schnell_txt2img(seed=i)) for i in range(3)]
    front = await post(http, sim, schnell_txt2img(seed=9), front=True)
    async with http.get(sim.url + "/queue") as resp:
        queue = await resp.json()
    assert queue["queue_running"] == []
    assert len(queue["queue_pending"]) == 4
    assert all(sim.prompts[i].status == "pending" for i in [*ids, front])
    sim.release()
    await sim.wait_until(lambda: all(p.status == "success" for p in sim.prompts.values()))
    finished = list(sim.history)
    assert finished == [front, *ids]


async def test_stall_and_interrupt(
    comfyui_sim: ComfyUISimulator, http: aiohttp.ClientSession
) -> None:
    sim = comfyui_sim
    sim.stall_next()
    stalled = await post(http, sim, schnell_txt2img())
    waiting = await post(http, sim, schnell_txt2img(seed=3))
    await sim.wait_for_status(stalled, "running")
    sim.stall(waiting)
    async with http.post(sim.url + "/interrupt", json={"prompt_id": "someone-else"}) as resp:
        assert resp.status == 200
    assert sim.prompts[stalled].status == "running"
    async with http.post(sim.url + "/interrupt", json={"prompt_id": stalled}) as resp:
        assert resp.status == 200
    await sim.wait_for_status(stalled, "interrupted")
    await sim.wait_for_status(waiting, "running")
    async with http.post(sim.url + "/interrupt", data=b"{nope") as resp:  # global
        assert resp.status == 200
    await sim.wait_for_status(waiting, "interrupted")


async def test_drop_websockets(comfyui_sim: ComfyUISimulator, http: aiohttp.ClientSession) -> None:
    sim = comfyui_sim
    async with http.ws_connect(sim.url + "/ws?clientId=a") as ws:
        await ws.receive()
        await sim.wait_until(lambda: sim.open_websockets == 1)
        await sim.drop_websockets()
        msg = await ws.receive()
        assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
    await sim.wait_until(lambda: sim.open_websockets == 0)
    async with http.ws_connect(sim.url + "/ws?clientId=a") as ws:
        await ws.receive()
        await sim.drop_websockets(abrupt=False)
        msg = await ws.receive()
        assert msg.type == aiohttp.WSMsgType.CLOSE
    assert sim.ws_connections_total == 2


async def test_restart_loses_queue_and_history_keeps_files(
    comfyui_sim: ComfyUISimulator, http: aiohttp.ClientSession
) -> None:
    sim = comfyui_sim
    done = await post(http, sim, schnell_txt2img())
    await sim.wait_for_status(done, "success")
    sim.stall_next()
    running = await post(http, sim, schnell_txt2img(seed=5))
    pending = await post(http, sim, schnell_txt2img(seed=6))
    await sim.wait_for_status(running, "running")
    async with http.ws_connect(sim.url + "/ws?clientId=r") as ws:
        await ws.receive()
        await sim.restart()
        assert (await ws.receive()).type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
    assert sim.prompts[running].status == "lost"
    assert sim.prompts[pending].status == "lost"
    async with http.get(f"{sim.url}/history/{done}") as resp:
        assert await resp.json() == {}
    async with http.get(sim.url + "/queue") as resp:
        assert await resp.json() == {"queue_running": [], "queue_pending": []}
    assert (sim.output_dir / "dreamgen" / "run_00001_.png").is_file()
    again = await post(http, sim, schnell_txt2img())
    await sim.wait_for_status(again, "success")
    assert sim.prompts[again].outputs[0]["filename"] == "run_00002_.png"


async def test_send_raw_and_previews(
    comfyui_sim: ComfyUISimulator, http: aiohttp.ClientSession
) -> None:
    sim = comfyui_sim
    sim.previews = True
    sock = RecordingSocket(await http.ws_connect(sim.url + "/ws?clientId=p"))
    await sock.next()
    await sim.send_raw(struct.pack(">II", 3, 1) + b"9hello", client_id="p")
    assert await sock.next() == struct.pack(">II", 3, 1) + b"9hello"
    await sim.send_raw('{"type": "unknown_type", "data": {}}')
    assert describe(await sock.next()) == "unknown_type"
    prompt_id = await post(http, sim, schnell_txt2img(), client_id="p")
    messages = await sock.until_done(prompt_id)
    previews = [m for m in messages if isinstance(m, bytes)]
    assert len(previews) == 4
    assert all(struct.unpack(">II", p[:8]) == (1, 1) for p in previews)
    assert all(p[8:10] == b"\xff\xd8" for p in previews)
    await sock.ws.close()


async def test_wait_until_times_out(comfyui_sim: ComfyUISimulator) -> None:
    with pytest.raises(TimeoutError):
        await comfyui_sim.wait_until(lambda: False, timeout=0.01)


async def test_origin_header(comfyui_sim: ComfyUISimulator, http: aiohttp.ClientSession) -> None:
    sim = comfyui_sim
    async with http.get(sim.url + "/queue", headers={"Origin": sim.url}) as resp:
        assert resp.status == 200
    async with http.get(sim.url + "/queue", headers={"Origin": "http://127.0.0.1:1"}) as resp:
        assert resp.status == 403
        assert await resp.read() == b""


async def test_history_capacity_and_jobs(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with ComfyUISimulator(SimulatorConfig(history_capacity=2), root=tmp_path) as sim:
        ids = [await post(http, sim, schnell_txt2img(seed=i)) for i in range(3)]
        await sim.wait_for_status(ids[-1], "success")
        assert list(sim.history) == ids[1:]
        async with http.get(f"{sim.url}/api/jobs/{ids[0]}") as resp:
            assert resp.status == 404
            assert await resp.json() == {"error": "Job not found"}
        async with http.get(sim.url + "/api/jobs", params={"status": "completed"}) as resp:
            jobs = await resp.json()
        assert [j["id"] for j in jobs["jobs"]] == ids[:0:-1]


async def test_many_img2img_jobs_are_fast(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with ComfyUISimulator(root=tmp_path) as sim:
        await upload(http, sim, "in.png", sample_png())
        start = time.perf_counter()
        ids = await asyncio.gather(
            *(post(http, sim, img2img("in.png", seed=i), client_id="bench") for i in range(200))
        )
        await sim.wait_until(lambda: all(sim.prompts[i].status == "success" for i in ids), 30)
        elapsed = time.perf_counter() - start
    assert elapsed < 10, elapsed


async def test_serve_runs_until_cancelled(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    started: asyncio.Future[ComfyUISimulator] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve("127.0.0.1", 0, SimulatorConfig(), tmp_path, started.set_result)
    )
    sim = await started
    async with http.get(sim.url + "/system_stats") as resp:
        assert (await resp.json())["system"]["comfyui_version"] == "0.8.0"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_default_root_is_removed_and_stop_is_idempotent() -> None:
    sim = ComfyUISimulator()
    await sim.start()
    root = sim.root
    assert root.is_dir()
    await sim.stop()
    await sim.stop()
    assert not root.exists()
