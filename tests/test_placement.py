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
    Lane,
    Requirements,
    Scheduler,
    ServerEvent,
    ServerState,
    describe_missing,
    fluid_end,
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


def test_a_job_only_another_server_can_run_holds_up_nothing_behind_it() -> None:
    s = Scheduler()
    up(s, "a", 1, "A")
    s.add_server("b", 1)  # can run B, but is still joining (or down)
    s.servers["b"].caps = caps("B")
    s.enqueue("urgent-b", req("B"), priority=5)
    s.enqueue("batch-a", req("A"))
    assert [(p.job, p.server) for p in s.assign()] == [("batch-a", "a")]
    s.apply("b", ServerEvent.READY)
    assert [(p.job, p.server) for p in s.assign()] == [("urgent-b", "b")]


def test_a_job_no_server_takes_yet_still_holds_back_lower_priorities() -> None:
    # The server can run the urgent job but is busy: the batch job behind it waits.
    s = Scheduler()
    up(s, "a", 1)
    s.enqueue("first", req("A"))
    s.assign()
    s.enqueue("urgent", req("B"), priority=5)
    s.enqueue("batch", req("A"))
    assert s.assign() == []
    s.finish("first", 1.0)
    assert [p.job for p in s.assign()] == ["urgent"]


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


def finish_at_speed(s: Scheduler, key: str, seconds: float, load: float) -> None:
    """Finish placed job ``key`` after ``seconds``, plus ``load`` if its server had to load
    the job's model first."""
    record = s.servers[s.placed[key]]
    s.finish(key, seconds + (load if s.tickets[key].model != record.loaded else 0.0))


def run_for_a_while(s: Scheduler, seconds: dict[str, float], loads: dict[str, float]) -> None:
    """Run every placed job to the end, each server at its own speed (the first job of a
    model on a server costs a load too), until nothing is placed."""
    while s.placed:
        for key, server in list(s.placed.items()):
            finish_at_speed(s, key, seconds[server], loads[server])
        s.assign()


def test_a_lone_job_is_placed_when_every_server_is_idle() -> None:
    # Two idle servers, neither's model wanted: each must not wait for the other to switch.
    s = Scheduler()
    up(s, "a", 2)
    up(s, "b", 2)
    for i in range(6):
        s.enqueue(f"a{i}", req("A"))
    s.assign()
    run_for_a_while(s, {"a": 0.5, "b": 0.5}, {"a": 1.0, "b": 1.0})
    s.enqueue("b0", req("B"))
    (p,) = s.assign()
    assert p.job == "b0"


def test_a_slow_server_leaves_the_last_jobs_to_a_faster_one() -> None:
    s = Scheduler()
    up(s, "fast", 2)
    up(s, "slow", 2)
    for i in range(8):
        s.enqueue(f"a{i}", req("A"))
    s.assign()
    run_for_a_while(s, {"fast": 0.1, "slow": 1.0}, {"fast": 0.0, "slow": 0.0})
    # Both know their speed now (0.1 s and 1 s a job). Three jobs: the fast server runs all
    # three (0.3 s) before the slow one would finish one, so the third waits for the fast one.
    for i in (8, 9, 10):
        s.enqueue(f"a{i}", req("A"))
    assert [p.server for p in s.assign()] == ["fast", "fast"]
    assert s.servers["slow"].assigned == {}
    s.finish("a8", 0.1)
    assert [(p.job, p.server) for p in s.assign()] == [("a10", "fast")]
    # With a long backlog the slow server helps again.
    for i in range(11, 40):
        s.enqueue(f"a{i}", req("A"))
    assert "slow" in {p.server for p in s.assign()}


