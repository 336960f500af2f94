"""The pool-job binding table (placement.BINDING_TABLE) with plain data: the table is
listed, every (state, input) pair has a row or raises and changes nothing, each row does what
the pool relies on, and a property test drives random input sequences through bind_step."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dreamgen_async.errors import ConnectionLostError, ServerError
from dreamgen_async.placement import (
    BINDING_TABLE,
    CANCELLED,
    Bind,
    Binding,
    BindingRules,
    BindingState,
    Blame,
    CallOff,
    Cancel,
    CancelClientJob,
    ClientJobCancelled,
    Close,
    Failed,
    IllegalTransition,
    Launch,
    Posted,
    Settle,
    Succeeded,
    TakeBack,
    Unbind,
    bind_step,
)

S = BindingState
INPUTS: tuple[type, ...] = (
    Bind,
    Posted,
    Succeeded,
    Failed,
    ClientJobCancelled,
    Cancel,
    TakeBack,
    Close,
)
BOUND = (S.POSTING, S.PLACED, S.CANCELLING)
ERROR = ServerError("boom", status=500, url="/prompt")
CLOSED = ConnectionError("closed")


def example(kind: type, attempt: int) -> Any:
    """One input of ``kind``; a launch's report names ``attempt``."""
    makers: dict[type, Callable[[], Any]] = {
        Bind: lambda: Bind("http://b", front=False),
        Posted: lambda: Posted(attempt, "client-job"),
        Succeeded: lambda: Succeeded(attempt, "result", 1.5),
        Failed: lambda: Failed(attempt, ERROR, retryable=True),
        ClientJobCancelled: lambda: ClientJobCancelled(attempt),
        Cancel: Cancel,
        TakeBack: TakeBack,
        Close: lambda: Close(CLOSED),
    }
    return makers[kind]()


def binding_in(state: BindingState, attempt: int = 1) -> Binding[str]:
    """A binding in ``state`` (placed ones on http://a, after ``attempt`` placements)."""
    if state is S.WAITING:
        return Binding("job", attempt=attempt)
    handle = "client-job" if state in (S.PLACED, S.CANCELLING) else None
    return Binding("job", state, attempt, "http://a", handle)


# The table as a reader sees it: what each state accepts. Everything else raises.
LISTING = {
    S.WAITING: {Bind, Cancel, Close, Posted, Succeeded, Failed, ClientJobCancelled},
    S.POSTING: {Posted, Succeeded, Failed, ClientJobCancelled, Cancel, TakeBack, Close},
    S.PLACED: {Posted, Succeeded, Failed, ClientJobCancelled, Cancel, TakeBack, Close},
    S.CANCELLING: {Posted, Succeeded, Failed, ClientJobCancelled, Cancel, TakeBack, Close},
    S.SETTLED: {Posted, Succeeded, Failed, ClientJobCancelled, Cancel, Close},
}


def test_the_table_is_listed() -> None:
    listed = {(state, kind) for state, kinds in LISTING.items() for kind in kinds}
    assert set(BINDING_TABLE) == listed


@pytest.mark.parametrize("state", list(S), ids=lambda s: s.value)
@pytest.mark.parametrize("kind", INPUTS, ids=lambda k: k.__name__)
def test_every_pair_has_a_row_or_raises_and_changes_nothing(
    state: BindingState, kind: type
) -> None:
    before = binding_in(state)
    snapshot = dataclasses.replace(before)
    event = example(kind, attempt=before.attempt + 1)  # a launch's report: a newer one's
    if (state, kind) in BINDING_TABLE:
        after, actions = bind_step(before, event)
        assert isinstance(after, Binding)
        assert isinstance(actions, tuple)
    else:
        with pytest.raises(IllegalTransition, match=kind.__name__):
            bind_step(before, event)
    assert before == snapshot  # bindings are values: a step never changes its input


@pytest.mark.parametrize("state", [S.WAITING, *BOUND, S.SETTLED], ids=lambda s: s.value)
@pytest.mark.parametrize("kind", [Posted, Succeeded, Failed, ClientJobCancelled])
def test_a_report_of_an_earlier_launch_is_ignored(state: BindingState, kind: type) -> None:
    binding = binding_in(state, attempt=3)
    assert bind_step(binding, example(kind, attempt=2)) == (binding, ())


@pytest.mark.parametrize("kind", [Posted, Succeeded, Failed, ClientJobCancelled])
def test_a_waiting_job_ignores_its_last_launch(kind: type) -> None:
    """Taken back after attempt 3: attempt 3's launch is over, whatever it reports."""
    binding = binding_in(S.WAITING, attempt=3)
    assert bind_step(binding, example(kind, attempt=3)) == (binding, ())


