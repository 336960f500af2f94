"""A batch's durable record: one SQLite file per batch, so a crash never costs a re-run.

Per item (a request of the batch, by its request key) the journal holds its state, the
server, the client_id and the prompt_id it was posted under, and the files it wrote::

    pending ──► posted ──► done
       │           │
       └───────────┴─────► failed          (any state may go back to posted on a rerun)

The prompt_id is committed *before* ``POST /prompt`` and the files *after* their atomic
write, so whenever the process dies, a rerun knows for each item: done (files checked:
skipped), posted (look the prompt up on its server: finished → download, queued or running →
wait, absent → run), or never posted (run). Every change is also appended to
``transitions``, the batch's history.

Over a :class:`~dreamgen_async.ComfyUIPool` the server is the one the pool bound the item to,
committed by the backend's ``before_post`` hook after binding and before the POST (and again,
as another ``posted`` transition, before the POST to another server on failover); the
``servers`` meta value lists the pool's servers, for ``dreamgen resume``.

"Files checked" means each file is still there with the size *and the SHA-256* it was
written with (:meth:`JournalItem.files_intact`): a file another run overwrote with other
bytes is not taken for done. Journals written before hashes were recorded (their file
records have no ``sha256``) cannot be checked that way: their done items count as not
intact, so a rerun collects them again from the server by prompt_id (a download while the
server keeps its history, a run otherwise) and records them with hashes.

Storage: the standard library's :mod:`sqlite3`, in WAL mode with ``synchronous=FULL`` (a
committed prompt_id survives a power cut, not only a crash), driven from one dedicated
thread per journal so the event loop never waits on the disk. A journal is held by one
process at a time (an advisory lock on ``<journal>.lock``; the OS drops it when the process
dies, however it dies).

Every failure to use the file or its folder (read-only, missing, full, not a journal) is a
:class:`~dreamgen_async.errors.JournalError` naming the journal, never a raw ``OSError`` or
``sqlite3`` error (the original is its ``__cause__``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, TypeVar

from dreamgen_async.errors import JournalError
from dreamgen_async.storage import make_folder, open_database, translated

try:  # POSIX; elsewhere the journal is simply not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "BatchJournal",
    "ItemState",
    "JournalFile",
    "JournalItem",
    "JournalRun",
    "file_sha256",
    "read_journal_meta",
    "read_journal_requests",
]

ItemState = Literal["pending", "posted", "done", "failed"]
T = TypeVar("T")

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS requests (idx INTEGER PRIMARY KEY, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    item_key TEXT PRIMARY KEY,
    request_key TEXT NOT NULL,
    idx INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'posted', 'done', 'failed')),
    server TEXT,
    client_id TEXT,
    prompt_id TEXT,
    seed INTEGER,
    files TEXT,
    cached INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS items_by_prompt ON items (prompt_id);
CREATE TABLE IF NOT EXISTS transitions (
    id INTEGER PRIMARY KEY,
    item_key TEXT NOT NULL,
    state TEXT NOT NULL,
    prompt_id TEXT,
    at REAL NOT NULL
);
"""


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's content, in hex (blocking: reads the whole file)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass(frozen=True, slots=True)
class JournalFile:
    """A file an item wrote, with its size and content hash when written.

    ``sha256`` is ``None`` in journals written before hashes were recorded.
    """

    path: str
    size: int
    sha256: str | None = None

    def intact(self) -> bool:
        """Whether the file still holds what was written: same size, same SHA-256.

        Blocking (reads the file when the size matches). A file recorded without a hash
        (an older journal) cannot be checked, so it is not intact.
        """
        try:
            if self.sha256 is None or os.stat(self.path).st_size != self.size:
                return False
            return file_sha256(self.path) == self.sha256
        except OSError:
            return False


@dataclass(frozen=True, slots=True)
class JournalItem:
    """One item of a batch, as the journal last recorded it."""

    item_key: str
    request_key: str
    index: int
    state: ItemState
    server: str | None
    client_id: str | None
    prompt_id: str | None
    seed: int | None
    files: tuple[JournalFile, ...]
    cached: bool
    error: str | None

    def files_intact(self) -> bool:
        """Whether every file of the item still holds the bytes this journal recorded.

        Each file is checked by size, then by SHA-256 (see :meth:`JournalFile.intact`):
        the question "is this item's output still the one we wrote?". Blocking: reads the
        files, so call it in a thread (``await asyncio.to_thread(item.files_intact)``).
        ``False`` for an item without files.
        """
        return bool(self.files) and all(f.intact() for f in self.files)


