"""A job's life, as one table: named states, the inputs that move them, the effects to carry out.

Pure (no asyncio, no I/O), in the manner of h11's ``_state.py``: the client turns HTTP answers
and WebSocket events into *inputs*, hands each to :meth:`Lifecycle.handle`, and performs the
*effects* it returns (post, remove from the server, reconcile from ``/queue`` + ``/history``,
settle, release the slot). :data:`TRANSITIONS` is the table: one row per (state, input type),
each naming the small handler that decides the next state and the effects. Every state change
of a job happens in :meth:`Lifecycle.handle` and nowhere else; an input with no row raises
:class:`LifecycleError` and changes nothing.

::

    WAITING --slot--> POSTING --accepted--> QUEUED --started--> RUNNING --finished--> DONE
                         |                    |  \\                |  \\
                  cancel |                    |   gap: events missed, outcome read from
                         v                    |   /queue + /history (SETTLING)
              CANCEL_WHILE_POSTING            |
                         | POST's outcome     | cancel
                         v known              v
                      REMOVING --(delete sent, not gone: it runs)--> INTERRUPTING
                         |                                               |
                         +--------------- gone / interrupted ------------+--> CANCELLED
                         |                                               |
                         +-- found nowhere after a gap (may have run) ---+--> FAILED

    any live state --abandon (close with detach, connection budget exhausted)--> FAILED
    any live state --execution_error / rejected--> FAILED
    RUNNING --run timeout--> REMOVING (interrupt);  WAITING/POSTING/QUEUED --queue timeout-->
    as a cancel (CANCELLED, CANCEL_WHILE_POSTING, REMOVING); elsewhere a limit changes nothing

Rules the table enforces:

- **Settled once**: DONE, FAILED and CANCELLED are terminal; a terminal job ignores every input
  (late events, a second cancel), so it is settled exactly once.
- **Cancellation is a request**: cancelling is idempotent. While the POST is in flight it is
  only recorded; the removal happens once the POST's outcome is known, so a slow server cannot
  queue a prompt after its delete arrived.
- **One slot**: a job holds an in-flight slot from POSTING until it is terminal; the release is
  emitted by the one transition into a terminal state.
- **Reported cancelled means gone**: a cancelled job reaches CANCELLED only when the server no
  longer has it (deleted while pending, or interrupted while running). If it finished first,
  it is DONE: the caller gets no result it asked to drop, but nothing ran that we deny.
- **Reported cancelled means it never ran**: a removal that finds the prompt nowhere (neither
  queued nor in history) ends CANCELLED only when the client heard everything since it last
  saw the prompt on the server (no gap, a socket open): then our delete took it, or a restart
  lost it unrun. After a gap it may have finished and had its history wiped by a restart:
  FAILED with the :class:`Absent`'s ``PromptLost``, which says it may have run. A removal
  the server never confirms is abandoned (FAILED: it may still run), never CANCELLED.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

__all__ = [
    "TRANSITIONS",
    "Abandon",
    "Absent",
    "Cancel",
    "Effect",
    "Failed",
    "Finished",
    "Gap",
    "InQueue",
    "Input",
    "Interrupted",
    "JobState",
    "Lifecycle",
    "LifecycleError",
    "Outcome",
    "PostAccepted",
    "PostFailed",
    "PostRejected",
    "QueueTimeout",
    "ReconcileFailed",
    "Removed",
    "RunTimeout",
    "SlotGranted",
    "Started",
]


class LifecycleError(RuntimeError):
    """An input arrived in a state with no legal transition for it: a bug in the caller."""


class JobState(enum.StrEnum):
    """Where a job is. Compares equal to its string value (``job.state == "queued"``)."""

    WAITING = "waiting"
    """Client-side, waiting for an in-flight slot; cancelling costs nothing."""
    POSTING = "posting"
    """``POST /prompt`` in flight."""
    CANCEL_WHILE_POSTING = "cancel-while-posting"
    """Cancel requested during the POST: acted on once the POST's outcome is known."""
    QUEUED = "queued"
    RUNNING = "running"
    SETTLING = "settling"
    """Events were missed: the outcome is being read from ``/queue`` and ``/history``."""
    REMOVING = "removing"
    """Queue delete (and targeted interrupt if it runs) in progress."""
    INTERRUPTING = "interrupting"
    """Targeted interrupt sent; waiting for the server's last word on it."""
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def holds_slot(self) -> bool:
        """Whether a job in this state occupies one of the client's ``max_in_flight`` slots."""
        return self not in _TERMINAL and self is not JobState.WAITING


