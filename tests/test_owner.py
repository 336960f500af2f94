"""The job owner (``dreamgen_async.owner``): the one reconcile, and the arrows between the parts.

Simulator-driven: the client talks to the real simulator over loopback.
"""

from __future__ import annotations

import time

from _graphs import txt2img

from dreamgen_async import ComfyUIClient, ReconnectPolicy, RetryPolicy
from dreamgen_async.multiplexer import Listener, Multiplexer
from dreamgen_async.owner import JobOwner
from dreamgen_async.testing import ComfyUISimulator

FAST_RETRY = RetryPolicy(attempts=3, initial_delay=0.01, max_delay=0.05, max_retry_after=0.2)


async def test_a_job_that_finishes_while_the_queue_fails_for_good_is_settled_from_history(
    comfyui_sim: ComfyUISimulator,
) -> None:
    """``/queue`` answers 500 for good; the socket drops while the job waits, then the job
    runs and finishes. The reconcile cannot read the queue, so it reads ``/history/{id}``: the
    job resolves within the watchdog interval plus one backoff of finishing, not failed with
    ConnectionLostError after ``max_time``."""
    policy = ReconnectPolicy(max_time=120.0, initial_delay=0.05, max_delay=1.0, watchdog=2.0)
    async with ComfyUIClient(comfyui_sim.url, retry=FAST_RETRY, reconnect=policy) as client:
        comfyui_sim.hold()
        job = await client.submit(txt2img(seed=7))
        comfyui_sim.fail_next("/queue", 1_000_000, status=500, method="GET")
        await comfyui_sim.drop_websockets()  # a gap: the job's events may be missed
        # The resync after the reconnect cannot read /queue, and /history has nothing yet.
        await comfyui_sim.wait_until(lambda: len(comfyui_sim.requests_to("/queue", "GET")) >= 2)
        assert not job.done()
        comfyui_sim.release()
        await comfyui_sim.wait_for_status(job.prompt_id, "success")
        finished = time.monotonic()
        result = await job.result(timeout=policy.watchdog + policy.max_delay + 5)
        elapsed = time.monotonic() - finished
    assert result.prompt_id == job.prompt_id
    assert result.images  # the outputs came from /history
    assert elapsed < policy.watchdog + policy.max_delay, elapsed
    assert comfyui_sim.requests_to(f"/history/{job.prompt_id}", "GET")


async def test_the_multiplexer_holds_no_client_and_talks_to_a_listener(
    comfyui_sim: ComfyUISimulator,
) -> None:
    async with ComfyUIClient(comfyui_sim.url) as client:
        mux = client._mux
        assert isinstance(mux, Multiplexer)
        assert not any(isinstance(value, ComfyUIClient) for value in vars(mux).values())
        listener: Listener = client._owner  # JobOwner implements the protocol (mypy checks)
        assert isinstance(listener, JobOwner)
        job = await client.submit(txt2img(seed=1))
        assert (await job.result(timeout=30)).prompt_id == job.prompt_id
