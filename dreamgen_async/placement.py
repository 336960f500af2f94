"""Pure placement decisions for :class:`~dreamgen_async.pool.ComfyUIPool` (no asyncio, no I/O).

In one breath: the pool's state is two collections, the jobs waiting client-side and the
servers; :meth:`Scheduler.assign` is the one synchronous step that runs after every change (a
job added, a slot freed, a server up or down) and returns the placements to carry out. Each
server's health is a small state machine (:data:`TRANSITIONS`): an event with no legal
transition raises :class:`IllegalTransition` and changes nothing.

A job goes, in this order of concern, to a server that

1. **can run it** — has every node class and model file the workflow names
   (:func:`requirements` against :class:`Capabilities` read from ``/object_info``);
2. **has its model loaded** — the checkpoint/UNet of the last job placed there (its *tail*),
   looking ``lookahead`` jobs into the wait queue, so that an interleaved A,B,A,B stream keeps
   A on one server and B on another instead of swapping on every job;
3. **will be free soonest** — the server's own queue (other clients' prompts count) and ours,
   times its job time for that model (a moving average per server and model).

When a server should change model is decided by playing the options out in a fluid model of
the backlog (:func:`fluid_end`: each server drains its model's jobs at its learned rate and
moves when its model runs out): an idle server whose model has no work left loads the model
that ends the whole backlog soonest, and a working server moves early when that ends the
backlog sooner by more than the estimate's noise (a slow server leaving a model the fast one
can finish alone, rather than the fast one switching twice later). And a server takes a job
only if it would finish it before the servers already on that model would have run the whole
backlog of it (:meth:`Scheduler._useful`): the last jobs of a run go to fast servers, not to
a slow one that would finish last, and no server loads a model for a handful of jobs.

Priorities: higher first, FIFO within a priority; a server goes on to a lower priority only
when it can run none of the higher one's jobs (a job only another server can run holds up
nothing). A job skipped ``max_bypass`` times is placed next whatever its model (no
starvation). A job of higher priority than everything of ours on a server may take one slot
beyond its capacity and is posted with ``front`` (it starts next).
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, TypeVar

from dreamgen_async.errors import ConnectionLostError

__all__ = [
    "BINDING_TABLE",
    "CANCELLED",
    "MODEL_INPUTS",
    "MODEL_SUFFIXES",
    "TRANSITIONS",
    "Bind",
    "Binding",
    "BindingRules",
    "BindingState",
    "Blame",
    "CallOff",
    "Cancel",
    "CancelClientJob",
    "Capabilities",
    "ClientJobCancelled",
    "Close",
    "Failed",
    "IllegalTransition",
    "Lane",
    "Launch",
    "Placement",
    "Posted",
    "Requirements",
    "Scheduler",
    "ServerEvent",
    "ServerRecord",
    "ServerState",
    "Settle",
    "Succeeded",
    "TakeBack",
    "Ticket",
    "Unbind",
    "bind_step",
    "describe_missing",
    "fluid_end",
    "next_state",
    "requirements",
]

#: String inputs ending with one of these name a model file the server must have.
MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft", ".onnx")
#: Inputs naming the model a server keeps loaded between jobs (what affinity is about).
MODEL_INPUTS = ("ckpt_name", "unet_name")


# ---------------------------------------------------------------------------- capability


@dataclass(frozen=True, slots=True)
class Requirements:
    """What a workflow needs from a server.

    Attributes:
        node_classes: Every ``class_type`` in the graph.
        model_files: ``(class_type, input_name, file)`` for every model file named.
        model: The affinity key (the checkpoint/UNet names, joined), ``None`` when none.
    """

    node_classes: frozenset[str]
    model_files: frozenset[tuple[str, str, str]]
    model: str | None


def requirements(workflow: Mapping[str, Any]) -> Requirements:
    """The node classes, model files and affinity model of an API-format workflow."""
    classes: set[str] = set()
    files: set[tuple[str, str, str]] = set()
    models: set[str] = set()
    for node in workflow.values():
        if not isinstance(node, Mapping):
            continue
        class_type = str(node.get("class_type", ""))
        classes.add(class_type)
        inputs = node.get("inputs")
        if not isinstance(inputs, Mapping):
            continue
        for name, value in inputs.items():
            if isinstance(value, str) and value.lower().endswith(MODEL_SUFFIXES):
                files.add((class_type, str(name), value))
                if name in MODEL_INPUTS:
                    models.add(value)
    return Requirements(frozenset(classes), frozenset(files), "+".join(sorted(models)) or None)


def _combo_options(spec: Any) -> frozenset[str] | None:
    """A combo input's options, in either ``[[opts], {...}]`` or ``["COMBO", {"options"}]``."""
    if not isinstance(spec, list | tuple) or not spec:
        return None
    first = spec[0]
    if isinstance(first, list | tuple):
        return frozenset(str(o) for o in first)
    if first == "COMBO" and len(spec) > 1 and isinstance(spec[1], Mapping):
        options = spec[1].get("options")
        if isinstance(options, list | tuple):
            return frozenset(str(o) for o in options)
    return None


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What one server offers: its node classes and the choices of its combo inputs."""

    node_classes: frozenset[str]
    choices: Mapping[tuple[str, str], frozenset[str]] = field(default_factory=dict)

    @classmethod
    def from_object_info(cls, info: Mapping[str, Any]) -> Capabilities:
        """Read a ``GET /object_info`` answer."""
        choices: dict[tuple[str, str], frozenset[str]] = {}
        for class_type, node in info.items():
            inputs = node.get("input") if isinstance(node, Mapping) else None
            if not isinstance(inputs, Mapping):
                continue
            for category in ("required", "optional"):
                specs = inputs.get(category)
                if not isinstance(specs, Mapping):
                    continue
                for name, spec in specs.items():
                    options = _combo_options(spec)
                    if options is not None:
                        choices[(str(class_type), str(name))] = options
        return cls(frozenset(str(k) for k in info), choices)

    def missing(self, req: Requirements) -> tuple[str, ...]:
        """What ``req`` needs that this server lacks, as readable phrases (empty: can run)."""
        out = [f"node class {c}" for c in sorted(req.node_classes - self.node_classes)]
        for class_type, name, value in sorted(req.model_files):
            options = self.choices.get((class_type, name))
            if options is not None and value not in options:
                out.append(f"{name} {value!r}")
        return tuple(out)


# ---------------------------------------------------------------------------- server health


class ServerState(enum.Enum):
    """A pool server's health. Only ``UP`` servers receive new jobs."""

    JOINING = "joining"  # opening its client and reading /object_info
    UP = "up"
    SUSPECT = "suspect"  # a request failed or the socket dropped: probed, no new jobs
    DOWN = "down"  # unusable: its jobs were taken back; probed with backoff, rejoins by itself
    DRAINING = "draining"  # no new jobs; removed once its jobs are finished
    REMOVED = "removed"


