"""The facade's decision for one request, as a table of cases (no server, no files)."""

from __future__ import annotations

import pytest

from dreamgen_async.plan import (
    Adopt,
    FromCache,
    Plan,
    Record,
    Run,
    Skip,
    decide,
    must_check_files,
    needs_cache_entry,
)

ENTRY = "cache entry"

CASES: list[tuple[str, Record | None, str | None, bool, Plan[str]]] = [
    # (case, journal record, cache entry, deterministic, plan)
    ("no journal, no cache", None, None, True, Run()),
    ("no journal, a cache hit", None, ENTRY, True, FromCache(ENTRY)),
    ("no journal, seedless: never from the cache", None, ENTRY, False, Run()),
    ("new item", Record("pending"), None, True, Run()),
    ("new item, a cache hit", Record("pending"), ENTRY, True, FromCache(ENTRY)),
    ("done, files intact", Record("done", "p1", files_intact=True), ENTRY, True, Skip()),
    ("done, seedless, files intact", Record("done", "p1", files_intact=True), None, False, Skip()),
    ("done, a file lost: collect", Record("done", "p1"), None, True, Adopt("p1")),
    ("done, a file lost, a cache hit", Record("done", "p1"), ENTRY, True, FromCache(ENTRY)),
    ("done from the cache, a file lost", Record("done", cached=True), None, True, Run()),
    ("posted earlier", Record("posted", "p2"), None, True, Adopt("p2")),
    ("posted earlier, seedless", Record("posted", "p2"), None, False, Adopt("p2")),
    ("posted earlier, a cache hit", Record("posted", "p2"), ENTRY, True, FromCache(ENTRY)),
    ("failed after posting: collect", Record("failed", "p3"), None, True, Adopt("p3")),
    ("failed before posting", Record("failed"), None, True, Run()),
]


@pytest.mark.parametrize(
    ("record", "entry", "deterministic", "plan"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_decide(
    record: Record | None, entry: str | None, deterministic: bool, plan: Plan[str]
) -> None:
    assert decide(record, entry, deterministic=deterministic) == plan


@pytest.mark.parametrize(
    ("record", "deterministic", "has_cache", "needed"),
    [
        (None, True, True, True),
        (None, False, True, False),
        (None, True, False, False),
        (Record("posted", "p"), True, True, True),
        (Record("done", "p"), True, True, True),  # a file lost: the cache may still answer
        (Record("done", "p", files_intact=True), True, True, False),  # skipped: never read
    ],
)
def test_the_cache_is_read_only_when_it_can_decide(
    record: Record | None, deterministic: bool, has_cache: bool, needed: bool
) -> None:
    assert needs_cache_entry(record, deterministic=deterministic, has_cache=has_cache) is needed


def test_only_a_done_record_has_its_files_checked() -> None:
    assert [must_check_files(s) for s in ("pending", "posted", "done", "failed")] == [
        False,
        False,
        True,
        False,
    ]
