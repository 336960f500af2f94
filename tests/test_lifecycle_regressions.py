"""One regression test per finding of the job-lifecycle issue (#10): the edges where two
things happen at once. Each ran against the simulator over loopback and failed before the
lifecycle became one state machine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from _graphs import txt2img
from aiohttp import web

from dreamgen_async import (
    ClientClosedError,
    ConnectionLostError,
    DreamGenerator,
    PromptLost,
    PromptTimeout,
    ProtocolError,
    Txt2ImgRequest,
)
from dreamgen_async.comfyui_api import ComfyUIClient, RetryPolicy
from dreamgen_async.lifecycle import JobState
from dreamgen_async.multiplexer import ReconnectPolicy
from dreamgen_async.protocol import Event
from dreamgen_async.testing import ComfyUISimulator

FAST_RETRY = RetryPolicy(attempts=4, initial_delay=0.01, max_delay=0.05, max_retry_after=0.2)
FAST_RECONNECT = ReconnectPolicy(max_time=10.0, initial_delay=0.01, max_delay=0.1)
GONE = ("deleted", "interrupted", "lost")


def client_for(sim: ComfyUISimulator, **kwargs: object) -> ComfyUIClient:
    options: dict[str, object] = {"retry": FAST_RETRY, "reconnect": FAST_RECONNECT}
    options.update(kwargs)
    return ComfyUIClient(sim.url, **options)  # type: ignore[arg-type]


async def quiesce(sim: ComfyUISimulator) -> None:
    """Let the server run whatever it still holds, so its final statuses can be read."""
    sim.release()
    await sim.wait_until(lambda: sim.queue_remaining == 0)


# 1 --------------------------------------------------------------------------------------


async def test_a_failed_history_read_during_resync_is_retried_not_stranded(
    comfyui_sim: ComfyUISimulator,
) -> None:
    sim = comfyui_sim
    async with client_for(sim) as client:
        sim.hold()
        jobs = [await client.submit(txt2img(seed=i)) for i in range(3)]
        sim.fail_next("/ws", n=10_000, status=503)
        await sim.drop_websockets()
        sim.release()
        for job in jobs:
            await sim.wait_for_status(job.prompt_id, "success")
        faults = sim.requests_to("/ws")
        sim.clear_faults()
        sim.fail_next("/history/*", n=1, status=500)
        results = await asyncio.wait_for(asyncio.gather(*(j.result() for j in jobs)), 10)
        assert [r.prompt_id for r in results] == [j.prompt_id for j in jobs]
        assert faults  # the socket really was refused while the jobs finished
        assert sorted(sim.accepted_prompt_ids) == sorted(j.prompt_id for j in jobs)


# 2 --------------------------------------------------------------------------------------


async def test_concurrent_submits_after_an_exhausted_budget_start_one_reader(
    comfyui_sim: ComfyUISimulator,
) -> None:
    sim = comfyui_sim
    policy = ReconnectPolicy(max_time=0.3, initial_delay=0.01, max_delay=0.05)
    async with client_for(sim, reconnect=policy) as client:
        sim.hold()
        first = await client.submit(txt2img(seed=1))
        sim.fail_next("/ws", n=10_000, status=503)
        await sim.drop_websockets()
        with pytest.raises(ConnectionLostError):
            await first.result(timeout=10)
        sim.clear_faults()
        sim.release()
        connections_before = sim.ws_connections_total
        jobs = await asyncio.gather(*(client.submit(txt2img(seed=10 + i)) for i in range(6)))
        results = await asyncio.wait_for(asyncio.gather(*(j.result() for j in jobs)), 10)
        assert len(results) == 6
        assert sim.ws_connections_total - connections_before == 1
        assert sim.open_websockets == 1
        readers = [t for t in asyncio.all_tasks() if t.get_name() == "dreamgen-ws-reader"]
        assert len(readers) == 1
    readers = [t for t in asyncio.all_tasks() if t.get_name() == "dreamgen-ws-reader"]
    assert readers == []


# 3 --------------------------------------------------------------------------------------


async def test_cancelling_twice_during_the_post_releases_every_slot_once(
    comfyui_sim: ComfyUISimulator,
) -> None:
    sim = comfyui_sim
    sim.route_latency["/prompt"] = 0.3
    async with client_for(sim, max_in_flight=8) as client:
        sim.hold()
        callers = [asyncio.create_task(client.submit(txt2img(seed=i))) for i in range(8)]
        await asyncio.sleep(0)  # one step each: every job is posting, its slot taken
        assert client.in_flight == 8
        assert client.free_slots == 0
        for task in callers:
            task.cancel()
        await asyncio.sleep(0)
        for task in callers:
            task.cancel()
        outcomes = await asyncio.gather(*callers, return_exceptions=True)
        assert all(isinstance(o, asyncio.CancelledError) for o in outcomes)
        await asyncio.wait_for(client.wait_idle(), 10)
        assert client.free_slots == 8
        sim.route_latency.clear()
        sim.release()
        result = await asyncio.wait_for(client.run(txt2img(seed=99)), 10)
        assert result.prompt_id in sim.history
        assert all(sim.prompts[pid].status in GONE for pid in sim.accepted_prompt_ids[:8])


async def test_aclose_wakes_a_submit_waiting_for_a_slot(comfyui_sim: ComfyUISimulator) -> None:
    sim = comfyui_sim
    sim.hold()
    client = client_for(sim, max_in_flight=1)
    await client.open()
    await client.submit(txt2img(seed=1))
    waiting = asyncio.create_task(client.submit(txt2img(seed=2)))
    await asyncio.sleep(0)  # one step: it is queued client-side
    assert client.waiting == 1
    await client.aclose()
    with pytest.raises(ClientClosedError):
        await waiting


# 4 --------------------------------------------------------------------------------------


async def test_identical_requests_have_their_own_timeout_cancel_and_events(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    sim = comfyui_sim
    request = Txt2ImgRequest("a twin", seed=7, width=64, height=64)
    events: list[Event] = []
    async with (
        client_for(sim) as client,
        DreamGenerator(client, output_dir=tmp_path) as gen,
    ):
        sim.hold()
        impatient = asyncio.create_task(gen.generate(request, timeout=0.2))
        patient = asyncio.create_task(gen.generate(request, on_progress=events.append))
        cancelled = asyncio.create_task(gen.generate(request))
        with pytest.raises(PromptTimeout):
            await impatient
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        sim.release()
        result = await asyncio.wait_for(patient, 10)
        assert result.paths
        assert result.paths[0].exists()
        assert events, "the remaining sharer receives progress events"
        assert len(sim.accepted_prompt_ids) == 1

        # A batch containing twins: one twin cancelled does not cancel the batch.
        batch = [Txt2ImgRequest("batch twin", seed=8, width=64, height=64)] * 3
        outcomes = await asyncio.wait_for(gen.generate_many(batch), 10)
        assert all(not isinstance(o, BaseException) for o in outcomes)


# 5 --------------------------------------------------------------------------------------


async def test_a_job_waiting_for_a_slot_when_the_reader_dies_fails_and_the_next_works(
    comfyui_sim: ComfyUISimulator,
) -> None:
    sim = comfyui_sim
    policy = ReconnectPolicy(max_time=0.5, initial_delay=0.01, max_delay=0.05)
    async with client_for(sim, reconnect=policy, max_in_flight=1) as client:
        sim.hold()
        first = await client.submit(txt2img(seed=1))
        second = asyncio.create_task(client.submit(txt2img(seed=2)))
        await asyncio.sleep(0)  # one step: it is queued client-side
        assert client.waiting == 1
        sim.fail_next("/ws", n=10_000, status=503)
        await sim.drop_websockets()
        with pytest.raises(ConnectionLostError):
            await asyncio.wait_for(first.result(), 10)
        with pytest.raises(ConnectionLostError):
            await asyncio.wait_for(second, 10)
        sim.clear_faults()
        sim.release()
        result = await asyncio.wait_for(client.run(txt2img(seed=3)), 10)
        assert result.prompt_id in sim.history
        assert client.free_slots == 1


# 6 --------------------------------------------------------------------------------------


async def test_a_cancel_during_a_resync_is_not_undone_by_the_resync(
    comfyui_sim: ComfyUISimulator,
) -> None:
    sim = comfyui_sim
    async with client_for(sim) as client:
        sim.hold()
        job = await client.submit(txt2img(seed=1))
        sim.fail_next("/ws", n=3, status=503)
        await sim.restart()  # the server loses the prompt; the resync would resubmit it
        await job.cancel()
        # Found nowhere after a gap the client cannot see through (the socket stays down: a
        # prompt could have finished meanwhile and lost its history in a restart), so it is
        # failed with PromptLost, never reported cancelled.
        with pytest.raises(PromptLost, match="may have run"):
            await job.result()
        await sim.wait_until(lambda: client.ws_connections >= 2)
        await quiesce(sim)
        assert sim.accepted_prompt_ids == [job.prompt_id]
        assert sim.prompts[job.prompt_id].status in GONE


async def test_a_restart_and_a_second_drop_resubmit_once_and_succeed(
    comfyui_sim: ComfyUISimulator,
) -> None:
    sim = comfyui_sim
    async with client_for(sim) as client:
        sim.hold()
        job = await client.submit(txt2img(seed=1))
        await sim.restart()
        await sim.wait_until(lambda: sim.accepted_prompt_ids.count(job.prompt_id) == 2)
        await sim.drop_websockets()
        sim.release()
        result = await asyncio.wait_for(job.result(), 10)
        assert result.resubmitted
        assert sim.accepted_prompt_ids.count(job.prompt_id) == 2
        assert sim.prompts[job.prompt_id].status == "success"


async def test_a_cancel_before_a_slow_post_lands_removes_the_prompt_after_it(
    comfyui_sim: ComfyUISimulator,
) -> None:
    sim = comfyui_sim
    sim.route_latency["/prompt"] = 0.3
    async with client_for(sim) as client:
        sim.hold()
        caller = asyncio.create_task(client.submit(txt2img(seed=1)))
        await asyncio.sleep(0)  # one step: it is posting
        assert client.in_flight == 1
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        await asyncio.wait_for(client.wait_idle(), 10)
        (prompt_id,) = sim.accepted_prompt_ids
        order = [r.route for r in sim.requests if r.route in ("/prompt", "/queue", "/interrupt")]
        assert order.index("/prompt") < order.index("/queue")  # removed after it landed
        await quiesce(sim)
        assert sim.prompts[prompt_id].status in GONE


# 7 --------------------------------------------------------------------------------------


async def test_a_socket_that_dies_at_once_is_reconnected_with_backoff(
    comfyui_sim: ComfyUISimulator,
) -> None:
    sim = comfyui_sim
    async with client_for(sim) as client:
        sim.hold()
        job = await client.submit(txt2img(seed=1))
        sim.fail_next("/queue", n=10_000, status=500, method="GET")  # every resync fails
        before = sim.ws_connections_total
        await sim.drop_websockets()
        await asyncio.sleep(0.5)  # a measuring window, not a wait for an event
        reconnects = sim.ws_connections_total - before
        assert 1 <= reconnects <= 15, reconnects  # backoff 0.01 s doubling to 0.1 s
        sim.clear_faults()
        sim.release()
        result = await asyncio.wait_for(job.result(), 10)
        assert result.prompt_id == job.prompt_id


# 8 --------------------------------------------------------------------------------------


class FreezableProxy:
    """A TCP proxy in front of the simulator that can stop forwarding: a hung (SIGSTOPped)
    server, whose sockets stay open and whose kernel still accepts connections."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.frozen = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if self.frozen.is_set():
                await asyncio.Event().wait()  # accepted, never answered
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            try:
                await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
            finally:
                up_writer.close()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(65536):
            if self.frozen.is_set():
                await asyncio.Event().wait()  # hung: bytes are never passed on
            sink.write(data)
            await sink.drain()


