"""Batch script: every image of a folder through img2img, a bounded number at a time.

python examples/batch_folder.py FRAMES_DIR "a watercolour" --out out --concurrency 8 \
    --server http://127.0.0.1:8188 --model dreamshaper_8.safetensors --preset sd15

The server, model and preset also come from DREAMGEN_SERVER, DREAMGEN_MODEL and
DREAMGEN_PRESET. Without a model, the server is asked what it has (Flux schnell preferred);
without a preset, it is guessed from the model's name.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import Any

from dreamgen_async import (
    ComfyUIClient,
    DreamGenerator,
    GenerationResult,
    Img2ImgRequest,
    builder_from_server,
)


async def main(
    folder: Path,
    prompt: str,
    *,
    out: Path,
    server: str = "http://127.0.0.1:8188",
    concurrency: int = 8,
    denoise: float = 0.6,
    model: str | None = None,
    preset: Any = None,
) -> int:
    """Process the folder; print one line per image; return the number of failures."""
    listing = await asyncio.to_thread(lambda: sorted(folder.iterdir()))
    images = [p for p in listing if p.suffix.lower() in {".png", ".jpg", ".jpeg"}]
    requests = [Img2ImgRequest(p, prompt, denoise, seed=1, name=p.stem) for p in images]
    failures = 0
    async with ComfyUIClient(server) as client:  # which models does the server have?
        builder = await builder_from_server(client, model, preset=preset)
    async with DreamGenerator(server, output_dir=out, builder=builder) as gen:
        async for outcome in gen.as_completed(requests, concurrency=concurrency):
            if isinstance(outcome, GenerationResult):
                print(f"ok     {outcome.path}")
            else:
                failures += 1
                print(f"failed {outcome.source}: {outcome.error}")
    print(f"{len(requests) - failures} done, {failures} failed")
    return failures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("prompt")
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument(
        "--server", default=os.environ.get("DREAMGEN_SERVER", "http://127.0.0.1:8188")
    )
    parser.add_argument("--model", default=os.environ.get("DREAMGEN_MODEL"))
    parser.add_argument("--preset", default=os.environ.get("DREAMGEN_PRESET"))
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    failed = asyncio.run(
        main(
            args.folder,
            args.prompt,
            out=args.out,
            server=args.server,
            concurrency=args.concurrency,
            model=args.model,
            preset=args.preset,
        )
    )
    raise SystemExit(1 if failed else 0)
