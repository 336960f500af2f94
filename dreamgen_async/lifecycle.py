"""A job's life, as one table: named states, the inputs that move them, the effects to carry out.

Pure (no asyncio, no I/O), in the manner of h11's ``_state.py``: the client turns HTTP answers
and WebSocket events into *inputs*, hands each to :meth:`Lifecycle.handle`, and performs the
*effects* it returns (post, remove from the server, reconcile from ``/queue`` + ``/history``,
settle, release the slot). Every state change of a job happens in :meth:`Lifecycle.handle` and
nowhere else; an input with no legal transition raises :class:`LifecycleError` and changes
nothing.

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

    any live state --abandon (close with detach, connection budget exhausted)--> FAILED
    any live state --execution_error / rejected--> FAILED

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
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = [
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
    "ReconcileFailed",
    "Removed",
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
    """Reconciliation found the prompt neither queued nor in history: the server lost it.

    ``error`` (a ``PromptLost``) is what the job fails with when it is not resubmitted;
    ``listening`` as for :class:`InQueue` (the resubmitted prompt's events arrive).
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
    """

    __slots__ = (
        "_early",
        "_end",
        "adopted",
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
        # Where a removal ends: CANCELLED when asked to cancel, FAILED when the POST failed.
        self._end = JobState.CANCELLED
        self.resubmit_lost = resubmit_lost
        # An outcome event that arrived before the POST's answer (a cached prompt can finish
        # before it): replayed once the POST is known to be accepted.
        self._early: Input | None = None

    def __repr__(self) -> str:
        return f"<Lifecycle {self.state.value}{' gap' if self.gap else ''}>"

    def handle(self, event: Input) -> tuple[Effect, ...]:
        """Apply one input; return the effects to carry out, in order.

        Raises:
            LifecycleError: ``event`` is not legal in the current state (nothing changed).
        """
        old = self.state
        if old.terminal:
            return ()  # settled once: late events and repeated cancels change nothing
        new, effects = self._transition(old, event)
        self.epoch += 1
        self.state = new
        if new.terminal and old.holds_slot:
            effects = (*effects, RELEASE)
        return effects

    # The table. Each branch names the state, then the inputs legal in it.
    def _transition(self, state: JobState, event: Input) -> tuple[JobState, tuple[Effect, ...]]:
        if isinstance(event, Abandon):
            effects = (ABORT_POST,) if state in (_S.POSTING, _S.CANCEL_WHILE_POSTING) else ()
            return _S.FAILED, (*effects, _fail(event.reason))
        if isinstance(event, Gap):
            if state in ON_SERVER:
                self.gap = True
            return state, ()

        if state is _S.WAITING:
            if isinstance(event, SlotGranted):
                if self.adopted:  # its earlier events were missed: ask the server
                    self.gap = True
                    return _S.SETTLING, (RECONCILE,)
                self.gap = not event.connected
                return _S.POSTING, (POST,)
            if isinstance(event, Cancel):
                self.reason = event.reason
                return _S.CANCELLED, (_fail(event.reason),)

        elif state in (_S.POSTING, _S.CANCEL_WHILE_POSTING):
            cancelling = state is _S.CANCEL_WHILE_POSTING
            if isinstance(event, PostAccepted):
                if cancelling:
                    return _S.REMOVING, (REMOVE,)
                early, self._early = self._early, None
                if early is not None:
                    return self._transition(_S.QUEUED, early)
                return _S.QUEUED, (RECONCILE,) if self.gap else ()
            if isinstance(event, PostRejected):
                if cancelling:
                    assert self.reason is not None
                    return _S.CANCELLED, (_fail(self.reason),)
                return _S.FAILED, (_fail(event.error),)
            if isinstance(event, PostFailed):
                if not cancelling:
                    self.reason, self._end = event.error, _S.FAILED
                return _S.REMOVING, (REMOVE,)
            if isinstance(event, Cancel):
                if not cancelling:
                    self.reason = event.reason
                return _S.CANCEL_WHILE_POSTING, ()
            if isinstance(event, Started):
                return state, ()
            if isinstance(event, Finished | Failed | Interrupted):
                self._early = event
                return state, ()

        elif state in (_S.QUEUED, _S.RUNNING, _S.SETTLING):
            if isinstance(event, Started):
                return (_S.RUNNING if state is _S.QUEUED else state), ()
            if isinstance(event, Finished):
                if state is _S.SETTLING:  # (an adopted prompt that ends while we look)
                    return state, (RECONCILE,)
                if event.complete and not self.gap:
                    return _S.DONE, (Effect("resolve"),)
                return _S.SETTLING, (RECONCILE,)
            if isinstance(event, Failed | Interrupted):
                return _S.FAILED, (_fail(event.error),)
            if isinstance(event, InQueue):
                if not event.running and event.listening:
                    self.gap = False  # not started, and heard from now on: nothing missed
                return (_S.RUNNING if event.running else _S.QUEUED), ()
            if isinstance(event, Outcome):
                return _settle(event)
            if isinstance(event, Absent):
                if self.resubmit_lost and not self.resubmitted:
                    self.resubmitted = True
                    self.gap = not event.listening
                    return _S.POSTING, (POST,)
                return _S.FAILED, (_fail(event.error),)
            if isinstance(event, ReconcileFailed):
                self.gap = True  # the next resync checks it again
                return state, (RESYNC,)
            if isinstance(event, Cancel):
                self.reason = event.reason
                return _S.REMOVING, (REMOVE,)

        elif state in (_S.REMOVING, _S.INTERRUPTING):
            assert self.reason is not None
            if isinstance(event, Removed):
                if state is _S.INTERRUPTING:
                    return state, ()
                if event.running:
                    # With a gap, the prompt it saw running may be gone (a restart during the
                    # removal, whose resync came too early to see this job): ask again.
                    return _S.INTERRUPTING, (RECONCILE,) if self.gap else ()
                return self._cancelled()
            if isinstance(event, Cancel | Started):
                return state, ()
            if isinstance(event, Finished):
                if event.complete and not self.gap:
                    return _S.DONE, (Effect("resolve"),)  # it finished before the removal
                return state, (RECONCILE,) if state is _S.INTERRUPTING else ()
            if isinstance(event, Interrupted):
                return self._cancelled()
            if isinstance(event, Failed):
                return _S.FAILED, (_fail(event.error),)
            if isinstance(event, Outcome):
                if event.error is None:
                    return _S.DONE, (_resolve(event),)
                return self._cancelled() if event.interrupted else _settle(event)
            if isinstance(event, InQueue):
                return state, ()  # still running: the interrupt's outcome is still to come
            if isinstance(event, Absent):
                return self._cancelled()
            if isinstance(event, ReconcileFailed):
                self.gap = True
                return state, (RESYNC,)

        raise LifecycleError(f"{type(event).__name__} is not legal in state {state.value}")

    def _cancelled(self) -> tuple[JobState, tuple[Effect, ...]]:
        assert self.reason is not None
        # A removal started because the POST itself failed ends FAILED, not CANCELLED.
        return self._end, (_fail(self.reason),)


def _fail(error: BaseException) -> Effect:
    return Effect("fail", error=error)


def _resolve(event: Outcome) -> Effect:
    return Effect("resolve", outputs=event.outputs, files=event.files)


def _settle(event: Outcome) -> tuple[JobState, tuple[Effect, ...]]:
    if event.error is None:
        return _S.DONE, (_resolve(event),)
    return _S.FAILED, (_fail(event.error),)
