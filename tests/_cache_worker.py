"""A child process for the shared-cache tests: puts and gets on one cache, checking every hit.

Usage: python _cache_worker.py CACHE_DIR MAX_BYTES WORKER_ID COUNT [--barrier | --lockstep]

Prints one JSON line: {"puts": n, "hits": n, "misses": n, "bad": n}.

- ``--barrier``: first print ``ready`` (imports done, the cache not touched) and wait for a
  line on stdin; the parent releases every worker at once, so they open a fresh cache together.
- ``--lockstep``: the same before *every* put, and put ``i`` goes to a fresh cache
  ``CACHE_DIR/i`` under a key every worker puts: COUNT times, all workers open one fresh
  cache at the same instant and store the same entry in it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from pathlib import Path

from dreamgen_async.cache import ResultCache


def payload(key: str) -> bytes:
    """The bytes every process stores under ``key``: a reader can check what it gets."""
    return hashlib.sha256(key.encode()).digest() * (20 + int(key[:2], 16) % 40)


def wait_for_go() -> None:
    """Say ``ready`` and wait for the parent's line (the barrier)."""
    print("ready", flush=True)
    sys.stdin.readline()


async def main(directory: str, max_bytes: int, worker: int, count: int, mode: str) -> None:
    cache = ResultCache(directory, max_bytes=max_bytes)
    stats = {"puts": 0, "hits": 0, "misses": 0, "bad": 0}
    if mode == "--barrier":
        wait_for_go()
    for i in range(count):
        if mode == "--lockstep":
            wait_for_go()
            cache = ResultCache(Path(directory) / str(i), max_bytes=max_bytes)
            key = probe = hashlib.sha256(f"round {i}".encode()).hexdigest()
        else:
            # Half the keys are shared with the other workers, half are its own.
            key = hashlib.sha256(f"{i if i % 2 else f'{worker}-{i}'}".encode()).hexdigest()
            probe = hashlib.sha256(f"{(i * 7) % (i + 1)}".encode()).hexdigest()
        await cache.put(key, [(".png", payload(key)), (".png", payload(key)[::-1])])
        stats["puts"] += 1
        entry = await cache.get_entry(probe)
        if entry is None:
            stats["misses"] += 1
        elif [data for _, data in entry.images] == [payload(probe), payload(probe)[::-1]]:
            stats["hits"] += 1
        else:
            stats["bad"] += 1
    print(json.dumps(stats))


if __name__ == "__main__":
    directory, max_bytes, worker, count = sys.argv[1:5]
    mode = sys.argv[5] if len(sys.argv) > 5 else ""
    asyncio.run(main(directory, int(max_bytes), int(worker), int(count), mode))
