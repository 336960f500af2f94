"""A web service: upload an image, watch its progress live (server-sent events).

One DreamGenerator — one session, one WebSocket to ComfyUI — serves every request.

    python examples/web_service.py --server http://127.0.0.1:8188 --port 8080 \
        --model dreamshaper_8.safetensors --preset sd15
    curl -N -F image=@cat.png -F prompt="an oil painting" http://127.0.0.1:8080/generate

The server, model and preset also come from DREAMGEN_SERVER, DREAMGEN_MODEL and
DREAMGEN_PRESET. Without a model, the server is asked what it has (Flux schnell preferred);
without a preset, it is guessed from the model's name.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from dreamgen_async import (
    ComfyUIClient,
    DreamGenerator,
    DreamgenError,
    Event,
    Progress,
    builder_from_server,
)

GENERATOR = web.AppKey("generator", DreamGenerator)


def make_app(
    server: str, output_dir: Path, model: str | None = None, preset: Any = None
) -> web.Application:
    """The aiohttp application; the generator lives as long as the app.

    At start-up the server is asked which models it has; a missing ``model`` stops the
    start with an error that lists them.
    """
    app = web.Application(client_max_size=50 * 1024 * 1024)

    async def generator_ctx(app: web.Application) -> AsyncIterator[None]:
        async with ComfyUIClient(server) as client:
            builder = await builder_from_server(client, model, preset=preset)
        async with DreamGenerator(server, output_dir=output_dir, builder=builder) as gen:
            app[GENERATOR] = gen
            yield

    app.cleanup_ctx.append(generator_ctx)
    app.router.add_post("/generate", generate)
    app.router.add_static("/images", output_dir)
    return app


async def generate(request: web.Request) -> web.StreamResponse:
    """POST multipart (``image``, ``prompt``, optional ``denoise``) → an SSE stream.

    If the browser goes away, the handler is cancelled and so is the ComfyUI job.
    """
    form = await request.post()
    upload = form.get("image")
    if not isinstance(upload, web.FileField):
        raise web.HTTPBadRequest(text="send the image as a multipart file field 'image'")
    image = upload.file.read()
    prompt = str(form.get("prompt", "")).strip()
    denoise = float(str(form.get("denoise", "0.6")))

    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def on_progress(event: Event) -> None:
        if isinstance(event, Progress):
            events.put_nowait({"event": "progress", "value": event.value, "max": event.max})

    gen = request.app[GENERATOR]
    job = asyncio.create_task(
        gen.generate_from_image(image, prompt, denoise, on_progress=on_progress)
    )
    try:
        while not job.done():
            getter = asyncio.ensure_future(events.get())
            await asyncio.wait({getter, job}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                await send(response, getter.result())
            else:
                getter.cancel()
        while not events.empty():
            await send(response, events.get_nowait())
        result = job.result()
        await send(response, {"event": "done", "url": f"/images/{result.path.name}"})
    except DreamgenError as exc:
        await send(response, {"event": "error", "message": str(exc)})
    finally:
        job.cancel()
    return response


async def send(response: web.StreamResponse, data: dict[str, Any]) -> None:
    await response.write(f"data: {json.dumps(data)}\n\n".encode())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--server", default=os.environ.get("DREAMGEN_SERVER", "http://127.0.0.1:8188")
    )
    parser.add_argument("--model", default=os.environ.get("DREAMGEN_MODEL"))
    parser.add_argument("--preset", default=os.environ.get("DREAMGEN_PRESET"))
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--out", type=Path, default=Path("web-out"))
    args = parser.parse_args()
    args.out.mkdir(exist_ok=True)
    app = make_app(args.server, args.out, args.model, args.preset)
    web.run_app(app, host="127.0.0.1", port=args.port)