def test_job_times_are_learned_per_server_and_model() -> None:
    # y is fast at B (0.01 s) and slow at A (1 s): its average of both looks fast (0.3 s),
    # but for A only its A time counts. Five A jobs: x (0.1 s) runs them all sooner than y
    # would run one, so y takes none; knowing only the average, y would take one.
    def pool(a_time: float | None) -> Scheduler:
        s = Scheduler()
        up(s, "x", 2)
        up(s, "y", 2)
        for key, plain, times in (("x", 0.1, {"A": 0.1}), ("y", 0.3, {"A": a_time, "B": 0.01})):
            record = s.servers[key]
            record.tail = record.loaded = "A"
            record.plain_time = record.mean_time = plain
            record.model_times = {m: t for m, t in times.items() if t is not None}
        for i in range(5):
            s.enqueue(f"a{i}", req("A"))
        return s

    s = pool(1.0)
    assert [p.server for p in s.assign()] == ["x", "x"]
    assert s.job_time("y", "A") == 1.0
    assert s.job_time("y", "C") == 0.3  # never ran there: its usual time
    assert "y" in {p.server for p in pool(None).assign()}
    # What finish() learns: a plain job's time for its model, a switch's apart.
    s = Scheduler()
    up(s, "z", 1)
    for i, (model, seconds) in enumerate((("A", 2.0), ("A", 0.5), ("B", 3.0), ("B", 0.2))):
        s.enqueue(f"j{i}", req(model))
        s.assign()
        s.finish(f"j{i}", seconds)
    assert s.servers["z"].model_times == {"A": 0.5, "B": 0.2}
    assert s.servers["z"].switches == 2


def test_a_server_moves_off_a_model_that_has_help_enough() -> None:
    # Four servers, three models: the slowest server joins the fastest on A at first (nothing
    # is known), and moves once the speeds show A will be done long before B and C.
    speeds = {"x2": 0.05, "x1a": 0.1, "x1b": 0.1, "x05": 0.2}
    s = Scheduler()
    for key in speeds:
        up(s, key, 2)
    for i in range(300):
        s.enqueue(f"j{i}", req("ABC"[i % 3]))
    first = {p.server: s.tickets[p.job].model for p in s.assign()}
    assert first["x2"] == first["x05"] == "A"  # the spread of first loads: A, B, C, then A
    for _ in range(12):
        for key, server in list(s.placed.items())[:4]:
            finish_at_speed(s, key, speeds[server], 1.0)
            s.assign()
    assert s.servers["x05"].tail in ("B", "C")
    assert s.servers["x2"].tail == "A"


# ------------------------------------------------------------------ the fluid model


def test_fluid_end_of_one_lane_and_of_two() -> None:
    assert fluid_end([Lane(10.0, "A", 0.5, 1.0)], {"A": 20}) == pytest.approx(2.5)
    both = [Lane(10.0, "A", 0.0, 1.0), Lane(10.0, "A", 1.0, 1.0)]
    assert fluid_end(both, {"A": 30}) == pytest.approx(2.0)  # 10 alone, then 20 at 20/s
    assert fluid_end([Lane(10.0, "A", 0.0, 1.0)], {"B": 1}) == pytest.approx(1.1)  # a load
    assert fluid_end([], {"A": 1}) == float("inf")
    assert fluid_end([Lane(10.0, "A", 0.0, 1.0)], {}) == 0.0


def test_fluid_end_moves_a_lane_only_when_that_ends_sooner() -> None:
    # A runs out at 1 s; moving to B (1 s load) ends B at 2 + 20/20 = 3 s instead of 4 s.
    lanes = [Lane(10.0, "A", 0.0, 1.0), Lane(10.0, "B", 0.0, 1.0)]
    assert fluid_end(lanes, {"A": 10, "B": 40}) == pytest.approx(3.0)
    # Only 12 of B: B alone ends at 1.2 s, sooner than any load; the A lane stops.
    assert fluid_end(lanes, {"A": 10, "B": 12}) == pytest.approx(1.2)


# ------------------------------------------------------------------ a model of the benchmark