_TERMINAL = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})
_S = JobState

#: States whose job the server may hold (the WebSocket routes its events; a gap marks it).
ON_SERVER = frozenset(
    {
        _S.POSTING,
        _S.CANCEL_WHILE_POSTING,
        _S.QUEUED,
        _S.RUNNING,
        _S.SETTLING,
        _S.REMOVING,
        _S.INTERRUPTING,
    }
)
#: States a reconnect must check against ``/queue`` + ``/history`` when events were missed.
RECONCILABLE = frozenset({_S.QUEUED, _S.RUNNING, _S.SETTLING, _S.INTERRUPTING})


# ---------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class SlotGranted:
    """An in-flight slot was granted: post now. ``connected``: the socket is open."""

    connected: bool = True


@dataclass(frozen=True, slots=True)
class PostAccepted:
    """The server queued the prompt (200)."""


@dataclass(frozen=True, slots=True)
class PostRejected:
    """The server did not queue the prompt (400, or it was never reached)."""

    error: BaseException


@dataclass(frozen=True, slots=True)
class PostFailed:
    """The POST's outcome is unknown or unusable: the server may hold the prompt."""

    error: BaseException


@dataclass(frozen=True, slots=True)
class Started:
    """``execution_start``."""


@dataclass(frozen=True, slots=True)
class Finished:
    """``executing {node: null}``. ``complete``: success seen and no event was missed."""

    complete: bool


@dataclass(frozen=True, slots=True)
class Failed:
    """``execution_error``."""

    error: BaseException


@dataclass(frozen=True, slots=True)
class Interrupted:
    """``execution_interrupted``."""

    error: BaseException


@dataclass(frozen=True, slots=True)
class Gap:
    """The WebSocket dropped: this job's events may be incomplete."""


@dataclass(frozen=True, slots=True)
class InQueue:
    """Reconciliation found the prompt in the server's queue (``running`` or pending).

    ``listening``: the socket is open, so every event from now on arrives. Only then does a
    pending prompt's gap close; without a socket, the server may still lose it unnoticed.
    """

    running: bool
    listening: bool = True


@dataclass(frozen=True, slots=True)
class Outcome:
    """Reconciliation (or a removal) found the prompt's history entry.

    ``error`` is None for success, with ``outputs`` the history's outputs.
    """

    error: BaseException | None
    outputs: Mapping[str, object] | None = None
    files: tuple[object, ...] | None = None
    interrupted: bool = False


@dataclass(frozen=True, slots=True)
class Absent:
    """Reconciliation (or a removal) found the prompt neither queued nor in history.

    Watched, the server lost it. Being removed, our delete took it, or the server lost it —
    perhaps after it ran, its history wiped by a restart. ``error`` (a ``PromptLost``) is
    what the job fails with when it is not resubmitted, or when a removal cannot tell that
    it never ran; ``listening`` as for :class:`InQueue` (the socket is open: the
    resubmitted prompt's events arrive, and no event of the removed one is being missed).
    """

    error: BaseException
    listening: bool = True


@dataclass(frozen=True, slots=True)
class ReconcileFailed:
    """``/queue`` or ``/history`` could not be read: try again after a reconnect."""


@dataclass(frozen=True, slots=True)
class Cancel:
    """Take the job off the server, then settle with ``reason`` (idempotent).

    ``reason`` is ``asyncio.CancelledError()``, a ``PromptTimeout``, a ``ClientClosedError``...
    """

    reason: BaseException