class ServerEvent(enum.Enum):
    """What the pool observed about a server."""

    READY = "ready"  # client open and /object_info read (a join or a rejoin)
    OK = "ok"  # a request or a probe succeeded
    FAILED = "failed"  # a request failed, or the socket is not connected
    PROBE_FAILED = "probe_failed"
    LOST = "lost"  # refused, reconnect budget exhausted, or failures persisted
    DRAIN = "drain"
    DRAINED = "drained"  # a draining server has no job left
    REMOVE = "remove"


class IllegalTransition(RuntimeError):
    """An event that has no transition from the server's state (a bug in the caller)."""


_S, _E = ServerState, ServerEvent
#: The whole server state machine: (state, event) -> next state. Anything absent is illegal.
TRANSITIONS: Mapping[tuple[ServerState, ServerEvent], ServerState] = {
    (_S.JOINING, _E.READY): _S.UP,
    (_S.JOINING, _E.FAILED): _S.DOWN,
    (_S.JOINING, _E.PROBE_FAILED): _S.DOWN,
    (_S.JOINING, _E.LOST): _S.DOWN,
    (_S.UP, _E.READY): _S.UP,
    (_S.UP, _E.OK): _S.UP,
    (_S.UP, _E.FAILED): _S.SUSPECT,
    (_S.UP, _E.PROBE_FAILED): _S.SUSPECT,
    (_S.UP, _E.LOST): _S.DOWN,
    (_S.SUSPECT, _E.READY): _S.UP,
    (_S.SUSPECT, _E.OK): _S.UP,
    (_S.SUSPECT, _E.FAILED): _S.SUSPECT,
    (_S.SUSPECT, _E.PROBE_FAILED): _S.DOWN,
    (_S.SUSPECT, _E.LOST): _S.DOWN,
    # A late success of an old request does not revive a down server: only a rejoin does.
    (_S.DOWN, _E.READY): _S.UP,
    (_S.DOWN, _E.OK): _S.DOWN,
    (_S.DOWN, _E.FAILED): _S.DOWN,
    (_S.DOWN, _E.PROBE_FAILED): _S.DOWN,
    (_S.DOWN, _E.LOST): _S.DOWN,
    (_S.DRAINING, _E.READY): _S.DRAINING,
    (_S.DRAINING, _E.OK): _S.DRAINING,
    (_S.DRAINING, _E.FAILED): _S.DRAINING,
    (_S.DRAINING, _E.PROBE_FAILED): _S.DRAINING,
    (_S.DRAINING, _E.DRAIN): _S.DRAINING,
    # A draining server that dies is gone: its jobs are taken back like a down server's.
    (_S.DRAINING, _E.LOST): _S.REMOVED,
    (_S.DRAINING, _E.DRAINED): _S.REMOVED,
    **{(s, _E.DRAIN): _S.DRAINING for s in (_S.JOINING, _S.UP, _S.SUSPECT, _S.DOWN)},
    **{(s, _E.REMOVE): _S.REMOVED for s in _S if s is not _S.REMOVED},
}


def next_state(state: ServerState, event: ServerEvent) -> ServerState:
    """The state after ``event``; raises :class:`IllegalTransition` if there is none."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(f"{event.value} is not possible in state {state.value}") from None


# ---------------------------------------------------------------------------- a job's binding
#
# A pool job is bound to at most one server at a time. Its binding is a value (Binding) that
# changes only through bind_step(): (state, input type) -> handler, listed in BINDING_TABLE
# like the server table above. The step returns the actions for the pool to perform (launch
# a post, call a launch off, cancel the client job, unbind, blame the server, settle). Each
# placement is an attempt, numbered; a launch reports with its number, and a report of an
# earlier launch is stale: the table ignores it (no scattered "is this still mine" checks).
# A job placed again while a server that had accepted it may still run it is ``resubmitted``;
# its cancel never reports it cancelled (that server may run it): it fails with
# ConnectionLostError "it may still run there", as a job being cancelled on a server that
# goes down does (_take_back); the pool takes it off that server when it is back.


class BindingState(enum.Enum):
    """Where a pool job is. Every change goes through :func:`bind_step`."""

    WAITING = "waiting"  # client-side, in the scheduler's wait queue (also after a take-back)
    POSTING = "posting"  # placed on a server: inputs uploading, POST in flight
    PLACED = "placed"  # the server accepted it: its client job is held
    CANCELLING = "cancelling"  # cancel asked while placed: the client job's outcome decides
    SETTLED = "settled"  # the outcome is known: late reports are ignored


H = TypeVar("H")


@dataclass(frozen=True, slots=True)
class Binding(Generic[H]):
    """One pool job's binding (a value: :func:`bind_step` returns the next one).

    Attributes:
        key: The job.
        state: Where it is.
        attempt: Placements so far. The launch of a placement reports with its number; a
            report from an earlier one is stale.
        server: The server it is placed on (POSTING, PLACED, CANCELLING); once SETTLED, the
            one it ended on (``None``: never placed, or taken back from a server that died).
        handle: The client job, once the server accepted the POST (opaque to the table).
        resubmitted: Placed again while a server that had accepted it may still run it.
    """

    key: str
    state: BindingState = BindingState.WAITING
    attempt: int = 0
    server: str | None = None
    handle: H | None = None
    resubmitted: bool = False

    @property
    def bound(self) -> bool:
        """Whether a server holds it (posting, placed or cancelling)."""
        return self.state in _BOUND


@dataclass(frozen=True, slots=True)
class BindingRules:
    """The pool's options the table needs: placements a job gets before a server-side
    failure is final, and whether a job running on a server that died fails
    (``on_lost="fail"``) rather than being placed again."""

    max_attempts: int = 3
    fail_running: bool = False


class _Cancelled(enum.Enum):
    CANCELLED = "cancelled"


#: The outcome of a cancelled job, in :class:`Settle`.
CANCELLED = _Cancelled.CANCELLED


# Inputs: what the pool observed about one job.


@dataclass(frozen=True, slots=True)
class Bind:
    """The scheduler placed the job on ``server`` (``front``: post it to start next)."""

    server: str
    front: bool = False


@dataclass(frozen=True, slots=True)
class Posted(Generic[H]):
    """Launch ``attempt``'s POST was accepted: ``handle`` is the client job."""

    attempt: int
    handle: H


