"""Local storage shared by the batch journal and the result cache.

- :func:`open_database`: an SQLite file in WAL mode with its schema, opened safely while other
  processes open the same file. Switching a new file to WAL upgrades a read transaction to a
  write one, and SQLite refuses that upgrade at once (``SQLITE_BUSY``, without waiting out
  ``busy_timeout``: waiting could deadlock) while another connection reads the file. So the
  switch is retried with a jittered backoff until the same deadline, and the schema is
  created in a transaction that takes the write lock first (``BEGIN IMMEDIATE``, which waits).
- :func:`check_writable`: whether files can be created in a folder now, cheap enough to ask
  before the first prompt is posted (so an unwritable folder never costs a GPU run).
- :func:`translated`: the one place a ``sqlite3`` or ``OSError`` becomes a
  :class:`~dreamgen_async.errors.StorageError` subclass naming the file or folder; and
  :func:`make_folder`, whose error for a file in the way says so.

Everything here blocks: callers run it in a thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from dreamgen_async.errors import StorageError

__all__ = ["check_writable", "make_folder", "open_database", "translated"]

T = TypeVar("T")

_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6


def _busy(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` says another connection holds a lock (worth a retry)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)  # pragma: no cover - Python < 3.11


def _retry_busy(step: Callable[[], T], deadline: float) -> T:
    """``step()``, retried while SQLite answers busy, until ``deadline`` (``time.monotonic``)."""
    delay = 0.002
    while True:
        try:
            return step()
        except sqlite3.OperationalError as exc:
            if not _busy(exc) or time.monotonic() >= deadline:
                raise
        # Jittered: processes that collided once do not collide again in lockstep.
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 0.1)


def _create_schema(db: sqlite3.Connection, schema: str) -> None:
    """Run ``schema`` in one write transaction (the write lock taken first, waiting for it)."""
    try:
        db.executescript(f"BEGIN IMMEDIATE;\n{schema}\nCOMMIT;")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def open_database(
    path: str | os.PathLike[str], *, schema: str, synchronous: str, timeout: float = 60.0
) -> sqlite3.Connection:
    """A connection to the SQLite file ``path`` in WAL mode, ``schema`` created (blocking).

    Safe while other processes open, write or checkpoint the same file: every lock is waited
    for up to ``timeout`` seconds, including the ones SQLite does not wait for by itself.
    The connection is in autocommit mode (transactions are explicit) and returns plain tuples.

    Args:
        path: The database file (created if missing; its folder must exist).
        schema: ``CREATE ... IF NOT EXISTS`` statements (and idempotent inserts).
        synchronous: ``NORMAL`` or ``FULL`` (see SQLite's ``PRAGMA synchronous``).
        timeout: Seconds to wait for other connections' locks.

    Raises:
        sqlite3.Error: the file cannot be opened or is not a database (callers translate it,
            see :func:`translated`).
    """
    deadline = time.monotonic() + timeout
    db = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    try:
        db.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        _retry_busy(lambda: db.execute("PRAGMA journal_mode = WAL").fetchone(), deadline)
        db.execute(f"PRAGMA synchronous = {synchronous}")
        _retry_busy(lambda: _create_schema(db, schema), deadline)
    except BaseException:
        db.close()
        raise
    return db


def _reason(exc: BaseException) -> str:
    """An OS or SQLite error in a few words (``Read-only file system``, ``disk I/O error``)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror if exc.filename is None else f"{exc.strerror}: {exc.filename}"
    return str(exc) or type(exc).__name__


@contextlib.contextmanager
def translated(
    error: type[StorageError], path: str | os.PathLike[str], what: str
) -> Iterator[None]:
    """Turn a ``sqlite3.Error`` or ``OSError`` raised inside into ``error`` naming ``path``.

    ``what`` starts the message (``"the result cache"``); the original is the ``__cause__``.
    A :class:`StorageError` raised inside passes as it is.
    """
    try:
        yield
    except StorageError:
        raise
    except (sqlite3.Error, OSError) as exc:
        raise error(f"{what} {os.fspath(path)}: {_reason(exc)}", path=os.fspath(path)) from exc


def make_folder(folder: Path) -> None:
    """``folder.mkdir(parents=True, exist_ok=True)``, saying "Not a directory" (not "File
    exists") when ``folder`` is a file."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder)) from exc


def check_writable(folder: str | os.PathLike[str]) -> Path:
    """Check that files can be written in ``folder`` now; blocking, cheap, leaves nothing.

    A one-byte file is created in it and removed. A folder that does not exist yet is
    checked where it would be created: its nearest existing ancestor must be a folder that
    can be written (nothing is created). Call it before sending any work whose results go
    to ``folder``: the output folder, a journal's folder.

    Returns:
        ``folder`` as an absolute path.

    Raises:
        StorageError: ``folder`` (or the place it would be created) is read-only, not a
            folder, or full; ``path`` names ``folder``.
    """
    target = Path(folder).absolute()
    with translated(StorageError, target, "cannot write to"):
        existing = target
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise StorageError(
                f"cannot write to {target}: {existing} is not a folder", path=str(target)
            )
        fd, probe = tempfile.mkstemp(prefix=".dreamgen-probe-", dir=existing)
        try:
            try:
                os.write(fd, b"\0")  # a full disk refuses even one byte
            finally:
                os.close(fd)
        finally:
            os.unlink(probe)
    return target