@dataclass(frozen=True, slots=True)
class RunTimeout:
    """The job's ``max_run_time`` passed since it was seen running: interrupt it if it still
    runs, then settle with ``reason`` (a ``PromptTimeout``). Ignored in any other state."""

    reason: BaseException


@dataclass(frozen=True, slots=True)
class QueueTimeout:
    """The job's ``queue_timeout`` passed before it was seen running: take it off the
    client-side queue or the server's, then settle with ``reason`` (a ``PromptTimeout``).
    Ignored once it runs (or is being removed)."""

    reason: BaseException


@dataclass(frozen=True, slots=True)
class Removed:
    """The removal requests were sent. ``running``: the prompt was still running (interrupted)."""

    running: bool


@dataclass(frozen=True, slots=True)
class Abandon:
    """Settle with ``reason`` at once, leaving the prompt to the server (detach, lost link)."""

    reason: BaseException


Input = (
    SlotGranted
    | PostAccepted
    | PostRejected
    | PostFailed
    | Started
    | Finished
    | Failed
    | Interrupted
    | Gap
    | InQueue
    | Outcome
    | Absent
    | ReconcileFailed
    | Cancel
    | RunTimeout
    | QueueTimeout
    | Removed
    | Abandon
)

# ---------------------------------------------------------------------------- effects

EffectKind = Literal[
    "post", "remove", "reconcile", "resync", "resolve", "fail", "release", "abort_post"
]


@dataclass(frozen=True, slots=True)
class Effect:
    """Something the shell must do. ``error`` for ``fail``; ``outputs`` for ``resolve``.

    - ``post``: send ``POST /prompt`` (the job's own prompt_id), report PostAccepted/...;
    - ``remove``: queue delete + targeted interrupt, report Removed (or an Outcome);
    - ``reconcile``: read ``/queue`` + ``/history`` for this job, report InQueue/Outcome/Absent
      (or ReconcileFailed);
    - ``resync``: reconciliation failed: drop the socket, so the reconnect resyncs everything;
    - ``resolve`` / ``fail``: settle the job's result (exactly once);
    - ``release``: free the job's in-flight slot;
    - ``abort_post``: stop waiting for an in-flight POST (its outcome no longer matters).
    """

    kind: EffectKind
    error: BaseException | None = None
    outputs: Mapping[str, object] | None = None
    files: tuple[object, ...] | None = None


POST = Effect("post")
REMOVE = Effect("remove")
RECONCILE = Effect("reconcile")
RESYNC = Effect("resync")
RESOLVE = Effect("resolve")
RELEASE = Effect("release")
ABORT_POST = Effect("abort_post")


