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
   A on one server and B on another instead of swapping on every job; an idle server switches
   model only when the model's backlog would outlast the switch (a cost learned from job times);
3. **will be free soonest** — the server's own queue (other clients' prompts count) and ours,
   times its mean job time (a moving average).

Priorities: higher first, FIFO within a priority; a job skipped ``max_bypass`` times is placed
next whatever its model (no starvation). A job of higher priority than everything of ours on
a server may take one slot beyond its capacity and is posted with ``front`` (it starts next).
"""

from __future__ import annotations

import bisect
import enum
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

__all__ = [
    "MODEL_INPUTS",
    "MODEL_SUFFIXES",
    "TRANSITIONS",
    "Capabilities",
    "IllegalTransition",
    "Placement",
    "Requirements",
    "Scheduler",
    "ServerEvent",
    "ServerRecord",
    "ServerState",
    "Ticket",
    "describe_missing",
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
    """

    key: str
    capacity: int
    state: ServerState = ServerState.JOINING
    caps: Capabilities | None = None
    assigned: dict[str, int] = field(default_factory=dict)
    others: int = 0
    tail: str | None = None  # the model the server will have loaded after its queue
    loaded: str | None = None  # the model of the last job it finished
    mean_time: float | None = None  # moving average of job seconds
    plain_time: float | None = None  # ... of jobs that kept the loaded model
    switch_time: float | None = None  # ... of jobs that loaded a model
    done: int = 0
    failed: int = 0
    switches: int = 0
    _can: dict[Requirements, bool] = field(default_factory=dict, repr=False)
    _can_caps: Capabilities | None = field(default=None, repr=False)

    def room(self, priority: int) -> bool:
        """Whether a job of ``priority`` may be placed here now (never over capacity + 1)."""
        ours = len(self.assigned)
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


