"""How long large bodies block the event loop: ``python benchmarks/event_loop.py``.

For a ~10 MB ``/queue``-like body (200 prompts of 500 nodes: 100,000 small objects), it
compares ``json.loads`` on the loop, ``json.loads`` in a worker thread (``asyncio.to_thread``)
and the stepped decoder the client uses (``http.decode_json``, which runs
``dreamgen_async.protocol.json_steps``), each with the cyclic GC on and off. "longest stall"
is the longest gap a 0-sleep ticker task saw: how long the event loop could not run anything
else.
"""

from __future__ import annotations

import asyncio
import gc
import json
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from dreamgen_async.http import decode_json as _decode_json


def body() -> bytes:
    def graph(seed: int) -> dict[str, Any]:
        return {
            str(n): {
                "class_type": "CLIPTextEncode",
                "inputs": {"text": f"prompt {seed} node {n}", "clip": ["1", 1]},
            }
            for n in range(500)
        }

    pending = [[i, f"id{i}", graph(i), {}, []] for i in range(200)]
    return json.dumps({"queue_running": [], "queue_pending": pending}).encode()


async def on_loop(data: bytes) -> Any:
    return json.loads(data)


async def in_thread(data: bytes) -> Any:
    return await asyncio.to_thread(json.loads, data)


async def stepped(data: bytes) -> Any:
    """What the client does with a large JSON answer (bytes in, Python objects out)."""
    result = await _decode_json(data)
    if isinstance(result, BaseException):
        raise result
    return result


async def measure(decode: Callable[[bytes], Awaitable[Any]], data: bytes) -> tuple[float, float]:
    """(total seconds, longest loop stall in seconds)."""
    gaps: list[float] = []
    running = True

    async def ticker() -> None:
        last = time.perf_counter()
        while running:
            await asyncio.sleep(0)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    started = time.perf_counter()
    result = await decode(data)
    total = time.perf_counter() - started
    running = False
    await task
    del result  # freeing 100,000 objects takes a while: not the decoder's stall
    return total, max(gaps)


async def main() -> None:
    data = body()
    print(f"python {platform.python_version()} on {platform.machine()}, {len(data) / 1e6:.1f} MB")
    print("| decoder | GC | total (median of 5) | longest stall (median of 5) |")
    print("|---|---|---|---|")
    for name, decode in (("json.loads on the loop", on_loop), ("to_thread(json.loads)", in_thread),
                         ("json_steps (the client)", stepped)):  # fmt: skip
        for gc_on in (True, False):
            (gc.enable if gc_on else gc.disable)()
            runs = [await measure(decode, data) for _ in range(5)]
            gc.enable()
            total = statistics.median(r[0] for r in runs)
            stall = statistics.median(r[1] for r in runs)
            gc_label = "on" if gc_on else "off"
            print(f"| {name} | {gc_label} | {total * 1000:.0f} ms | {stall * 1000:.1f} ms |")


if __name__ == "__main__":
    asyncio.run(main())