@dataclass(frozen=True, slots=True)
class Succeeded:
    """Launch ``attempt``'s prompt ran to success (``seconds`` of execution, if known)."""

    attempt: int
    result: object
    seconds: float | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    """Launch ``attempt`` failed with ``error``.

    ``retryable``: the server's fault (not the job's) and the pool still open, so another
    server may do better; ``running``: it had started there; ``unknown``: the server had
    accepted it and did not say it lost it (it may still run there).
    """

    attempt: int
    error: BaseException
    retryable: bool
    running: bool = False
    unknown: bool = False


@dataclass(frozen=True, slots=True)
class ClientJobCancelled:
    """Launch ``attempt``'s client job ended cancelled (the server no longer has it)."""

    attempt: int


@dataclass(frozen=True, slots=True)
class Cancel:
    """A caller cancelled the job. ``launch_over``: its launch ended without reporting an
    outcome (it crashed), so nothing else will settle it."""

    launch_over: bool = False


@dataclass(frozen=True, slots=True)
class TakeBack:
    """Its server went down or was removed. ``running``: it ran there; ``accepted``: the
    server had accepted it (it may run there still)."""

    running: bool = False
    accepted: bool = False


@dataclass(frozen=True, slots=True)
class Close:
    """The pool closes: the job ends with ``error``."""

    error: BaseException


# Actions: what the pool performs, in order.


@dataclass(frozen=True, slots=True)
class Launch:
    """Upload the job's inputs to ``server`` and post it there, as launch ``attempt``."""

    attempt: int
    server: str
    front: bool


@dataclass(frozen=True, slots=True)
class CallOff:
    """Cancel the job's current launch (it takes the prompt off a server that answers)."""


@dataclass(frozen=True, slots=True)
class CancelClientJob(Generic[H]):
    """Cancel the client job: what becomes of it there is the job's outcome."""

    handle: H


@dataclass(frozen=True, slots=True)
class Unbind:
    """The scheduler takes the job back to waiting (``avoid``: another server next)."""

    avoid: bool = False


@dataclass(frozen=True, slots=True)
class Blame:
    """``error`` counts against ``server``'s health."""

    server: str
    error: BaseException


@dataclass(frozen=True, slots=True)
class Settle:
    """The job ends with ``outcome``: a result, an exception or :data:`CANCELLED`.

    ``seconds``: its execution time, for the scheduler to learn (``None``: not timed);
    ``closing``: the pool is closing (no counters, no server events).
    """

    outcome: object
    seconds: float | None = None
    closing: bool = False


BindingInput = (
    Bind | Posted[Any] | Succeeded | Failed | ClientJobCancelled | Cancel | TakeBack | Close
)
BindingAction = Launch | CallOff | CancelClientJob[Any] | Unbind | Blame | Settle
BindingStep = tuple[Binding[Any], tuple[BindingAction, ...]]

_BS = BindingState
_BOUND = frozenset({_BS.POSTING, _BS.PLACED, _BS.CANCELLING})
_LIVE = (_BS.WAITING, *sorted(_BOUND, key=list(_BS).index))
_LAUNCH_REPORTS = (Posted, Succeeded, Failed, ClientJobCancelled)


def _settled(b: Binding[Any], **changes: Any) -> Binding[Any]:
    return dataclasses.replace(b, state=_BS.SETTLED, handle=None, **changes)


def _stale(b: Binding[Any], event: Posted[Any] | Succeeded | Failed | ClientJobCancelled) -> bool:
    return event.attempt != b.attempt


def _ignore(b: Binding[Any], event: BindingInput, rules: BindingRules) -> BindingStep:
    """A report from an earlier launch, or anything but a bind after the outcome."""
    return b, ()


def _bind(b: Binding[Any], event: Bind, rules: BindingRules) -> BindingStep:
    attempt = b.attempt + 1
    bound = dataclasses.replace(b, state=_BS.POSTING, attempt=attempt, server=event.server)
    return bound, (Launch(attempt, event.server, event.front),)


def _posted(b: Binding[Any], event: Posted[Any], rules: BindingRules) -> BindingStep:
    if _stale(b, event):
        return b, ()
    if b.handle is not None:
        raise IllegalTransition(f"job {b.key}: attempt {b.attempt} was posted twice")
    if b.state is _BS.CANCELLING:  # cancelled during the POST: now it can be
        return dataclasses.replace(b, handle=event.handle), (CancelClientJob(event.handle),)
    return dataclasses.replace(b, state=_BS.PLACED, handle=event.handle), ()


def _succeeded(b: Binding[Any], event: Succeeded, rules: BindingRules) -> BindingStep:
    if _stale(b, event):
        return b, ()
    return _settled(b), (Settle(event.result, event.seconds),)


