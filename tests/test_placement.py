"""placement.py with plain data: requirements, capabilities, the server state table, and the
scheduler's assign step (unit cases, a discrete-event model of the benchmark, and a
hypothesis state machine over its invariants)."""

from __future__ import annotations

import heapq
import itertools
from typing import Any

import pytest
from _graphs import img2img, txt2img
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dreamgen_async.placement import (
    TRANSITIONS,
    Capabilities,
    IllegalTransition,
    Requirements,
    Scheduler,
    ServerEvent,
    ServerState,
    describe_missing,
    next_state,
    requirements,
)

CLASSES = frozenset(
    {
        "CheckpointLoaderSimple",
        "CLIPTextEncode",
        "EmptyLatentImage",
        "KSampler",
        "VAEDecode",
        "SaveImage",
        "LoadImage",
        "VAEEncode",
    }
)


def caps(*checkpoints: str, classes: frozenset[str] = CLASSES) -> Capabilities:
    return Capabilities(classes, {("CheckpointLoaderSimple", "ckpt_name"): frozenset(checkpoints)})


def req(model: str | None, *, extra_class: str | None = None) -> Requirements:
    classes = {"KSampler"} | ({extra_class} if extra_class else set())
    files = {("CheckpointLoaderSimple", "ckpt_name", model)} if model else set()
    return Requirements(frozenset(classes), frozenset(files), model)


def up(s: Scheduler, key: str, capacity: int = 2, *models: str) -> None:
    s.add_server(key, capacity)
    s.servers[key].caps = caps(*(models or ("A", "B", "C")))
    s.apply(key, ServerEvent.READY)


# ---------------------------------------------------------------------------- capability


def test_requirements_of_a_workflow() -> None:
    r = requirements(img2img("dreamgen/abc.png"))
    assert "LoadImage" in r.node_classes
    assert "KSampler" in r.node_classes
    assert r.model_files == {("CheckpointLoaderSimple", "ckpt_name", "flux1-schnell.safetensors")}
    assert r.model == "flux1-schnell.safetensors"
    # An image input is not a model file; a graph without a loader has no affinity model.
    assert requirements({"1": {"class_type": "X", "inputs": {"image": "a.png"}}}).model is None


def test_capabilities_read_both_combo_forms_and_name_what_is_missing() -> None:
    info: dict[str, Any] = {
        "CheckpointLoaderSimple": {
            "input": {"required": {"ckpt_name": [["a.safetensors", "b.safetensors"], {}]}}
        },
        "UNETLoader": {
            "input": {"required": {"unet_name": ["COMBO", {"options": ["u.safetensors"]}]}}
        },
        "KSampler": {"input": {"required": {"steps": ["INT", {"default": 20}]}}},
    }
    c = Capabilities.from_object_info(info)
    assert c.choices[("UNETLoader", "unet_name")] == {"u.safetensors"}
    assert c.missing(requirements(txt2img())) == (
        "node class CLIPTextEncode",
        "node class EmptyLatentImage",
        "node class SaveImage",
        "node class VAEDecode",
        "ckpt_name 'flux1-schnell.safetensors'",
    )
    ok = requirements({"1": {"class_type": "UNETLoader", "inputs": {"unet_name": "u.safetensors"}}})
    assert c.missing(ok) == ()
    assert "http://a lacks ckpt_name 'x'" in describe_missing({"http://a": ["ckpt_name 'x'"]})


# ---------------------------------------------------------------------------- state table


def test_server_state_table() -> None:
    assert next_state(ServerState.JOINING, ServerEvent.READY) is ServerState.UP
    assert next_state(ServerState.UP, ServerEvent.FAILED) is ServerState.SUSPECT
    assert next_state(ServerState.SUSPECT, ServerEvent.PROBE_FAILED) is ServerState.DOWN
    assert next_state(ServerState.DOWN, ServerEvent.OK) is ServerState.DOWN  # no revival
    assert next_state(ServerState.DOWN, ServerEvent.READY) is ServerState.UP  # rejoin
    assert next_state(ServerState.DRAINING, ServerEvent.DRAINED) is ServerState.REMOVED
    with pytest.raises(IllegalTransition, match="drained is not possible in state up"):
        next_state(ServerState.UP, ServerEvent.DRAINED)
    for event in ServerEvent:  # removed is final
        assert (ServerState.REMOVED, event) not in TRANSITIONS


# ---------------------------------------------------------------------------- assign


def test_late_binding_fills_free_slots_only() -> None:
    s = Scheduler()
    up(s, "a", 2)
    up(s, "b", 2)
    for i in range(10):
        s.enqueue(f"j{i}", req(None))
    placed = s.assign()
    assert len(placed) == 4
    assert {p.server for p in placed} == {"a", "b"}
    assert len(s.waiting) == 6
    assert s.assign() == []  # nothing freed, nothing placed
    s.finish(placed[0].job, 0.1)
    (again,) = s.assign()
    assert again.server == placed[0].server
    assert again.job == "j4"