@dataclass(frozen=True, slots=True)
class JournalRun:
    """One run of a journaled batch (see :meth:`BatchJournal.begin_run`).

    ``id`` goes into the item keys of seedless requests, so each run draws its own seeds;
    ``resumed`` says this run finishes an earlier, unfinished one (same ``id``). ``id`` is
    ``""`` for an unfinished batch of a journal written before runs were recorded: its
    seedless items keep the keys they were recorded under.
    """

    id: str
    resumed: bool


def _item(row: sqlite3.Row) -> JournalItem:
    files = tuple(
        JournalFile(f["path"], f["size"], f.get("sha256")) for f in json.loads(row["files"] or "[]")
    )
    return JournalItem(
        item_key=row["item_key"],
        request_key=row["request_key"],
        index=row["idx"],
        state=row["state"],
        server=row["server"],
        client_id=row["client_id"],
        prompt_id=row["prompt_id"],
        seed=row["seed"],
        files=files,
        cached=bool(row["cached"]),
        error=row["error"],
    )


def _not_a_journal(exc: sqlite3.Error) -> bool:
    """Whether SQLite says the file is not a database (or a damaged one)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT)


def _connect(path: Path) -> sqlite3.Connection:
    """The journal's connection, its schema checked (blocking; errors raw but "not one")."""
    try:
        db = open_database(path, schema=_SCHEMA, synchronous="FULL")
    except sqlite3.Error as exc:
        if _not_a_journal(exc):
            raise JournalError(f"{path} is not a batch journal ({exc})", path=str(path)) from exc
        raise
    db.row_factory = sqlite3.Row
    try:
        row = db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
        if row is None:
            db.execute(
                "INSERT INTO meta (name, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
            )
        elif int(json.loads(row["value"])) > SCHEMA_VERSION:
            raise JournalError(
                f"{path} was written by a newer dreamgen_async (journal schema {row['value']})",
                path=str(path),
            )
    except BaseException:
        db.close()
        raise
    return db