class Lifecycle:
    """One job's state and the facts its transitions depend on.

    Attributes:
        state: The current :class:`JobState`.
        gap: True when the job's WebSocket events may be incomplete (a drop happened while the
            server held it): its outcome must come from ``/history``.
        resubmitted: The server lost the prompt and it was posted again (at most once).
        reason: Why the job is being cancelled (set by the first Cancel; later ones are no-ops).
        resubmit_lost: The client's ``on_lost`` policy: resubmit a lost prompt once.
        epoch: Counts the inputs handled. A shell that read the server, then awaited,
            compares it to know whether what it read still applies.
        adopted: The prompt was posted before (by another process): a granted slot leads to
            reconciling it from ``/queue`` + ``/history`` instead of posting it.
        early: An outcome event heard before the POST's answer (a cached prompt can finish
            before it), replayed once the POST is known to be accepted. The table's own
            bookkeeping: read it, never set it.
        ends_as: Where a removal ends: CANCELLED when asked to cancel, FAILED when the POST
            itself failed. The table's own bookkeeping, like ``early``.
    """

    __slots__ = (
        "adopted",
        "early",
        "ends_as",
        "epoch",
        "gap",
        "reason",
        "resubmit_lost",
        "resubmitted",
        "state",
    )

    def __init__(self, *, resubmit_lost: bool = True, adopted: bool = False) -> None:
        self.state = JobState.WAITING
        self.adopted = adopted
        self.epoch = 0
        self.gap = False
        self.resubmitted = False
        self.reason: BaseException | None = None
        self.ends_as = JobState.CANCELLED
        self.resubmit_lost = resubmit_lost
        self.early: Finished | Failed | Interrupted | None = None

    def __repr__(self) -> str:
        return f"<Lifecycle {self.state.value}{' gap' if self.gap else ''}>"

    def handle(self, event: Input) -> tuple[Effect, ...]:
        """Apply one input; return the effects to carry out, in order.

        The one place where a job's state changes: the row of :data:`TRANSITIONS` for
        ``(state, type(event))`` decides the next state and the effects; the transition into a
        terminal state adds the slot's release.

        Raises:
            LifecycleError: ``event`` is not legal in the current state (nothing changed).
        """
        old = self.state
        if old.terminal:
            return ()  # settled once: late events and repeated cancels change nothing
        handler = TRANSITIONS.get((old, type(event)))
        if handler is None:
            raise LifecycleError(f"{type(event).__name__} is not legal in state {old.value}")
        new, effects = handler(self, event)
        self.epoch += 1
        self.state = new
        if new.terminal and old.holds_slot:
            effects = (*effects, RELEASE)
        return effects


# ---------------------------------------------------------------------------- the table
#
# A handler gets the job (``life.state`` is still the state of its row) and the input. It may
# update the job's facts (gap, reason...), never its state: it returns the next state and the
# effects, and Lifecycle.handle() moves the job.

Step = tuple[JobState, tuple[Effect, ...]]
Handler = Callable[[Lifecycle, Any], Step]


def _fail(error: BaseException) -> Effect:
    return Effect("fail", error=error)


def _resolve(event: Outcome) -> Effect:
    return Effect("resolve", outputs=event.outputs, files=event.files)


def _stay(life: Lifecycle, event: Input) -> Step:
    """Nothing to do: the input is expected here and changes nothing."""
    return life.state, ()


def _abandon(life: Lifecycle, event: Abandon) -> Step:
    """Settle at once, leaving the prompt to the server; stop waiting for a POST in flight."""
    posting = life.state in (_S.POSTING, _S.CANCEL_WHILE_POSTING)
    return _S.FAILED, (*((ABORT_POST,) if posting else ()), _fail(event.reason))


def _gap(life: Lifecycle, event: Gap) -> Step:
    """Events were missed: a job the server may hold gets its outcome from ``/history``."""
    if life.state in ON_SERVER:
        life.gap = True
    return life.state, ()


def _fail_with_error(life: Lifecycle, event: PostRejected | Failed | Interrupted) -> Step:
    return _S.FAILED, (_fail(event.error),)


def _settle(life: Lifecycle, event: Outcome) -> Step:
    if event.error is None:
        return _S.DONE, (_resolve(event),)
    return _S.FAILED, (_fail(event.error),)


def _resync(life: Lifecycle, event: ReconcileFailed) -> Step:
    """``/queue`` or ``/history`` unread: the next resync checks this job again."""
    life.gap = True
    return life.state, (RESYNC,)


def _check_again(life: Lifecycle, event: Input) -> Step:
    return life.state, (RECONCILE,)


# WAITING


def _granted(life: Lifecycle, event: SlotGranted) -> Step:
    if life.adopted:  # its earlier events were missed: ask the server
        life.gap = True
        return _S.SETTLING, (RECONCILE,)
    life.gap = not event.connected
    return _S.POSTING, (POST,)


def _cancel_waiting(life: Lifecycle, event: Cancel | RunTimeout | QueueTimeout) -> Step:
    """Nothing was sent: cancelling costs nothing."""
    life.reason = event.reason
    return _S.CANCELLED, (_fail(event.reason),)


# POSTING and CANCEL_WHILE_POSTING


