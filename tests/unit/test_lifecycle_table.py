"""The lifecycle table itself (``lifecycle.TRANSITIONS``), as plain data: which rows exist, what
a few of them do, and that everything else raises and changes nothing."""

from __future__ import annotations

from typing import get_args

import pytest

from dreamgen_async import lifecycle as lc
from dreamgen_async.lifecycle import TRANSITIONS, JobState, Lifecycle, LifecycleError

S = JobState
BOOM = RuntimeError("boom")
LOST = RuntimeError("lost")
REASON = RuntimeError("cancelled by the caller")

#: One instance of every input type.
SAMPLES: dict[type[lc.Input], lc.Input] = {
    lc.SlotGranted: lc.SlotGranted(),
    lc.PostAccepted: lc.PostAccepted(),
    lc.PostRejected: lc.PostRejected(BOOM),
    lc.PostFailed: lc.PostFailed(BOOM),
    lc.Started: lc.Started(),
    lc.Finished: lc.Finished(complete=True),
    lc.Failed: lc.Failed(BOOM),
    lc.Interrupted: lc.Interrupted(BOOM),
    lc.Gap: lc.Gap(),
    lc.InQueue: lc.InQueue(running=True),
    lc.Outcome: lc.Outcome(None, {"9": ()}),
    lc.Absent: lc.Absent(LOST),
    lc.ReconcileFailed: lc.ReconcileFailed(),
    lc.Cancel: lc.Cancel(REASON),
    lc.Removed: lc.Removed(running=True),
    lc.Abandon: lc.Abandon(BOOM),
    lc.RunTimeout: lc.RunTimeout(BOOM),
    lc.QueueTimeout: lc.QueueTimeout(BOOM),
}

#: A way into every state, through handle() only.
PATHS: dict[JobState, list[lc.Input]] = {
    S.WAITING: [],
    S.POSTING: [lc.SlotGranted()],
    S.CANCEL_WHILE_POSTING: [lc.SlotGranted(), lc.Cancel(REASON)],
    S.QUEUED: [lc.SlotGranted(), lc.PostAccepted()],
    S.RUNNING: [lc.SlotGranted(), lc.PostAccepted(), lc.Started()],
    S.SETTLING: [lc.SlotGranted(), lc.PostAccepted(), lc.Gap(), lc.Finished(complete=True)],
    S.REMOVING: [lc.SlotGranted(), lc.PostAccepted(), lc.Cancel(REASON)],
    S.INTERRUPTING: [lc.SlotGranted(), lc.PostAccepted(), lc.Cancel(REASON), lc.Removed(True)],
    S.DONE: [lc.SlotGranted(), lc.PostAccepted(), lc.Finished(complete=True)],
    S.FAILED: [lc.SlotGranted(), lc.Abandon(BOOM)],
    S.CANCELLED: [lc.Cancel(REASON)],
}

_REMOVAL = {
    lc.Cancel,
    lc.Started,
    lc.Finished,
    lc.Interrupted,
    lc.Failed,
    lc.Outcome,
    lc.InQueue,
    lc.Absent,
    lc.ReconcileFailed,
    lc.Removed,
}
_WATCHED = {
    lc.Started,
    lc.Finished,
    lc.Failed,
    lc.Interrupted,
    lc.InQueue,
    lc.Outcome,
    lc.Absent,
    lc.ReconcileFailed,
    lc.Cancel,
}
_POSTING = {
    lc.PostAccepted,
    lc.PostRejected,
    lc.PostFailed,
    lc.Cancel,
    lc.Started,
    lc.Finished,
    lc.Failed,
    lc.Interrupted,
}
# The limits have a row in every live state (most of them ignore it).
_ANYWHERE = {lc.Abandon, lc.Gap, lc.RunTimeout, lc.QueueTimeout}

#: The table, read as "which inputs each live state accepts".
LEGAL: dict[JobState, set[type[lc.Input]]] = {
    S.WAITING: {lc.SlotGranted, lc.Cancel} | _ANYWHERE,
    S.POSTING: _POSTING | _ANYWHERE,
    S.CANCEL_WHILE_POSTING: _POSTING | _ANYWHERE,
    S.QUEUED: _WATCHED | _ANYWHERE,
    S.RUNNING: _WATCHED | _ANYWHERE,
    S.SETTLING: _WATCHED | _ANYWHERE,
    S.REMOVING: _REMOVAL | _ANYWHERE,
    S.INTERRUPTING: _REMOVAL | _ANYWHERE,
}


