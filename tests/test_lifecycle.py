"""The job lifecycle table, tested as plain data (no server, no event loop)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dreamgen_async import lifecycle as lc
from dreamgen_async.lifecycle import JobState, Lifecycle, LifecycleError

S = JobState
BOOM = RuntimeError("boom")
LOST = RuntimeError("lost")
CANCEL = lc.Cancel(RuntimeError("cancelled by the caller"))


def state(life: Lifecycle) -> JobState:
    """The state, read through a call (so the type checker does not keep a narrowed one)."""
    return life.state


def kinds(effects: tuple[lc.Effect, ...]) -> list[str]:
    return [e.kind for e in effects]


def run(life: Lifecycle, *events: lc.Input) -> list[str]:
    out: list[str] = []
    for event in events:
        out += kinds(life.handle(event))
    return out


def test_the_happy_path() -> None:
    life = Lifecycle()
    assert kinds(life.handle(lc.SlotGranted())) == ["post"]
    assert state(life) is S.POSTING
    assert run(life, lc.PostAccepted(), lc.Started()) == []
    assert state(life) is S.RUNNING
    assert kinds(life.handle(lc.Finished(complete=True))) == ["resolve", "release"]
    assert state(life) is S.DONE


def test_cancel_while_waiting_costs_nothing_and_holds_no_slot() -> None:
    life = Lifecycle()
    assert kinds(life.handle(CANCEL)) == ["fail"]
    assert state(life) is S.CANCELLED


def test_cancel_during_the_post_waits_for_its_outcome_and_is_idempotent() -> None:
    life = Lifecycle()
    run(life, lc.SlotGranted())
    assert run(life, CANCEL, CANCEL) == []
    assert state(life) is S.CANCEL_WHILE_POSTING
    assert kinds(life.handle(lc.PostAccepted())) == ["remove"]
    assert run(life, CANCEL) == []
    assert kinds(life.handle(lc.Removed(running=False))) == ["fail", "release"]
    assert state(life) is S.CANCELLED
    assert run(life, CANCEL, lc.Finished(complete=True)) == []


def test_a_running_job_is_cancelled_only_once_the_server_interrupted_it() -> None:
    life = Lifecycle()
    run(life, lc.SlotGranted(), lc.PostAccepted(), lc.Started(), CANCEL)
    assert state(life) is S.REMOVING
    assert run(life, lc.Removed(running=True)) == []
    assert state(life) is S.INTERRUPTING
    assert kinds(life.handle(lc.Interrupted(BOOM))) == ["fail", "release"]
    assert state(life) is S.CANCELLED


def test_an_interrupt_sent_across_a_gap_is_checked_again() -> None:
    life = Lifecycle()
    run(life, lc.SlotGranted(), lc.PostAccepted(), lc.Started(), CANCEL, lc.Gap())
    assert kinds(life.handle(lc.Removed(running=True))) == ["reconcile"]
    effects = life.handle(lc.Absent(LOST))
    assert kinds(effects) == ["fail", "release"]
    # Gone after the gap: it may have finished before the interrupt, its history wiped by a
    # restart, so it fails with the lost error instead of being reported cancelled.
    assert effects[0].error is LOST
    assert state(life) is S.FAILED


def test_a_job_that_finishes_before_its_removal_is_done_not_cancelled() -> None:
    life = Lifecycle()
    run(life, lc.SlotGranted(), lc.PostAccepted(), lc.Started(), CANCEL)
    assert kinds(life.handle(lc.Finished(complete=True))) == ["resolve", "release"]
    assert state(life) is S.DONE


def test_a_post_with_an_unknown_outcome_is_taken_back_and_fails() -> None:
    life = Lifecycle()
    run(life, lc.SlotGranted())
    assert kinds(life.handle(lc.PostFailed(BOOM))) == ["remove"]
    effects = life.handle(lc.Removed(running=False))
    assert kinds(effects) == ["fail", "release"]
    assert effects[0].error is BOOM
    assert state(life) is S.FAILED


def test_a_prompt_that_finished_before_its_post_answer_is_replayed_after_it() -> None:
    life = Lifecycle()
    run(life, lc.SlotGranted(), lc.Started(), lc.Finished(complete=True))
    assert state(life) is S.POSTING
    assert kinds(life.handle(lc.PostAccepted())) == ["resolve", "release"]
    assert state(life) is S.DONE


def test_a_gap_sends_the_outcome_through_history() -> None:
    life = Lifecycle()
    run(life, lc.SlotGranted(), lc.PostAccepted(), lc.Started(), lc.Gap())
    assert kinds(life.handle(lc.Finished(complete=True))) == ["reconcile"]
    assert state(life) is S.SETTLING
    assert run(life, lc.ReconcileFailed()) == ["resync"]
    effects = life.handle(lc.Outcome(None, {"9": ()}))
    assert kinds(effects) == ["resolve", "release"]
    assert effects[0].outputs == {"9": ()}


def test_a_pending_prompt_seen_in_the_queue_needs_no_history() -> None:
    life = Lifecycle()
    run(life, lc.SlotGranted(connected=False), lc.PostAccepted())
    assert life.gap
    run(life, lc.InQueue(running=False))
    assert not life.gap
    assert kinds(life.handle(lc.Finished(complete=True))) == ["resolve", "release"]


def test_a_pending_prompt_seen_without_a_socket_keeps_its_gap() -> None:
    """Seen queued while no socket listens, it may still be lost unheard (a restart with the
    client disconnected): only a check made while listening closes the gap."""
    life = Lifecycle()
    run(life, lc.SlotGranted(connected=False), lc.PostAccepted())
    run(life, lc.InQueue(running=False, listening=False))
    assert life.gap
    run(life, lc.InQueue(running=False, listening=True))
    assert not life.gap


def test_a_lost_prompt_is_resubmitted_once_then_fails() -> None:
    life = Lifecycle()
    run(life, lc.SlotGranted(), lc.PostAccepted(), lc.Gap())
    assert kinds(life.handle(lc.Absent(LOST))) == ["post"]
    assert state(life) is S.POSTING
    assert life.resubmitted
    run(life, lc.PostAccepted(), lc.Gap())
    effects = life.handle(lc.Absent(LOST))
    assert kinds(effects) == ["fail", "release"]
    assert effects[0].error is LOST


def test_on_lost_fail_fails_at_once() -> None:
    life = Lifecycle(resubmit_lost=False)
    run(life, lc.SlotGranted(), lc.PostAccepted())
    assert kinds(life.handle(lc.Absent(LOST))) == ["fail", "release"]


def test_abandon_settles_at_once_and_stops_waiting_for_the_post() -> None:
    life = Lifecycle()
    run(life, lc.SlotGranted())
    assert kinds(life.handle(lc.Abandon(BOOM))) == ["abort_post", "fail", "release"]
    assert state(life) is S.FAILED


def test_an_illegal_input_raises_and_changes_nothing() -> None:
    life = Lifecycle()
    run(life, lc.SlotGranted(), lc.PostAccepted())
    with pytest.raises(LifecycleError, match="SlotGranted is not legal in state queued"):
        life.handle(lc.SlotGranted())
    assert state(life) is S.QUEUED
    with pytest.raises(LifecycleError):
        Lifecycle().handle(lc.PostAccepted())


INPUTS = st.sampled_from(
    [
        lc.SlotGranted(),
        lc.SlotGranted(connected=False),
        lc.PostAccepted(),
        lc.PostRejected(BOOM),
        lc.PostFailed(BOOM),
        lc.Started(),
        lc.Finished(complete=True),
        lc.Finished(complete=False),
        lc.Failed(BOOM),
        lc.Interrupted(BOOM),
        lc.Gap(),
        lc.InQueue(running=True),
        lc.InQueue(running=False),
        lc.InQueue(running=False, listening=False),
        lc.Outcome(None, {}),
        lc.Outcome(BOOM, interrupted=True),
        lc.Absent(LOST),
        lc.ReconcileFailed(),
        CANCEL,
        lc.Removed(running=True),
        lc.Removed(running=False),
        lc.Abandon(BOOM),
    ]
)


@given(st.lists(INPUTS, max_size=40))
def test_any_sequence_settles_at_most_once_and_releases_the_slot_it_took(
    events: list[lc.Input],
) -> None:
    life = Lifecycle()
    settled = released = posts = 0
    held = False
    for event in events:
        before = life.state
        try:
            effects = life.handle(event)
        except LifecycleError:
            assert life.state is before  # an illegal input changes nothing
            continue
        names = kinds(effects)
        if before.terminal:
            assert names == []  # a settled job ignores everything
        settled += names.count("resolve") + names.count("fail")
        released += names.count("release")
        posts += names.count("post")
        held = held or "post" in names
        assert settled <= 1
        assert released <= 1
        assert posts <= 2  # the first POST, and at most one resubmission
        assert (settled == 1) == life.state.terminal
    if life.state.terminal:
        assert released == (1 if held else 0)
    assert life.state.holds_slot == (held and released == 0)
