"""ResultCache on its SQLite index: LRU eviction, timings, and two processes sharing one cache."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from _cache_worker import payload
from hypothesis import given, settings
from hypothesis import strategies as st

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


#: Keys are kept (cache, journal, file names): the same request must keep its key.
GOLDEN_GRAPH = {
    "1": {
        "class_type": "LoadImage",
        "inputs": {"image": "dreamgen/abc.png"},
        "_meta": {"title": "Load"},
    },
    "2": {
        "class_type": "KSampler",
        "inputs": {"seed": 7, "steps": 4, "model": ["3", 0], "latent_image": ["1", 0]},
        "_meta": {"title": "Sampler"},
    },
    "3": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "flux1-schnell"}},
    "4": {"class_type": "RandomNoise", "inputs": {"noise_seed": 7}, "is_changed": ["x"]},
}


@pytest.mark.parametrize(
    ("input_hash", "drawn_seed", "expected"),
    [
        (None, None, "6eb241405bda15cb3fdc8342e179465262140b7377f2a00c88dc4c2fef1b0d46"),
        ("ab" * 32, None, "38d70d0b43b00b60725039b44e63a58ac30721766c0d0b89620da4fbda6c7d0f"),
        (None, 7, "6e3fdfc3e694a278813f7075e457c6bf535c6b2ebb0f09d28812225a93ed9069"),
        ("ab" * 32, 7, "50c2295514697f0bd446cba73f7cf36cebfbc28b024e447cf9b251980057ad6b"),
    ],
)
def test_a_request_keeps_its_key_across_versions(
    input_hash: str | None, drawn_seed: int | None, expected: str
) -> None:
    assert request_key(GOLDEN_GRAPH, input_hash, drawn_seed) == expected


def _canonical_as_first_written(
    workflow: dict[str, Any], input_hash: str | None, drawn_seed: int | None
) -> dict[str, Any]:
    """The key's canonical form as version 1 computed it (every node and input copied)."""
    canonical = {}
    for node_id, node in workflow.items():
        node = dict(node)
        node.pop("_meta", None)
        inputs = dict(node.get("inputs", {}))
        if node.get("class_type") == "LoadImage" and input_hash is not None:
            inputs["image"] = input_hash
        if drawn_seed is not None:
            for name in ("seed", "noise_seed"):
                if inputs.get(name) == drawn_seed:
                    inputs[name] = "<random>"
        node["inputs"] = inputs
        canonical[node_id] = node
    return canonical


_values = st.one_of(st.integers(0, 9), st.text("ab", max_size=2), st.lists(st.integers(0, 3)))
_nodes = st.fixed_dictionaries(
    {"class_type": st.sampled_from(["LoadImage", "KSampler", "RandomNoise"])},
    optional={
        "inputs": st.dictionaries(st.sampled_from(["seed", "noise_seed", "image", "x"]), _values),
        "_meta": st.just({"title": "t"}),
        "extra": _values,
    },
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from("123"), _nodes, max_size=3),
    st.sampled_from([None, "h" * 64]),
    st.sampled_from([None, 0, 3]),
)
def test_the_key_is_the_hash_of_the_first_canonical_form(
    graph: dict[str, Any], input_hash: str | None, drawn_seed: int | None
) -> None:
    before = copy.deepcopy(graph)
    text = json.dumps(
        _canonical_as_first_written(graph, input_hash, drawn_seed),
        sort_keys=True,
        separators=(",", ":"),
    )
    assert request_key(graph, input_hash, drawn_seed) == hashlib.sha256(text.encode()).hexdigest()
    assert graph == before  # the request's own graph is left as it was


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
