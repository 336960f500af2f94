"""ResultCache on its SQLite index: LRU eviction, timings, and two processes sharing one cache."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from pathlib import Path

import pytest
from _cache_worker import payload

from dreamgen_async.cache import ResultCache, request_key

WORKER = Path(__file__).with_name("_cache_worker.py")


def key(n: int) -> str:
    return f"{n:064x}"


async def test_least_recently_used_entries_go_first(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path / "cache", max_bytes=3_000)
    for n in range(3):
        await cache.put(key(n), [(".png", bytes(1000))])
    assert await cache.get(key(0)) is not None  # 0 is now the most recently used
    await cache.put(key(3), [(".png", bytes(1000))])
    assert await cache.get(key(1)) is None  # the least recently used went
    for n in (0, 2, 3):
        assert await cache.get(key(n)) is not None
    assert cache.size() == 3_000
    assert cache.count() == 3
    assert not (tmp_path / "cache" / key(1)[:2] / key(1)).exists()


async def test_an_entry_bigger_than_the_cache_is_kept_alone(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path / "cache", max_bytes=100)
    await cache.put(key(1), [(".png", bytes(50))])
    await cache.put(key(2), [(".png", bytes(500))])
    assert await cache.get(key(1)) is None
    entry = await cache.get_entry(key(2))
    assert entry is not None
    assert entry.images == ((".png", bytes(500)),)


async def test_a_hit_hands_back_the_original_timings(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path / "cache")
    await cache.put(key(1), [(".png", b"a"), (".jpg", b"b")], (1.0, 2.0, None, 4.0, 5.0))
    await cache.put(key(2), [(".png", b"c")])
    await cache.put(key(1), [(".png", b"ignored")])  # present: left as it is
    one = await cache.get_entry(key(1))
    two = await cache.get_entry(key(2))
    assert one is not None
    assert two is not None
    assert one.images == ((".png", b"a"), (".jpg", b"b"))
    assert one.timings == (1.0, 2.0, None, 4.0, 5.0)
    assert two.timings is None
    assert await cache.get_entry(key(3)) is None
    paths = await cache.get(key(1))
    assert paths is not None
    assert [p.read_bytes() for p in paths] == [b"a", b"b"]


def test_a_drawn_seed_does_not_change_the_request_key() -> None:
    graph = {"1": {"class_type": "KSampler", "inputs": {"seed": 123, "steps": 4}}}
    other = {"1": {"class_type": "KSampler", "inputs": {"seed": 456, "steps": 4}}}
    assert request_key(graph, None, 123) == request_key(other, None, 456)
    assert request_key(graph, None) != request_key(other, None)


async def run_workers(
    directory: Path, max_bytes: int, count: int, workers: int, mode: str = ""
) -> list[dict[str, int]]:
    """Run ``workers`` cache worker processes (see ``_cache_worker.py``) and return their stats.

    With ``--barrier`` every worker is released at once, when all are ready; with
    ``--lockstep``, before each of their ``count`` puts.
    """
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKER),
            str(directory),
            str(max_bytes),
            str(worker),
            str(count),
            *([mode] if mode else []),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for worker in range(1, workers + 1)
    ]
    try:
        for _ in range({"--barrier": 1, "--lockstep": count}.get(mode, 0)):
            if not await release(procs):
                break  # one died: its stderr is shown below
    finally:
        for proc in procs:  # the others stop waiting for a barrier: no more go lines
            assert proc.stdin is not None
            proc.stdin.close()
        outputs = [await proc.communicate() for proc in procs]
    stats = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()
        stats.append(json.loads(out.splitlines()[-1]))
    return stats


async def release(procs: list[asyncio.subprocess.Process]) -> bool:
    """Wait until every worker says ``ready``, then let them all go; ``False`` if one died."""
    for proc in procs:
        assert proc.stdout is not None
        if await proc.stdout.readline() != b"ready\n":
            return False
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
    return True


def check_cache_files(directory: Path, max_bytes: int) -> int:
    """Check the index against the files (and the files against their keys); the entries."""
    db = sqlite3.connect(directory / "index.sqlite")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = db.execute("SELECT key, size, files FROM entries").fetchall()
        (total,) = db.execute("SELECT bytes FROM totals").fetchone()
    finally:
        db.close()
    assert total == sum(size for _, size, _ in rows) <= max_bytes
    for entry_key, size, names in rows:
        folder = directory / entry_key[:2] / entry_key
        data = [(folder / name).read_bytes() for name in json.loads(names)]
        assert data == [payload(entry_key), payload(entry_key)[::-1]]
        assert size == sum(map(len, data))
    # Nothing on disk that the index does not know: no orphan, no staging, no trash.
    on_disk = {p.name for sub in directory.iterdir() if sub.is_dir() for p in sub.iterdir()}
    assert on_disk == {entry_key for entry_key, _, _ in rows}
    return len(rows)


@pytest.mark.slow
async def test_two_processes_share_one_cache_without_corruption(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    max_bytes = 60_000  # ~25 entries: both processes evict all the time
    for stats in await run_workers(directory, max_bytes, 300, 2):
        assert stats["puts"] == 300
        assert stats["bad"] == 0  # every hit had exactly the bytes stored under its key
        assert stats["hits"] > 0
    check_cache_files(directory, max_bytes)


@pytest.mark.slow
async def test_four_processes_starting_together_on_a_fresh_cache_all_succeed(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "cache"
    max_bytes = 60_000
    for stats in await run_workers(directory, max_bytes, 100, 4, "--barrier"):
        assert stats["puts"] == 100
        assert stats["bad"] == 0
    check_cache_files(directory, max_bytes)


async def test_processes_opening_a_fresh_cache_at_the_same_instant_never_fail(
    tmp_path: Path,
) -> None:
    # 100 times, 4 processes open one new cache folder at once and store the same entry:
    # the first connections race to switch the new index to WAL mode. Before the retry in
    # storage.open_database, about one round in five failed with "database is locked".
    for stats in await run_workers(tmp_path, 1 << 20, 100, 4, "--lockstep"):
        assert stats == {"puts": 100, "hits": 100, "misses": 0, "bad": 0}
    for i in range(100):
        assert check_cache_files(tmp_path / str(i), 1 << 20) == 1
