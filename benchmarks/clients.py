"""One benchmark client run, in its own process: ``python benchmarks/clients.py CLIENT ...``.

Prints one JSON object: wall time, CPU time, RSS, and per-job latencies (from the moment the
client *received* ``executing {node: null}`` to the moment the caller's ``await`` returned).

Clients:
    dreamgen    ComfyUIClient.run (one session, one socket, multiplexed)
    generator   DreamGenerator.generate_many (uploads, downloads, atomic writes included)
    reference   the speed-of-light reference: a minimal hand-written aiohttp client
                (one session, one socket, a dict of futures by prompt_id; nothing else)
    reference_files
                the reference doing the generator's job too: each output downloaded
                (GET /view) and written atomically
    canonical   the pattern most scripts copy from ComfyUI's examples: a WebSocket per job,
                wait for ``executing: null``, then GET /history and /view
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import resource
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from PIL import Image

from dreamgen_async import ComfyUIClient, DreamGenerator, Img2ImgRequest
from dreamgen_async.protocol import Executing
from dreamgen_async.workflow_builder import FluxWorkflowBuilder

BUILDER = FluxWorkflowBuilder(steps=2)


def rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def peak_rss_kb() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def input_png(size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (120, 80, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def workflows(image: str, jobs: int, size: int) -> list[dict[str, Any]]:
    if size > 64:
        return [
            BUILDER.build_txt2img("large", width=size, height=size, seed=i, steps=1).workflow
            for i in range(jobs)
        ]
    return [
        BUILDER.build_img2img(image, f"bench {i}", denoise=0.6, seed=i).workflow
        for i in range(jobs)
    ]


async def bounded(jobs: list[Callable[[], Awaitable[float | None]]], concurrency: int) -> list[Any]:
    gate = asyncio.Semaphore(concurrency)

    async def one(job: Callable[[], Awaitable[float | None]]) -> float | None:
        async with gate:
            return await job()

    return await asyncio.gather(*(one(job) for job in jobs))


# ---------------------------------------------------------------------------- dreamgen


async def run_dreamgen(url: str, jobs: int, concurrency: int, size: int) -> dict[str, Any]:
    received: dict[str, float] = {}
    # At most 64 prompts in the server queue (the default is 8); the rest wait client-side.
    async with ComfyUIClient(url, max_in_flight=min(max(concurrency, 8), 64)) as client:
        mux = client._mux
        dispatch = mux.dispatch

        def timed_dispatch(event: Any) -> None:  # instrumentation only: note the receipt
            if isinstance(event, Executing) and event.node is None and event.prompt_id:
                received[event.prompt_id] = time.perf_counter()
            dispatch(event)

        mux.dispatch = timed_dispatch  # type: ignore[method-assign]
        image = (await client.upload_image(input_png(), name="bench.png")).reference
        graphs = workflows(image, jobs, size)
        baseline = rss_kb()
        started = time.perf_counter()

        def job(graph: dict[str, Any]) -> Callable[[], Awaitable[float | None]]:
            async def go() -> float | None:
                result = await client.run(graph)
                done = time.perf_counter()
                if size > 64:
                    for ref in result.images:
                        await client.download(ref)
                    return None
                return done - received.get(result.prompt_id, done)

            return go

        latencies = await bounded([job(g) for g in graphs], concurrency)
        wall = time.perf_counter() - started
    return {"wall": wall, "latencies": latencies, "baseline_rss_kb": baseline}


async def run_generator(url: str, jobs: int, concurrency: int, size: int) -> dict[str, Any]:
    data = input_png()
    with tempfile.TemporaryDirectory() as out:
        async with DreamGenerator(url, output_dir=out, max_in_flight=max(concurrency, 8)) as gen:
            gen.builder = BUILDER
            requests = [Img2ImgRequest(data, f"bench {i}", 0.6, seed=i) for i in range(jobs)]
            baseline = rss_kb()
            started = time.perf_counter()
            await gen.generate_many(requests, concurrency=concurrency)
            wall = time.perf_counter() - started
    return {"wall": wall, "latencies": [], "baseline_rss_kb": baseline}


# ---------------------------------------------------------------------------- reference


async def run_reference(url: str, jobs: int, concurrency: int, size: int) -> dict[str, Any]:
    return await _reference(url, jobs, concurrency, size, None)


async def run_reference_files(url: str, jobs: int, concurrency: int, size: int) -> dict[str, Any]:
    """The reference doing DreamGenerator's job: each output downloaded and written
    atomically (a staging file, then a rename), in a new folder."""
    with tempfile.TemporaryDirectory() as out:
        return await _reference(url, jobs, concurrency, size, out)


def write_atomically(final: str, data: bytes) -> None:
    """A small file, on the loop (a thread hop costs more), as a script would write it."""
    with open(f"{final}.part", "wb") as file:
        file.write(data)
    os.replace(f"{final}.part", final)


async def _reference(
    url: str, jobs: int, concurrency: int, size: int, out: str | None
) -> dict[str, Any]:
    client_id = str(uuid.uuid4())
    waiters: dict[str, tuple[asyncio.Future[float], dict[str, Any]]] = {}
    latencies: list[float | None] = []
    async with aiohttp.ClientSession() as session:
        form = aiohttp.FormData()
        form.add_field("image", input_png(), filename="bench.png")
        async with session.post(f"{url}/upload/image", data=form) as response:
            image = (await response.json())["name"]
        ws = await session.ws_connect(f"{url}/ws", params={"clientId": client_id})

        async def reader() -> None:
            async for message in ws:
                if message.type is not aiohttp.WSMsgType.TEXT:
                    continue
                event = json.loads(message.data)
                data = event.get("data", {})
                waiter = waiters.get(data.get("prompt_id", ""))
                if waiter is None:
                    continue
                if event["type"] == "executed":
                    waiter[1][data["node"]] = data["output"]
                elif event["type"] == "executing" and data.get("node") is None:
                    waiter[0].set_result(time.perf_counter())

        reading = asyncio.create_task(reader())
        graphs = workflows(image, jobs, size)
        baseline = rss_kb()
        started = time.perf_counter()

        def job(graph: dict[str, Any]) -> Callable[[], Awaitable[float | None]]:
            async def go() -> float | None:
                prompt_id = str(uuid.uuid4())
                future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
                outputs: dict[str, Any] = {}
                waiters[prompt_id] = (future, outputs)
                body = {"prompt": graph, "client_id": client_id, "prompt_id": prompt_id}
                async with session.post(f"{url}/prompt", json=body) as response:
                    await response.read()
                received = await future
                done = time.perf_counter()
                del waiters[prompt_id]
                if out is not None:
                    for output in outputs.values():
                        for n, img in enumerate(output["images"]):
                            async with session.get(f"{url}/view", params=img) as response:
                                data = await response.read()
                            write_atomically(os.path.join(out, f"{prompt_id}_{n}.png"), data)
                    return None
                if size > 64:
                    for output in outputs.values():
                        for img in output["images"]:
                            async with session.get(f"{url}/view", params=img) as response:
                                await response.read()
                    return None
                return done - received

            return go

        latencies = await bounded([job(g) for g in graphs], concurrency)
        wall = time.perf_counter() - started
        reading.cancel()
        await ws.close()
    return {"wall": wall, "latencies": latencies, "baseline_rss_kb": baseline}


# ---------------------------------------------------------------------------- canonical


async def run_canonical(url: str, jobs: int, concurrency: int, size: int) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        form = aiohttp.FormData()
        form.add_field("image", input_png(), filename="bench.png")
        async with session.post(f"{url}/upload/image", data=form) as response:
            image = (await response.json())["name"]
        graphs = workflows(image, jobs, size)
        baseline = rss_kb()
        started = time.perf_counter()

        def job(graph: dict[str, Any]) -> Callable[[], Awaitable[float | None]]:
            async def go() -> float | None:
                client_id = str(uuid.uuid4())
                async with session.ws_connect(f"{url}/ws", params={"clientId": client_id}) as ws:
                    body = {"prompt": graph, "client_id": client_id}
                    async with session.post(f"{url}/prompt", json=body) as response:
                        prompt_id = (await response.json())["prompt_id"]
                    async for message in ws:
                        if message.type is not aiohttp.WSMsgType.TEXT:
                            continue
                        event = json.loads(message.data)
                        data = event.get("data", {})
                        if (
                            event["type"] == "executing"
                            and data.get("node") is None
                            and data.get("prompt_id") == prompt_id
                        ):
                            break
                async with session.get(f"{url}/history/{prompt_id}") as response:
                    history = await response.json()
                for output in history[prompt_id]["outputs"].values():
                    for img in output.get("images", []):
                        async with session.get(f"{url}/view", params=img) as response:
                            await response.read()
                return None

            return go

        await bounded([job(g) for g in graphs], concurrency)
        wall = time.perf_counter() - started
    return {"wall": wall, "latencies": [], "baseline_rss_kb": baseline}


CLIENTS = {
    "dreamgen": run_dreamgen,
    "generator": run_generator,
    "reference": run_reference,
    "reference_files": run_reference_files,
    "canonical": run_canonical,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("client", choices=sorted(CLIENTS))
    parser.add_argument("--url", required=True)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--size", type=int, default=64, help=">64: txt2img outputs of SIZE²")
    parser.add_argument(
        "--output-root",
        help="generator, reference_files: write the files in a new folder here (default: the "
        "system temp folder)",
    )
    args = parser.parse_args()
    if args.output_root:
        tempfile.tempdir = args.output_root
    cpu_before = time.process_time()
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    figures = asyncio.run(CLIENTS[args.client](args.url, args.jobs, args.concurrency, args.size))
    figures["cpu"] = time.process_time() - cpu_before
    usage = resource.getrusage(resource.RUSAGE_SELF)
    figures["cpu_user"] = usage.ru_utime - usage_before.ru_utime
    figures["cpu_sys"] = usage.ru_stime - usage_before.ru_stime
    figures["peak_rss_kb"] = peak_rss_kb()
    figures["end_rss_kb"] = rss_kb()
    json.dump(figures, sys.stdout)


if __name__ == "__main__":
    main()
