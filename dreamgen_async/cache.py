"""A content-addressed on-disk cache of generated images.

Keys are SHA-256 digests of the canonical request (the workflow with its input image named
by content hash, so upload names do not matter). Only deterministic requests — an explicit
seed — are cached. Each entry is a folder of image files written atomically (a temporary
folder renamed into place); the least recently used entries are evicted past ``max_bytes``.
File work runs in a thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["ResultCache", "cache_key"]


def cache_key(workflow: Mapping[str, Any], input_hash: str | None) -> str:
    """The cache key of a workflow whose LoadImage input (if any) has content ``input_hash``."""
    canonical = {}
    for node_id, node in workflow.items():
        node = dict(node)
        node.pop("_meta", None)
        if node.get("class_type") == "LoadImage" and input_hash is not None:
            node = {**node, "inputs": {**node.get("inputs", {}), "image": input_hash}}
        canonical[node_id] = node
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class ResultCache:
    """Images by request key, on disk, bounded by ``max_bytes`` (LRU by access time).

    Safe to share between the coroutines of one process; entries appear atomically, so a
    reader never sees half an entry.
    """

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int = 1 << 30) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"ResultCache({str(self.directory)!r}, max_bytes={self.max_bytes})"

    def _entry(self, key: str) -> Path:
        return self.directory / key[:2] / key

    async def get(self, key: str) -> list[Path] | None:
        """The cached image files of ``key`` (in output order), or ``None``; marks it used."""
        return await asyncio.to_thread(self._get, key)

    def _get(self, key: str) -> list[Path] | None:
        entry = self._entry(key)
        try:
            files = sorted(p for p in entry.iterdir() if not p.name.startswith("."))
            now = time.time()
            os.utime(entry, (now, now))
        except FileNotFoundError:
            return None
        return files or None

    async def put(self, key: str, images: Sequence[tuple[str, bytes]]) -> None:
        """Store ``(suffix, data)`` images under ``key``, then evict past ``max_bytes``."""
        async with self._lock:
            await asyncio.to_thread(self._put, key, images)

    def _put(self, key: str, images: Sequence[tuple[str, bytes]]) -> None:
        entry = self._entry(key)
        if entry.exists():
            return
        entry.parent.mkdir(parents=True, exist_ok=True)
        staging = entry.parent / f".{key}.{uuid.uuid4().hex}.tmp"
        staging.mkdir()
        try:
            for i, (suffix, data) in enumerate(images):
                (staging / f"{i:04d}{suffix}").write_bytes(data)
            os.replace(staging, entry)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not entry.exists():
                raise
        self._evict()

    def _evict(self) -> None:
        entries = []
        total = 0
        for entry in self.directory.glob("??/*"):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            size = sum(f.stat().st_size for f in entry.iterdir())
            entries.append((entry.stat().st_mtime, size, entry))
            total += size
        for _, size, entry in sorted(entries):
            if total <= self.max_bytes:
                break
            shutil.rmtree(entry, ignore_errors=True)
            total -= size

    def size(self) -> int:
        """Bytes held by the cache now."""
        return sum(f.stat().st_size for f in self.directory.glob("??/*/*") if f.is_file())
