"""Batch script: every image of a folder through img2img, a bounded number at a time.

python examples/batch_folder.py FRAMES_DIR "a watercolour" --out out --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from dreamgen_async import DreamGenerator, GenerationResult, Img2ImgRequest


async def main(
    folder: Path,
    prompt: str,
    *,
    out: Path,
    server: str = "http://127.0.0.1:8188",
    concurrency: int = 8,
    denoise: float = 0.6,
) -> int:
    """Process the folder; print one line per image; return the number of failures."""
    listing = await asyncio.to_thread(lambda: sorted(folder.iterdir()))
    images = [p for p in listing if p.suffix.lower() in {".png", ".jpg", ".jpeg"}]
    requests = [Img2ImgRequest(p, prompt, denoise, seed=1, name=p.stem) for p in images]
    failures = 0
    async with DreamGenerator(server, output_dir=out) as gen:
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
    parser.add_argument("--server", default="http://127.0.0.1:8188")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    failed = asyncio.run(
        main(
            args.folder, args.prompt, out=args.out, server=args.server, concurrency=args.concurrency
        )
    )
    raise SystemExit(1 if failed else 0)
