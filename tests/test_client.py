"""ComfyUIClient against the simulator over loopback: what the client returned, and what
the server saw."""

from __future__ import annotations

import asyncio
import json
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from _graphs import img2img, png_bytes, txt2img
from aiohttp import web

from dreamgen_async import (
    ClientClosedError,
    ConnectError,
    ConnectionLostError,
    ExecutionError,
    ExecutionInterrupted,
    Job,
    NotComfyUIError,
    PartialPromptWarning,
    PartialPromptWarningError,
    PromptLost,
    PromptRejected,
    PromptTimeout,
    ServerError,
)
from dreamgen_async.comfyui_api import ComfyUIClient, RetryPolicy
from dreamgen_async.multiplexer import ReconnectPolicy
from dreamgen_async.protocol import Event, Executing, PreviewImage, Progress
from dreamgen_async.testing import ComfyUISimulator

FAST_RETRY = RetryPolicy(attempts=8, initial_delay=0.01, max_delay=0.05, max_retry_after=0.2)
FAST_RECONNECT = ReconnectPolicy(max_time=10.0, initial_delay=0.01, max_delay=0.1)


@pytest.fixture
async def client(comfyui_sim: ComfyUISimulator) -> AsyncIterator[ComfyUIClient]:
    async with ComfyUIClient(
        comfyui_sim.url, retry=FAST_RETRY, reconnect=FAST_RECONNECT, max_in_flight=64
    ) as c:
        yield c


async def upload_inputs(client: ComfyUIClient, n: int) -> list[str]:
    names = []
    for i in range(n):
        uploaded = await client.upload_image(png_bytes(i), name=f"in_{i}.png")
        names.append(uploaded.reference)
    return names


async def assert_outputs_are_own(
    client: ComfyUIClient, sim: ComfyUISimulator, results: list[object]
) -> None:
    for result in results:
        assert not isinstance(result, BaseException), result
        images = await client.get_output_images(result)  # type: ignore[arg-type]
        expected = sim.prompts[result.prompt_id].output_bytes  # type: ignore[attr-defined]
        assert [img.data for img in images] == expected


# ---------------------------------------------------------------------------- basics


async def test_txt2img_round_trip(client: ComfyUIClient, comfyui_sim: ComfyUISimulator) -> None:
    prompt_id = await client.queue_prompt(txt2img())
    result = await client.wait_for_completion(prompt_id, timeout=10)
    assert result.prompt_id == prompt_id
    (image,) = await client.get_output_images(prompt_id)
    assert image.data.startswith(b"\x89PNG")
    assert image.data == comfyui_sim.prompts[prompt_id].output_bytes[0]
    assert comfyui_sim.prompts[prompt_id].client_id == client.client_id
    assert result.started_at is not None
    assert result.queued_at is not None


async def test_two_hundred_concurrent_jobs_share_one_socket(
    client: ComfyUIClient, comfyui_sim: ComfyUISimulator
) -> None:
    names = await upload_inputs(client, 20)
    workflows = [img2img(names[i % 20], seed=i, prompt=f"job {i}") for i in range(200)]
    results = await asyncio.gather(*(client.run(wf, timeout=60) for wf in workflows))
    assert comfyui_sim.ws_connections_total == 1
    assert len(comfyui_sim.accepted_prompt_ids) == 200
    assert len(set(comfyui_sim.accepted_prompt_ids)) == 200
    await assert_outputs_are_own(client, comfyui_sim, list(results))
    assert len({r.prompt_id for r in results}) == 200


async def test_cached_prompt_that_finishes_before_the_post_returns(
    client: ComfyUIClient, comfyui_sim: ComfyUISimulator
) -> None:
    await client.run(txt2img(seed=7), timeout=10)
    comfyui_sim.latency = 0.2  # the answer to POST /prompt now comes after the events
    result = await client.run(txt2img(seed=7), timeout=10)
    assert set(result.cached_nodes) == set(txt2img())
    assert result.images
    assert comfyui_sim.prompts[result.prompt_id].status == "success"