def test_other_clients_queue_counts_as_load() -> None:
    s = Scheduler()
    up(s, "busy", 2)
    up(s, "idle", 2)
    s.set_queue("busy", 5)
    s.enqueue("j", req(None))
    (p,) = s.assign()
    assert p.server == "idle"


def test_capability_routing() -> None:
    s = Scheduler()
    up(s, "a", 2, "A")
    up(s, "b", 2, "A", "B")
    for i in range(4):
        s.enqueue(f"b{i}", req("B"))
    placed = s.assign()
    assert {p.server for p in placed} == {"b"}
    assert len(placed) == 2
    assert s.runnable_somewhere(req("Z")) == {
        "a": ("ckpt_name 'Z'",),
        "b": ("ckpt_name 'Z'",),
    }
    assert s.runnable_somewhere(req("B")) is None


def test_priority_first_and_boost_slot_posted_in_front() -> None:
    s = Scheduler()
    up(s, "a", 2)
    for i in range(5):
        s.enqueue(f"batch{i}", req(None))
    assert len(s.assign()) == 2
    s.enqueue("urgent", req(None), priority=10)
    (p,) = s.assign()  # one slot beyond capacity, for a job that outranks ours there
    assert p.job == "urgent"
    assert p.front
    assert len(s.servers["a"].assigned) == 3
    s.enqueue("urgent2", req(None), priority=10)
    assert s.assign() == []  # never more than capacity + 1


def test_take_back_restores_the_old_order() -> None:
    s = Scheduler()
    up(s, "a", 2)
    up(s, "b", 2)
    for i in range(6):
        s.enqueue(f"j{i}", req(None))
    placed = {p.job: p.server for p in s.assign()}
    s.apply("a", ServerEvent.LOST)
    back = s.take_back("a")
    assert sorted(back) == sorted(j for j, srv in placed.items() if srv == "a")
    assert s.waiting[: len(back)] == sorted(back)  # ahead of the never-placed ones
    assert all(p.server == "b" for p in s.assign())


def test_affinity_interleaved_models_stay_put() -> None:
    s = Scheduler(lookahead=8)
    up(s, "a", 2)
    up(s, "b", 2)
    for i in range(40):
        s.enqueue(f"j{i}", req("AB"[i % 2]))
    models: dict[str, set[str | None]] = {"a": set(), "b": set()}
    while s.tickets:
        for p in s.assign():
            models[p.server].add(s.tickets[p.job].model)
        for record in s.servers.values():
            if record.assigned:
                s.finish(next(iter(record.assigned)), 1.0)
    assert models == {"a": {"A"}, "b": {"B"}}
    assert sum(r.switches for r in s.servers.values()) == 2


def test_a_job_skipped_too_often_is_placed_next() -> None:
    s = Scheduler(lookahead=4, max_bypass=3)
    up(s, "a", 1)
    s.enqueue("first", req("A"))
    s.assign()
    s.finish("first", 1.0)
    s.enqueue("lonely", req("B"))
    for i in range(10):
        s.enqueue(f"a{i}", req("A"))
    order = []
    while s.tickets:
        (p,) = s.assign()
        order.append(p.job)
        s.finish(p.job, 1.0)
    assert order.index("lonely") == 3


# ------------------------------------------------------------------ a model of the benchmark


def simulate(
    s: Scheduler, speeds: dict[str, float], jobs: list[str], work: float, load: float
) -> tuple[float, int]:
    """Discrete-event run: each server runs its assigned jobs in order; returns
    (makespan, model loads)."""
    for i, model in enumerate(jobs):
        s.enqueue(f"j{i}", req(model))
    loaded: dict[str, str | None] = dict.fromkeys(speeds)
    queues: dict[str, list[str]] = {k: [] for k in speeds}
    running: set[str] = set()
    events: list[tuple[float, str, str, float]] = []
    now = 0.0
    loads = 0

    def start(server: str) -> None:
        nonlocal loads
        if server in running or not queues[server]:
            return
        running.add(server)
        job = queues[server][0]
        model = s.tickets[job].model
        took = work / speeds[server]
        if model != loaded[server]:
            took += load
            loads += 1
            loaded[server] = model
        heapq.heappush(events, (now + took, server, job, took))

    while s.tickets:
        for p in s.assign():
            queues[p.server].append(p.job)
        for server in speeds:
            start(server)
        now, server, job, took = heapq.heappop(events)
        queues[server].pop(0)
        running.discard(server)
        s.finish(job, took)
        start(server)
    return now, loads