def _failed(b: Binding[Any], event: Failed, rules: BindingRules) -> BindingStep:
    """The job's fault settles it; the server's is blamed and the job tried elsewhere,
    until its attempts run out (or it ran there and ``fail_running``)."""
    if _stale(b, event):
        return b, ()
    if b.state is _BS.CANCELLING:  # what became of the prompt is this failure: no retry
        return _settled(b), (Settle(event.error),)
    if not event.retryable:
        return _settled(b), (Settle(event.error, 0.0),)
    assert b.server is not None
    blame = Blame(b.server, event.error)
    if b.attempt >= rules.max_attempts or (event.running and rules.fail_running):
        return _settled(b), (Settle(event.error), blame)
    again = dataclasses.replace(
        b,
        state=_BS.WAITING,
        server=None,
        handle=None,
        resubmitted=b.resubmitted or event.running or event.unknown,
    )
    return again, (Unbind(avoid=True), blame)


def _cancelled(b: Binding[Any]) -> object:
    """The outcome of a cancel that took the job off wherever the pool holds it: cancelled,
    unless a server that had accepted it went down or stopped answering (``resubmitted``):
    that one may still run it, and a job reported cancelled never ran."""
    if not b.resubmitted:
        return CANCELLED
    return ConnectionLostError(
        f"prompt {b.key} was cancelled, but a server that had accepted it stopped answering "
        "for it; it may still run there"
    )


def _client_job_cancelled(
    b: Binding[Any], event: ClientJobCancelled, rules: BindingRules
) -> BindingStep:
    if _stale(b, event):
        return b, ()
    return _settled(b), (Settle(_cancelled(b)),)


def _cancel(b: Binding[Any], event: Cancel, rules: BindingRules) -> BindingStep:
    """Waiting: cancelled at once (:func:`_cancelled`: a ``resubmitted`` job fails with
    :class:`ConnectionLostError`, it may still run). Placed: the client job is cancelled,
    and its outcome is the job's (done if it finished first). Idempotent."""
    if b.state is _BS.WAITING or event.launch_over:
        return _settled(b), (Settle(_cancelled(b)),)
    if b.state is _BS.CANCELLING:
        return b, ()
    cancelling = dataclasses.replace(b, state=_BS.CANCELLING)
    if b.handle is None:  # posting: the launch cancels the client job once it has it
        return cancelling, ()
    return cancelling, (CancelClientJob(b.handle),)


def _take_back(b: Binding[Any], event: TakeBack, rules: BindingRules) -> BindingStep:
    """Back to waiting, marked resubmitted if the dead server may still run it; a job being
    cancelled there (or running, with ``fail_running``) fails instead."""
    if b.state is _BS.CANCELLING:
        lost = (
            f"server {b.server} went down while prompt {b.key} was being cancelled there; "
            "it may still run"
        )
    elif event.running and rules.fail_running:
        lost = f"server {b.server} went down while prompt {b.key} ran"
    else:
        again = dataclasses.replace(
            b,
            state=_BS.WAITING,
            server=None,
            handle=None,
            resubmitted=b.resubmitted or event.running or event.accepted,
        )
        return again, (Unbind(), CallOff())
    return _settled(b, server=None), (Unbind(), CallOff(), Settle(ConnectionLostError(lost)))


def _close(b: Binding[Any], event: Close, rules: BindingRules) -> BindingStep:
    return _settled(b), (CallOff(), Settle(event.error, closing=True))


BindingHandler = Callable[[Binding[Any], Any, BindingRules], BindingStep]

#: The whole pool-job binding: (state, input type) -> handler. Anything absent is illegal.
BINDING_TABLE: Mapping[tuple[BindingState, type], BindingHandler] = {
    (_BS.WAITING, Bind): _bind,
    **{(s, Cancel): _cancel for s in _LIVE},
    **{(s, Close): _close for s in _LIVE},
    # A waiting job's last launch is over (taken back, or failed and placed again later).
    **{(_BS.WAITING, t): _ignore for t in _LAUNCH_REPORTS},
    **{(s, Posted): _posted for s in _BOUND},
    **{(s, Succeeded): _succeeded for s in _BOUND},
    **{(s, Failed): _failed for s in _BOUND},
    **{(s, ClientJobCancelled): _client_job_cancelled for s in _BOUND},
    **{(s, TakeBack): _take_back for s in _BOUND},
    **{(_BS.SETTLED, t): _ignore for t in (*_LAUNCH_REPORTS, Cancel, Close)},
}

_DEFAULT_RULES = BindingRules()


def bind_step(
    binding: Binding[H], event: BindingInput, rules: BindingRules = _DEFAULT_RULES
) -> tuple[Binding[H], tuple[BindingAction, ...]]:
    """The binding after ``event``, and the actions to perform, in order.

    Raises :class:`IllegalTransition` (and changes nothing: bindings are values) when the
    table has no row for ``(binding.state, type(event))``.
    """
    handler = BINDING_TABLE.get((binding.state, type(event)))
    if handler is None:
        raise IllegalTransition(
            f"{type(event).__name__} is not possible for job {binding.key} in binding "
            f"state {binding.state.value}"
        )
    return handler(binding, event, rules)


# ---------------------------------------------------------------------------- the fluid model

#: A server with work of its own re-decides whether to switch model after this many placements
#: (or at once when any server's model or state changed).
REBALANCE_EVERY = 8


@dataclass(frozen=True, slots=True)
class Lane:
    """A server as the fluid model sees it: ``rate`` jobs per second of ``model`` once
    ``busy`` seconds (its queue, or a model load) have passed; ``switch`` seconds per load."""

    rate: float
    model: str | None
    busy: float
    switch: float

    def moved_to(self, model: str) -> Lane:
        """This lane, loading ``model`` once its queue is done."""
        return Lane(self.rate, model, self.busy + self.switch, self.switch)