def _accepted(life: Lifecycle, event: PostAccepted) -> Step:
    early, life.early = life.early, None
    if early is not None:  # it already ended: replay its outcome as heard in QUEUED
        return TRANSITIONS[(_S.QUEUED, type(early))](life, early)
    return _S.QUEUED, (RECONCILE,) if life.gap else ()


def _post_failed(life: Lifecycle, event: PostFailed) -> Step:
    """The server may hold the prompt: take it back, then fail with the POST's error."""
    life.reason, life.ends_as = event.error, _S.FAILED
    return _S.REMOVING, (REMOVE,)


def _cancel_posting(life: Lifecycle, event: Cancel | RunTimeout | QueueTimeout) -> Step:
    """Recorded only: the removal waits for the POST's outcome."""
    life.reason = event.reason
    return _S.CANCEL_WHILE_POSTING, ()


def _remove(life: Lifecycle, event: Input) -> Step:
    return _S.REMOVING, (REMOVE,)


def _rejected_anyway(life: Lifecycle, event: PostRejected) -> Step:
    """Cancelled during a POST the server refused: nothing to take back."""
    assert life.reason is not None
    return _S.CANCELLED, (_fail(life.reason),)


def _hold_early(life: Lifecycle, event: Finished | Failed | Interrupted) -> Step:
    """An outcome before the POST's answer (a cached prompt): kept until it is known."""
    life.early = event
    return life.state, ()


# QUEUED, RUNNING and SETTLING


def _run(life: Lifecycle, event: Started) -> Step:
    return _S.RUNNING, ()


def _finished(life: Lifecycle, event: Finished) -> Step:
    if event.complete and not life.gap:
        return _S.DONE, (RESOLVE,)
    return _S.SETTLING, (RECONCILE,)


def _in_queue(life: Lifecycle, event: InQueue) -> Step:
    if not event.running and event.listening:
        life.gap = False  # not started, and heard from now on: nothing missed
    return (_S.RUNNING if event.running else _S.QUEUED), ()


def _absent(life: Lifecycle, event: Absent) -> Step:
    """The server lost the prompt: post it again once (``on_lost``), else fail."""
    if life.resubmit_lost and not life.resubmitted:
        life.resubmitted = True
        life.gap = not event.listening
        return _S.POSTING, (POST,)
    return _S.FAILED, (_fail(event.error),)


def _cancel_on_server(life: Lifecycle, event: Cancel | RunTimeout | QueueTimeout) -> Step:
    life.reason = event.reason
    return _S.REMOVING, (REMOVE,)


# REMOVING and INTERRUPTING


def _cancelled(life: Lifecycle, event: Input) -> Step:
    """The server no longer has it. A removal of a failed POST ends FAILED, not CANCELLED."""
    assert life.reason is not None
    return life.ends_as, (_fail(life.reason),)


def _removed(life: Lifecycle, event: Removed) -> Step:
    if not event.running:
        return _cancelled(life, event)
    # With a gap, the prompt it saw running may be gone (a restart during the removal, whose
    # resync came too early to see this job): ask again.
    return _S.INTERRUPTING, (RECONCILE,) if life.gap else ()


def _gone(life: Lifecycle, event: Absent) -> Step:
    """Found nowhere during a removal. Cancelled only if nothing was missed since the prompt
    was last seen on the server: then our delete took it, or a restart lost it unrun. After a
    gap (or with no socket), it may have finished and had its history wiped by a restart:
    failed with the event's ``PromptLost``, never reported cancelled. (A removal of a failed
    POST ends with the POST's error either way.)"""
    if life.ends_as is _S.CANCELLED and (life.gap or not event.listening):
        return _S.FAILED, (_fail(event.error),)
    return _cancelled(life, event)


def _finished_during_removal(life: Lifecycle, event: Finished) -> Step:
    if event.complete and not life.gap:
        return _S.DONE, (RESOLVE,)  # it finished before the removal
    return life.state, (RECONCILE,) if life.state is _S.INTERRUPTING else ()


