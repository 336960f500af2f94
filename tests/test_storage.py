"""Unwritable folders, missing parents and full disks: the journal, the cache and
``check_writable`` name the path in a ``StorageError``, never a raw ``OSError``/``sqlite3``.

Making a folder read-only is done faithfully for who runs the tests: as root (who ignores
permission bits, so ``chmod`` would prove nothing), the folder is bind-mounted read-only on
itself, which is what a read-only volume is (``EROFS``); as anyone else, ``chmod 555`` is
(``EACCES``). A full disk is a small tmpfs, for root only. Where neither is possible the
test is skipped; the "parent is a regular file" cases run everywhere.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dreamgen_async import CacheError, JournalError, ResultCache, StorageError
from dreamgen_async.journal import BatchJournal, read_journal_meta
from dreamgen_async.storage import check_writable

ROOT = os.geteuid() == 0


def _mount(*args: str) -> bool:
    try:
        done = subprocess.run(["mount", *args], capture_output=True, check=False)
    except OSError:
        return False
    return done.returncode == 0


def _umount(folder: Path) -> None:
    subprocess.run(["umount", str(folder)], capture_output=True, check=True)


@pytest.fixture
def read_only() -> Iterator[Callable[[Path], None]]:
    """Make a folder read-only (contents kept) until the test ends."""
    undo: list[Callable[[], None]] = []

    def make(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        if not ROOT:
            folder.chmod(0o555)
            undo.append(lambda: folder.chmod(0o755))
        elif _mount("--bind", str(folder), str(folder)):
            undo.append(lambda: _umount(folder))
            if not _mount("-o", "remount,bind,ro", str(folder)):
                pytest.skip("cannot remount a bind mount read-only here")
        else:
            pytest.skip("root, and no mount: cannot make a folder read-only here")

    yield make
    for step in reversed(undo):
        step()


@pytest.fixture
def small_disk() -> Iterator[Callable[[Path], Callable[[], None]]]:
    """Mount a 512 KiB tmpfs on a folder; returns a function that fills it to the last byte."""
    mounted: list[Path] = []

    def make(folder: Path) -> Callable[[], None]:
        folder.mkdir(parents=True, exist_ok=True)
        if not ROOT or not _mount("-t", "tmpfs", "-o", "size=512k", "tmpfs", str(folder)):
            pytest.skip("a full disk needs root and tmpfs")
        mounted.append(folder)

        def fill() -> None:
            with open(folder / "filler", "ab", buffering=0) as f:
                for size in (65536, 4096, 1):  # to the last byte
                    try:
                        while True:
                            f.write(bytes(size))
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise

        return fill

    yield make
    for folder in mounted:
        _umount(folder)


def is_refusal(error: StorageError) -> bool:
    """The OS's own words for a read-only folder, for who runs the tests."""
    return "Read-only file system" in str(error) or "Permission denied" in str(error)


# ---------------------------------------------------------------------------- check_writable