async def test_progress_callback_and_event_iterator(
    client: ComfyUIClient, comfyui_sim: ComfyUISimulator
) -> None:
    seen: list[Event] = []

    def boom(event: Event) -> None:
        seen.append(event)
        raise RuntimeError("a broken callback must not kill the reader")

    job = await client.submit(txt2img(steps=3, seed=3), on_progress=boom)
    streamed = [event async for event in job.events()]
    result = await job.result(timeout=10)
    steps = [e for e in streamed if isinstance(e, Progress)]
    assert [e.value for e in steps] == [1, 2, 3]
    assert any(isinstance(e, Executing) and e.node == "5" for e in streamed)
    assert [e for e in seen if isinstance(e, Progress)] == steps
    assert result.images
    # The reader survived the callback: another job still completes.
    await client.run(txt2img(seed=4), timeout=10)


async def test_progress_nobody_listened_to_reaches_a_later_subscriber(
    client: ComfyUIClient, comfyui_sim: ComfyUISimulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A job without a listener keeps its progress messages unparsed; a subscriber that
    comes later still gets them (parsed, a malformed one left out with a warning), and a
    callback given with ``listen()`` gets the events from then on."""
    comfyui_sim.hold()  # the jobs stay queued while the messages arrive
    heard: dict[str, list[Event]] = {"job": [], "other": []}
    handled = {"job": asyncio.Event(), "other": asyncio.Event()}

    def listener(name: str) -> Callable[[Event], None]:
        def hear(event: Event) -> None:
            heard[name].append(event)
            if isinstance(event, Progress) and event.value == 2:
                handled[name].set()

        return hear

    job = await client.submit(txt2img(seed=21))
    other = await client.submit(txt2img(seed=22), on_progress=listener("other"))

    async def progress(target: Job, value: object) -> None:
        data = {"prompt_id": target.prompt_id, "node": "5", "value": value, "max": 9}
        await comfyui_sim.send_raw(json.dumps({"type": "progress", "data": data}))

    await progress(job, 1)  # nobody listens: kept as it came
    await progress(job, "one")  # malformed, also kept
    await progress(other, 2)
    await handled["other"].wait()  # the socket is read in order: the job's two were handled
    job.listen(listener("job"))
    await progress(job, 2)
    await handled["job"].wait()
    stream = job.events()
    early = [await anext(stream), await anext(stream)]
    assert [(type(e), getattr(e, "value", None)) for e in early] == [(Progress, 1), (Progress, 2)]
    assert heard["job"] == [early[1]]  # from listen() on
    assert "ignoring a malformed frame: progress: field 'value'" in caplog.text
    comfyui_sim.release()
    result = await job.result(timeout=10)
    rest = [event async for event in stream]
    assert any(isinstance(e, Executing) and e.node == "5" for e in rest)
    job.listen(listener("job"))  # settled: ignored
    assert result.images
    assert (await other.result(timeout=10)).images


# ---------------------------------------------------------------------------- errors


async def test_validation_errors_name_node_and_input(client: ComfyUIClient) -> None:
    bad = txt2img()
    bad["1"]["inputs"]["ckpt_name"] = "nope.safetensors"
    del bad["5"]["inputs"]["model"]
    bad["5"]["inputs"]["steps"] = 0
    with pytest.raises(PromptRejected) as info:
        await client.run(bad)
    error = info.value
    assert error.error_type == "prompt_outputs_failed_validation"
    found = {(e.node_id, e.input_name, e.type) for e in error.node_errors}
    assert ("1", "ckpt_name", "value_not_in_list") in found
    assert ("5", "model", "required_input_missing") in found
    text = str(error)
    assert "ckpt_name" in text
    assert "flux1-schnell.safetensors" in text  # what the server has
    assert client.in_flight == 0


async def test_unknown_class_is_rejected(client: ComfyUIClient) -> None:
    bad = txt2img()
    bad["6"]["class_type"] = "DoesNotExist"
    with pytest.raises(PromptRejected) as info:
        await client.run(bad)
    assert info.value.error_type == "invalid_prompt"
    assert "DoesNotExist" in str(info.value)


async def test_execution_error_carries_node_and_exception(client: ComfyUIClient) -> None:
    uploaded = await client.upload_image(b"this is not a png", name="garbage.png")
    with pytest.raises(ExecutionError) as info:
        await client.run(img2img(uploaded.reference), timeout=10)
    error = info.value
    assert error.node_type == "LoadImage"
    assert error.node_id == "8"
    assert "UnidentifiedImageError" in error.exception_type
    assert error.prompt_id is not None


async def test_partial_node_errors_warn_or_raise(comfyui_sim: ComfyUISimulator) -> None:
    graph = txt2img()
    graph["30"] = {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0]}}
    graph["31"] = {
        "class_type": "SaveImage",
        "inputs": {"images": ["30", 0], "filename_prefix": "p"},
    }
    async with ComfyUIClient(comfyui_sim.url) as client:
        with pytest.warns(PartialPromptWarning, match="vae"):
            result = await client.run(graph, timeout=10)
        assert [e.node_id for e in result.node_errors] == ["30"]
    async with ComfyUIClient(comfyui_sim.url, on_partial="error") as client:
        with pytest.raises(PartialPromptWarningError) as info:
            await client.run(graph, timeout=10)
        assert comfyui_sim.prompts[info.value.prompt_id or ""].status in ("deleted", "success")


async def test_nothing_listens(unused_tcp_port: int) -> None:
    with pytest.raises(ConnectError):
        async with ComfyUIClient(f"http://127.0.0.1:{unused_tcp_port}", retry=FAST_RETRY):
            pass


async def test_a_server_that_is_not_comfyui(aiohttp_html_server: str) -> None:
    with pytest.raises(NotComfyUIError):
        async with ComfyUIClient(aiohttp_html_server, retry=FAST_RETRY):
            pass


@pytest.fixture
def unused_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
async def aiohttp_html_server() -> AsyncIterator[str]:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<html>router login</html>", content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


# ---------------------------------------------------------------------------- cancellation


async def test_cancelling_a_waiting_job_deletes_only_it_and_running_one_is_interrupted(
    client: ComfyUIClient, comfyui_sim: ComfyUISimulator
) -> None:
    comfyui_sim.hold()
    jobs = [await client.submit(txt2img(seed=100 + i)) for i in range(10)]
    awaiting = asyncio.Event()

    async def await_job_5() -> object:
        awaiting.set()
        return await jobs[5].result()

    waiting = asyncio.create_task(await_job_5())
    await awaiting.wait()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert comfyui_sim.prompts[jobs[5].prompt_id].status == "deleted"

    comfyui_sim.stall(jobs[0].prompt_id)
    comfyui_sim.release()
    await comfyui_sim.wait_for_status(jobs[0].prompt_id, "running")
    with pytest.raises(PromptTimeout) as info:
        await jobs[0].result(timeout=0.05)
    assert isinstance(info.value, TimeoutError)
    await comfyui_sim.wait_for_status(jobs[0].prompt_id, "interrupted")

    others = [j for i, j in enumerate(jobs) if i not in (0, 5)]
    results = await asyncio.gather(*(j.result(timeout=10) for j in others))
    assert all(r.images for r in results)
    interrupts = [r for r in comfyui_sim.requests if r.route == "/interrupt"]
    assert interrupts
    assert all(r.json == {"prompt_id": r.json["prompt_id"]} for r in interrupts)  # type: ignore[index]
    assert {r.json["prompt_id"] for r in interrupts} <= {  # type: ignore[index]
        jobs[0].prompt_id,
        jobs[5].prompt_id,
    }
    statuses = Counter(comfyui_sim.prompts[j.prompt_id].status for j in jobs)
    assert statuses == {"success": 8, "deleted": 1, "interrupted": 1}
    assert client.in_flight == 0


async def test_someone_elses_interrupt_fails_only_our_job(
    client: ComfyUIClient, comfyui_sim: ComfyUISimulator
) -> None:
    comfyui_sim.stall_next()
    job = await client.submit(txt2img(seed=9))
    await comfyui_sim.wait_for_status(job.prompt_id, "running")
    # Another user's bare, global interrupt.
    async with aiohttp.ClientSession() as other, other.post(comfyui_sim.url + "/interrupt") as r:
        assert r.status == 200
    with pytest.raises(ExecutionInterrupted):
        await job.result(timeout=10)


async def test_aclose_fails_waiters_and_leaves_nothing_behind(
    comfyui_sim: ComfyUISimulator,
) -> None:
    before = asyncio.all_tasks()
    client = ComfyUIClient(comfyui_sim.url)
    await client.open()
    comfyui_sim.hold()
    job = await client.submit(txt2img(seed=11))
    await client.aclose()
    await client.aclose()  # idempotent
    with pytest.raises(ClientClosedError):
        await job.result()
    with pytest.raises(ClientClosedError):
        await client.submit(txt2img())
    # Only the in-process server's connection handlers may still be winding down.
    leftover = {
        t
        for t in asyncio.all_tasks() - before
        if not getattr(t.get_coro(), "__qualname__", "").startswith("RequestHandler.")
    }
    assert leftover == set()
    await comfyui_sim.wait_until(lambda: comfyui_sim.open_websockets == 0)
    comfyui_sim.release()


# ---------------------------------------------------------------------------- faults


async def test_socket_drops_lose_nothing(
    client: ComfyUIClient, comfyui_sim: ComfyUISimulator
) -> None:
    names = await upload_inputs(client, 5)
    tasks = [
        asyncio.create_task(client.run(img2img(names[i % 5], seed=i), timeout=60))
        for i in range(50)
    ]

    def succeeded() -> int:
        return sum(p.status == "success" for p in comfyui_sim.prompts.values())

    for target in (5, 20, 35):
        await comfyui_sim.wait_until(lambda: succeeded() >= target)  # noqa: B023
        await comfyui_sim.drop_websockets()
    results = await asyncio.gather(*tasks)
    assert client.ws_connections >= 2
    assert client.ws_connections == comfyui_sim.ws_connections_total
    assert Counter(comfyui_sim.accepted_prompt_ids).most_common(1)[0][1] == 1
    await assert_outputs_are_own(client, comfyui_sim, list(results))


@pytest.mark.parametrize("policy", ["resubmit", "fail"])
async def test_server_restart_applies_the_lost_policy(
    comfyui_sim: ComfyUISimulator, policy: str
) -> None:
    async with ComfyUIClient(
        comfyui_sim.url,
        reconnect=FAST_RECONNECT,
        retry=FAST_RETRY,
        on_lost=policy,  # type: ignore[arg-type]
    ) as client:
        comfyui_sim.hold()
        tasks = [
            asyncio.create_task(client.run(txt2img(seed=200 + i), timeout=30)) for i in range(6)
        ]
        await comfyui_sim.wait_until(lambda: len(comfyui_sim.accepted_prompt_ids) == 6)
        await comfyui_sim.restart()
        comfyui_sim.release()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    if policy == "resubmit":
        assert all(not isinstance(o, BaseException) for o in outcomes), outcomes
        assert all(o.resubmitted for o in outcomes)  # type: ignore[union-attr]
        assert Counter(comfyui_sim.accepted_prompt_ids).most_common(1)[0][1] == 2
    else:
        assert all(isinstance(o, PromptLost) for o in outcomes), outcomes
        assert "restart" in str(outcomes[0])


@pytest.mark.parametrize("route", ["/prompt", "/upload/image", "/view"])
async def test_503_and_429_bursts_are_retried(
    client: ComfyUIClient, comfyui_sim: ComfyUISimulator, route: str
) -> None:
    comfyui_sim.fail_next(route, 2, status=503)
    comfyui_sim.fail_next(route, 1, status=429, retry_after=0.05)
    uploaded = await client.upload_image(png_bytes(3), name="retry.png")
    result = await client.run(img2img(uploaded.reference, seed=5), timeout=10)
    (image,) = await client.get_output_images(result)
    assert image.data == comfyui_sim.prompts[result.prompt_id].output_bytes[0]
    statuses = [r.status for r in comfyui_sim.requests if r.route == route]
    assert statuses[:4] == [503, 503, 429, 200]
    assert comfyui_sim.accepted_prompt_ids.count(result.prompt_id) == 1


async def test_prompt_post_is_not_resent_blindly_after_a_502(
    client: ComfyUIClient, comfyui_sim: ComfyUISimulator
) -> None:
    comfyui_sim.fail_next("/prompt", 1, status=502)
    result = await client.run(txt2img(seed=77), timeout=10)
    assert comfyui_sim.accepted_prompt_ids.count(result.prompt_id) == 1
    checked = [r.route for r in comfyui_sim.requests]
    first_502 = checked.index("/prompt")
    assert "/queue" in checked[first_502:]


# ---------------------------------------------------------------------------- flow control


async def test_back_pressure_keeps_the_rest_client_side(comfyui_sim: ComfyUISimulator) -> None:
    async with ComfyUIClient(comfyui_sim.url, max_in_flight=2) as client:
        comfyui_sim.hold()
        tasks = [asyncio.create_task(client.run(txt2img(seed=300 + i))) for i in range(6)]
        await comfyui_sim.wait_until(lambda: len(comfyui_sim.accepted_prompt_ids) == 2)
        assert client.in_flight == 2
        # Cancelling a job that waits client-side costs the server nothing.
        tasks[5].cancel()
        comfyui_sim.release()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(outcomes[5], asyncio.CancelledError)
    assert all(not isinstance(o, BaseException) for o in outcomes[:5])
    assert len(comfyui_sim.accepted_prompt_ids) == 5


async def test_previews_are_attributed_to_their_prompt(
    client: ComfyUIClient, comfyui_sim: ComfyUISimulator
) -> None:
    comfyui_sim.previews = True
    job = await client.submit(txt2img(seed=21, steps=2))
    previews = [e async for e in job.events() if isinstance(e, PreviewImage)]
    await job.result(timeout=10)
    assert previews
    assert all(p.prompt_id == job.prompt_id for p in previews)
    assert all(p.data for p in previews)


async def test_status_broadcasts_update_the_queue_length(
    client: ComfyUIClient, comfyui_sim: ComfyUISimulator
) -> None:
    comfyui_sim.hold()
    job = await client.submit(txt2img(seed=31))
    await comfyui_sim.wait_until(lambda: comfyui_sim.queue_remaining == 1)
    comfyui_sim.release()
    await job.result(timeout=10)
    assert client.queue_remaining == 0


async def test_an_exhausted_reconnect_budget_fails_pending_jobs_with_the_cause(
    tmp_path: Path,
) -> None:
    sim = ComfyUISimulator(root=tmp_path)
    await sim.start()
    policy = ReconnectPolicy(max_time=0.3, initial_delay=0.01, max_delay=0.05)
    try:
        async with ComfyUIClient(sim.url, reconnect=policy, retry=FAST_RETRY) as client:
            sim.hold()
            job = await client.submit(txt2img(seed=41))
            await sim.stop()  # gone for good: nothing answers on that port any more
            with pytest.raises(ConnectionLostError) as info:
                await job.result(timeout=10)
            assert isinstance(info.value.__cause__, ConnectionLostError | ConnectError)
            assert client.in_flight == 0
            # The server comes back on the same port: the next submission reconnects.
            port = sim.port
            sim = ComfyUISimulator(root=tmp_path / "again")
            await sim.start(port=port)
            result = await client.run(txt2img(seed=42), timeout=10)
            assert result.images
    finally:
        await sim.stop()


async def test_a_post_given_up_on_is_taken_back_from_the_server(
    comfyui_sim: ComfyUISimulator,
) -> None:
    retry = RetryPolicy(attempts=2, initial_delay=0.01, max_delay=0.01)
    async with ComfyUIClient(comfyui_sim.url, retry=retry) as client:
        comfyui_sim.fail_next("/prompt", 2, status=504)
        with pytest.raises(ServerError) as info:
            await client.run(txt2img(seed=51))
        assert info.value.status == 504
        assert client.in_flight == 0
    deletes = [r.json for r in comfyui_sim.requests if r.route == "/queue" and r.method == "POST"]
    assert len(deletes) == 1
    assert isinstance(deletes[0], dict)
    assert len(deletes[0]["delete"]) == 1