def fluid_end(lanes: Iterable[Lane], backlog: Mapping[str, float]) -> float:
    """Seconds until ``backlog`` (jobs waiting, per model) is done, jobs flowing like a fluid.

    Each lane drains its model's backlog at its rate; a lane whose model runs out moves to the
    model that would otherwise take longest, when moving (one load, then at least one job)
    ends that model sooner, and else stops. ``inf`` when some backlog has no lane left.
    A few lanes and models make a few events: cheap enough to play out every option.
    """
    left = {m: n for m, n in backlog.items() if n > 0}
    pending = sorted(
        ((lane.busy, i, lane.rate, lane.model, lane.switch) for i, lane in enumerate(lanes)),
        key=lambda p: p[:2],
    )
    now = 0.0
    active: dict[int, tuple[float, str | None, float]] = {}  # lane -> (rate, model, switch)
    while left:
        while pending and pending[0][0] <= now + 1e-9:
            _, i, rate, model, switch = pending.pop(0)
            if model in left:
                active[i] = (rate, model, switch)
            else:
                _retarget(i, rate, switch, now, left, active, pending)
        rates = dict.fromkeys(left, 0.0)
        for rate, model, _ in active.values():
            if model in rates:
                rates[model] += rate
        step = pending[0][0] - now if pending else math.inf
        for model, n in left.items():
            if rates[model] > 0:
                step = min(step, n / rates[model])
        if step == math.inf:
            return math.inf
        now += step
        for model in list(left):
            left[model] -= rates[model] * step
            if left[model] <= 1e-9:
                del left[model]
        for i in sorted(active, key=lambda i: -active[i][0]):
            rate, model, switch = active[i]
            if model not in left:
                del active[i]
                _retarget(i, rate, switch, now, left, active, pending)
    return now


def _retarget(
    i: int,
    rate: float,
    switch: float,
    now: float,
    left: Mapping[str, float],
    active: Mapping[int, tuple[float, str | None, float]],
    pending: list[tuple[float, int, float, str | None, float]],
) -> None:
    """Move idle lane ``i`` to the model whose backlog would take longest, if that helps."""
    serving: dict[str, float] = dict.fromkeys(left, 0.0)
    for r, model, _ in active.values():
        if model in serving:
            serving[model] += r
    for _, _, r, model, _ in pending:
        if model in serving:
            serving[model] += r
    best: tuple[float, str] | None = None
    for model, n in left.items():
        alone = n / serving[model] if serving[model] > 0 else math.inf
        helped = switch + max(1.0 / rate, n / (serving[model] + rate))
        if helped < alone and (best is None or alone > best[0]):
            best = (alone, model)
    if best is not None:
        bisect.insort(pending, (now + switch, i, rate, best[1], switch))


# ---------------------------------------------------------------------------- scheduling


@dataclass(slots=True)
class Ticket:
    """A job as the scheduler sees it (the pool's handle keeps everything else)."""

    key: str
    priority: int
    seq: int
    req: Requirements
    bypassed: int = 0
    avoid: frozenset[str] = frozenset()  # servers where it failed (used only if no other can)

    @property
    def model(self) -> str | None:
        return self.req.model


@dataclass(slots=True)
class ServerRecord:
    """What the scheduler knows about one server.

    ``assigned`` maps each job of ours placed there (posting, queued or running) to its
    priority; ``others`` is the server's queue beyond ours (other clients' prompts).
    ``limit``, when set, is a hard bound on ``assigned`` (a client given to the pool keeps
    its own ``max_in_flight``: a job beyond it would wait in that client, out of sight).
    """

    key: str
    capacity: int
    limit: int | None = None
    state: ServerState = ServerState.JOINING
    caps: Capabilities | None = None
    assigned: dict[str, int] = field(default_factory=dict)
    others: int = 0
    tail: str | None = None  # the model the server will have loaded after its queue
    loaded: str | None = None  # the model of the last job it finished
    mean_time: float | None = None  # moving average of job seconds
    plain_time: float | None = None  # ... of jobs that kept the loaded model
    model_times: dict[str | None, float] = field(default_factory=dict)  # ... by model
    switch_time: float | None = None  # ... of jobs that loaded a model
    done: int = 0
    failed: int = 0
    switches: int = 0
    placed: int = 0  # jobs ever placed here
    decided: tuple[int, int] | None = field(default=None, repr=False)  # when _rebalance ran
    decision: tuple[float, str] | None = field(default=None, repr=False)  # and what it said
    _can: dict[Requirements, bool] = field(default_factory=dict, repr=False)
    _can_caps: Capabilities | None = field(default=None, repr=False)

    @property
    def queued(self) -> int:
        """Prompts ahead of a job placed here now: ours and other clients'."""
        return len(self.assigned) + self.others

    def room(self, priority: int) -> bool:
        """Whether a job of ``priority`` may be placed here now (never over capacity + 1,
        nor over ``limit``)."""
        ours = len(self.assigned)
        if self.limit is not None and ours >= self.limit:
            return False
        if ours < self.capacity and (ours + self.others < self.capacity or ours == 0):
            return True
        # One slot beyond capacity for a job that outranks everything of ours there.
        return (
            ours == self.capacity
            and bool(self.assigned)
            and (priority > min(self.assigned.values()))
        )

    def can_run(self, req: Requirements) -> bool:
        caps = self.caps
        if caps is None:
            return False
        if caps is not self._can_caps:  # new capabilities: forget the answers
            self._can = {}
            self._can_caps = caps
        known = self._can.get(req)
        if known is None:
            known = self._can[req] = not caps.missing(req)
            if len(self._can) > 4096:
                self._can.clear()
        return known

    @property
    def switch_cost(self) -> float | None:
        """Seconds a model load adds to a job (all of a first job's time until a plain one
        has been seen: cautious rather than eager)."""
        if self.switch_time is None:
            return None
        return max(0.0, self.switch_time - (self.plain_time or 0.0))


@dataclass(frozen=True, slots=True)
class Placement:
    """Post job ``job`` to server ``server`` (with ``front`` to start it next)."""

    job: str
    server: str
    front: bool


def _of_model(
    model: str | None, runnable: Callable[[Ticket], bool], t: Ticket, *, tail: bool
) -> bool:
    """Whether ``t`` is a runnable job of ``model``. For a server's ``tail`` model, jobs naming
    no model count too; ``model`` ``None`` as a switch target means any job."""
    matches = (t.model is None or t.model == model) if tail else (model is None or t.model == model)
    return matches and runnable(t)


def _ewma(old: float | None, sample: float, alpha: float = 0.3) -> float:
    return sample if old is None else old + alpha * (sample - old)


