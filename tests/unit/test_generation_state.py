"""A GenerationJob's state and prompt_id, read from its backend job's state (a table)."""

from __future__ import annotations

import pytest

from dreamgen_async.generator import is_posted, running_state
from dreamgen_async.lifecycle import JobState

CLIENT_JOB = {
    JobState.WAITING: ("waiting", False),
    JobState.POSTING: ("posting", False),
    JobState.CANCEL_WHILE_POSTING: ("posting", False),
    JobState.QUEUED: ("queued", True),
    JobState.RUNNING: ("running", True),
    JobState.SETTLING: ("running", True),
    JobState.REMOVING: ("running", True),
    JobState.INTERRUPTING: ("running", True),
    # The backend job has its outcome; the request still downloads and writes its files.
    JobState.DONE: ("running", True),
    JobState.FAILED: ("running", True),
    JobState.CANCELLED: ("running", True),
}
POOL_JOB = {
    "waiting": ("waiting", False),
    "posting": ("posting", False),
    "queued": ("queued", True),
    "running": ("running", True),
    "done": ("running", True),
}


def test_every_client_job_state_has_a_row() -> None:
    assert set(CLIENT_JOB) == set(JobState)


@pytest.mark.parametrize(("backend", "expected"), [*CLIENT_JOB.items(), *POOL_JOB.items()])
def test_state_and_posted(backend: str, expected: tuple[str, bool]) -> None:
    assert (running_state(str(backend)), is_posted(str(backend))) == expected