def _outcome_during_removal(life: Lifecycle, event: Outcome) -> Step:
    if event.error is None:
        return _S.DONE, (_resolve(event),)
    return _cancelled(life, event) if event.interrupted else _settle(life, event)


Rows = tuple[Iterable[JobState], Mapping[type[Input], Handler]]


def _table(*groups: Rows) -> Mapping[tuple[JobState, type[Input]], Handler]:
    """One row per (state, input type) of each group; a pair given twice is a bug."""
    table: dict[tuple[JobState, type[Input]], Handler] = {}
    for states, handlers in groups:
        for state in states:
            for kind, handler in handlers.items():
                if (state, kind) in table:
                    raise LifecycleError(f"two rows for {kind.__name__} in {state.value}")
                table[state, kind] = handler
    return MappingProxyType(table)


_POSTING = (_S.POSTING, _S.CANCEL_WHILE_POSTING)
_WATCHED = (_S.QUEUED, _S.RUNNING, _S.SETTLING)
_REMOVAL = (_S.REMOVING, _S.INTERRUPTING)
_LIVE = [s for s in JobState if not s.terminal]

#: The whole table: (state, input type) -> handler. A pair absent from it is illegal
#: (:class:`LifecycleError`). A terminal state has no rows: it ignores every input.
TRANSITIONS = _table(
    ([s for s in JobState if not s.terminal], {Abandon: _abandon, Gap: _gap}),
    # Limits (``max_run_time``, ``queue_timeout``): each acts only where it applies.
    ([_S.RUNNING], {RunTimeout: _cancel_on_server}),
    ([s for s in _LIVE if s is not _S.RUNNING], {RunTimeout: _stay}),
    ([_S.WAITING], {QueueTimeout: _cancel_waiting}),
    ([_S.POSTING], {QueueTimeout: _cancel_posting}),
    ([_S.QUEUED], {QueueTimeout: _cancel_on_server}),
    (
        [_S.CANCEL_WHILE_POSTING, _S.RUNNING, _S.SETTLING, *_REMOVAL],
        {QueueTimeout: _stay},
    ),
    ([_S.WAITING], {SlotGranted: _granted, Cancel: _cancel_waiting}),
    (
        [_S.POSTING],
        {
            PostAccepted: _accepted,
            PostRejected: _fail_with_error,
            PostFailed: _post_failed,
            Cancel: _cancel_posting,
        },
    ),
    (
        [_S.CANCEL_WHILE_POSTING],
        {
            PostAccepted: _remove,
            PostRejected: _rejected_anyway,
            PostFailed: _remove,
            Cancel: _stay,
        },
    ),
    (
        _POSTING,
        {Started: _stay, Finished: _hold_early, Failed: _hold_early, Interrupted: _hold_early},
    ),
    ([_S.QUEUED], {Started: _run, Finished: _finished}),
    ([_S.RUNNING], {Started: _stay, Finished: _finished}),
    # An adopted prompt that ends while we look: look again.
    ([_S.SETTLING], {Started: _stay, Finished: _check_again}),
    (
        _WATCHED,
        {
            Failed: _fail_with_error,
            Interrupted: _fail_with_error,
            InQueue: _in_queue,
            Outcome: _settle,
            Absent: _absent,
            ReconcileFailed: _resync,
            Cancel: _cancel_on_server,
        },
    ),
    ([_S.REMOVING], {Removed: _removed}),
    ([_S.INTERRUPTING], {Removed: _stay}),
    (
        _REMOVAL,
        {
            Cancel: _stay,
            Started: _stay,
            Finished: _finished_during_removal,
            Interrupted: _cancelled,
            Failed: _fail_with_error,
            Outcome: _outcome_during_removal,
            InQueue: _stay,  # still running: the interrupt's outcome is still to come
            Absent: _gone,  # nowhere: cancelled only if it cannot have run
            ReconcileFailed: _resync,
        },
    ),
)