class Scheduler:
    """Waiting jobs + servers, and the one synchronous :meth:`assign` step.

    Args:
        lookahead: How many waiting jobs (of the top priority) a free server looks through
            for one whose model it has loaded.
        max_bypass: How many later jobs may be placed before the head job; then the head is
            placed next, on any server that can run it.
    """

    def __init__(self, lookahead: int = 32, max_bypass: int | None = None) -> None:
        if lookahead < 1:
            raise ValueError("lookahead must be at least 1")
        self.lookahead = lookahead
        self.max_bypass = max_bypass if max_bypass is not None else 4 * lookahead
        self.servers: dict[str, ServerRecord] = {}
        self.tickets: dict[str, Ticket] = {}
        self.placed: dict[str, str] = {}  # job -> server
        self._waiting: list[tuple[int, int, str]] = []  # (-priority, seq, job), sorted
        self._waiting_models: Counter[str | None] = Counter()
        self._model_req: dict[str, Requirements] = {}  # a model's latest job's requirements
        self._seq = 0
        self._version = 0  # bumped when a server's model or state changes

    def __repr__(self) -> str:
        return (
            f"<Scheduler servers={len(self.servers)} waiting={len(self._waiting)} "
            f"placed={len(self.placed)}>"
        )

    # ------------------------------------------------------------------ servers

    def add_server(self, key: str, capacity: int, limit: int | None = None) -> ServerRecord:
        if key in self.servers:
            raise ValueError(f"server {key} is already in the pool")
        if capacity < 1 or (limit is not None and limit < 1):
            raise ValueError("capacity and limit must be at least 1")
        record = ServerRecord(key, capacity, limit)
        self.servers[key] = record
        return record

    def apply(self, key: str, event: ServerEvent) -> tuple[ServerState, ServerState]:
        """The one place a server's state changes: returns ``(old, new)``."""
        record = self.servers[key]
        old = record.state
        record.state = next_state(old, event)
        self._version += 1
        return old, record.state

    def take_back(self, server: str) -> list[str]:
        """Unbind every job placed on ``server``; they wait again, in their old order."""
        record = self.servers[server]
        jobs = list(record.assigned)
        for job in jobs:
            self.unbind(job)
        return jobs

    def forget_server(self, key: str) -> None:
        """Drop a removed server that holds no job."""
        record = self.servers[key]
        if record.assigned:
            raise ValueError(f"server {key} still holds {len(record.assigned)} jobs")
        del self.servers[key]

    # ------------------------------------------------------------------ jobs

    def enqueue(
        self, key: str, req: Requirements, priority: int = 0, front: bool = False
    ) -> Ticket:
        """A new job waits (``front``: ahead of every job of its priority)."""
        if key in self.tickets:
            raise ValueError(f"job {key} is already known")
        self._seq += 1
        ticket = Ticket(key, priority, -self._seq if front else self._seq, req)
        if req.model is not None:
            self._model_req[req.model] = req
        self.tickets[key] = ticket
        self._wait(ticket)
        return ticket

    def _wait(self, ticket: Ticket) -> None:
        bisect.insort(self._waiting, (-ticket.priority, ticket.seq, ticket.key))
        self._waiting_models[ticket.model] += 1

    def _unwait(self, ticket: Ticket) -> None:
        entry = (-ticket.priority, ticket.seq, ticket.key)
        index = bisect.bisect_left(self._waiting, entry)
        if index < len(self._waiting) and self._waiting[index] == entry:
            del self._waiting[index]
            self._waiting_models[ticket.model] -= 1

    def unbind(self, key: str, avoid: bool = False) -> None:
        """A placed job goes back to waiting (its server failed before or while running it).

        With ``avoid``, it goes to another server next if any other can run it.
        """
        server = self.placed.pop(key)
        self.servers[server].assigned.pop(key, None)
        ticket = self.tickets[key]
        if avoid:
            ticket.avoid = ticket.avoid | {server}
        self._wait(ticket)

    def is_waiting(self, key: str) -> bool:
        return key in self.tickets and key not in self.placed

    def server_of(self, key: str) -> str | None:
        return self.placed.get(key)

    def finish(self, key: str, seconds: float | None = None, ok: bool = True) -> None:
        """The job is settled (done, failed or cancelled): free its slot, learn its time.

        ``seconds`` is its execution time when it ran on its server (``None`` otherwise).
        """
        ticket = self.tickets.pop(key)
        server = self.placed.pop(key, None)
        if server is None:
            self._unwait(ticket)
            return
        record = self.servers[server]
        record.assigned.pop(key, None)
        if seconds is None:
            return
        if ok:
            record.done += 1
        else:
            record.failed += 1
        switched = ticket.model is not None and ticket.model != record.loaded
        if switched:
            record.switches += 1
            record.switch_time = _ewma(record.switch_time, seconds)
            record.loaded = ticket.model
        else:
            record.plain_time = _ewma(record.plain_time, seconds)
            record.model_times[ticket.model] = _ewma(record.model_times.get(ticket.model), seconds)
        record.mean_time = _ewma(record.mean_time, seconds)

    @property
    def waiting(self) -> list[str]:
        """Waiting job keys in the order they would be taken (ignoring affinity)."""
        return [key for _, _, key in self._waiting]

    def runnable_somewhere(self, req: Requirements) -> dict[str, tuple[str, ...]] | None:
        """``None`` if some server can (or may, once it joins) run ``req``; else what each
        server lacks."""
        missing: dict[str, tuple[str, ...]] = {}
        for record in self.servers.values():
            if record.state in (ServerState.REMOVED, ServerState.DRAINING):
                continue
            if record.caps is None or record.can_run(req):
                return None
            missing[record.key] = record.caps.missing(req)
        return missing

    # ------------------------------------------------------------------ the assign step

    def assign(self) -> list[Placement]:
        """Place every waiting job that should be placed now; returns what to post where."""
        out: list[Placement] = []
        while (placement := self._pick()) is not None:
            out.append(placement)
        return out

    def _mean(self, record: ServerRecord) -> float:
        if record.mean_time is not None:
            return record.mean_time
        known = [r.mean_time for r in self.servers.values() if r.mean_time is not None]
        return sum(known) / len(known) if known else 1.0

    def job_time(self, server: str, model: str | None) -> float | None:
        """The learned seconds of a job of ``model`` on ``server`` that keeps its model
        loaded (any model's, when that one has not run there yet; ``None``: none has)."""
        record = self.servers[server]
        return record.model_times.get(model, record.plain_time)

    def _rate(self, record: ServerRecord, model: str | None = None) -> float:
        """Jobs per second of ``model`` (default: its tail's) while the model stays loaded."""
        seconds = record.model_times.get(record.tail if model is None else model)
        if seconds is None:
            seconds = record.plain_time if record.plain_time is not None else self._mean(record)
        return 1.0 / max(seconds, 1e-6)

    def _switch_cost(self, record: ServerRecord) -> float:
        if record.switch_cost is not None:
            return record.switch_cost
        known = [c for r in self.servers.values() if (c := r.switch_cost) is not None]
        return sum(known) / len(known) if known else 0.0

    def _lane(self, record: ServerRecord) -> Lane:
        rate = self._rate(record)
        return Lane(rate, record.tail, record.queued / rate, self._switch_cost(record))

    def _next_done(self, record: ServerRecord) -> float:
        """Seconds until a job placed on ``record`` now would be done (no model load)."""
        return (record.queued + 1) / self._rate(record)

    def _timed(self) -> bool:
        """Whether rates are known: every server at work has run a job without a load."""
        return all(
            r.plain_time is not None
            for r in self.servers.values()
            if r.state is ServerState.UP and r.tail is not None
        )

    def _move(
        self, record: ServerRecord, staying: bool, models: Callable[[], set[str | None]]
    ) -> tuple[float, str] | None:
        """The model ``record`` should switch to now (one of ``models()``), with the estimated
        end of the backlog, or ``None`` to keep its model (``staying``) or stay idle.

        Each option is played out in the fluid model (:func:`fluid_end`); a switch must beat
        the alternative by more than the noise of the estimate. Ties go to the model least
        served now; so does every choice made before job times are known (an estimate would
        be a guess then, so a server with work keeps its model).
        """
        timed = self._timed()
        if staying and not timed:
            return None
        backlog = {m: float(n) for m, n in self._waiting_models.items() if n > 0 and m is not None}
        candidates = sorted(m for m in models() if m in backlog and m != record.tail)
        if not candidates:
            return None
        # Other idle servers are deciding too: counting on them to move would leave every
        # one of them waiting for another (and a lone job unplaced).
        others = [
            self._lane(r)
            for r in self.servers.values()
            if r is not record
            and r.state is ServerState.UP
            and (r.assigned or self._waiting_models[r.tail] > 0)
        ]
        serving = dict.fromkeys(backlog, 0.0)
        for lane in others:
            if lane.model in serving:
                serving[lane.model] += lane.rate

        def unserved(model: str) -> float:
            return -backlog[model] / serving[model] if serving[model] else -math.inf

        if not timed:
            return math.inf, min(candidates, key=unserved)
        mine = self._lane(record)
        baseline = fluid_end([*others, mine] if staying else others, backlog)
        end, _, model = min(
            (
                round(fluid_end([*others, mine.moved_to(model)], backlog), 6),
                unserved(model),
                model,
            )
            for model in candidates
        )
        if staying:
            margin = 1.0 / mine.rate + 0.02 * baseline
            return (end, model) if end < baseline - margin else None
        # An idle server: a model no one serves (no end without it) is always worth it.
        return (end, model) if end < baseline or baseline == math.inf else None

    def _rebalance(
        self, record: ServerRecord, models: Callable[[], set[str | None]]
    ) -> tuple[float, str] | None:
        """:meth:`_move` for a server that has work of its own model, re-decided only when the
        pool changed or after a few placements (each decision plays out several futures)."""
        stamp = (self._version, record.placed // REBALANCE_EVERY)
        if record.decided != stamp:
            record.decision = self._move(record, True, models)
            if self._timed():
                record.decided = stamp
        return record.decision

    def _useful(self, record: ServerRecord, ticket: Ticket, switch: bool) -> bool:
        """Whether ``record`` taking ``ticket`` now ends its model's backlog sooner.

        Late binding's tail: the servers already on the model would run every waiting job of
        it before this one could finish its first (a slow server's last job, or a switch for a
        handful of jobs), so leaving the job to them ends sooner. List scheduling by earliest
        completion: ``record`` is useful iff fewer than the backlog complete elsewhere before
        its own first would. The soonest-finishing server always is (no job is stranded).
        """
        model = ticket.model
        if model is None:
            return True
        first = self._next_done(record)
        if switch:
            first += self._switch_cost(record)
        backlog = self._waiting_models[model]
        sooner = 0
        for other in self.servers.values():
            if (
                other is record
                or other.tail != model
                or other.state is not ServerState.UP
                or other.key in ticket.avoid
                or not other.can_run(ticket.req)
            ):
                continue
            sooner += max(0, math.ceil(first * self._rate(other) - other.queued - 1e-9) - 1)
            if sooner >= backlog:
                return False
        return True

    def _elsewhere(self, ticket: Ticket, record: ServerRecord) -> bool:
        """Whether a live server other than ``record`` and not avoided could run ``ticket``."""
        return any(
            r is not record
            and r.key not in ticket.avoid
            and r.state in (ServerState.UP, ServerState.SUSPECT)
            and r.can_run(ticket.req)
            for r in self.servers.values()
        )

    def _earliest(
        self, accept: Callable[[Ticket], bool], window: list[Ticket], last: int | None
    ) -> tuple[int, Ticket] | None:
        """The first waiting job that ``accept`` takes: in ``window``, then (given ``last``,
        the end index of the window's priority) further back among the jobs of that priority.
        """
        for index, ticket in enumerate(window):
            if accept(ticket):
                return index, ticket
        if last is None or not window:
            return None
        start = self._position(window[0])
        for index in range(start + len(window), last):
            if accept(ticket := self.tickets[self._waiting[index][2]]):
                return index - start, ticket
        return None

    def _position(self, ticket: Ticket) -> int:
        return bisect.bisect_left(self._waiting, (-ticket.priority, ticket.seq, ticket.key))

    def _runnable(self, record: ServerRecord, ticket: Ticket) -> bool:
        return record.can_run(ticket.req) and (
            record.key not in ticket.avoid or not self._elsewhere(ticket, record)
        )

    def _choose(
        self, record: ServerRecord, window: list[Ticket], head: Ticket, forced: bool, last: int
    ) -> tuple[tuple[float, ...], Ticket] | None:
        """The job ``record`` should take now, ranked against other servers' choices:
        ``(tier, position or estimated end, load)``, lowest first. ``None``: nothing now."""
        load = self._next_done(record)
        runnable = partial(self._runnable, record)
        same_model = partial(_of_model, record.tail, runnable, tail=True)

        def models() -> set[str | None]:
            """What a switch could be to: the models of this priority it can run."""
            if last == len(self._waiting):  # one priority: every model waiting
                return {
                    m
                    for m, n in self._waiting_models.items()
                    if n > 0 and m is not None and record.can_run(self._model_req[m])
                }
            start = self._position(window[0])
            return {
                t.model
                for _, _, key in self._waiting[start:last]
                if (t := self.tickets[key]).model is not None and record.can_run(t.req)
            }

        if forced:
            if not runnable(head):
                return None
            return (0.0 if same_model(head) else 3.0, 0.0, load), head
        if record.tail is None:  # a first load: unavoidable; where the backlog needs it most
            return self._switch(record, self._move(record, False, models), 1.0, window, last)
        # Its model: within the lookahead first, else further back (behind other servers'
        # picks within theirs).
        tier = 0.0
        own = self._earliest(same_model, window, None)
        if own is None:
            tier, own = 2.0, self._earliest(same_model, window, last)
        if own is not None and self._useful(record, own[1], switch=False):
            move = self._rebalance(record, models)
            if move is not None and (moved := self._switch(record, move, 3.0, window, last)):
                return moved
            return (tier, own[0], load), own[1]
        if record.assigned:
            return None  # decide a switch at the last moment, with the most to go on
        move = self._move(record, False, models)
        return None if move is None else self._switch(record, move, 3.0, window, last)

    def _switch(
        self,
        record: ServerRecord,
        move: tuple[float, str] | None,
        tier: float,
        window: list[Ticket],
        last: int,
    ) -> tuple[tuple[float, ...], Ticket] | None:
        """The first job of the model ``move`` names (any model without one) for ``record``,
        if it is of use there."""
        estimate, target = move if move is not None else (math.inf, None)
        accept = partial(_of_model, target, partial(self._runnable, record), tail=False)
        found = self._earliest(accept, window, last)
        if found is None or not self._useful(record, found[1], switch=True):
            return None
        load = self._next_done(record)
        return (tier, estimate, load), found[1]

    def _levels(self) -> Iterator[tuple[Ticket, list[Ticket], int]]:
        """Each priority's head, window (its first ``lookahead`` jobs) and end index."""
        start = 0
        while start < len(self._waiting):
            neg_priority = self._waiting[start][0]
            end = bisect.bisect_left(self._waiting, (neg_priority + 1,))
            window = [self.tickets[k] for _, _, k in self._waiting[start : start + self.lookahead]]
            yield window[0], window[: end - start], end
            start = end

    def _forced(self, head: Ticket, free: Iterable[ServerRecord]) -> bool:
        """Aging: a head job skipped too often, that no server is working towards, goes
        next."""
        return (
            head.bypassed >= self.max_bypass
            and any(r.can_run(head.req) for r in free)
            and not any(
                r.state is ServerState.UP and r.tail == head.model and r.can_run(head.req)
                for r in self.servers.values()
            )
        )

    def _pick(self) -> Placement | None:
        """One placement: each free server takes from the highest priority that has a job
        it can run (a job only other servers can run does not hold up the jobs behind it),
        and the best-ranked choice wins."""
        up = [r for r in self.servers.values() if r.state is ServerState.UP]
        if not self._waiting or not up:
            return None
        best: tuple[tuple[float, ...], Ticket, ServerRecord, Ticket] | None = None
        forced: dict[str, bool] = {}
        for head, window, end in self._levels():
            free = [r for r in up if r.room(head.priority)]
            if head.key not in forced:
                forced[head.key] = self._forced(head, free)
            for record in free:
                choice = self._choose(
                    record,
                    [head] if forced[head.key] else window,
                    head,
                    forced[head.key],
                    end,
                )
                if choice is not None:
                    rank = (-head.priority, *choice[0])
                    if best is None or rank < best[0]:
                        best = (rank, choice[1], record, head)
            # A server goes on to lower priorities only if it can run nothing of this one.
            if end == len(self._waiting) or not (
                up := [r for r in up if not any(r.can_run(t.req) for t in window)]
            ):
                break
        if best is None:
            return None
        _, ticket, record, head = best
        self._unwait(ticket)
        if ticket is not head:
            head.bypassed += 1
        front = bool(record.assigned) and ticket.priority > min(record.assigned.values())
        record.assigned[ticket.key] = ticket.priority
        record.placed += 1
        if ticket.model is not None and ticket.model != record.tail:
            record.tail = ticket.model
            self._version += 1
        self.placed[ticket.key] = record.key
        return Placement(ticket.key, record.key, front or ticket.seq < 0)

    def set_queue(self, key: str, queue_remaining: int | None) -> None:
        """The server's own queue length (ours included), from its status broadcasts."""
        record = self.servers[key]
        if queue_remaining is not None:
            record.others = max(0, queue_remaining - len(record.assigned))

    def models_waiting(self) -> Mapping[str | None, int]:
        return {m: n for m, n in self._waiting_models.items() if n}


def describe_missing(missing: Mapping[str, Iterable[str]]) -> str:
    """``"http://a: ckpt_name 'x'; http://b: node class Foo"``."""
    return "; ".join(f"{server} lacks {', '.join(lack)}" for server, lack in missing.items())
