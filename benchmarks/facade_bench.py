"""What DreamGenerator itself costs per job: ``python benchmarks/facade_bench.py [--jobs N]``.

The facade runs against an in-process backend that answers at once (no network, no server,
no event stream): each job's input check, workflow build, request key, shared-run
bookkeeping, result and output file are left, and nothing else. Where scenario 2 of
``run.py`` measures the facade and the client together against a simulator in another
process (figures that move by 20 % between runs on a shared machine), this one moves by a
few per cent, so a change to the facade's own path shows here first.

The output files go to a folder on tmpfs (``/dev/shm``) when the machine has one, else to
the system temp folder; ``--output-root`` chooses. ``--profile`` prints cProfile's top
functions after the timed run.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, cast

from PIL import Image

from dreamgen_async import DreamGenerator, FluxWorkflowBuilder, Img2ImgRequest
from dreamgen_async.backend import Backend, BeforePost
from dreamgen_async.comfyui_api import UploadedImage
from dreamgen_async.jobs import PromptResult
from dreamgen_async.protocol import Event, ImageRef, OutputData, OutputFile


def png(size: int, color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


OUTPUT = png(64, (9, 9, 9))


class InstantJob:
    """A backend job that has already succeeded with one saved image."""

    state = "succeeded"
    resubmitted = False
    position = None

    def __init__(self, prompt_id: str) -> None:
        self.prompt_id = prompt_id

    async def result(self, timeout: float | None = None) -> PromptResult:
        ref = ImageRef(f"{self.prompt_id}.png", "", "output")
        return PromptResult(self.prompt_id, {"9": (ref,)}, files=(OutputFile("9", "image", ref),))

    async def events(self) -> AsyncIterator[Event]:
        return
        yield

    def listen(self, on_progress: Callable[[Event], object]) -> None:
        pass  # no events

    async def cancel(self) -> None:
        return None

    def done(self) -> bool:
        return True


class InstantBackend:
    """Answers every prompt at once with the same small PNG; keeps nothing."""

    client_id = "facade-bench"

    async def open(self) -> None:
        return None

    async def aclose(self, *, detach: bool = False) -> None:
        return None

    async def submit(
        self,
        workflow: Mapping[str, Any],
        *,
        prompt_id: str | None = None,
        before_post: BeforePost | None = None,
        **_: Any,
    ) -> InstantJob:
        if before_post is not None:
            await before_post("instant", self.client_id)
        return InstantJob(prompt_id or "p")

    async def adopt(self, prompt_id: str, **_: Any) -> None:
        return None

    async def upload_image(
        self, image: Any, *, name: str | None = None, subfolder: str = "", **_: Any
    ) -> UploadedImage:
        return UploadedImage(name or "input.png", subfolder, "input")

    async def download(self, image: ImageRef) -> bytes:
        return OUTPUT

    async def get_outputs(self, result: PromptResult | str, *, previews: bool = True) -> Any:
        assert isinstance(result, PromptResult)
        return [OutputData(file, OUTPUT) for file in result.files]

    async def get_output_images(self, result: PromptResult | str) -> Any:
        raise NotImplementedError

    async def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        return {}

    async def object_info_by_server(self) -> dict[str, dict[str, Any]]:
        return {}

    async def models(self) -> Any:
        raise NotImplementedError

    def position(self, prompt_id: str) -> int | None:
        return None

    async def status(self) -> list[Any]:
        return []


async def one_run(jobs: int, output_root: str, first_seed: int) -> float:
    """CPU seconds per job of one ``generate_many`` of ``jobs`` img2img requests."""
    data = png(64, (120, 80, 200))
    with tempfile.TemporaryDirectory(dir=output_root) as out:
        backend = cast(Backend, InstantBackend())
        async with DreamGenerator(backend, output_dir=out, max_in_flight=64) as gen:
            gen.builder = FluxWorkflowBuilder()
            requests = [
                Img2ImgRequest(data, f"bench {i}", 0.6, seed=first_seed + i) for i in range(jobs)
            ]
            started = time.process_time()
            await gen.generate_many(requests, concurrency=64)
            return (time.process_time() - started) / jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--output-root", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    root = args.output_root or tempfile.gettempdir()
    asyncio.run(one_run(200, root, 10**6))  # warm: imports, first upload, caches
    per_job = [asyncio.run(one_run(args.jobs, root, run * args.jobs)) for run in range(args.runs)]
    print(
        f"DreamGenerator's own CPU per job: {statistics.median(per_job) * 1e6:.0f} us "
        f"(median of {args.runs} runs of {args.jobs} img2img jobs; runs: "
        + ", ".join(f"{x * 1e6:.0f}" for x in per_job)
        + f"); outputs in {root}; {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}"
    )
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(asyncio.run, one_run(args.jobs, root, 10**7))
        pstats.Stats(profile, stream=sys.stdout).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
