"""A child process for the shared-cache test: puts and gets on one cache, checking every hit.

Usage: python _cache_worker.py CACHE_DIR MAX_BYTES WORKER_ID COUNT
Prints one JSON line: {"puts": n, "hits": n, "misses": n, "bad": n}.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys

from dreamgen_async.cache import ResultCache


def payload(key: str) -> bytes:
    """The bytes every process stores under ``key``: a reader can check what it gets."""
    return hashlib.sha256(key.encode()).digest() * (20 + int(key[:2], 16) % 40)


async def main(directory: str, max_bytes: int, worker: int, count: int) -> None:
    cache = ResultCache(directory, max_bytes=max_bytes)
    stats = {"puts": 0, "hits": 0, "misses": 0, "bad": 0}
    for i in range(count):
        # Half the keys are shared with the other worker, half are its own.
        key = hashlib.sha256(f"{i if i % 2 else f'{worker}-{i}'}".encode()).hexdigest()
        await cache.put(key, [(".png", payload(key)), (".png", payload(key)[::-1])])
        stats["puts"] += 1
        probe = hashlib.sha256(f"{(i * 7) % (i + 1)}".encode()).hexdigest()
        entry = await cache.get_entry(probe)
        if entry is None:
            stats["misses"] += 1
        elif [data for _, data in entry.images] == [payload(probe), payload(probe)[::-1]]:
            stats["hits"] += 1
        else:
            stats["bad"] += 1
    print(json.dumps(stats))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