def simulate(
    s: Scheduler,
    speeds: dict[str, float],
    jobs: list[str],
    work: float,
    load: float,
    concurrency: int | None = None,
) -> tuple[float, int]:
    """Discrete-event run: each server runs its assigned jobs in order; returns
    (makespan, model loads). Jobs are submitted at once, or with ``concurrency`` by a
    producer that keeps that many unsettled (a new one as each one settles)."""
    feed = list(enumerate(jobs))[::-1]

    def produce() -> None:
        while feed and (concurrency is None or len(s.tickets) < concurrency):
            i, model = feed.pop()
            s.enqueue(f"j{i}", req(model))

    produce()
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
        produce()
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
    # Within 8 % of a bound no schedule reaches: three models on four servers of these
    # speeds force at least one switch (the best plan, the 2x server moving once, needs
    # about 4 % more). The first loads plus two switches, one of them on the slowest server.
    assert makespan <= 1.08 * lower_bound, (makespan, lower_bound)
    assert loads <= len(speeds) + 2
    assert s.servers["x2"].switches <= 2
    # Round-robin in the same model: a load on nearly every job.
    rr_loads = sum(1 for i in range(4, 400) if jobs[i] != jobs[i - 4])
    assert rr_loads > 300


def test_model_of_the_short_benchmark_meets_its_targets() -> None:
    # 120 jobs: the first loads are a third of the lower bound, so every switch shows. No
    # schedule reaches the bound: one model on the 2x server runs out after ~3 s, and it
    # must move (a 1 s load) or idle; the fluid optimum is ~1.15x.
    speeds = {"x2": 2.0, "x1a": 1.0, "x1b": 1.0, "x05": 0.5}
    s = Scheduler()
    for key in speeds:
        up(s, key, 2)
    makespan, loads = simulate(s, speeds, ["ABC"[i % 3] for i in range(120)], 0.1, 1.0)
    lower_bound = 120 * 0.1 / sum(speeds.values()) + 1.0
    assert makespan <= 1.18 * lower_bound, (makespan, lower_bound)
    assert loads <= len(speeds) + 2
    assert s.servers["x2"].switches <= 2


@pytest.mark.parametrize(("jobs", "concurrency"), [(120, 8), (120, 16), (400, 8), (400, 16)])
def test_model_of_a_producer_feeding_a_few_at_a_time(jobs: int, concurrency: int) -> None:
    # A producer keeping C jobs unsettled, in order (A, B, C, ...): each model arrives at a
    # third of the rate jobs settle, so, with each server on one model, the batch goes as
    # fast as its least-served model. The best split of these speeds leaves one model a
    # single 1x server: 1 s load + a third of the jobs at 1x (1.36x the lower bound for 120
    # jobs). The pool reaches it without thrashing: the jobs that would pay for a switch are
    # not submitted yet, and policies counting them as backlog switched 12-84 times here.
    speeds = {"x2": 2.0, "x1a": 1.0, "x1b": 1.0, "x05": 0.5}
    s = Scheduler()
    for key in speeds:
        up(s, key, 2)
    makespan, loads = simulate(
        s, speeds, ["ABC"[i % 3] for i in range(jobs)], 0.1, 1.0, concurrency
    )
    best_static = 1.0 + jobs / 3 * 0.1
    assert makespan <= 1.01 * best_static, (makespan, best_static)
    assert loads <= len(speeds) + 1


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
        # Progress: a job some server could run never waits while every server is idle (a
        # server that declined a job counts on one that is working, whose finish re-assigns).
        up = [r for r in self.s.servers.values() if r.state is ServerState.UP]
        if not any(r.assigned for r in up):
            for key in self.s.waiting:
                assert not any(r.can_run(self.s.tickets[key].req) for r in up), key

    @precondition(lambda self: self.s.placed)
    @rule(data=st.data(), ok=st.booleans(), seconds=st.sampled_from([0.1, 0.5, 1.5]))
    def finish_placed(self, data: st.DataObject, ok: bool, seconds: float) -> None:
        key = data.draw(st.sampled_from(sorted(self.s.placed)))
        self.s.finish(key, seconds, ok)
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
