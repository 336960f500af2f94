"""A content-addressed on-disk cache of generated images, indexed by SQLite.

Keys are SHA-256 digests of the canonical request (the workflow with its input image named
by content hash, so upload names do not matter). Each entry is a folder of image files
written atomically (a temporary folder renamed into place); an SQLite index beside them
(``index.sqlite``, WAL mode) holds each entry's size, its last use and its original timings,
plus the running total of bytes. So ``put``, ``get`` and eviction are a few indexed
statements each, whatever the size of the cache (no directory scan, ever), and several
processes can share one cache: SQLite serialises their writes, and a reader that loses a
race with another process's eviction sees a miss, never half an entry.

Every call runs in a thread (``asyncio.to_thread``) with its own short-lived connection, so
the event loop never blocks and nothing needs closing. Any failure to use the folder or the
index (read-only, a file in the way, a full disk, a damaged index) is a
:class:`~dreamgen_async.errors.CacheError` naming the folder, never a raw ``OSError`` or
``sqlite3`` error.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dreamgen_async.errors import CacheError
from dreamgen_async.storage import make_folder, open_database, translated

__all__ = ["CacheEntry", "ResultCache", "cache_key", "request_key"]

_SEED_INPUTS = ("seed", "noise_seed")
_RANDOM = "<random>"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    last_used REAL NOT NULL,
    files TEXT NOT NULL,
    timings TEXT
);
CREATE INDEX IF NOT EXISTS entries_by_use ON entries (last_used);
CREATE TABLE IF NOT EXISTS totals (id INTEGER PRIMARY KEY CHECK (id = 0), bytes INTEGER NOT NULL);
INSERT OR IGNORE INTO totals (id, bytes) VALUES (0, 0);
"""


def _canonical(
    workflow: Mapping[str, Any], input_hash: str | None, drawn_seed: int | None
) -> dict[str, Any]:
    """What the key hashes: each node without its ``_meta``, a LoadImage's image as the
    input's hash, a drawn seed as ``<random>``. Inputs are copied only where one changes."""
    canonical = {}
    for node_id, node in workflow.items():
        inputs = node.get("inputs", {})
        changes = {}
        if input_hash is not None and node.get("class_type") == "LoadImage":
            changes["image"] = input_hash
        if drawn_seed is not None:
            for name in _SEED_INPUTS:
                if inputs.get(name) == drawn_seed:
                    changes[name] = _RANDOM
        copy = {key: value for key, value in node.items() if key != "_meta"}
        copy["inputs"] = {**inputs, **changes} if changes else inputs
        canonical[node_id] = copy
    return canonical


def cache_key(workflow: Mapping[str, Any], input_hash: str | None) -> str:
    """The cache key of a workflow whose LoadImage input (if any) has content ``input_hash``."""
    return request_key(workflow, input_hash)


