"""A removal that fails says which server and why (issue 19, item 8)."""

from __future__ import annotations

import logging

import pytest
from _graphs import txt2img

from dreamgen_async import ComfyUIClient
from dreamgen_async.errors import ConnectionLostError
from dreamgen_async.testing import ComfyUISimulator


async def test_a_failed_removal_names_the_server_and_the_reason(
    comfyui_sim: ComfyUISimulator, caplog: pytest.LogCaptureFixture
) -> None:
    comfyui_sim.hold()
    async with ComfyUIClient(comfyui_sim.url) as client:
        job = await client.submit(txt2img(seed=1))
        await comfyui_sim.wait_until(lambda: len(comfyui_sim.accepted_prompt_ids) == 1)
        comfyui_sim.fail_next("/queue", n=10, status=403, body="no deletes here", method="POST")
        with caplog.at_level(logging.WARNING, logger="dreamgen_async"):
            await job.cancel()
        # Not reported cancelled: the server never confirmed it is off (issue 24 follow-up).
        with pytest.raises(ConnectionLostError, match="it may still run"):
            await job.result()
        comfyui_sim.release()

    (line,) = [r.getMessage() for r in caplog.records if "could not take" in r.getMessage()]
    assert f"could not take 1 prompts back from {comfyui_sim.url}" in line
    assert "403" in line