def test_check_writable_accepts_a_folder_and_one_still_to_create_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    (tmp_path / "out").mkdir()
    assert check_writable(tmp_path / "out") == tmp_path / "out"
    assert check_writable(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # nothing created, nothing left
    assert list((tmp_path / "out").iterdir()) == []


def test_check_writable_refuses_a_read_only_folder(
    tmp_path: Path, read_only: Callable[[Path], None]
) -> None:
    folder = tmp_path / "out"
    read_only(folder)
    with pytest.raises(StorageError) as caught:
        check_writable(folder)
    assert caught.value.path == str(folder)
    assert str(folder) in str(caught.value)
    assert is_refusal(caught.value)
    assert isinstance(caught.value.__cause__, OSError)
    # A folder to be created inside it is refused too, and names the folder asked about.
    with pytest.raises(StorageError) as caught:
        check_writable(folder / "run" / "1")
    assert caught.value.path == str(folder / "run" / "1")


def test_check_writable_refuses_a_path_under_a_regular_file(tmp_path: Path) -> None:
    file = tmp_path / "notes.txt"
    file.write_text("not a folder")
    for path in (file, file / "out", file / "out" / "deeper"):
        with pytest.raises(StorageError, match="is not a folder") as caught:
            check_writable(path)
        assert caught.value.path == str(path)


def test_check_writable_refuses_a_full_disk(
    tmp_path: Path, small_disk: Callable[[Path], Callable[[], None]]
) -> None:
    folder = tmp_path / "disk"
    fill = small_disk(folder)
    check_writable(folder)
    fill()
    with pytest.raises(StorageError, match="No space left") as caught:
        check_writable(folder)
    assert caught.value.path == str(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["filler"]  # the probe went


# ---------------------------------------------------------------------------- the journal


async def write_until_full(journal: BatchJournal) -> None:
    """Record requests until the disk refuses (whatever room the WAL had runs out)."""
    for n in range(1000):
        await journal.record_requests([(n, {"prompt": "x" * 4000})], replace=False)


async def test_a_journal_in_a_read_only_folder_is_a_journal_error(
    tmp_path: Path, read_only: Callable[[Path], None]
) -> None:
    folder = tmp_path / "out"
    read_only(folder)
    journal = folder / "batch.journal"
    with pytest.raises(JournalError) as caught:
        await BatchJournal.open(journal)
    assert caught.value.path == str(journal)
    assert is_refusal(caught.value)
    with pytest.raises(JournalError):  # a folder to be made inside it: the same
        await BatchJournal.open(folder / "sub" / "batch.journal")
    assert read_journal_meta(journal) == {}  # nothing there: nothing to resume


async def test_an_existing_journal_whose_folder_became_read_only_is_a_journal_error(
    tmp_path: Path, read_only: Callable[[Path], None]
) -> None:
    folder = tmp_path / "out"
    journal = folder / "batch.journal"
    async with await BatchJournal.open(journal) as opened:
        await opened.set_meta({"server": "http://x"})
    read_only(folder)
    with pytest.raises(JournalError) as caught:
        await BatchJournal.open(journal)
    assert caught.value.path == str(journal)


async def test_a_journal_under_a_regular_file_is_a_journal_error(tmp_path: Path) -> None:
    file = tmp_path / "out"
    file.write_text("a file where the output folder should be")
    journal = file / "batch.journal"
    with pytest.raises(JournalError) as caught:
        await BatchJournal.open(journal)
    assert caught.value.path == str(journal)
    assert "Not a directory" in str(caught.value)
    assert read_journal_meta(journal) == {}


async def test_a_full_disk_under_a_journal_is_a_journal_error_and_the_journal_survives(
    tmp_path: Path, small_disk: Callable[[Path], Callable[[], None]]
) -> None:
    folder = tmp_path / "disk"
    fill = small_disk(folder)
    journal = folder / "batch.journal"
    async with await BatchJournal.open(journal) as opened:
        await opened.begin("a", "a", 0)
        fill()
        with pytest.raises(JournalError) as caught:
            await write_until_full(opened)
        assert caught.value.path == str(journal)
        assert "full" in str(caught.value)
        (folder / "filler").unlink()
        await opened.failed("a", "the disk was full")  # usable again once there is room
    async with await BatchJournal.open(journal) as opened:
        assert [(i.item_key, i.state) for i in await opened.items()] == [("a", "failed")]


# ---------------------------------------------------------------------------- the cache


async def test_a_cache_in_a_read_only_folder_is_a_cache_error(
    tmp_path: Path, read_only: Callable[[Path], None]
) -> None:
    folder = tmp_path / "cache"
    read_only(folder)
    cache = ResultCache(folder)
    with pytest.raises(CacheError) as caught:
        await cache.put("ab" * 32, [(".png", b"x")])
    assert caught.value.path == str(folder)
    assert str(folder) in str(caught.value)
    with pytest.raises(CacheError):
        await cache.get_entry("ab" * 32)
    with pytest.raises(CacheError):
        cache.size()


async def test_an_existing_cache_made_read_only_is_a_cache_error(
    tmp_path: Path, read_only: Callable[[Path], None]
) -> None:
    folder = tmp_path / "cache"
    await ResultCache(folder).put("ab" * 32, [(".png", b"x")])
    read_only(folder)
    cache = ResultCache(folder)
    for call in (
        cache.get_entry("ab" * 32),  # a hit marks the entry used: a write
        cache.get("ab" * 32),
        cache.put("cd" * 32, [(".png", b"y")]),
    ):
        with pytest.raises(CacheError) as caught:
            await call
        assert caught.value.path == str(folder)


async def test_a_cache_under_a_regular_file_is_a_cache_error(tmp_path: Path) -> None:
    file = tmp_path / "cache"
    file.write_text("not a folder")
    cache = ResultCache(file / "inner")
    with pytest.raises(CacheError) as caught:
        await cache.put("ab" * 32, [(".png", b"x")])
    assert caught.value.path == str(file / "inner")
    with pytest.raises(CacheError):
        cache.count()


async def test_a_full_disk_under_a_cache_is_a_cache_error_and_leaves_it_whole(
    tmp_path: Path, small_disk: Callable[[Path], Callable[[], None]]
) -> None:
    folder = tmp_path / "disk"
    fill = small_disk(folder)
    cache = ResultCache(folder / "cache")
    await cache.put("ab" * 32, [(".png", b"first")])
    fill()
    with pytest.raises(CacheError, match=r"No space left|full") as caught:
        await cache.put("cd" * 32, [(".png", bytes(64_000))])
    assert caught.value.path == str(folder / "cache")
    (folder / "filler").unlink()
    entry = await cache.get_entry("ab" * 32)
    assert entry is not None
    assert entry.images == ((".png", b"first"),)
    assert await cache.get_entry("cd" * 32) is None
    assert cache.count() == 1
    assert cache.size() == len(b"first")
