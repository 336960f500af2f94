"""Model-based test of ComfyUIPool: hypothesis generates interleavings of submits (two models,
three priorities, some with a timeout), cancels, servers killed and restarted with an empty
queue, dropped sockets, restarts, injected 5xx, held queues, drains and re-adds, and a close,
and drives a real pool over three simulators of different speeds over loopback.

Checked after every step: the pool's books agree with its scheduler (every live job waiting or
placed, never both, never on a removed server); at most one socket per server; no background
task failed. Checked at the end, once every server has run what it holds:
(a) every job settled, exactly once (its future), and the pool holds none of them;
(b) a job reported cancelled never ran to success anywhere, unless the pool was closed
    detached; a job reported done ran to success on the server it names (``job.server``);
(c) no prompt ran to success twice unless it is marked ``resubmitted``: it was placed again
    while a server that had accepted it might still run it (it was running on a server that
    went down, or a server stopped answering for it);
(d) after aclose(): no socket, no task of ours, no file descriptor left behind.

``DREAMGEN_MODEL_EXAMPLES=200 pytest tests/test_pool_model.py`` explores further.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from _graphs import txt2img
from _models import ErrorLog, model_settings, open_fds, our_tasks
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dreamgen_async import ClientClosedError, RetryPolicy
from dreamgen_async.jobs import PromptResult
from dreamgen_async.multiplexer import ReconnectPolicy
from dreamgen_async.placement import BindingState, ServerState
from dreamgen_async.pool import ComfyUIPool, PoolJob
from dreamgen_async.testing import ComfyUISimulator, SimulatorConfig, SimulatorFarm

T = TypeVar("T")
CKPTS = ("a.safetensors", "b.safetensors")
SPEEDS = (1.0, 2.0, 0.5)
seeds = itertools.count(1)


@dataclass
class Caller:
    job: PoolJob
    task: asyncio.Task[PromptResult]


class PoolModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.fds = open_fds()
        self.loop = asyncio.new_event_loop()
        # A client whose server stays dead past its reconnect budget logs that its reader
        # stopped: expected here (the pool marks the server down, its jobs go elsewhere).
        self.errors = ErrorLog("WebSocket reader stopped: could not reconnect")
        logging.getLogger("dreamgen_async").addHandler(self.errors)
        self.tmp = tempfile.TemporaryDirectory(prefix="dreamgen-pool-model-")
        self.farm = SimulatorFarm(self.tmp.name)
        configs = [
            SimulatorConfig(checkpoints=CKPTS, step_time=0.002, speed=s, model_load_time=0.01)
            for s in SPEEDS
        ]
        self.sims: list[ComfyUISimulator] = self.run(self.farm.start(*configs))
        self.urls = [sim.url for sim in self.sims]
        self.ports = [sim.port for sim in self.sims]
        self.alive = [True] * len(self.sims)
        self.pool = ComfyUIPool(
            self.urls,
            over_queue=1,
            retry=RetryPolicy(attempts=3, initial_delay=0.01, max_delay=0.05, max_time=2.0),
            reconnect=ReconnectPolicy(max_time=0.5, initial_delay=0.01, max_delay=0.1),
            health_interval=0.05,
            probe_timeout=2.0,
            probe_delay=0.05,
            max_probe_delay=0.2,
        )
        self.run(self.pool.open())
        self.callers: list[Caller] = []
        self.removals: dict[int, asyncio.Task[None]] = {}
        self.closed = False
        self.detached = False

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` to the end; a step stuck for a minute fails with every task's stack."""
        task = self.loop.create_task(coro)
        self.loop.run_until_complete(asyncio.wait([task], timeout=60))
        if not task.done():
            out = io.StringIO()
            for t in [task, *asyncio.all_tasks(self.loop)]:
                t.print_stack(limit=8, file=out)
            task.cancel()
            raise AssertionError(f"a step never ended: {self.pool!r}\n{out.getvalue()}")
        return task.result()

    def _in_pool(self, i: int) -> bool:
        return any(s.url == self.urls[i] for s in self.pool.servers)

    # ------------------------------------------------------------------ operations

    @precondition(lambda self: not self.closed)
    @rule(
        ckpt=st.sampled_from(CKPTS),
        priority=st.integers(0, 2),
        timeout=st.sampled_from([None, None, 0.05, 0.3]),
    )
    def submit(self, ckpt: str, priority: int, timeout: float | None) -> None:
        if not self.pool.servers:
            return
        graph = txt2img(seed=next(seeds))
        graph["1"]["inputs"]["ckpt_name"] = ckpt
        job = self.run(self.pool.submit(graph, priority=priority))
        task = self.loop.create_task(job.result(timeout))
        self.callers.append(Caller(job, task))
        self.run(asyncio.sleep(0))

    @precondition(lambda self: self.callers)
    @rule(data=st.data())
    def cancel_job(self, data: st.DataObject) -> None:
        caller = data.draw(st.sampled_from(self.callers))
        self.run(caller.job.cancel())

    @precondition(lambda self: self.callers)
    @rule(data=st.data())
    def cancel_caller(self, data: st.DataObject) -> None:
        caller = data.draw(st.sampled_from(self.callers))
        caller.task.cancel()
        self.run(asyncio.sleep(0.01))

    @rule(i=st.integers(0, len(SPEEDS) - 1))
    def kill(self, i: int) -> None:
        """The server process dies: no answer, its queue and running prompt are gone."""
        if self.alive[i]:
            self.alive[i] = False
            self.run(self.sims[i].stop())

    @rule(i=st.integers(0, len(SPEEDS) - 1))
    def revive(self, i: int) -> None:
        """A killed server starts again on its port, with an empty queue."""
        if not self.alive[i]:
            self.alive[i] = True
            self.run(self.sims[i].engine.reset())
            self.run(self.sims[i].start(port=self.ports[i]))

    @rule(i=st.integers(0, len(SPEEDS) - 1))
    def drop_sockets(self, i: int) -> None:
        if self.alive[i]:
            self.run(self.sims[i].drop_websockets())

    @rule(i=st.integers(0, len(SPEEDS) - 1))
    def restart(self, i: int) -> None:
        if self.alive[i]:
            self.run(self.sims[i].restart())

    @rule(
        i=st.integers(0, len(SPEEDS) - 1),
        route=st.sampled_from(["/prompt", "/queue", "/history/*", "/interrupt", "/system_stats"]),
        status=st.sampled_from([500, 503]),
        n=st.integers(1, 3),
    )
    def fail_next(self, i: int, route: str, status: int, n: int) -> None:
        self.sims[i].fail_next(route, n=n, status=status)

    @rule(i=st.integers(0, len(SPEEDS) - 1))
    def hold(self, i: int) -> None:
        self.sims[i].hold()

    @rule(i=st.integers(0, len(SPEEDS) - 1))
    def release(self, i: int) -> None:
        self.sims[i].release()

    @precondition(lambda self: not self.closed)
    @rule(i=st.integers(0, len(SPEEDS) - 1))
    def drain(self, i: int) -> None:
        """Remove a server, finishing its jobs first (the removal is awaited at the end)."""
        staying = [s for s in self.pool.servers if s.state != "draining"]
        if i in self.removals or not self._in_pool(i) or len(staying) < 2:
            return  # one server always stays (with none, submit() says no server can run it)
        self.removals[i] = self.loop.create_task(self.pool.remove_server(self.urls[i]))
        self.run(asyncio.sleep(0))

    @precondition(lambda self: not self.closed)
    @rule(i=st.integers(0, len(SPEEDS) - 1))
    def add_back(self, i: int) -> None:
        removal = self.removals.get(i)
        if removal is None or not removal.done():
            return
        del self.removals[i]
        removal.result()
        self.run(self.pool.add_server(self.urls[i]))

    @rule(seconds=st.sampled_from([0.01, 0.05, 0.2]))
    def time_passes(self, seconds: float) -> None:
        self.run(asyncio.sleep(seconds))

    @precondition(lambda self: not self.closed)
    @rule(detach=st.booleans())
    def close(self, detach: bool) -> None:
        self.closed = True
        self.detached = detach
        self.run(self.pool.aclose(detach=detach))

    # ------------------------------------------------------------------ invariants

    @invariant()
    def books_agree(self) -> None:
        pool, sched = self.pool, self.pool._sched
        assert set(pool._jobs) == set(sched.tickets)
        waiting = set(sched.waiting)
        assert waiting.isdisjoint(sched.placed)
        assert waiting | set(sched.placed) == set(sched.tickets)
        for key, server in sched.placed.items():
            record = sched.servers[server]
            assert key in record.assigned
            assert record.state is not ServerState.REMOVED
        assert not any(book.job.done() for book in pool._jobs.values())

    @invariant()
    def bindings_and_scheduler_agree(self) -> None:
        """Each live job's binding says where it is, and the scheduler says the same."""
        sched = self.pool._sched
        for key, book in self.pool._jobs.items():
            binding = book.binding
            assert binding.key == key
            if binding.state is BindingState.WAITING:
                assert sched.is_waiting(key), binding
                assert binding.server is None, binding
            else:
                assert binding.bound, binding  # a settled job is no longer in the books
                assert sched.server_of(key) == binding.server, (binding, sched.server_of(key))
                assert book.job.server == binding.server
                assert binding.attempt == book.job.attempts >= 1

    @invariant()
    def one_socket_per_server(self) -> None:
        for sim, alive in zip(self.sims, self.alive, strict=True):
            if alive:
                assert sim.open_websockets <= 1

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
                self.run(self.pool.aclose())
            for task in self.removals.values():
                task.cancel()
            self.run(asyncio.sleep(0))
            self.run(self.farm.stop())
            self.loop.close()
            self.tmp.cleanup()
        assert open_fds() <= self.fds, "file descriptors leaked"  # (d)

    def _settle_and_check(self) -> None:
        for i, sim in enumerate(self.sims):
            self.revive(i)
            sim.clear_faults()
            sim.release()
        tasks = [c.task for c in self.callers]

        async def settle() -> None:
            if tasks:
                done, pending = await asyncio.wait(tasks, timeout=20)
                for task in done:  # retrieved: outcomes are checked on the jobs below
                    if not task.cancelled():
                        task.exception()
                stuck = [c.job for c in self.callers if c.task in pending]
                assert not pending, f"never settled: {stuck}; {self.pool!r} {self.pool.servers}"
            if not self.closed:  # a caller that gave up leaves its job's cancel running
                try:
                    await self.pool.wait_until(lambda: not self.pool._jobs, timeout=20)
                except TimeoutError:
                    raise AssertionError(f"pool never idle: {_stacks(self.pool)}") from None
            if self.removals:
                ended, left = await asyncio.wait(self.removals.values(), timeout=20)
                assert not left, f"removal never ended: {self.pool!r} {self.pool.servers}"
                for removal in ended:  # a drain the pool's close cut short says so
                    error = removal.exception()
                    assert error is None or (self.closed and isinstance(error, ClientClosedError))
            for sim in self.sims:
                await sim.wait_until(partial(_idle, sim), timeout=20)

        self.run(settle())
        assert not self.pool._jobs, _stacks(self.pool)  # (a)
        for caller in self.callers:
            job = caller.job
            assert job.done()  # (a)
            ran = [i for i, sim in enumerate(self.sims) if _succeeded(sim, job.prompt_id)]
            assert len(ran) <= 1 or job.resubmitted, (job, ran)  # (c)
            outcome = job._future
            if outcome.cancelled():  # (b)
                assert not ran or (self.closed and self.detached), (job, ran)
            elif outcome.exception() is None:
                assert job.server is not None
                assert self.urls.index(job.server) in ran, (job, ran)
        if not self.closed:
            self.run(self.pool.aclose())
            self.closed = True
        for sim in self.sims:
            assert sim.open_websockets == 0  # (d)
        leftovers = our_tasks(self.loop)
        assert leftovers == []  # (d)
        self.nothing_failed_in_the_background()