def in_state(state: JobState) -> Lifecycle:
    life = Lifecycle()
    for event in PATHS[state]:
        life.handle(event)
    assert life.state is state
    return life


def test_every_input_type_has_a_sample() -> None:
    assert set(SAMPLES) == set(get_args(lc.Input))
    assert all(type(event) is kind for kind, event in SAMPLES.items())


def test_the_table_lists_every_row() -> None:
    assert all(isinstance(state, JobState) and kind in SAMPLES for state, kind in TRANSITIONS)
    listed: dict[JobState, set[type[lc.Input]]] = {}
    for state, kind in TRANSITIONS:
        listed.setdefault(state, set()).add(kind)
    assert listed == LEGAL
    assert not any(state.terminal for state, _ in TRANSITIONS)  # settled: no row at all


def test_the_table_cannot_be_changed() -> None:
    with pytest.raises(TypeError):
        TRANSITIONS[S.WAITING, lc.Removed] = TRANSITIONS[S.WAITING, lc.Cancel]  # type: ignore[index]


@pytest.mark.parametrize("state", [s for s in JobState if not s.terminal])
@pytest.mark.parametrize("kind", list(SAMPLES), ids=lambda kind: kind.__name__)
def test_every_pair_has_a_row_or_raises_and_changes_nothing(
    state: JobState, kind: type[lc.Input]
) -> None:
    life = in_state(state)
    before = (life.state, life.epoch, life.gap, life.reason, life.resubmitted, life.early)
    if (state, kind) in TRANSITIONS:
        life.handle(SAMPLES[kind])
        assert life.epoch == before[1] + 1
        return
    with pytest.raises(LifecycleError, match=f"{kind.__name__} is not legal in state {state}"):
        life.handle(SAMPLES[kind])
    assert (life.state, life.epoch, life.gap, life.reason, life.resubmitted, life.early) == before


@pytest.mark.parametrize("state", [s for s in JobState if s.terminal])
def test_a_settled_job_ignores_every_input(state: JobState) -> None:
    life = in_state(state)
    epoch = life.epoch
    for event in SAMPLES.values():
        assert life.handle(event) == ()
        assert life.state is state
    assert life.epoch == epoch


def test_a_handler_decides_and_only_handle_moves_the_job() -> None:
    life = in_state(S.RUNNING)
    handler = TRANSITIONS[S.RUNNING, lc.Finished]
    assert handler(life, lc.Finished(complete=True)) == (S.DONE, (lc.Effect("resolve"),))
    assert life.state is S.RUNNING


FAIL_BOOM = lc.Effect("fail", error=BOOM)
FAIL_REASON = lc.Effect("fail", error=REASON)
FAIL_LOST = lc.Effect("fail", error=LOST)
RELEASE = lc.Effect("release")