@pytest.fixture
async def proxy(comfyui_sim: ComfyUISimulator) -> AsyncIterator[FreezableProxy]:
    proxy = FreezableProxy(comfyui_sim.port)
    proxy.port = await proxy.start()
    yield proxy
    await proxy.stop()


async def test_the_reconnect_budget_bounds_a_hung_server(
    comfyui_sim: ComfyUISimulator, proxy: FreezableProxy
) -> None:
    sim = comfyui_sim
    port = proxy.port
    policy = ReconnectPolicy(max_time=1.0, initial_delay=0.01, max_delay=0.1)
    async with ComfyUIClient(
        f"http://127.0.0.1:{port}", retry=FAST_RETRY, reconnect=policy, heartbeat=0.5, timeout=30
    ) as client:
        sim.hold()
        job = await client.submit(txt2img(seed=1))
        loop = asyncio.get_running_loop()
        proxy.frozen.set()
        started = loop.time()
        with pytest.raises(ConnectionLostError):
            await asyncio.wait_for(job.result(), 20)
        elapsed = loop.time() - started
        # max_time + one heartbeat (0.5 s, and its pong wait), with slack for a busy machine
        assert elapsed < 1.0 + 1.0 + 1.5, elapsed


# 9 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("detach", [False, True])
async def test_aclose_takes_back_the_prompts_it_fails_unless_detached(
    comfyui_sim: ComfyUISimulator, detach: bool
) -> None:
    sim = comfyui_sim
    sim.hold()
    client = client_for(sim)
    await client.open()
    jobs = [await client.submit(txt2img(seed=i)) for i in range(6)]
    await client.aclose(detach=detach)
    for job in jobs:
        assert job.done()
        with pytest.raises(ClientClosedError):
            await job.result()
    await quiesce(sim)
    statuses = {sim.prompts[job.prompt_id].status for job in jobs}
    assert statuses == ({"success"} if detach else {"deleted"})


