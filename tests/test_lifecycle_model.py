"""Model-based test of the job lifecycle: hypothesis generates interleavings of submits
(twins included), cancels, timeouts, closes, socket drops, restarts, injected failures,
latency and hold/release, and drives the real client against the simulator over loopback.

Checked after every step: in-flight slots add up, at most one socket and one reader, no
background task failed. Checked at the end, once the server has run what it holds:
(a) every job settled exactly once (the job's own assertion, and its state);
(b) a job settled as cancelled never ran to success on the server (unless the caller
    detached it), nor did a failed one, unless it failed with ``PromptLost`` (the server
    lost it and the client cannot know whether it ran: that error says so); a job settled
    as done did;
(c) each prompt was accepted at most once, twice only when it was resubmitted;
(d) every slot is free when idle; (e) no socket and no reader after aclose();
(f) no task and no file descriptor left behind; (g) reconnects per second bounded.

``DREAMGEN_MODEL_EXAMPLES=200 pytest tests/test_lifecycle_model.py`` explores further.
"""

from __future__ import annotations

import asyncio
import io
import logging
import tempfile
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from _graphs import txt2img
from _models import ErrorLog, model_settings, open_fds, our_tasks
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dreamgen_async import ClientClosedError, PromptLost, PromptTimeout
from dreamgen_async.comfyui_api import ComfyUIClient, RetryPolicy
from dreamgen_async.jobs import Job, PromptResult
from dreamgen_async.lifecycle import JobState
from dreamgen_async.multiplexer import ReconnectPolicy
from dreamgen_async.testing import ComfyUISimulator, SimulatorConfig

T = TypeVar("T")
MAX_IN_FLIGHT = 3


@dataclass
class Caller:
    """One await on a job: the submitting caller, or a twin waiting on the same job."""

    prompt_id: str
    task: asyncio.Task[PromptResult]
    job: asyncio.Future[Job] = field(repr=False)


class LifecycleModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.fds = open_fds()
        self.loop = asyncio.new_event_loop()
        self.errors = ErrorLog()
        logging.getLogger("dreamgen_async").addHandler(self.errors)
        self.tmp = tempfile.TemporaryDirectory(prefix="dreamgen-model-")
        self.sim = ComfyUISimulator(SimulatorConfig(step_time=0.01), root=self.tmp.name)
        self.run(self.sim.start())
        self.client = ComfyUIClient(
            self.sim.url,
            retry=RetryPolicy(attempts=3, initial_delay=0.01, max_delay=0.05),
            reconnect=ReconnectPolicy(
                max_time=30.0, initial_delay=0.01, max_delay=0.05, watchdog=0.2
            ),
            max_in_flight=MAX_IN_FLIGHT,
        )
        self.run(self.client.open())
        self.callers: list[Caller] = []
        self.jobs: dict[str, asyncio.Future[Job]] = {}
        self.owned: dict[str, Job] = {}
        self.closed = False
        self.detached = False
        self.restarts = 0
        self.started = self.loop.time()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    # ------------------------------------------------------------------ operations

    @precondition(lambda self: not self.closed)
    @rule(timeout=st.sampled_from([None, None, 0.05, 0.3]), priority=st.integers(0, 2))
    def submit(self, timeout: float | None, priority: int) -> None:
        prompt_id = str(uuid.uuid4())
        job: asyncio.Future[Job] = self.loop.create_future()
        graph = txt2img(seed=len(self.callers))

        async def caller() -> PromptResult:
            try:
                submitted = await self.client.submit(graph, prompt_id=prompt_id, priority=priority)
            except BaseException as exc:
                job.cancel() if isinstance(exc, asyncio.CancelledError) else job.set_exception(exc)
                job.exception() if not job.cancelled() else None
                raise
            job.set_result(submitted)
            return await submitted.result(timeout)

        self.jobs[prompt_id] = job
        self.callers.append(Caller(prompt_id, self.loop.create_task(caller()), job))
        self.run(asyncio.sleep(0))
        # The job object, whatever its caller does next (its fate is the owner's, not the
        # caller's): submit() registered it before its first await.
        self.owned[prompt_id] = self.client._owner.live.get(prompt_id) or next(
            j for j in self.client._owner.waiting_jobs() if j.prompt_id == prompt_id
        )

    @precondition(lambda self: not self.closed and self.callers)
    @rule(data=st.data(), timeout=st.sampled_from([None, 0.05]))
    def twin(self, data: st.DataObject, timeout: float | None) -> None:
        first = data.draw(st.sampled_from(self.callers))
        if not first.job.done() or first.job.cancelled() or first.job.exception():
            return

        async def caller() -> PromptResult:
            return await first.job.result().result(timeout)

        self.callers.append(Caller(first.prompt_id, self.loop.create_task(caller()), first.job))
        self.run(asyncio.sleep(0))

    @precondition(lambda self: self.callers)
    @rule(data=st.data(), times=st.integers(1, 2))
    def cancel_caller(self, data: st.DataObject, times: int) -> None:
        caller = data.draw(st.sampled_from(self.callers))
        for _ in range(times):
            caller.task.cancel()
            self.run(asyncio.sleep(0.01))

    @precondition(lambda self: not self.closed and self.callers)
    @rule(data=st.data())
    def cancel_job(self, data: st.DataObject) -> None:
        caller = data.draw(st.sampled_from(self.callers))
        if caller.job.done() and not caller.job.cancelled() and not caller.job.exception():
            self.run(caller.job.result().cancel())

    @precondition(lambda self: not self.closed)
    @rule()
    def drop_sockets(self) -> None:
        self.run(self.sim.drop_websockets())

    @precondition(lambda self: not self.closed)
    @rule()
    def restart(self) -> None:
        self.restarts += 1
        self.run(self.sim.restart())

    @precondition(lambda self: not self.closed)
    @rule(
        route=st.sampled_from(["/prompt", "/queue", "/history/*", "/ws", "/interrupt"]),
        status=st.sampled_from([500, 503]),
        n=st.integers(1, 3),
    )
    def fail_next(self, route: str, status: int, n: int) -> None:
        self.sim.fail_next(route, n=n, status=status)

    @rule(seconds=st.sampled_from([0.0, 0.1]))
    def post_latency(self, seconds: float) -> None:
        self.sim.route_latency["/prompt"] = seconds

    @rule()
    def hold(self) -> None:
        self.sim.hold()

    @rule()
    def release(self) -> None:
        self.sim.release()

    @rule(seconds=st.sampled_from([0.01, 0.05, 0.2]))
    def time_passes(self, seconds: float) -> None:
        self.run(asyncio.sleep(seconds))

    @precondition(lambda self: not self.closed)
    @rule(detach=st.booleans())
    def close(self, detach: bool) -> None:
        self.closed = True
        self.detached = detach
        self.run(self.client.aclose(detach=detach))

    # ------------------------------------------------------------------ invariants

    @invariant()
    def slots_add_up(self) -> None:
        assert self.client.free_slots + self.client.in_flight == MAX_IN_FLIGHT

    @invariant()
    def one_socket_one_reader(self) -> None:
        assert self.sim.open_websockets <= 1
        readers = [
            t
            for t in asyncio.all_tasks(self.loop)
            if t.get_name() == "dreamgen-ws-reader" and not t.done()
        ]
        assert len(readers) <= (0 if self.closed else 1)

    @invariant()
    def nothing_failed_in_the_background(self) -> None:
        assert not self.errors.records, [r.getMessage() for r in self.errors.records]

    # ------------------------------------------------------------------ the end

    def teardown(self) -> None:
        try:
            self._settle_and_check()
        finally:
            logging.getLogger("dreamgen_async").removeHandler(self.errors)
            if not self.closed:
                self.run(self.client.aclose())
            self.run(self.sim.stop())
            self.loop.close()
            self.tmp.cleanup()
        assert open_fds() <= self.fds, "file descriptors leaked"  # (f)

    def _settle_and_check(self) -> None:
        sim = self.sim
        sim.clear_faults()
        sim.route_latency.clear()
        sim.release()
        tasks = [c.task for c in self.callers]

        async def callers_done() -> None:
            done, pending = await asyncio.wait(tasks, timeout=30) if tasks else (set(), set())
            for task in done:  # retrieved: outcomes are checked on the jobs below
                if not task.cancelled():
                    task.exception()
            if pending:  # (asyncio.wait cancels nothing: what is stuck stays visible)
                stuck = [
                    (j.prompt_id[:8], j.state.value, j._life.gap, j._waiters)
                    for j in self.owned.values()
                    if not j.done()
                ]
                stacks = []
                for task in pending:
                    out = io.StringIO()
                    task.print_stack(limit=12, file=out)
                    stacks.append(out.getvalue())
                    task.cancel()
                sim = self.sim
                on_server = {
                    j.prompt_id[:8]: sim.prompts[j.prompt_id].status
                    for j in self.owned.values()
                    if not j.done() and j.prompt_id in sim.prompts
                }
                ws = self.client._mux._ws
                sockets = (
                    f"server sockets {sim.open_websockets}, registered "
                    f"{self.client.client_id in sim.hub.registered}, ours closed "
                    f"{None if ws is None else ws.closed}, heard {self.client._mux.messages}"
                )
                msg = (
                    f"never settled: jobs {stuck}; on the server {on_server}; {sockets}; "
                    f"{self.client._mux!r}; callers:\n" + "\n".join(stacks)
                )
                raise AssertionError(msg)

        self.run(callers_done())
        if not self.closed:
            try:
                self.run(asyncio.wait_for(self.client.wait_idle(), 30))
            except TimeoutError:
                stuck = [
                    (j.prompt_id[:8], j.state.value, j._life.gap, j._waiters)
                    for j in self.owned.values()
                    if not j.done()
                ]
                live = [(pid[:8], j.state.value) for pid, j in self.client._owner.live.items()]
                msg = f"client never idle: stuck {stuck}; live {live}; {self.client._mux!r}"
                raise AssertionError(msg) from None
            assert self.client.free_slots == MAX_IN_FLIGHT  # (d)
        self.run(sim.wait_until(lambda: sim.queue_remaining == 0, timeout=30))
        elapsed = self.loop.time() - self.started
        for prompt_id, job in self.owned.items():
            accepted = sim.accepted_prompt_ids.count(prompt_id)
            assert job.done()  # (a): settled (exactly once: Job asserts it)
            assert job.state.terminal
            assert accepted <= (2 if job.resubmitted else 1), (prompt_id, accepted)  # (c)
            status = sim.prompts[prompt_id].status if accepted else None
            if job.state is JobState.DONE:  # (b)
                assert status == "success", (prompt_id, status)
            elif not (self.detached and _closed(job)) and not _may_have_run(job):
                assert status != "success", f"{prompt_id} reported {job.state} but ran"
        if not self.closed:
            self.run(self.client.aclose())
            self.closed = True
        assert sim.open_websockets == 0  # (e)
        leftovers = our_tasks(self.loop)
        assert leftovers == []  # (f)
        assert sim.ws_connections_total <= 5 + 40 * elapsed  # (g)
        self.nothing_failed_in_the_background()


def _may_have_run(job: Job) -> bool:
    """Failed (never cancelled) with the error that says the client cannot know whether the
    prompt ran: the server lost it, history included."""
    return job.state is JobState.FAILED and isinstance(job.settled_error(), PromptLost)


def _closed(job: Job) -> bool:
    try:
        job._future.result()
    except ClientClosedError:
        return True
    except (asyncio.CancelledError, PromptTimeout, Exception):
        return False
    return False


LifecycleModel.TestCase.settings = model_settings(25)
TestLifecycleModel = LifecycleModel.TestCase