def _of_model(model: str | None, runnable: Callable[[Ticket], bool], t: Ticket) -> bool:
    return (model is None or t.model == model) and runnable(t)


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
        self._seq = 0

    def __repr__(self) -> str:
        return (
            f"<Scheduler servers={len(self.servers)} waiting={len(self._waiting)} "
            f"placed={len(self.placed)}>"
        )

    # ------------------------------------------------------------------ servers

    def add_server(self, key: str, capacity: int) -> ServerRecord:
        if key in self.servers:
            raise ValueError(f"server {key} is already in the pool")
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        record = ServerRecord(key, capacity)
        self.servers[key] = record
        return record

    def apply(self, key: str, event: ServerEvent) -> tuple[ServerState, ServerState]:
        """The one place a server's state changes: returns ``(old, new)``."""
        record = self.servers[key]
        old = record.state
        record.state = next_state(old, event)
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

    def _rate(self, record: ServerRecord) -> float:
        """Jobs per second while the model stays loaded."""
        seconds = record.plain_time if record.plain_time is not None else self._mean(record)
        return 1.0 / max(seconds, 1e-6)

    def _switch_cost(self, record: ServerRecord) -> float:
        if record.switch_cost is not None:
            return record.switch_cost
        known = [c for r in self.servers.values() if (c := r.switch_cost) is not None]
        return sum(known) / len(known) if known else 0.0

    def _rates(self) -> dict[str | None, float]:
        rates: dict[str | None, float] = {}
        for r in self.servers.values():
            if r.state is ServerState.UP and r.tail is not None:
                rates[r.tail] = rates.get(r.tail, 0.0) + self._rate(r)
        return rates

    def _drain(self, model: str | None, rate: float) -> float:
        """Seconds until ``model``'s backlog is done at ``rate`` jobs per second."""
        backlog = self._waiting_models[model]
        if backlog == 0:
            return 0.0
        return math.inf if rate <= 1e-9 else backlog / rate

    def _target(self, record: ServerRecord, rates: dict[str | None, float]) -> str | None:
        """The model an idle or cold server should load: the longest backlog per capacity."""
        best: tuple[float, str] | None = None
        for model, n in self._waiting_models.items():
            if n <= 0 or model is None or model == record.tail:
                continue
            drain = self._drain(model, rates.get(model, 0.0))
            if best is None or drain > best[0]:
                best = (drain, model)
        return None if best is None else best[1]

    def _worth_switching(
        self, record: ServerRecord, target: str, rates: dict[str | None, float]
    ) -> bool:
        """Whether moving ``record`` from its model to ``target`` ends both backlogs sooner."""
        own, mine = record.tail, self._rate(record)
        before = max(
            self._drain(own, rates.get(own, 0.0)), self._drain(target, rates.get(target, 0.0))
        )
        after = max(
            self._drain(own, rates.get(own, 0.0) - mine),
            self._switch_cost(record) + self._drain(target, rates.get(target, 0.0) + mine),
        )
        return after < before

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
        self, accept: Callable[[Ticket], bool], window: list[Ticket], priority: int
    ) -> tuple[int, Ticket] | None:
        """The first waiting job (of ``priority``) that ``accept`` takes, window first."""
        for index, ticket in enumerate(window):
            if accept(ticket):
                return index, ticket
        for index, (neg_priority, _, key) in enumerate(self._waiting):
            if -neg_priority != priority:
                break
            if index >= len(window) and accept(ticket := self.tickets[key]):
                return index, ticket
        return None

    def _pick(self) -> Placement | None:
        if not self._waiting:
            return None
        head = self.tickets[self._waiting[0][2]]
        free = [
            r for r in self.servers.values() if r.state is ServerState.UP and r.room(head.priority)
        ]
        if not free:
            return None
        # Aging: a head job skipped too often, that no server is working towards, goes next.
        forced = (
            head.bypassed >= self.max_bypass
            and any(r.can_run(head.req) for r in free)
            and not any(
                r.state is ServerState.UP and r.tail == head.model and r.can_run(head.req)
                for r in self.servers.values()
            )
        )
        window = (
            [head]
            if forced
            else [
                self.tickets[key]
                for neg_priority, _, key in self._waiting[: self.lookahead]
                if -neg_priority == head.priority
            ]
        )
        rates = self._rates()
        best: tuple[tuple[float, ...], Ticket, ServerRecord] | None = None
        for record in free:
            load = (len(record.assigned) + record.others + 1) / self._rate(record)

            def runnable(t: Ticket, record: ServerRecord = record) -> bool:
                return record.can_run(t.req) and (
                    record.key not in t.avoid or not self._elsewhere(t, record)
                )

            def same_model(t: Ticket, record: ServerRecord = record) -> bool:
                return (t.model is None or t.model == record.tail) and runnable(t)

            choice: tuple[float, tuple[int, Ticket] | None]
            if forced:
                tier = 0 if same_model(head) else 3
                choice = (tier, (0, head) if runnable(head) else None)
            elif (match := self._earliest(same_model, window, -1)) is not None:
                choice = (0, match)  # its model, within the lookahead
            else:
                target = self._target(record, rates)
                if record.tail is None:  # a first load: unavoidable
                    tier = 1
                elif (
                    not record.assigned  # decide at the last moment, with the most to go on
                    and target is not None
                    and self._worth_switching(record, target, rates)
                ):
                    tier = 3
                else:
                    # Keep the model: its next job further back, if there is one.
                    choice = (2, self._earliest(same_model, window, head.priority))
                    target = None
                    tier = -1
                if tier in (1, 3):
                    choice = (
                        tier,
                        self._earliest(
                            partial(_of_model, target, runnable),
                            window,
                            head.priority,
                        ),
                    )
            tier_rank, found = choice
            if found is None:
                continue
            index, ticket = found
            rank: tuple[float, ...] = (tier_rank, index, load)
            if best is None or rank < best[0]:
                best = (rank, ticket, record)
        if best is None:
            return None
        _, ticket, record = best
        self._unwait(ticket)
        if ticket is not head:
            head.bypassed += 1
        front = bool(record.assigned) and ticket.priority > min(record.assigned.values())
        record.assigned[ticket.key] = ticket.priority
        if ticket.model is not None:
            record.tail = ticket.model
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
