"""Pure: what to do with a request, given what the batch journal and the cache know of it.

The facade asks :func:`decide` once per request, then carries the answer out:

====================================================  =====================================
what is known                                          plan
====================================================  =====================================
the journal says done and every file is intact         :class:`Skip` (nothing is sent)
the cache has the images (deterministic requests)      :class:`FromCache` (nothing is sent)
the journal says an earlier run posted it              :class:`Adopt` (collect that prompt;
                                                       run it when the server lost it)
anything else                                          :class:`Run`
====================================================  =====================================

The rows are tried top to bottom. A record from a cache hit (``cached``) has no prompt worth
collecting. Nothing here awaits or touches a file: the shell reads the journal record, checks
the files (:func:`must_check_files`) and reads the cache (:func:`needs_cache_entry`) first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Literal, TypeAlias, TypeVar

__all__ = [
    "Adopt",
    "FromCache",
    "Plan",
    "Record",
    "RecordState",
    "Run",
    "Skip",
    "decide",
    "must_check_files",
    "needs_cache_entry",
]

E = TypeVar("E")

RecordState = Literal["pending", "posted", "done", "failed"]


@dataclass(frozen=True, slots=True)
class Record:
    """What a batch journal knows of one item (its state, the prompt an earlier run posted)."""

    state: RecordState
    prompt_id: str | None = None
    cached: bool = False
    files_intact: bool = False  # only meaningful for ``done``: every written file still whole


@dataclass(frozen=True, slots=True)
class Skip:
    """Done by an earlier run, its files intact: answer from the record, send nothing."""


@dataclass(frozen=True, slots=True)
class FromCache(Generic[E]):
    """The cache has the images: write them, send nothing."""

    entry: E


@dataclass(frozen=True, slots=True)
class Adopt:
    """An earlier run posted ``prompt_id``: collect it (run again if the server lost it)."""

    prompt_id: str


@dataclass(frozen=True, slots=True)
class Run:
    """Upload the inputs and run the request."""


Plan: TypeAlias = Skip | FromCache[E] | Adopt | Run


def must_check_files(state: RecordState) -> bool:
    """Whether the shell must check the record's files before deciding (only ``done``)."""
    return state == "done"


def _skippable(record: Record | None) -> bool:
    return record is not None and record.state == "done" and record.files_intact


def needs_cache_entry(record: Record | None, *, deterministic: bool, has_cache: bool) -> bool:
    """Whether :func:`decide` can use a cache entry: read the cache only then."""
    return deterministic and has_cache and not _skippable(record)


def decide(record: Record | None, entry: E | None, *, deterministic: bool) -> Plan[E]:
    """What to do with a request: the table in the module's docstring, top row first.

    Args:
        record: The journal's record of the item (``None`` without a journal).
        entry: The cache's entry for the request's key (``None``: none, or no cache).
        deterministic: Whether the request makes the same images every time (an explicit
            seed); only those are answered from the cache.
    """
    if _skippable(record):
        return Skip()
    if deterministic and entry is not None:
        return FromCache(entry)
    if record is not None and record.prompt_id is not None and not record.cached:
        return Adopt(record.prompt_id)
    return Run()