@pytest.mark.parametrize(
    ("state", "event", "after", "effects"),
    [
        (S.WAITING, lc.SlotGranted(), S.POSTING, (lc.Effect("post"),)),
        (S.WAITING, lc.Cancel(REASON), S.CANCELLED, (FAIL_REASON,)),  # never held a slot
        (S.POSTING, lc.PostAccepted(), S.QUEUED, ()),
        (S.POSTING, lc.PostFailed(BOOM), S.REMOVING, (lc.Effect("remove"),)),
        (S.POSTING, lc.Cancel(REASON), S.CANCEL_WHILE_POSTING, ()),
        (S.POSTING, lc.Finished(complete=True), S.POSTING, ()),  # held until the POST's answer
        (S.CANCEL_WHILE_POSTING, lc.PostAccepted(), S.REMOVING, (lc.Effect("remove"),)),
        (S.CANCEL_WHILE_POSTING, lc.PostRejected(BOOM), S.CANCELLED, (FAIL_REASON, RELEASE)),
        (
            S.CANCEL_WHILE_POSTING,
            lc.Abandon(BOOM),
            S.FAILED,
            (lc.Effect("abort_post"), FAIL_BOOM, RELEASE),
        ),
        (S.QUEUED, lc.Started(), S.RUNNING, ()),
        (S.QUEUED, lc.Absent(LOST), S.POSTING, (lc.Effect("post"),)),  # resubmitted once
        (S.RUNNING, lc.Finished(complete=True), S.DONE, (lc.Effect("resolve"), RELEASE)),
        (S.RUNNING, lc.Finished(complete=False), S.SETTLING, (lc.Effect("reconcile"),)),
        (S.RUNNING, lc.Interrupted(BOOM), S.FAILED, (FAIL_BOOM, RELEASE)),
        (S.SETTLING, lc.ReconcileFailed(), S.SETTLING, (lc.Effect("resync"),)),
        (S.SETTLING, lc.Outcome(BOOM), S.FAILED, (FAIL_BOOM, RELEASE)),
        (S.REMOVING, lc.Removed(running=False), S.CANCELLED, (FAIL_REASON, RELEASE)),
        (S.REMOVING, lc.Removed(running=True), S.INTERRUPTING, ()),
        # Found nowhere with nothing missed: our delete took it. Without a socket: unknown.
        (S.REMOVING, lc.Absent(LOST), S.CANCELLED, (FAIL_REASON, RELEASE)),
        (S.REMOVING, lc.Absent(LOST, listening=False), S.FAILED, (FAIL_LOST, RELEASE)),
        (S.INTERRUPTING, lc.Interrupted(BOOM), S.CANCELLED, (FAIL_REASON, RELEASE)),
        (
            S.INTERRUPTING,
            lc.Outcome(None, {"9": ()}),
            S.DONE,
            (lc.Effect("resolve", outputs={"9": ()}), RELEASE),
        ),
        (S.INTERRUPTING, lc.Absent(LOST), S.CANCELLED, (FAIL_REASON, RELEASE)),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, lc.Input) else None,
)
def test_rows(
    state: JobState, event: lc.Input, after: JobState, effects: tuple[lc.Effect, ...]
) -> None:
    life = in_state(state)
    assert life.handle(event) == effects
    assert life.state is after


def test_a_removal_after_a_failed_post_ends_failed_with_the_posts_error() -> None:
    life = in_state(S.POSTING)
    life.handle(lc.PostFailed(BOOM))
    assert life.handle(lc.Removed(running=False)) == (FAIL_BOOM, RELEASE)
    assert life.state is S.FAILED


def test_gap_marks_only_a_job_the_server_may_hold() -> None:
    waiting = in_state(S.WAITING)
    assert waiting.handle(lc.Gap()) == ()
    assert not waiting.gap
    running = in_state(S.RUNNING)
    assert running.handle(lc.Gap()) == ()
    assert running.gap
    assert running.state is S.RUNNING


@pytest.mark.parametrize("state", [S.REMOVING, S.INTERRUPTING])
def test_a_removal_that_finds_nothing_after_a_gap_fails_it_may_have_run(state: JobState) -> None:
    """Issue #24 follow-up: it may have finished unheard and lost its history in a restart,
    so it is never reported cancelled; it fails with the Absent's (PromptLost) error."""
    life = in_state(state)
    life.handle(lc.Gap())
    assert life.handle(lc.Absent(LOST)) == (FAIL_LOST, RELEASE)
    assert life.state is S.FAILED


def test_a_gap_closed_before_the_cancel_lets_a_removal_that_finds_nothing_cancel() -> None:
    """Seen pending by a resync while listening, after the gap: nothing missed since."""
    life = in_state(S.QUEUED)
    life.handle(lc.Gap())
    life.handle(lc.InQueue(running=False, listening=True))
    life.handle(lc.Cancel(REASON))
    assert life.handle(lc.Absent(LOST)) == (FAIL_REASON, RELEASE)
    assert life.state is S.CANCELLED


def test_a_gap_a_running_prompt_had_stays_open_through_the_removal() -> None:
    """Seen running after the gap: it may finish unheard, so its gap stays."""
    life = in_state(S.RUNNING)
    life.handle(lc.Gap())
    life.handle(lc.InQueue(running=True, listening=True))
    life.handle(lc.Cancel(REASON))
    assert life.handle(lc.Absent(LOST)) == (FAIL_LOST, RELEASE)
    assert life.state is S.FAILED


def test_a_failed_posts_removal_that_finds_nothing_ends_with_the_posts_error() -> None:
    life = in_state(S.POSTING)
    life.handle(lc.Gap())
    life.handle(lc.PostFailed(BOOM))
    assert life.handle(lc.Absent(LOST)) == (FAIL_BOOM, RELEASE)
    assert life.state is S.FAILED