def test_bind_starts_the_next_attempt() -> None:
    start: Binding[str] = Binding("job", attempt=2)
    binding, actions = bind_step(start, Bind("http://b", front=True))
    assert binding == Binding("job", S.POSTING, 3, "http://b")
    assert actions == (Launch(3, "http://b", front=True),)


def test_posted_holds_the_client_job() -> None:
    binding, actions = bind_step(binding_in(S.POSTING), Posted(1, "job-1"))
    assert (binding.state, binding.handle, actions) == (S.PLACED, "job-1", ())
    with pytest.raises(IllegalTransition, match="posted twice"):
        bind_step(binding, Posted(1, "job-1"))


def test_a_cancel_while_posting_cancels_the_client_job_once_posted() -> None:
    binding, actions = bind_step(binding_in(S.POSTING), Cancel())
    assert (binding.state, actions) == (S.CANCELLING, ())
    binding, actions = bind_step(binding, Posted(1, "job-1"))
    assert (binding.state, binding.handle) == (S.CANCELLING, "job-1")
    assert actions == (CancelClientJob("job-1"),)


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (S.WAITING, (Settle(CANCELLED),)),
        (S.PLACED, (CancelClientJob("client-job"),)),
        (S.CANCELLING, ()),  # idempotent
        (S.SETTLED, ()),
    ],
)
def test_cancel(state: BindingState, expected: tuple[Any, ...]) -> None:
    assert bind_step(binding_in(state), Cancel())[1] == expected


@pytest.mark.parametrize("state", BOUND)
def test_a_cancel_after_its_launch_crashed_settles_at_once(state: BindingState) -> None:
    binding, actions = bind_step(binding_in(state), Cancel(launch_over=True))
    assert (binding.state, actions) == (S.SETTLED, (Settle(CANCELLED),))


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (S.WAITING, Cancel()),
        (S.POSTING, Cancel(launch_over=True)),
        (S.PLACED, Cancel(launch_over=True)),
        (S.CANCELLING, ClientJobCancelled(1)),
    ],
)
def test_a_resubmitted_job_is_never_reported_cancelled(state: BindingState, event: Any) -> None:
    """Found by the pool's model test: taken back from a server that may still run it, a
    job cancelled since then (waiting, or taken off the server it was placed on again) fails
    with ConnectionLostError, since that server may run it: a job reported cancelled never
    ran."""
    binding, actions = bind_step(dataclasses.replace(binding_in(state), resubmitted=True), event)
    assert binding.state is S.SETTLED
    (settle,) = actions
    assert isinstance(settle, Settle)
    assert isinstance(settle.outcome, ConnectionLostError)
    assert str(settle.outcome).endswith("it may still run there")
    # Without ``resubmitted`` the same step reports it cancelled.
    assert bind_step(binding_in(state), event)[1] == (Settle(CANCELLED),)


@pytest.mark.parametrize("state", BOUND)
def test_outcomes_of_the_current_launch_settle(state: BindingState) -> None:
    binding, actions = bind_step(binding_in(state), Succeeded(1, "result", 2.0))
    assert binding.state is S.SETTLED
    assert binding.server == "http://a"
    assert actions == (Settle("result", 2.0),)
    binding, actions = bind_step(binding_in(state), ClientJobCancelled(1))
    assert (binding.state, actions) == (S.SETTLED, (Settle(CANCELLED),))


def test_a_server_fault_places_the_job_again_elsewhere() -> None:
    binding, actions = bind_step(
        binding_in(S.PLACED), Failed(1, ERROR, retryable=True, running=False, unknown=True)
    )
    assert binding == Binding("job", S.WAITING, 1, None, None, resubmitted=True)
    assert actions == (Unbind(avoid=True), Blame("http://a", ERROR))


def test_the_jobs_own_fault_settles_it_without_blame() -> None:
    binding, actions = bind_step(binding_in(S.PLACED), Failed(1, ERROR, retryable=False))
    assert (binding.state, actions) == (S.SETTLED, (Settle(ERROR, 0.0),))


def test_a_failure_while_cancelling_is_the_outcome() -> None:
    binding, actions = bind_step(binding_in(S.CANCELLING), Failed(1, ERROR, retryable=True))
    assert (binding.state, actions) == (S.SETTLED, (Settle(ERROR),))