async def test_an_aclose_cancelled_mid_way_still_closes_and_the_next_one_returns(
    comfyui_sim: ComfyUISimulator,
) -> None:
    # Found by the pool's model test: a pool closing while a drained server's client was
    # being retired cancelled that client's aclose() in its clean-up, and every later
    # aclose() waited forever for a close nobody was finishing.
    sim = comfyui_sim
    sim.hold()
    client = client_for(sim)
    await client.open()
    jobs = [await client.submit(txt2img(seed=i)) for i in range(3)]
    closing = asyncio.create_task(client.aclose())
    for _ in range(3):  # cancelled in the take-back, then in the clean-up
        await asyncio.sleep(0)
        closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    await asyncio.wait_for(client.aclose(), 10)  # the close went on, and this one waits for it
    assert all(job.done() for job in jobs)
    await sim.wait_until(lambda: sim.open_websockets == 0)
    await quiesce(sim)
    assert {sim.prompts[job.prompt_id].status for job in jobs} == {"deleted"}


# smaller ---------------------------------------------------------------------------------


async def test_aclose_during_open_raises_client_closed(comfyui_sim: ComfyUISimulator) -> None:
    comfyui_sim.route_latency["/ws"] = 0.2
    client = client_for(comfyui_sim)
    opening = asyncio.create_task(client.open())
    await asyncio.sleep(0.05)  # let open() reach the network
    await client.aclose()
    with pytest.raises(ClientClosedError):
        await opening