def test_model_of_the_benchmark_meets_its_targets() -> None:
    speeds = {"x2": 2.0, "x1a": 1.0, "x1b": 1.0, "x05": 0.5}
    s = Scheduler()
    for key in speeds:
        up(s, key, 2)
    jobs = ["ABC"[i % 3] for i in range(400)]
    makespan, loads = simulate(s, speeds, jobs, work=0.1, load=1.0)
    lower_bound = 400 * 0.1 / sum(speeds.values()) + 1.0
    # Within 20 % of a bound no schedule reaches (the speeds force at least one switch),
    # with at most twice the unavoidable first loads.
    assert makespan <= 1.2 * lower_bound, (makespan, lower_bound)
    assert loads <= 2 * len(speeds)
    # Round-robin in the same model: a load on nearly every job.
    rr_loads = sum(1 for i in range(4, 400) if jobs[i] != jobs[i - 4])
    assert rr_loads > 300


# ---------------------------------------------------------------------------- invariants


class SchedulerMachine(RuleBasedStateMachine):
    """Random joins, failures, drains, submissions and completions; after every step the
    assign step's invariants hold."""

    def __init__(self) -> None:
        super().__init__()
        self.s = Scheduler(lookahead=4, max_bypass=6)
        self.names = (f"s{i}" for i in itertools.count())
        self.jobs = (f"j{i}" for i in itertools.count())
        self.settled: set[str] = set()
        self.submitted: set[str] = set()

    def _servers(self, *states: ServerState) -> list[str]:
        return [k for k, r in self.s.servers.items() if r.state in states]

    @rule(capacity=st.integers(1, 3), models=st.sets(st.sampled_from("ABC"), min_size=1))
    def add_server(self, capacity: int, models: set[str]) -> None:
        key = next(self.names)
        self.s.add_server(key, capacity)
        self.s.servers[key].caps = caps(*models)

    @rule(data=st.data(), event=st.sampled_from(ServerEvent))
    def server_event(self, data: st.DataObject, event: ServerEvent) -> None:
        live = self._servers(*(s for s in ServerState if s is not ServerState.REMOVED))
        if not live:
            return
        key = data.draw(st.sampled_from(live))
        record = self.s.servers[key]
        if event is ServerEvent.DRAINED and record.assigned:
            return  # the shell only says "drained" once nothing is left
        try:
            _, new = self.s.apply(key, event)
        except IllegalTransition:
            return
        if new in (ServerState.DOWN, ServerState.REMOVED):
            self.s.take_back(key)
        if new is ServerState.REMOVED:
            self.s.forget_server(key)

    @rule(model=st.sampled_from(["A", "B", "C", "D", None]), priority=st.integers(0, 2))
    def submit(self, model: str | None, priority: int) -> None:
        key = next(self.jobs)
        self.s.enqueue(key, req(model), priority)
        self.submitted.add(key)

    @rule()
    def assign(self) -> None:
        before = {k: r.state for k, r in self.s.servers.items()}
        for p in self.s.assign():
            assert before[p.server] is ServerState.UP
            assert self.s.servers[p.server].can_run(self.s.tickets[p.job].req)

    @precondition(lambda self: self.s.placed)
    @rule(data=st.data(), ok=st.booleans())
    def finish_placed(self, data: st.DataObject, ok: bool) -> None:
        key = data.draw(st.sampled_from(sorted(self.s.placed)))
        self.s.finish(key, 0.5, ok)
        assert key not in self.settled
        self.settled.add(key)

    @precondition(lambda self: self.s.waiting)
    @rule(data=st.data())
    def cancel_waiting(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(self.s.waiting))
        self.s.finish(key)
        assert key not in self.settled
        self.settled.add(key)

    @invariant()
    def every_job_is_in_exactly_one_place(self) -> None:
        waiting = self.s.waiting
        assert len(waiting) == len(set(waiting))
        assert set(waiting).isdisjoint(self.s.placed)
        assert set(waiting) | set(self.s.placed) == set(self.s.tickets)
        assert set(self.s.tickets) | self.settled == self.submitted
        assert set(self.s.tickets).isdisjoint(self.settled)

    @invariant()
    def slots_never_over_committed_and_nothing_on_a_down_server(self) -> None:
        for key, record in self.s.servers.items():
            assert len(record.assigned) <= record.capacity + 1
            if record.state is ServerState.DOWN:
                assert not record.assigned
            for job in record.assigned:
                assert self.s.placed[job] == key
        assert sum(len(r.assigned) for r in self.s.servers.values()) == len(self.s.placed)


SchedulerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40)
TestSchedulerInvariants = SchedulerMachine.TestCase