def read_journal_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A journal's batch-wide values (server, client_id, output_dir, ...), or ``{}`` if none.

    Blocking and lock-free: for a command line deciding how to resume, before any loop runs.

    Raises:
        JournalError: the file exists but is not a journal, or cannot be read.
    """
    file = Path(path)
    with translated(JournalError, file, "cannot read the journal"):
        if not file.exists():
            return {}
    rows = _read_only(file, "SELECT name, value FROM meta")
    return {name: json.loads(value) for name, value in rows}


def read_journal_requests(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """A journal's recorded request specs, in batch order (blocking, lock-free).

    Raises:
        JournalError: there is no journal at ``path``, the file is not one, or it cannot
            be read.
    """
    file = Path(path)
    with translated(JournalError, file, "cannot read the journal"):
        exists = file.is_file()
    if not exists:
        raise JournalError(f"no batch journal at {file}", path=str(file))
    rows = _read_only(file, "SELECT spec FROM requests ORDER BY idx")
    return [json.loads(spec) for (spec,) in rows]


def _read_only(file: Path, query: str) -> list[Any]:
    """``query``'s rows from the journal ``file``, opened read-only (no lock taken).

    An empty database (a journal another process is creating this instant) has no rows.

    Raises:
        JournalError: the file is not a journal, or cannot be read.
    """
    with translated(JournalError, file, "cannot read the journal"):
        try:
            db = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True, timeout=60.0)
            try:
                try:
                    return db.execute(query).fetchall()
                except sqlite3.OperationalError:
                    if db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone() == (0,):
                        return []  # no tables yet: being created
                    raise
            finally:
                db.close()
        except sqlite3.Error as exc:
            if not _not_a_journal(exc) and "no such table" not in str(exc):
                raise
            raise JournalError(f"{file} is not a batch journal ({exc})", path=str(file)) from exc


class BatchJournal:
    """The journal of one batch (see the module docstring). Open it with :meth:`open`.

    Every method runs its statements on the journal's own thread; cancelling a call stops
    the wait, not the write (it completes, or never started).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        self._lock: IO[str] | None = None

    def __repr__(self) -> str:
        state = "open" if self._executor is not None else "closed"
        return f"<BatchJournal {str(self.path)!r} {state}>"

    @classmethod
    async def open(cls, path: str | os.PathLike[str]) -> BatchJournal:
        """Open (or create) the journal at ``path`` and take its lock.

        Raises:
            JournalError: another process holds it, the file is not a journal, or the
                file or its folder cannot be written (read-only, not a folder, full).
        """
        journal = cls(path)
        journal._executor = ThreadPoolExecutor(1, thread_name_prefix="dreamgen-journal")
        try:
            await journal._call(journal._open)
        except BaseException:
            await journal.aclose()
            raise
        return journal

    def _open(self) -> None:
        make_folder(self.path.parent)
        lock = open(f"{self.path}.lock", "a+")  # noqa: SIM115 - held until aclose()
        if fcntl is not None:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                lock.close()
                raise JournalError(
                    f"{self.path} is in use by another process (one batch, one process)",
                    path=str(self.path),
                ) from exc
        self._lock = lock
        self._db = _connect(self.path)

    async def aclose(self) -> None:
        """Close the database and release the lock. Idempotent; safe while being cancelled."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        closing = asyncio.get_running_loop().run_in_executor(executor, self._close)
        try:
            await asyncio.shield(closing)
        finally:
            executor.shutdown(wait=False)

    def _close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.close()  # releases the flock

    async def __aenter__(self) -> BatchJournal:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise JournalError(f"the journal {self.path} is closed", path=str(self.path))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(self._run, fn, *args))

    def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` with every OS or SQLite error (read-only, disk full, I/O error, a
        damaged file) as one :class:`JournalError` naming the journal."""
        with translated(JournalError, self.path, "journal"):
            return fn(*args)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise JournalError(f"the journal {self.path} is closed", path=str(self.path))
        return self._db

    @contextlib.contextmanager
    def _write(self) -> Any:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # ------------------------------------------------------------------ batch-wide

    async def meta(self) -> dict[str, Any]:
        """The batch-wide values, by name."""
        return await self._call(self._meta)

    def _meta(self) -> dict[str, Any]:
        rows = self._conn().execute("SELECT name, value FROM meta").fetchall()
        return {row["name"]: json.loads(row["value"]) for row in rows}

    async def begin_run(self) -> JournalRun:
        """Start this run of the batch: resume the last run if it did not finish, else a new one.

        "Finished" is what :meth:`end_run` records. A new run gets a new ``id`` (so the
        seedless requests of a rerun are new requests, with new seeds and new files); a
        resumed one keeps the last run's ``id`` (so its seedless items are found again, and
        their posted prompts collected). A journal with no run recorded and items not all
        done (written before runs were) resumes with ``id == ""``.
        """
        return await self._call(self._begin_run)

    def _begin_run(self) -> JournalRun:
        with self._write() as db:
            meta = dict(db.execute("SELECT name, value FROM meta WHERE name LIKE 'run%'"))
            if "run" in meta and not json.loads(meta.get("run_done", "false")):
                return JournalRun(json.loads(meta["run"]), resumed=True)
            if (
                "run" not in meta
                and db.execute("SELECT 1 FROM items WHERE state != 'done' LIMIT 1").fetchone()
            ):
                return JournalRun("", resumed=True)
            run = JournalRun(uuid.uuid4().hex[:12], resumed=False)
            db.executemany(
                "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
                [("run", json.dumps(run.id)), ("run_done", "false")],
            )
        return run

    async def end_run(self) -> None:
        """Record that the current run finished: every request done, none failed or left.

        The next :meth:`begin_run` then starts a new run. Not called (interrupted, a failure,
        cancelled), the next run resumes this one.
        """
        await self._call(self._set_meta, {"run_done": True}, False)

    async def set_meta(self, values: dict[str, Any], *, keep: bool = False) -> None:
        """Record batch-wide values (JSON); with ``keep=True``, only those not yet recorded."""
        await self._call(self._set_meta, values, keep)

    def _set_meta(self, values: dict[str, Any], keep: bool) -> None:
        verb = "INSERT OR IGNORE" if keep else "INSERT OR REPLACE"
        with self._write() as db:
            db.executemany(
                f"{verb} INTO meta (name, value) VALUES (?, ?)",
                [(name, json.dumps(value)) for name, value in values.items()],
            )

    async def record_requests(
        self, specs: Sequence[tuple[int, dict[str, Any]]], *, replace: bool
    ) -> None:
        """Record the batch's requests ``(index, spec)`` (what ``dreamgen resume`` reruns).

        With ``replace=True`` they replace every recorded request (the batch's full list).
        """
        await self._call(self._record_requests, specs, replace)

    def _record_requests(self, specs: Sequence[tuple[int, dict[str, Any]]], replace: bool) -> None:
        with self._write() as db:
            if replace:
                db.execute("DELETE FROM requests")
            db.executemany(
                "INSERT OR REPLACE INTO requests (idx, spec) VALUES (?, ?)",
                [(index, json.dumps(spec)) for index, spec in specs],
            )

    async def requests(self) -> list[dict[str, Any]]:
        """The recorded requests' specs, in batch order."""
        return await self._call(self._requests)

    def _requests(self) -> list[dict[str, Any]]:
        rows = self._conn().execute("SELECT spec FROM requests ORDER BY idx").fetchall()
        return [json.loads(row["spec"]) for row in rows]

    # ------------------------------------------------------------------ items

    async def item(self, item_key: str) -> JournalItem | None:
        """The item ``item_key`` as last recorded, or ``None``."""
        return await self._call(self._item, item_key)

    def _item(self, item_key: str) -> JournalItem | None:
        row = self._conn().execute("SELECT * FROM items WHERE item_key = ?", (item_key,)).fetchone()
        return _item(row) if row is not None else None

    async def items(self) -> list[JournalItem]:
        """Every item, in batch order."""
        return await self._call(self._items)

    def _items(self) -> list[JournalItem]:
        rows = self._conn().execute("SELECT * FROM items ORDER BY idx, item_key").fetchall()
        return [_item(row) for row in rows]

    async def counts(self) -> dict[str, int]:
        """How many items are in each state."""
        return await self._call(self._counts)

    def _counts(self) -> dict[str, int]:
        rows = self._conn().execute("SELECT state, COUNT(*) FROM items GROUP BY state")
        return {str(state): int(count) for state, count in rows.fetchall()}

    async def begin(self, item_key: str, request_key: str, index: int) -> JournalItem:
        """The item's record, created ``pending`` if new (its index updated if not)."""
        return await self._call(self._begin, item_key, request_key, index)

    def _begin(self, item_key: str, request_key: str, index: int) -> JournalItem:
        with self._write() as db:
            db.execute(
                "INSERT INTO items (item_key, request_key, idx, state, updated) "
                "VALUES (?, ?, ?, 'pending', ?) "
                "ON CONFLICT (item_key) DO UPDATE SET idx = excluded.idx",
                (item_key, request_key, index, time.time()),
            )
            row = db.execute("SELECT * FROM items WHERE item_key = ?", (item_key,)).fetchone()
        return _item(row)

    async def posted(
        self, item_key: str, prompt_id: str, server: str, client_id: str, seed: int | None
    ) -> None:
        """Commit the prompt_id an item is about to be posted under (call before the POST)."""
        await self._call(
            self._transition,
            item_key,
            "posted",
            prompt_id,
            {
                "server": server,
                "client_id": client_id,
                "seed": seed,
                "error": None,
            },
        )

    async def done(
        self,
        item_key: str,
        prompt_id: str | None,
        files: Sequence[Path],
        *,
        cached: bool = False,
        seed: int | None = None,
        digests: Sequence[str] | None = None,
    ) -> None:
        """Record the files an item wrote, with their sizes and SHA-256 (call after their
        atomic write).

        ``digests`` are the SHA-256 (hex) of the bytes written, one per file, when the
        caller has them; otherwise the files are read back and hashed (on the journal's
        thread).
        """
        if digests is not None and len(digests) != len(files):
            raise ValueError(f"{len(files)} files but {len(digests)} digests")
        await self._call(self._done, item_key, prompt_id, list(files), cached, seed, digests)

    def _done(
        self,
        item_key: str,
        prompt_id: str | None,
        files: list[Path],
        cached: bool,
        seed: int | None,
        digests: Sequence[str] | None,
    ) -> None:
        hashes = list(digests) if digests is not None else [file_sha256(p) for p in files]
        records = [
            {"path": os.path.abspath(p), "size": p.stat().st_size, "sha256": digest}
            for p, digest in zip(files, hashes, strict=True)
        ]
        values: dict[str, Any] = {
            "files": json.dumps(records),
            "cached": int(cached),
            "error": None,
        }
        if seed is not None:
            values["seed"] = seed
        self._transition(item_key, "done", prompt_id, values)

    async def failed(self, item_key: str, error: str) -> None:
        """Record that an item failed (a rerun tries it again)."""
        await self._call(self._transition, item_key, "failed", None, {"error": error})

    def _transition(
        self, item_key: str, state: ItemState, prompt_id: str | None, values: dict[str, Any]
    ) -> None:
        now = time.time()
        columns = {"state": state, "updated": now, **values}
        if prompt_id is not None:
            columns["prompt_id"] = prompt_id
        assignments = ", ".join(f"{name} = ?" for name in columns)
        with self._write() as db:
            cursor = db.execute(
                f"UPDATE items SET {assignments} WHERE item_key = ?",
                (*columns.values(), item_key),
            )
            if cursor.rowcount != 1:
                raise JournalError(
                    f"{self.path}: no item {item_key} (call begin() first)", path=str(self.path)
                )
            db.execute(
                "INSERT INTO transitions (item_key, state, prompt_id, at) VALUES (?, ?, ?, ?)",
                (item_key, state, prompt_id, now),
            )