def test_a_client_used_in_a_second_event_loop_says_so(tmp_path: Path) -> None:
    async def first() -> tuple[ComfyUISimulator, ComfyUIClient]:
        sim = ComfyUISimulator(root=tmp_path)
        await sim.start()
        client = ComfyUIClient(sim.url)
        await client.open()
        return sim, client

    loop = asyncio.new_event_loop()
    sim, client = loop.run_until_complete(first())

    async def second() -> None:
        with pytest.raises(ClientClosedError, match="another event loop"):
            await client.submit(txt2img())

    other = asyncio.new_event_loop()
    other.run_until_complete(second())
    other.close()
    loop.run_until_complete(client.aclose())
    loop.run_until_complete(sim.stop())
    loop.close()


async def test_a_mismatched_echo_takes_the_queued_prompt_back() -> None:
    """A server that queues under another id: the client fails the job and deletes that id."""
    deleted: list[str] = []
    deleted_ours = asyncio.Event()

    async def ws(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        await socket.send_json({"type": "status", "data": {"status": {"exec_info": {}}}})
        async for _ in socket:
            pass
        return socket

    async def post_prompt(request: web.Request) -> web.Response:
        return web.json_response({"prompt_id": "not-ours", "number": 1, "node_errors": {}})

    async def post_queue(request: web.Request) -> web.Response:
        deleted.extend((await request.json()).get("delete", []))
        if "not-ours" in deleted:
            deleted_ours.set()
        return web.Response()

    async def get_queue(request: web.Request) -> web.Response:
        return web.json_response({"queue_running": [], "queue_pending": []})

    async def history(request: web.Request) -> web.Response:
        return web.json_response({})

    async def interrupt(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_get("/ws", ws)
    app.router.add_post("/prompt", post_prompt)
    app.router.add_post("/queue", post_queue)
    app.router.add_get("/queue", get_queue)
    app.router.add_get("/history/{id}", history)
    app.router.add_post("/interrupt", interrupt)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with ComfyUIClient(f"http://127.0.0.1:{port}", retry=FAST_RETRY) as client:
            with pytest.raises(ProtocolError, match="not-ours"):
                await client.submit(txt2img())
            await asyncio.wait_for(deleted_ours.wait(), 5)
            assert client.in_flight == 0
            assert client.free_slots == client.max_in_flight
    finally:
        await runner.cleanup()


def test_job_state_compares_to_its_name() -> None:
    state: object = JobState.QUEUED
    assert state == "queued"


# found by the model test ----------------------------------------------------------------


async def test_a_socket_the_server_made_deaf_is_detected_and_reopened(
    comfyui_sim: ComfyUISimulator,
) -> None:
    """ComfyUI's clientId-reuse bug: a second socket under our clientId replaces ours, and
    when it closes the server unregisters the id, leaving our socket open but deaf (the same
    happens when the server cleans up a dropped socket after we reconnected)."""
    sim = comfyui_sim
    policy = ReconnectPolicy(max_time=10.0, initial_delay=0.01, max_delay=0.1, watchdog=0.1)
    async with client_for(sim, reconnect=policy) as client:
        sim.hold()
        job = await client.submit(txt2img(seed=1))
        async with aiohttp.ClientSession() as session:
            ws_url = sim.url.replace("http", "ws", 1) + "/ws"
            intruder = await session.ws_connect(ws_url, params={"clientId": client.client_id})
            await intruder.close()
        await sim.wait_until(lambda: sim.open_websockets == 1)  # ours: open, and deaf
        sim.release()
        result = await asyncio.wait_for(job.result(), 10)  # settled from /history
        assert result.prompt_id == job.prompt_id
        await sim.wait_until(lambda: sim.ws_connections_total == 3)  # ours, theirs, reopened
        events: list[Event] = []
        await asyncio.wait_for(client.run(txt2img(seed=2), on_progress=events.append), 10)
        assert events  # the reopened socket hears the server again
        assert client.ws_connections == 2


async def test_a_prompt_seen_queued_without_a_socket_is_still_checked_after_a_restart(
    comfyui_sim: ComfyUISimulator,
) -> None:
    """Posted and found queued while the socket is down, then lost in a restart that no open
    socket saw: the resync after the reconnect must still check it (it had a gap)."""
    sim = comfyui_sim
    async with client_for(sim) as client:
        sim.hold()
        sim.fail_next("/ws", n=10_000, status=503)
        await sim.drop_websockets()
        job = await client.submit(txt2img(seed=1))
        # Its check against /queue (it was posted while no socket listened) ran:
        await sim.wait_until(lambda: len(sim.requests_to("/queue", "GET")) >= 1)
        await sim.restart()  # lost, and no open socket of ours to notice it
        sim.clear_faults()
        sim.release()
        result = await asyncio.wait_for(job.result(), 10)
        assert result.resubmitted
        assert sim.accepted_prompt_ids.count(job.prompt_id) == 2


async def test_a_removal_that_spans_a_restart_still_settles(
    comfyui_sim: ComfyUISimulator,
) -> None:
    """The removal saw the prompt running, then its interrupt was retried across a restart
    (which lost the prompt, and whose resync ran while the job was still being removed): the
    job must not wait forever for an interrupt the new server will never report."""
    sim = comfyui_sim
    async with client_for(sim) as client:
        sim.stall_next()
        job = await client.submit(txt2img(seed=1))
        await sim.wait_for_status(job.prompt_id, "running")
        sim.fail_next("/interrupt", n=4, status=503)
        cancelling = asyncio.create_task(job.cancel())
        await sim.wait_until(lambda: len(sim.requests_to("/interrupt")) >= 1)
        await sim.restart()
        await asyncio.wait_for(cancelling, 10)
        await asyncio.wait_for(client.wait_idle(), 10)
        # Gone, with the restart's gap since it was seen running: it may have finished
        # before the interrupt and lost its history, so it is not reported cancelled.
        assert job.state == "failed"
        with pytest.raises(PromptLost, match="may have run"):
            await job.result()


# Issue #24 follow-up ----------------------------------------------------------------------


async def test_a_prompt_that_ran_unheard_and_lost_its_history_is_not_reported_cancelled(
    comfyui_sim: ComfyUISimulator,
) -> None:
    """Found by the model test ("reported cancelled but ran"): the prompt finished while our
    socket was down, a restart wiped ``/history``, then the cancel's removal found it in
    neither ``/queue`` nor ``/history``. It ran: the job must not be reported cancelled. The
    client cannot know it ran, so it fails with PromptLost, which says it may have."""
    sim = comfyui_sim
    async with client_for(sim) as client:
        sim.hold()
        job = await client.submit(txt2img(seed=1))  # seen queued, socket open: no gap yet
        sim.fail_next("/ws", n=10_000, status=503)  # the socket stays down from here
        await sim.drop_websockets()
        sim.release()
        await sim.wait_for_status(job.prompt_id, "success")  # ran, and nobody heard it
        await sim.restart()  # ... and its history is gone
        await job.cancel()
        assert job.state == "failed"
        with pytest.raises(PromptLost, match="may have run"):
            await job.result()
        sim.clear_faults()
        assert sim.accepted_prompt_ids == [job.prompt_id]  # taken as it is: not resubmitted
        assert sim.prompts[job.prompt_id].status == "success"


async def test_a_prompt_deleted_with_nothing_missed_is_reported_cancelled(
    comfyui_sim: ComfyUISimulator,
) -> None:
    """The other side of the rule: seen queued while the socket listened, no drop since, then
    deleted. Found nowhere, the client knows our delete took it: cancelled, not PromptLost."""
    sim = comfyui_sim
    async with client_for(sim) as client:
        sim.hold()
        job = await client.submit(txt2img(seed=1))
        await job.cancel()
        assert job.state == "cancelled"
        with pytest.raises(asyncio.CancelledError):
            await job.result()
        assert sim.requests_to(f"/history/{job.prompt_id}", "GET")  # it looked: nowhere
        await quiesce(sim)
        assert sim.prompts[job.prompt_id].status == "deleted"


async def test_a_removal_the_server_never_confirms_is_not_reported_cancelled(
    comfyui_sim: ComfyUISimulator,
) -> None:
    """The delete fails for the whole removal budget: the prompt may still be queued, and
    run. It was reported cancelled; it now fails with ConnectionLostError "may still run"."""
    sim = comfyui_sim
    async with client_for(sim) as client:
        client._owner.removal_budget = 0.3
        sim.hold()
        job = await client.submit(txt2img(seed=1))
        sim.fail_next("/queue", n=10_000, status=500, method="POST")  # every delete fails
        await job.cancel()
        await job.wait_for(lambda state: state.terminal)
        assert job.state == "failed"
        with pytest.raises(ConnectionLostError, match="may still run"):
            await job.result()
        sim.clear_faults()
        await quiesce(sim)
        assert sim.prompts[job.prompt_id].status == "success"  # it did run
