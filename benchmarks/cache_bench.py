"""ResultCache put/get time as the cache grows: ``python benchmarks/cache_bench.py``.

Fills one cache step by step (100 → 20,000 entries by default) and, at each size, times
``samples`` more puts and as many gets of random existing keys (each call through the async
API, so the thread hop is included). A last step runs at the byte limit, where every put also
evicts the least recently used entry. Flat lines are the point: the old cache rescanned
every entry on each put (7.7 ms at 500 entries, 92 ms at 6,000).

Writes ``benchmarks/results/cache.json`` and ``cache.md`` (machine and command included).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dreamgen_async.cache import ResultCache

RESULTS = Path(__file__).with_name("results")
ENTRY = 1024  # bytes per entry: one small "image"


def key(n: int) -> str:
    return f"{n:064x}"


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": statistics.median(ordered) * 1000,
        "p95_ms": ordered[int(len(ordered) * 0.95) - 1] * 1000,
    }


async def measure(sizes: list[int], samples: int, directory: Path) -> list[dict[str, Any]]:
    data = os.urandom(ENTRY)
    largest = sizes[-1]
    # Room for every entry until the last step, which runs at the limit (each put evicts).
    cache = ResultCache(directory, max_bytes=(largest + samples) * ENTRY)
    rows = []
    filled = 0
    rng = random.Random(1)

    async def timed_puts() -> list[float]:
        """``samples`` puts of new entries, each timed."""
        nonlocal filled
        puts = []
        for _ in range(samples):
            started = time.perf_counter()
            await cache.put(key(filled), [(".png", data)])
            puts.append(time.perf_counter() - started)
            filled += 1
        return puts

    for size in sizes:
        while filled < size:
            await cache.put(key(filled), [(".png", data)])
            filled += 1
        puts = await timed_puts()
        gets = []
        for _ in range(samples):
            wanted = key(rng.randrange(filled))
            started = time.perf_counter()
            await cache.get_entry(wanted)
            gets.append(time.perf_counter() - started)
        rows.append({"entries": size, "put": summary(puts), "get": summary(gets)})
        print(f"{size:>6} entries  put {rows[-1]['put']}  get {rows[-1]['get']}", flush=True)
    # At the limit: every put evicts the least recently used entry.
    cache.max_bytes = cache.size()
    puts = await timed_puts()
    rows.append({"entries": cache.count(), "put_evicting": summary(puts)})
    print(f"{rows[-1]['entries']:>6} entries  put+evict {rows[-1]['put_evicting']}")
    return rows


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# ResultCache: put/get time by cache size",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}  ",
        f"Date: {report['date']}",
        "",
        "| entries | put median (ms) | put p95 (ms) | get median (ms) | get p95 (ms) |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in report["rows"]:
        if "put" in row:
            put, get = row["put"], row["get"]
            lines.append(
                f"| {row['entries']:,} | {put['median_ms']:.2f} | {put['p95_ms']:.2f} "
                f"| {get['median_ms']:.2f} | {get['p95_ms']:.2f} |"
            )
        else:
            put = row["put_evicting"]
            lines.append(
                f"| {row['entries']:,} (at the limit, each put evicts) | "
                f"{put['median_ms']:.2f} | {put['p95_ms']:.2f} | | |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="100,1000,2000,5000,10000,20000", help="comma-separated sizes"
    )
    parser.add_argument("--samples", type=int, default=200, help="timed calls per size")
    parser.add_argument("--dir", type=Path, default=None, help="where the cache goes")
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    with tempfile.TemporaryDirectory(prefix="cache-bench-", dir=args.dir) as scratch:
        rows = asyncio.run(measure(sizes, args.samples, Path(scratch) / "cache"))
    report = {
        "command": "python " + " ".join(sys.argv),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, SQLite {__import__('sqlite3').sqlite_version}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "rows": rows,
    }
    text = markdown(report)
    print(text)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "cache.json").write_text(json.dumps(report, indent=2) + "\n")
        (RESULTS / "cache.md").write_text(text)


if __name__ == "__main__":
    main()
