"""ComfyUIPool against several simulators over loopback: what the pool returned, and what
each server saw (history timestamps, model loads, prompt statuses)."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from _graphs import img2img, png_bytes, txt2img

from dreamgen_async import (
    ComfyUIClient,
    DreamGenerator,
    GenerationResult,
    Img2ImgRequest,
    JobFailure,
    RetryPolicy,
)
from dreamgen_async.errors import (
    ClientClosedError,
    ConnectionLostError,
    NoCapableServerError,
    PromptTimeout,
)
from dreamgen_async.multiplexer import ReconnectPolicy
from dreamgen_async.pool import ComfyUIPool
from dreamgen_async.testing import ComfyUISimulator, SimulatorConfig, SimulatorFarm

FAST: dict[str, Any] = {
    "retry": RetryPolicy(attempts=3, initial_delay=0.01, max_delay=0.05, max_time=2.0),
    "reconnect": ReconnectPolicy(max_time=0.5, initial_delay=0.01, max_delay=0.1),
    "health_interval": 0.05,
    "probe_timeout": 2.0,
    "probe_delay": 0.05,
    "max_probe_delay": 0.2,
}
CKPTS = ("a.safetensors", "b.safetensors", "flux1-schnell.safetensors")
seeds = itertools.count(1)


def job(ckpt: str = "a.safetensors", steps: int = 2) -> dict[str, Any]:
    graph = txt2img(seed=next(seeds), steps=steps)
    graph["1"]["inputs"]["ckpt_name"] = ckpt
    return graph


def cfg(**kwargs: Any) -> SimulatorConfig:
    kwargs.setdefault("checkpoints", CKPTS)
    kwargs.setdefault("step_time", 0.002)
    return SimulatorConfig(**kwargs)


def where(sims: Sequence[ComfyUISimulator], prompt_id: str) -> list[int]:
    """Indexes of the simulators that accepted ``prompt_id``."""
    return [i for i, sim in enumerate(sims) if prompt_id in sim.prompts]


@pytest.fixture
def farm(comfyui_farm: SimulatorFarm) -> SimulatorFarm:
    return comfyui_farm


# ---------------------------------------------------------------------------- basics


async def test_pool_runs_jobs_reports_servers_and_downloads(farm: SimulatorFarm) -> None:
    sims = await farm.start(cfg(), cfg())
    async with ComfyUIPool(farm.urls, **FAST) as pool:
        assert "servers=2 (2 up)" in repr(pool)
        results = await asyncio.gather(*(pool.run(job()) for _ in range(10)))
        for result in results:
            (image,) = await pool.get_output_images(result)
            (owner,) = where(sims, result.prompt_id)
            assert image.data == sims[owner].prompts[result.prompt_id].output_bytes[0]
        status = pool.servers
        assert [s.url for s in status] == farm.urls
        assert sum(s.done for s in status) == 10
        assert all(s.state == "up" and s.in_flight == 0 for s in status)
        assert {s.loaded_model for s in status if s.done} == {"a.safetensors"}
        assert all(s.mean_job_time is not None for s in status if s.done)
        assert "done=10 failed=0" in repr(pool)
        assert "waiting=0 placed=0" in repr(pool)
    assert "closed" in repr(pool)


async def test_late_binding_slow_server_never_hoards(farm: SimulatorFarm) -> None:
    slow, fast = await farm.start(cfg(step_time=0.01, speed=0.2), cfg(step_time=0.01))
    async with ComfyUIPool(farm.urls, **FAST) as pool:
        results = await asyncio.gather(*(pool.run(job()) for _ in range(30)))
    on_slow = [r.prompt_id for r in results if r.prompt_id in slow.prompts]
    on_fast = [r.prompt_id for r in results if r.prompt_id in fast.prompts]
    # Round-robin would give 15/15; the fast server is ~5x faster.
    assert len(on_fast) >= 3 * len(on_slow)
    # From the servers' own timestamps: no job waited in a server's queue longer than the
    # job ahead of it took (at most one of ours queues behind the running one).
    for sim in (slow, fast):
        durations = [p.finished_at - p.started_at for p in sim.prompts.values()]  # type: ignore[operator]
        for p in sim.prompts.values():
            accepted = p.extra_data["create_time"] / 1000
            assert p.started_at is not None
            assert p.started_at - accepted <= max(durations) + 0.05


# ---------------------------------------------------------------------------- capability


async def test_capability_routing_and_a_model_nobody_has(farm: SimulatorFarm) -> None:
    sims = await farm.start(
        cfg(checkpoints=("a.safetensors",)),
        cfg(checkpoints=("a.safetensors", "only-b.safetensors")),
    )
    async with ComfyUIPool(farm.urls, **FAST) as pool:
        results = await asyncio.gather(*(pool.run(job("only-b.safetensors")) for _ in range(8)))
        assert all(where(sims, r.prompt_id) == [1] for r in results)
        posts = [len(s.requests_to("/prompt", "POST")) for s in sims]
        with pytest.raises(NoCapableServerError, match=r"nowhere\.safetensors") as info:
            await pool.submit(job("nowhere.safetensors"))
        assert set(info.value.missing) == set(farm.urls)
        assert f"{farm.urls[0]} lacks ckpt_name 'nowhere.safetensors'" in str(info.value)
        assert [len(s.requests_to("/prompt", "POST")) for s in sims] == posts  # nothing sent


# ---------------------------------------------------------------------------- affinity


async def test_affinity_few_model_switches_vs_round_robin(farm: SimulatorFarm) -> None:
    sims = await farm.start(cfg(model_load_time=0.02), cfg(model_load_time=0.02))
    pattern = ["a.safetensors", "a.safetensors", "b.safetensors", "b.safetensors"] * 6
    async with ComfyUIPool(farm.urls, **FAST) as pool:
        await asyncio.gather(*(pool.run(job(ckpt)) for ckpt in pattern))
        assert sum(s.model_switches for s in pool.servers) == sum(s.model_loads for s in sims)
    pool_loads = sum(s.model_loads for s in sims)
    assert pool_loads <= 2 + 2
    # The same stream round-robin over two plain clients: a load on every job.
    rr_sims = await farm.start(cfg(model_load_time=0.02), cfg(model_load_time=0.02))
    async with (
        ComfyUIClient(rr_sims[0].url) as c0,
        ComfyUIClient(rr_sims[1].url) as c1,
    ):
        clients = itertools.cycle([c0, c1])
        jobs = [await next(clients).submit(job(ckpt)) for ckpt in pattern]
        await asyncio.gather(*(j.result() for j in jobs))
    assert sum(s.model_loads for s in rr_sims) == len(pattern)


async def test_pool_records_each_servers_spans(farm: SimulatorFarm, tmp_path: Path) -> None:
    sims = await farm.start(cfg(model_load_time=0.03), cfg(model_load_time=0.03), cfg())
    pattern = ["a.safetensors", "b.safetensors"] * 8
    async with ComfyUIPool(farm.urls, span_history=100, **FAST) as pool:
        assert pool.spans() == dict.fromkeys(farm.urls, ())  # a lane per server at once
        results = await asyncio.gather(*(pool.run(job(ckpt)) for ckpt in pattern))
        lanes = pool.spans()
        status = {s.url: s for s in pool.servers}
    assert list(lanes) == farm.urls
    on: dict[str, set[str]] = {url: set() for url in farm.urls}
    for result in results:
        (owner,) = where(sims, result.prompt_id)
        on[farm.urls[owner]].add(result.prompt_id)
    for url, lane in lanes.items():
        assert all(span.server == url and span.start <= span.end for span in lane)
        assert all(a.end <= b.start + 1e-9 for a, b in itertools.pairwise(lane))  # in order
        by_kind = Counter(span.kind.value for span in lane)
        # Every job of ours there (a busy span, a load span, or a load then the busy part),
        # a load span per model switch, and an idle span only between two jobs.
        jobs = [s.prompt_id for s in lane if s.kind.value != "idle"]
        assert set(jobs) == on[url]
        assert len(on[url]) == status[url].done
        assert by_kind["load"] == status[url].model_switches
        assert len(jobs) == by_kind["load"] + by_kind["busy"] <= 2 * len(on[url])
        assert by_kind["idle"] <= max(0, len(on[url]) - 1)
        assert {s.model for s in lane} <= {"a.safetensors", "b.safetensors"}
        if lane:
            assert lane[0].kind.value != "idle"
            assert lane[-1].kind.value != "idle"
    assert sum(len(lane) for lane in lanes.values()) >= len(pattern)
    with pytest.raises(ValueError, match="span_history must be at least 1"):
        ComfyUIPool(farm.urls, span_history=0)


# ---------------------------------------------------------------------------- failover


async def test_failover_one_of_four_killed_mid_batch(farm: SimulatorFarm) -> None:
    sims = await farm.start(*(cfg() for _ in range(4)))
    victim = sims[1]
    async with ComfyUIPool(farm.urls, **FAST) as pool:
        jobs = [await pool.submit(job()) for _ in range(200)]
        await victim.wait_until(
            lambda: sum(p.status == "success" for p in victim.prompts.values()) >= 5
        )
        running = {pid for pid, p in victim.prompts.items() if p.status == "running"}
        await victim.stop()
        results = await asyncio.gather(*(j.result(timeout=30) for j in jobs))
        assert pool.server(victim.url).state == "down"
    assert len({r.prompt_id for r in results}) == 200
    executed: Counter[str] = Counter()
    for sim in sims:
        for pid, p in sim.prompts.items():
            if p.status in ("success", "running"):
                executed[pid] += 1
    twice = {pid for pid, n in executed.items() if n > 1}
    assert twice <= running, "only a prompt running on the dead server may run twice"
    for r in results:  # every result came from a live server
        assert any(
            r.prompt_id in s.prompts and s.prompts[r.prompt_id].status == "success" for s in sims
        )


async def test_a_server_back_from_a_partition_forgets_prompts_run_elsewhere(
    farm: SimulatorFarm,
) -> None:
    # Unreachable, not restarted: a server comes back with its old queue, in which a prompt
    # of ours that ran elsewhere meanwhile still waits (its client could not take it back).
    # On rejoin the pool takes it off, so it does not run twice.
    a, b = await farm.start(cfg(), cfg())
    async with ComfyUIPool(farm.urls, **FAST) as pool:
        prompt_id = "5e1f-partitioned"
        graph = job()
        a.hold()
        other = ComfyUIClient(a.url)  # the copy the lost client left on a
        await other.open()
        await other.submit(graph, prompt_id=prompt_id)
        await other.aclose(detach=True)
        port = a.port
        await a.stop()  # a partition: its queue stays
        await pool.wait_until(lambda: pool.server(a.url).state == "down")
        result = await (await pool.submit(graph, prompt_id=prompt_id)).result(timeout=30)
        assert b.prompts[result.prompt_id].status == "success"
        await a.start(port=port)
        await pool.wait_until(lambda: pool.server(a.url).state == "up")
        a.release()
        await a.wait_until(lambda: a.queue_remaining == 0)
        assert a.prompts[prompt_id].status == "deleted"


async def test_a_job_cancelled_after_its_server_went_down_never_runs_there(
    farm: SimulatorFarm,
) -> None:
    # Found by the pool's model test: a job accepted by a server that then went down was
    # placed elsewhere (resubmitted) and cancelled there; the pool reported it cancelled,
    # and the first server, back from a partition with its queue, ran it.
    sims = await farm.start(cfg(), cfg())
    async with ComfyUIPool(farm.urls, **FAST) as pool:
        for sim in sims:
            sim.hold()
        moved = await pool.submit(job())
        await pool.wait_until(lambda: moved.server is not None)
        first = sims[farm.urls.index(moved.server or "")]
        other = sims[1 - sims.index(first)]
        await first.wait_for_status(moved.prompt_id, "pending")
        port = first.port
        await first.stop()  # a partition: its queue stays
        await pool.wait_until(lambda: moved.server == other.url)
        await other.wait_for_status(moved.prompt_id, "pending")
        assert moved.resubmitted
        await moved.cancel()
        # Taken off the server that holds it now, but the one that went down may run it.
        with pytest.raises(ConnectionLostError, match="may still run"):
            await moved.result()
        assert other.prompts[moved.prompt_id].status == "deleted"
        # When that one is back, the pool takes it off before giving it new jobs.
        await first.start(port=port)
        await pool.wait_until(lambda: pool.server(first.url).state == "up")
        first.release()
        await first.wait_until(lambda: first.queue_remaining == 0)
        assert first.prompts[moved.prompt_id].status == "deleted"


async def test_a_server_marked_down_while_its_socket_is_open_keeps_one_socket(
    farm: SimulatorFarm,
) -> None:
    # Seen once by the pool's model test: two sockets open on one server. A server marked
    # down while its client's WebSocket is (or gets) connected again rejoined with a new
    # client, and the old one's socket stayed open until it was retired.
    (sim,) = await farm.start(cfg())
    async with ComfyUIPool(farm.urls, **FAST) as pool:
        await sim.wait_until(lambda: sim.open_websockets == 1)
        two = asyncio.create_task(sim.wait_until(lambda: sim.open_websockets > 1, timeout=60))
        sim.fail_next("/prompt", 1, status=404)  # "not ComfyUI": down at once, socket open
        result = await pool.run(job())  # it rejoins, and the job runs there
        assert sim.prompts[result.prompt_id].status == "success"
        assert pool.server(sim.url).state == "up"
        await sim.wait_until(lambda: sim.open_websockets == 1)
        assert not two.done(), "two sockets were open on one server"
        two.cancel()
        await asyncio.gather(two, return_exceptions=True)


async def test_down_server_rejoins_by_itself(farm: SimulatorFarm) -> None:
    sims = await farm.start(cfg(), cfg())
    gone = sims[1]
    port = gone.port
    async with ComfyUIPool(farm.urls, **FAST) as pool:
        await gone.stop()
        await pool.wait_until(lambda: pool.server(gone.url).state == "down", timeout=10)
        results = await asyncio.gather(*(pool.run(job()) for _ in range(4)))
        assert all(where(sims, r.prompt_id) == [0] for r in results)
        await gone.start(port=port)
        await pool.wait_until(lambda: pool.server(gone.url).state == "up", timeout=10)
        sims[0].hold()  # the first server starts no more: the rejoined one must run them
        done_before = pool.done
        jobs = [await pool.submit(job()) for _ in range(6)]
        await pool.wait_until(lambda: pool.done >= done_before + 4)
        sims[0].release()
        await asyncio.gather(*(j.result() for j in jobs))
        assert sum(j.prompt_id in gone.prompts for j in jobs) >= 4


async def test_drain_finishes_running_jobs_and_takes_no_new_one(farm: SimulatorFarm) -> None:
    sims = await farm.start(cfg(step_time=0.005), cfg(step_time=0.005))
    async with ComfyUIPool(farm.urls, **FAST) as pool:
        jobs = [await pool.submit(job()) for _ in range(30)]
        await sims[1].wait_until(lambda: len(sims[1].prompts) >= 3)
        await pool.remove_server(sims[1].url)
        on_drained = set(sims[1].prompts)
        assert [s.url for s in pool.servers] == [sims[0].url]
        assert "servers=1 (1 up)" in repr(pool)
        results = await asyncio.gather(*(j.result() for j in jobs))
        assert set(sims[1].prompts) == on_drained  # nothing new after the drain
        assert all(sims[1].prompts[pid].status == "success" for pid in on_drained)
        assert len(results) == 30
        # Added back at run time, it takes jobs again.
        await pool.add_server(sims[1].url)
        sims[0].hold()
        extra = [await pool.submit(job()) for _ in range(4)]
        await pool.wait_until(lambda: sum(j.done() for j in extra) >= 2)
        sims[0].release()
        await asyncio.gather(*(j.result() for j in extra))
        assert sum(j.prompt_id in sims[1].prompts for j in extra) >= 2


# ---------------------------------------------------------------------------- priorities


async def test_a_drain_ends_when_its_last_job_fails_there_and_goes_elsewhere(
    farm: SimulatorFarm,
) -> None:
    # Found by the pool's model test: the removal of a draining server waited for ever when
    # its last job failed there (a server fault) and was placed elsewhere instead of settling.
    a, b = await farm.start(cfg(), cfg())
    options = {k: FAST[k] for k in ("retry", "reconnect")}
    async with (
        ComfyUIClient(a.url, on_lost="fail", **options) as client,
        ComfyUIPool([client], **FAST) as pool,
    ):
        a.hold()
        moved = await pool.submit(job())
        await a.wait_for_status(moved.prompt_id, "pending")
        await pool.add_server(b.url)
        removal = asyncio.create_task(pool.remove_server(a.url))
        await pool.wait_until(lambda: pool.server(a.url).state == "draining")
        await a.restart()  # the prompt is lost there (PromptLost): it fails, b runs it
        await moved.result()
        assert moved.server == b.url
        await asyncio.wait_for(removal, timeout=10)
        assert [s.url for s in pool.servers] == [b.url]


async def test_high_priority_job_behind_100_starts_next(farm: SimulatorFarm) -> None:
    sims = await farm.start(cfg(step_time=0.005), cfg(step_time=0.005))
    async with ComfyUIPool(farm.urls, **FAST) as pool:
        batch = [await pool.submit(job()) for _ in range(100)]
        await pool.wait_until(lambda: pool.done >= 4)
        for sim in sims:
            sim.hold()
        urgent = await pool.submit(job(), priority=10)
        await pool.wait_until(lambda: urgent.state == "queued")
        released = max(p.started_at or 0 for s in sims for p in s.prompts.values())
        for sim in sims:
            sim.release()
        result = await urgent.result(timeout=10)
        (owner,) = where(sims, result.prompt_id)
        started = sorted(
            (p.started_at, pid)
            for pid, p in sims[owner].prompts.items()
            if p.started_at is not None and p.started_at > released
        )
        assert started[0][1] == urgent.prompt_id
        assert pool.waiting > 50  # the batch was still queued client-side
        for j in batch:
            await j.cancel()


# ---------------------------------------------------------------------------- cancel


async def test_cancel_removes_the_prompt_from_whichever_server_holds_it(
    farm: SimulatorFarm,
) -> None:
    sims = await farm.start(cfg(), cfg())
    async with ComfyUIPool(farm.urls, over_queue=1, **FAST) as pool:
        for sim in sims:
            sim.hold()
        jobs = [await pool.submit(job()) for _ in range(6)]
        await pool.wait_until(lambda: pool.in_flight == 4 and pool.waiting == 2)
        placed = [j for j in jobs if j.server is not None]
        for j in placed:
            await sims[farm.urls.index(j.server or "")].wait_for_status(j.prompt_id, "pending")
        waiting = [j for j in jobs if j.server is None]
        for j in waiting + placed:  # the waiting first: else freed slots would take them
            await j.cancel()
        for j in placed:
            (owner,) = where(sims, j.prompt_id)
            assert sims[owner].prompts[j.prompt_id].status == "deleted"
        assert all(where(sims, j.prompt_id) == [] for j in waiting)  # never posted
        assert all(j.done() for j in jobs)
        with pytest.raises(asyncio.CancelledError):
            await jobs[0].result()
        # A running one is interrupted on its server.
        for sim in sims:
            sim.release()
            sim.stall_next()
        stuck = await pool.submit(job())
        await pool.wait_until(lambda: stuck.state == "running")
        await stuck.cancel()
        (owner,) = where(sims, stuck.prompt_id)
        await sims[owner].wait_for_status(stuck.prompt_id, "interrupted")
        assert pool.in_flight == 0


# ---------------------------------------------------------------------------- generator


async def test_a_cancel_that_loses_the_race_reports_the_result(farm: SimulatorFarm) -> None:
    # Found by the pool's model test: the pool reported a job cancelled at once, and the
    # prompt then ran to success. Now it ends as the client's job does.
    (sim,) = await farm.start(cfg(step_time=0.05))
    async with ComfyUIPool(farm.urls, **FAST) as pool:
        running = await pool.submit(job(steps=4))
        await sim.wait_for_status(running.prompt_id, "running")
        sim.fail_next("/interrupt", n=50, status=503)  # the interrupt never lands
        await running.cancel()
        assert running.done()
        result = await running.result()  # it finished before the server let go of it
        assert result.prompt_id == running.prompt_id
        assert sim.prompts[running.prompt_id].status == "success"
        # A job still waiting client-side is cancelled at once, and never posted.
        sim.hold()
        first = await pool.submit(job())
        waiting = [await pool.submit(job()) for _ in range(3)]
        await pool.wait_until(lambda: pool.waiting >= 1)
        late = next(j for j in waiting if j.server is None)
        await late.cancel()
        with pytest.raises(asyncio.CancelledError):
            await late.result()
        assert late.prompt_id not in sim.prompts
        sim.release()
        await first.result()


async def test_a_waiter_that_gives_up_leaves_the_job_to_the_others(farm: SimulatorFarm) -> None:
    # The handle rule every job handle shares: a caller's timeout or cancellation ends its
    # own wait; the job is cancelled only when the last waiter leaves.
    (sim,) = await farm.start(cfg())
    async with ComfyUIPool(farm.urls, **FAST) as pool:
        sim.hold()
        shared = await pool.submit(job())
        patient = asyncio.create_task(shared.result())
        impatient = asyncio.create_task(shared.result())
        # Both tasks enter result() while this caller waits for its timeout.
        with pytest.raises(PromptTimeout, match="another caller still waits"):
            await shared.result(timeout=0.05)
        assert shared.waiters == 2
        impatient.cancel()
        with pytest.raises(asyncio.CancelledError):
            await impatient
        assert not shared.done()
        sim.release()
        result = await patient
        assert result.prompt_id == shared.prompt_id
        assert shared.state == "done"

        sim.hold()
        alone = await pool.submit(job())
        with pytest.raises(PromptTimeout, match="it was removed from the server"):
            await alone.result(timeout=0.05)
        assert alone.state == "cancelled"
        sim.release()
        assert sim.prompts[alone.prompt_id].status != "success"


async def test_a_client_given_to_the_pool_bounds_its_server(farm: SimulatorFarm) -> None:
    # The pool's slots are the one limit: a job never waits inside a client, where the pool
    # could not reorder or move it. A client given to the pool keeps its max_in_flight.
    (sim,) = await farm.start(cfg())
    sim.hold()
    async with (
        ComfyUIClient(sim.url, max_in_flight=1) as client,
        ComfyUIPool([client], over_queue=2) as pool,
    ):
        jobs = [await pool.submit(job()) for _ in range(3)]
        await pool.wait_until(lambda: pool.in_flight == 1 and pool.waiting == 2)
        urgent = await pool.submit(job(), priority=5)
        assert (pool.in_flight, pool.waiting, client.waiting) == (1, 3, 0)
        assert pool.server(sim.url).capacity == 3
        sim.release()
        results = await asyncio.gather(*(j.result(timeout=30) for j in [*jobs, urgent]))
        assert all(r.prompt_id for r in results)
        assert urgent.attempts == 1


async def test_dream_generator_on_a_pool_uploads_lazily(
    farm: SimulatorFarm, tmp_path: Path
) -> None:
    sims = await farm.start(cfg(), cfg())
    source = tmp_path / "in.png"
    source.write_bytes(png_bytes(3, size=64))
    async with ComfyUIPool(farm.urls, **FAST) as pool:
        gen = DreamGenerator(pool, output_dir=tmp_path / "out")
        requests = [Img2ImgRequest(source, "oil", 0.5, seed=i, steps=2) for i in range(8)]
        builder_ckpt = gen.builder.build_txt2img("x").workflow
        assert builder_ckpt  # the default builder's checkpoint is on both servers
        outcomes = await gen.generate_many(requests, concurrency=8)
    assert all(not hasattr(o, "error") for o in outcomes), outcomes
    used = [i for i, sim in enumerate(sims) if sim.prompts]
    for i in used:  # uploaded once to each server a job landed on
        assert len(sims[i].requests_to("/upload/image")) == 1
    for i in set(range(2)) - set(used):
        assert sims[i].requests_to("/upload/image") == []


async def test_img2img_input_renamed_by_a_server_is_patched(farm: SimulatorFarm) -> None:
    (sim,) = await farm.start(cfg())
    (sim.input_dir / "dup.png").write_bytes(png_bytes(9))  # same name, other bytes
    async with ComfyUIPool(farm.urls, **FAST) as pool:
        uploaded = await pool.upload_image(png_bytes(1), name="dup.png")
        assert sim.requests_to("/upload/image") == []  # lazily, at placement
        result = await pool.run(img2img(uploaded.reference))
    graph = sim.prompts[result.prompt_id].graph
    assert graph["8"]["inputs"]["image"] == "dup (1).png"


# ---------------------------------------------------------------------------- failure policies


async def test_running_job_on_a_dead_server_fails_with_on_lost_fail(farm: SimulatorFarm) -> None:
    sims = await farm.start(cfg(), cfg())
    async with ComfyUIPool(farm.urls, on_lost="fail", **FAST) as pool:
        sims[0].stall_next()
        sims[1].hold()
        stuck = await pool.submit(job())
        await pool.wait_until(lambda: stuck.state == "running")
        victim = sims[farm.urls.index(stuck.server or "")]
        await victim.stop()
        with pytest.raises(ConnectionLostError):
            await stuck.result(timeout=10)
        assert pool.failed == 1


async def test_persistent_5xx_marks_a_server_down_and_jobs_go_elsewhere(
    farm: SimulatorFarm,
) -> None:
    sims = await farm.start(cfg(), cfg())
    sims[1].fail_next("/prompt", n=1000, status=500, method="POST")
    async with ComfyUIPool(farm.urls, **FAST) as pool:
        results = await asyncio.gather(*(pool.run(job()) for _ in range(20)))
        assert all(where(sims, r.prompt_id) == [0] for r in results)
        assert all(r.resubmitted is False for r in results)
    # Down after 3 failures; each rejoin (it answers /object_info) fails at once again, and
    # the delay before the next rejoin doubles: few posts, not one per job.
    assert len(sims[1].requests_to("/prompt", "POST")) <= 10


async def test_closing_the_pool_fails_waiting_and_placed_jobs(farm: SimulatorFarm) -> None:
    sims = await farm.start(cfg(), cfg())
    pool = ComfyUIPool(farm.urls, **FAST)
    await pool.open()
    for sim in sims:
        sim.hold()
    jobs = [await pool.submit(job()) for _ in range(8)]
    await pool.wait_until(lambda: pool.in_flight == 4)
    await pool.aclose()
    await pool.aclose()  # idempotent
    for j in jobs:
        with pytest.raises(ClientClosedError):
            await j.result()
    with pytest.raises(ClientClosedError, match="closed"):
        await pool.submit(job())
    assert "closed" in repr(pool)


async def test_closing_the_pool_detached_leaves_placed_prompts_queued(
    farm: SimulatorFarm,
) -> None:
    sims = await farm.start(cfg(), cfg())
    pool = ComfyUIPool(farm.urls, **FAST)
    await pool.open()
    for sim in sims:
        sim.hold()
    jobs = [await pool.submit(job()) for _ in range(4)]
    await pool.wait_until(lambda: sum(len(s.accepted_prompt_ids) for s in sims) == 4)
    await pool.aclose(detach=True)
    for j in jobs:
        with pytest.raises(ClientClosedError):
            await j.result()
    statuses = {pid: p.status for sim in sims for pid, p in sim.prompts.items()}
    assert statuses == {j.prompt_id: "pending" for j in jobs}


async def test_closing_the_pool_ends_a_drain_that_waits(farm: SimulatorFarm) -> None:
    # Found by the pool's model test: remove_server() waited forever once the pool closed.
    sims = await farm.start(cfg(), cfg())
    pool = ComfyUIPool(farm.urls, **FAST)
    await pool.open()
    sims[1].hold()
    jobs = [await pool.submit(job()) for _ in range(4)]
    await pool.wait_until(lambda: pool.server(sims[1].url).in_flight > 0)
    removal = asyncio.create_task(pool.remove_server(sims[1].url))
    await pool.wait_until(lambda: pool.server(sims[1].url).state == "draining")
    await pool.aclose()
    with pytest.raises(ClientClosedError, match=r"closed while .* drained"):
        await asyncio.wait_for(removal, 10)
    for j in jobs:
        assert j.done()


async def test_a_batch_journal_over_a_pool_records_each_items_server(
    farm: SimulatorFarm, tmp_path: Path
) -> None:
    """Issue 23: a journal over a pool is kept (it was refused with ConfigError)."""
    from dreamgen_async.journal import BatchJournal, read_journal_meta

    await farm.start(cfg(), cfg())
    async with ComfyUIPool(farm.urls, **FAST) as pool:
        gen = DreamGenerator(pool, output_dir=tmp_path / "out")
        requests = [Img2ImgRequest(png_bytes(1), "ink", seed=i) for i in range(6)]
        outcomes = await gen.generate_many(requests, journal=tmp_path / "batch.journal")
    assert all(not isinstance(o, JobFailure) for o in outcomes)
    accepted = [p for sim in farm.sims for p in sim.accepted_prompt_ids]
    assert len(accepted) == len(set(accepted)) == 6
    async with await BatchJournal.open(tmp_path / "batch.journal") as journal:
        items = await journal.items()
    assert {item.state for item in items} == {"done"}
    for item, outcome in zip(items, outcomes, strict=True):
        assert isinstance(outcome, GenerationResult)
        assert item.server is not None
        assert item.server == outcome.server
        assert item.prompt_id in farm.sims[farm.urls.index(item.server)].accepted_prompt_ids
        assert outcome.index == item.index
    assert read_journal_meta(tmp_path / "batch.journal")["servers"] == farm.urls