def test_the_last_attempt_or_a_lost_running_job_fails() -> None:
    rules = BindingRules(max_attempts=3)
    _, actions = bind_step(binding_in(S.PLACED, 3), Failed(3, ERROR, retryable=True), rules)
    assert actions == (Settle(ERROR), Blame("http://a", ERROR))
    strict = BindingRules(max_attempts=3, fail_running=True)
    failed = Failed(1, ERROR, retryable=True, running=True)
    _, actions = bind_step(binding_in(S.PLACED), failed, strict)
    assert actions == (Settle(ERROR), Blame("http://a", ERROR))


@pytest.mark.parametrize(
    ("running", "accepted", "resubmitted"),
    [(False, False, False), (False, True, True), (True, True, True)],
)
def test_take_back_waits_again(running: bool, accepted: bool, resubmitted: bool) -> None:
    binding, actions = bind_step(binding_in(S.PLACED), TakeBack(running, accepted))
    assert binding == Binding("job", S.WAITING, 1, resubmitted=resubmitted)
    assert actions == (Unbind(), CallOff())


def test_take_back_fails_a_job_being_cancelled_or_running_with_fail_running() -> None:
    for state, event, rules, says in [
        (S.CANCELLING, TakeBack(), BindingRules(), "being cancelled there; it may still run"),
        (S.PLACED, TakeBack(running=True), BindingRules(fail_running=True), "ran"),
    ]:
        binding, actions = bind_step(binding_in(state), event, rules)
        assert (binding.state, binding.server) == (S.SETTLED, None)
        assert actions[:2] == (Unbind(), CallOff())
        (settle,) = actions[2:]
        assert isinstance(settle, Settle)
        assert isinstance(settle.outcome, ConnectionLostError)
        assert str(settle.outcome).endswith(says)
        assert "http://a" in str(settle.outcome)


@pytest.mark.parametrize("state", [S.WAITING, *BOUND])
def test_close_settles_every_live_job(state: BindingState) -> None:
    binding, actions = bind_step(binding_in(state), Close(CLOSED))
    assert binding.state is S.SETTLED
    assert actions == (CallOff(), Settle(CLOSED, closing=True))


# ---------------------------------------------------------------------------- property


def events(attempts: int) -> st.SearchStrategy[Any]:
    """Any input, a launch's report naming any attempt up to ``attempts`` (stale or not)."""
    attempt = st.integers(0, attempts)
    return st.one_of(
        st.builds(Bind, st.sampled_from(["http://a", "http://b"]), st.booleans()),
        st.builds(Posted, attempt, st.just("client-job")),
        st.builds(Succeeded, attempt, st.just("result")),
        st.builds(Failed, attempt, st.just(ERROR), st.booleans(), st.booleans(), st.booleans()),
        st.builds(ClientJobCancelled, attempt),
        st.builds(Cancel, st.booleans()),
        st.builds(TakeBack, st.booleans(), st.booleans()),
        st.builds(Close, st.just(CLOSED)),
    )


@given(st.lists(events(6), max_size=40), st.integers(1, 4), st.booleans())
def test_any_sequence_keeps_the_bindings_rules(
    sequence: list[Any], max_attempts: int, fail_running: bool
) -> None:
    """Settled at most once; attempts only grow, each launch is the next; a server exactly
    while bound; a client job only while placed or cancelling; nothing after the outcome."""
    rules = BindingRules(max_attempts, fail_running)
    binding: Binding[str] = Binding("job")
    settles = 0
    for event in sequence:
        try:
            after, actions = bind_step(binding, event, rules)
        except IllegalTransition:
            continue  # raised and changed nothing (checked above)
        assert after.attempt >= binding.attempt
        launches = [a for a in actions if isinstance(a, Launch)]
        assert [a.attempt for a in launches] == ([binding.attempt + 1] if launches else [])
        settles += sum(isinstance(a, Settle) for a in actions)
        if binding.resubmitted:  # it may run on a server that went down: never "cancelled"
            assert Settle(CANCELLED) not in actions
        if binding.state is S.SETTLED:
            assert (after, actions) == (binding, ())
        if after.bound:
            assert after.server is not None
        elif after.state is S.WAITING:
            assert after.server is None
        if after.handle is not None:
            assert after.state in (S.PLACED, S.CANCELLING)
        assert not any(isinstance(a, Blame) for a in actions) or after.state in (
            S.WAITING,
            S.SETTLED,
        )
        binding = after
    assert settles == (1 if binding.state is S.SETTLED else 0)
