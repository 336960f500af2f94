"""The per-job limits as lifecycle inputs (issue 19, item 2): ``RunTimeout`` interrupts only a
running job; ``QueueTimeout`` removes only a job that has not started. Table rows, no I/O."""

from __future__ import annotations

import pytest

from dreamgen_async import lifecycle as lc
from dreamgen_async.lifecycle import JobState, Lifecycle

S = JobState
RUN = RuntimeError("ran for more than 1 s")
QUEUE = RuntimeError("waited in the queue more than 1 s")

PATHS: dict[JobState, list[lc.Input]] = {
    S.WAITING: [],
    S.POSTING: [lc.SlotGranted()],
    S.CANCEL_WHILE_POSTING: [lc.SlotGranted(), lc.Cancel(RuntimeError("cancel"))],
    S.QUEUED: [lc.SlotGranted(), lc.PostAccepted()],
    S.RUNNING: [lc.SlotGranted(), lc.PostAccepted(), lc.Started()],
    S.SETTLING: [lc.SlotGranted(), lc.PostAccepted(), lc.Gap(), lc.Finished(complete=True)],
    S.REMOVING: [lc.SlotGranted(), lc.PostAccepted(), lc.Cancel(RuntimeError("cancel"))],
    S.INTERRUPTING: [
        lc.SlotGranted(),
        lc.PostAccepted(),
        lc.Cancel(RuntimeError("cancel")),
        lc.Removed(running=True),
    ],
}


def in_state(state: JobState) -> Lifecycle:
    life = Lifecycle()
    for event in PATHS[state]:
        life.handle(event)
    assert life.state is state
    return life


# (state, input) -> (next state, effect kinds, the reason recorded)
ROWS: list[tuple[JobState, lc.Input, JobState, tuple[str, ...], BaseException | str | None]] = [
    # the run limit: interrupt a running job, then settle with the PromptTimeout
    (S.RUNNING, lc.RunTimeout(RUN), S.REMOVING, ("remove",), RUN),
    (S.WAITING, lc.RunTimeout(RUN), S.WAITING, (), None),
    (S.POSTING, lc.RunTimeout(RUN), S.POSTING, (), None),
    (S.QUEUED, lc.RunTimeout(RUN), S.QUEUED, (), None),
    (S.SETTLING, lc.RunTimeout(RUN), S.SETTLING, (), None),
    # the queue limit: a job not started leaves the client-side queue or the server's
    (S.WAITING, lc.QueueTimeout(QUEUE), S.CANCELLED, ("fail",), QUEUE),
    (S.POSTING, lc.QueueTimeout(QUEUE), S.CANCEL_WHILE_POSTING, (), QUEUE),
    (S.QUEUED, lc.QueueTimeout(QUEUE), S.REMOVING, ("remove",), QUEUE),
    # ... never a running one, nor one already being taken off
    (S.RUNNING, lc.QueueTimeout(QUEUE), S.RUNNING, (), None),
    (S.SETTLING, lc.QueueTimeout(QUEUE), S.SETTLING, (), None),
    (S.CANCEL_WHILE_POSTING, lc.QueueTimeout(QUEUE), S.CANCEL_WHILE_POSTING, (), "keep"),
    (S.REMOVING, lc.QueueTimeout(QUEUE), S.REMOVING, (), "keep"),
    (S.INTERRUPTING, lc.QueueTimeout(QUEUE), S.INTERRUPTING, (), "keep"),
    (S.REMOVING, lc.RunTimeout(RUN), S.REMOVING, (), "keep"),
    (S.INTERRUPTING, lc.RunTimeout(RUN), S.INTERRUPTING, (), "keep"),
]


@pytest.mark.parametrize(
    ("state", "event", "after", "effects", "reason"),
    ROWS,
    ids=[f"{type(r[1]).__name__}-in-{r[0].value}" for r in ROWS],
)
def test_limit_rows(
    state: JobState,
    event: lc.Input,
    after: JobState,
    effects: tuple[str, ...],
    reason: BaseException | str | None,
) -> None:
    life = in_state(state)
    before_reason = life.reason
    got = life.handle(event)
    assert life.state is after
    assert tuple(e.kind for e in got) == effects
    if reason == "keep":  # an earlier cancel's reason stays: the limit changed nothing
        assert life.reason is before_reason
    else:
        assert life.reason is reason
    if effects == ("fail",):
        assert got[0].error is reason


def test_a_run_timeout_ends_cancelled_with_its_error_once_the_interrupt_is_heard() -> None:
    life = in_state(S.RUNNING)
    life.handle(lc.RunTimeout(RUN))
    assert life.handle(lc.Removed(running=True)) == ()
    assert life.state == "interrupting"
    effects = life.handle(lc.Interrupted(RuntimeError("execution_interrupted")))
    assert life.state == "cancelled"
    assert [e.kind for e in effects] == ["fail", "release"]
    assert effects[0].error is RUN


def test_a_run_timeout_loses_to_a_job_that_finished_first() -> None:
    life = in_state(S.RUNNING)
    life.handle(lc.RunTimeout(RUN))
    effects = life.handle(lc.Finished(complete=True))
    assert life.state is S.DONE
    assert [e.kind for e in effects] == ["resolve", "release"]


def test_a_queue_timeout_during_the_post_removes_it_once_accepted() -> None:
    life = in_state(S.POSTING)
    life.handle(lc.QueueTimeout(QUEUE))
    assert [e.kind for e in life.handle(lc.PostAccepted())] == ["remove"]
    effects = life.handle(lc.Removed(running=False))
    assert life.state is S.CANCELLED
    assert effects[0].error is QUEUE


def test_a_limit_after_the_outcome_changes_nothing() -> None:
    life = in_state(S.RUNNING)
    life.handle(lc.Finished(complete=True))
    assert life.handle(lc.RunTimeout(RUN)) == ()
    assert life.handle(lc.QueueTimeout(QUEUE)) == ()
    assert life.state is S.DONE