def request_key(
    workflow: Mapping[str, Any], input_hash: str | None, drawn_seed: int | None = None
) -> str:
    """The key of a request: the same request gives the same key in every run.

    ``drawn_seed`` is the seed the builder drew for a request that had none: it is left out
    (a request without a seed is the same request whatever seed a run draws). For a request
    with an explicit seed this is :func:`cache_key`.
    """
    text = json.dumps(
        _canonical(workflow, input_hash, drawn_seed), sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One cache hit: the images (``(suffix, bytes)`` in output order) and how they were made.

    ``timings`` are the original run's (``submitted, queued, started, finished, downloaded``
    as ``time.time()`` values, any of them ``None``), or ``None`` when the entry was stored
    without them. ``nodes`` are the ids of the nodes that made each image, or ``()`` when
    the entry was stored without them (by an earlier version).
    """

    images: tuple[tuple[str, bytes], ...]
    timings: tuple[float | None, ...] | None
    nodes: tuple[str, ...] = ()


class ResultCache:
    """Images by request key, on disk, bounded by ``max_bytes`` (least recently used evicted).

    Safe to share between coroutines, threads and processes (two CLI runs on one cache at
    once). ``put``, ``get`` and eviction cost the same at 100 entries or 100,000.

    Args:
        directory: The cache folder (created if missing).
        max_bytes: Past this many bytes of images, the least recently used entries go.
    """

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int = 1 << 30) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._ready = False

    def __repr__(self) -> str:
        return f"ResultCache({str(self.directory)!r}, max_bytes={self.max_bytes})"

    def _entry(self, key: str) -> Path:
        return self.directory / key[:2] / key

    def _translated(self) -> contextlib.AbstractContextManager[None]:
        """Any SQLite or OS error inside becomes a :class:`CacheError` naming the folder."""
        return translated(CacheError, self.directory, "the result cache")

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection for one call (autocommit mode: transactions are explicit)."""
        if self._ready:
            db = sqlite3.connect(self._index_file, timeout=60.0, isolation_level=None)
            try:
                db.execute("PRAGMA busy_timeout = 60000")
                db.execute("PRAGMA synchronous = NORMAL")
            except BaseException:
                db.close()
                raise
        else:  # this object's first: the folder, WAL mode and the tables, racing other processes
            make_folder(self.directory)
            db = open_database(self._index_file, schema=_SCHEMA, synchronous="NORMAL")
            self._ready = True
        try:
            yield db
        finally:
            db.close()

    @property
    def _index_file(self) -> Path:
        return self.directory / "index.sqlite"

    # ------------------------------------------------------------------ reading

    async def get(self, key: str) -> list[Path] | None:
        """The cached image files of ``key`` (in output order), or ``None``; marks it used.

        Another process may evict the entry right after: prefer :meth:`get_entry`, which
        reads the bytes before answering.
        """
        return await asyncio.to_thread(self._get_paths, key)

    async def get_entry(self, key: str) -> CacheEntry | None:
        """The images of ``key`` and their original timings, or ``None``; marks it used."""
        return await asyncio.to_thread(self._get_entry, key)

    def _lookup(
        self, key: str
    ) -> tuple[list[Path], tuple[float | None, ...] | None, tuple[str, ...]] | None:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(
                    "SELECT files, timings FROM entries WHERE key = ?", (key,)
                ).fetchone()
                if row is not None:
                    db.execute("UPDATE entries SET last_used = ? WHERE key = ?", (time.time(), key))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        if row is None:
            return None
        entry = self._entry(key)
        # Each file is a name, or (since node labels) a [name, node id] pair.
        files = [(f, None) if isinstance(f, str) else (f[0], f[1]) for f in json.loads(row[0])]
        paths = [entry / name for name, _ in files]
        nodes = tuple(node for _, node in files if node is not None)
        timings = tuple(json.loads(row[1])) if row[1] else None
        return paths, timings, nodes if len(nodes) == len(files) else ()

    def _get_paths(self, key: str) -> list[Path] | None:
        with self._translated():
            found = self._lookup(key)
        if found is None or not all(p.is_file() for p in found[0]):
            return None
        return found[0] or None

    def _get_entry(self, key: str) -> CacheEntry | None:
        with self._translated():
            found = self._lookup(key)
            if found is None or not found[0]:
                return None
            paths, timings, nodes = found
            try:
                images = tuple((p.suffix, p.read_bytes()) for p in paths)
            except FileNotFoundError:  # evicted by another process in between: a miss
                return None
        return CacheEntry(images, timings, nodes)

    # ------------------------------------------------------------------ writing

    async def put(
        self,
        key: str,
        images: Sequence[tuple[str, bytes]],
        timings: Sequence[float | None] | None = None,
        nodes: Sequence[str] | None = None,
    ) -> None:
        """Store ``(suffix, data)`` images under ``key``, then evict past ``max_bytes``.

        A key already present is left as it is (same key, same images). ``timings`` (the
        original run's, see :class:`CacheEntry`) and ``nodes`` (the id of the node that made
        each image) are handed back on every hit.
        """
        if nodes is not None and len(nodes) != len(images):
            raise ValueError("nodes must name one node per image")
        await asyncio.to_thread(self._put, key, list(images), timings, nodes)

    def _put(
        self,
        key: str,
        images: list[tuple[str, bytes]],
        timings: Sequence[float | None] | None,
        nodes: Sequence[str] | None = None,
    ) -> None:
        with self._translated():
            self._put_entry(key, images, timings, nodes)

    def _put_entry(
        self,
        key: str,
        images: list[tuple[str, bytes]],
        timings: Sequence[float | None] | None,
        nodes: Sequence[str] | None,
    ) -> None:
        entry = self._entry(key)
        entry.parent.mkdir(parents=True, exist_ok=True)
        staging = entry.parent / f".{key}.{uuid.uuid4().hex}.tmp"
        staging.mkdir()
        names: list[Any] = []
        try:
            for i, (suffix, data) in enumerate(images):
                name = f"{i:04d}{suffix}"
                (staging / name).write_bytes(data)
                names.append(name if nodes is None else [name, nodes[i]])
            size = sum(len(data) for _, data in images)
            evicted = self._index(key, entry, staging, names, size, timings)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        for path in evicted:
            shutil.rmtree(path, ignore_errors=True)

    def _index(
        self,
        key: str,
        entry: Path,
        staging: Path,
        names: list[Any],
        size: int,
        timings: Sequence[float | None] | None,
    ) -> list[Path]:
        """Under the index's write lock: move the entry in, count it, pick what to evict."""
        evicted: list[Path] = []
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                if db.execute("SELECT 1 FROM entries WHERE key = ?", (key,)).fetchone():
                    db.execute("COMMIT")
                    return evicted
                if entry.exists():  # left by a process that died before it committed
                    shutil.rmtree(entry, ignore_errors=True)
                os.replace(staging, entry)
                db.execute(
                    "INSERT INTO entries (key, size, last_used, files, timings) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (
                        key,
                        size,
                        time.time(),
                        json.dumps(names),
                        json.dumps(list(timings)) if timings is not None else None,
                    ),
                )
                db.execute("UPDATE totals SET bytes = bytes + ? WHERE id = 0", (size,))
                evicted = self._evict(db, key)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return evicted

    def _evict(self, db: sqlite3.Connection, keep: str) -> list[Path]:
        """Drop the least recently used entries until the total fits (oldest first, by index)."""
        evicted: list[Path] = []
        (total,) = db.execute("SELECT bytes FROM totals WHERE id = 0").fetchone()
        while total > self.max_bytes:
            rows = db.execute(
                "SELECT key, size FROM entries WHERE key != ? ORDER BY last_used LIMIT 16",
                (keep,),
            ).fetchall()
            if not rows:
                break
            for key, size in rows:
                if total <= self.max_bytes:
                    break
                db.execute("DELETE FROM entries WHERE key = ?", (key,))
                db.execute("UPDATE totals SET bytes = bytes - ? WHERE id = 0", (size,))
                total -= size
                # Renamed away under the lock, deleted after it: a put of the same key by
                # another process right after the commit cannot lose its fresh files.
                entry = self._entry(key)
                trash = entry.parent / f".{key}.{uuid.uuid4().hex}.evicted"
                with contextlib.suppress(FileNotFoundError):
                    os.replace(entry, trash)
                    evicted.append(trash)
        return evicted

    def size(self) -> int:
        """Bytes held by the cache now (from the index: no scan; blocking).

        Raises:
            CacheError: the cache's folder or index cannot be read.
        """
        with self._translated(), self._connect() as db:
            (total,) = db.execute("SELECT bytes FROM totals WHERE id = 0").fetchone()
        return int(total)

    def count(self) -> int:
        """How many entries the cache holds (blocking).

        Raises:
            CacheError: the cache's folder or index cannot be read.
        """
        with self._translated(), self._connect() as db:
            (count,) = db.execute("SELECT COUNT(*) FROM entries").fetchone()
        return int(count)