def _stacks(pool: ComfyUIPool) -> str:
    """The pool and the stack of every unsettled job's launch (what it waits for)."""
    out = io.StringIO()
    print(pool, pool.servers, file=out)
    for book in pool._jobs.values():
        job = book.job
        print(job, book.binding, file=out)
        srv = pool._servers.get(job.server or "")
        client = srv.client if srv is not None else None
        if client is not None:
            live = {k[:8]: (j.state.value, j._life.gap) for k, j in client._owner.live.items()}
            heap = [(j.prompt_id[:8], j.state.value) for j in client._owner.waiting_jobs()]
            print("client", client._state, client.free_slots, live, heap, client._mux, file=out)
            for j in client._owner.live.values():
                post = client._owner.post_task(j.prompt_id)
                print(j, post, j._life, file=out)
                if post is not None:
                    post.print_stack(limit=12, file=out)
        if book.launch is not None:
            book.launch.print_stack(limit=10, file=out)
    return out.getvalue()


def _idle(sim: ComfyUISimulator) -> bool:
    return sim.queue_remaining == 0


def _succeeded(sim: ComfyUISimulator, prompt_id: str) -> bool:
    prompt = sim.prompts.get(prompt_id)
    return prompt is not None and prompt.status == "success"


PoolModel.TestCase.settings = model_settings(15)
TestPoolModel = PoolModel.TestCase
