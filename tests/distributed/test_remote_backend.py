"""RemoteBackend as a full Backend (issue 20 follow-up): each method the Backend protocol
names, answered through a real redis-server and ``dreamgen worker`` subprocesses."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from _graphs import txt2img
from _redis import broker_url_fixture, redis_server_fixture, workers_fixture  # noqa: F401 (fixtures)
from _workers import Workers

from dreamgen_async import Backend, ComfyUIClient, DreamgenError
from dreamgen_async.distributed import RedisJobStore, RemoteBackend
from dreamgen_async.errors import ConnectError
from dreamgen_async.protocol import ImageRef
from dreamgen_async.testing import ComfyUISimulator, SimulatorConfig
from dreamgen_async.workflow_io import builder_from_server, models_by_server, server_models


@pytest_asyncio.fixture
async def sims(tmp_path: Path) -> AsyncIterator[list[ComfyUISimulator]]:
    async with (
        ComfyUISimulator(SimulatorConfig(checkpoints=("a.safetensors",)), root=tmp_path / "a") as a,
        ComfyUISimulator(SimulatorConfig(checkpoints=("b.safetensors",)), root=tmp_path / "b") as b,
    ):
        yield [a, b]


def graph(seed: int, ckpt: str = "a.safetensors") -> dict[str, object]:
    workflow = txt2img(seed=seed, steps=1)
    workflow["1"]["inputs"]["ckpt_name"] = ckpt
    return workflow


async def test_capabilities_and_status_come_from_every_live_worker(
    sims: list[ComfyUISimulator], workers: Workers, broker_url: str
) -> None:
    a, b = sims
    await workers.start(broker_url, a.url)  # each worker its own server
    await workers.start(broker_url, b.url)
    async with RemoteBackend(broker_url) as remote:
        backend: Backend = remote
        assert backend.client_id is None  # each worker's pool posts under its own
        statuses = await backend.status()
        assert [(s.url, s.state) for s in statuses] == sorted([(a.url, "up"), (b.url, "up")])
        per_server = await models_by_server(backend)
        assert per_server[a.url].checkpoints == ("a.safetensors",)
        assert per_server[b.url].checkpoints == ("b.safetensors",)
        assert set((await server_models(backend)).checkpoints) == {"a.safetensors", "b.safetensors"}
        builder = await builder_from_server(backend, "b.safetensors")
        assert builder.checkpoint == "b.safetensors"
        assert set(await backend.object_info("KSampler")) == {"KSampler"}
        assert await backend.object_info("NoSuchNode") == {}
        assert "SaveImage" in await backend.object_info()


async def test_before_post_is_awaited_before_the_workers_post(
    sims: list[ComfyUISimulator], workers: Workers, broker_url: str
) -> None:
    await workers.start(broker_url, *(s.url for s in sims))
    store = RedisJobStore(broker_url)
    calls: list[tuple[str, str]] = []
    prompt_id = str(uuid.uuid4())

    async def before_post(server: str, client_id: str) -> None:
        record = await store.get(prompt_id)
        assert record is not None
        assert (record.server, record.client_id) == (server, client_id)  # named first
        assert all(prompt_id not in s.accepted_prompt_ids for s in sims)  # not posted yet
        calls.append((server, client_id))

    try:
        async with RemoteBackend(broker_url) as backend:
            job = await backend.submit(graph(1), prompt_id=prompt_id, before_post=before_post)
            result = await job.result(timeout=30)
            assert job.server == calls[0][0]
    finally:
        await store.aclose()
    assert result.prompt_id == prompt_id
    assert len(calls) == 1
    assert prompt_id in next(s for s in sims if s.url == calls[0][0]).accepted_prompt_ids


async def test_a_failing_before_post_fails_the_job_unposted(
    sims: list[ComfyUISimulator], workers: Workers, broker_url: str
) -> None:
    await workers.start(broker_url, *(s.url for s in sims))

    async def before_post(server: str, client_id: str) -> None:
        raise OSError("journal disk full")

    async with RemoteBackend(broker_url) as backend:
        job = await backend.submit(graph(2), before_post=before_post)
        with pytest.raises(OSError, match="journal disk full"):
            await job.result(timeout=30)
    assert all(not s.accepted_prompt_ids for s in sims)


async def test_outputs_download_and_output_images_from_the_stored_blobs(
    sims: list[ComfyUISimulator], workers: Workers, broker_url: str
) -> None:
    await workers.start(broker_url, *(s.url for s in sims))
    async with RemoteBackend(broker_url) as backend:
        result = await (await backend.submit(graph(3))).result(timeout=30)
        images = await backend.get_output_images(result)
        made = sims[0].prompts[result.prompt_id].output_bytes[0]
        assert [image.data for image in images] == [made]
        assert await backend.download(images[0].ref) == made
        assert [o.data for o in await backend.get_outputs(result.prompt_id)] == [made]
        with pytest.raises(DreamgenError, match="no output of a job"):
            await backend.download(ImageRef("elsewhere.png", "", "output"))


async def test_adopt_a_prompt_posted_directly_to_a_server(
    sims: list[ComfyUISimulator], workers: Workers, broker_url: str
) -> None:
    a = sims[0]
    await workers.start(broker_url, *(s.url for s in sims))
    a.hold()  # it stays queued until adopted
    async with ComfyUIClient(a.url) as client, RemoteBackend(broker_url) as backend:
        posted = await client.submit(graph(4))
        job = await backend.adopt(posted.prompt_id, server=a.url, client_id=client.client_id)
        assert job is not None
        a.release()
        result = await job.result(timeout=30)
        outputs = await backend.get_outputs(result)
    assert result.prompt_id == posted.prompt_id
    assert outputs[0].data == a.prompts[posted.prompt_id].output_bytes[0]
    assert [len(s.accepted_prompt_ids) for s in sims] == [1, 0]  # adopted, never run again


async def test_adopt_what_no_server_has_is_none_and_an_unknown_server_an_error(
    sims: list[ComfyUISimulator], workers: Workers, broker_url: str
) -> None:
    await workers.start(broker_url, *(s.url for s in sims))
    absent = str(uuid.uuid4())
    async with RemoteBackend(broker_url) as backend:
        assert await backend.adopt(absent, server=sims[1].url) is None
        with pytest.raises(ConnectError, match="none of the live workers' servers"):
            await backend.adopt(str(uuid.uuid4()), server="http://127.0.0.1:9")
        assert all(not s.accepted_prompt_ids for s in sims)
        # posted there since: asked again, found
        async with ComfyUIClient(sims[1].url) as client:
            await client.submit(graph(6, "b.safetensors"), prompt_id=absent)
            job = await backend.adopt(absent, server=sims[1].url, client_id=client.client_id)
            assert job is not None
            assert (await job.result(timeout=30)).prompt_id == absent
    assert [len(s.accepted_prompt_ids) for s in sims] == [0, 1]


async def test_adopt_a_job_of_an_earlier_producer_follows_its_record(
    sims: list[ComfyUISimulator], workers: Workers, broker_url: str
) -> None:
    await workers.start(broker_url, *(s.url for s in sims))
    async with RemoteBackend(broker_url) as first:
        done = await (await first.submit(graph(5))).result(timeout=30)
    async with RemoteBackend(broker_url) as second:
        job = await second.adopt(done.prompt_id)
        assert job is not None
        again = await job.result(timeout=30)
        images = await second.get_output_images(again)
    assert again.prompt_id == done.prompt_id
    assert images[0].data == sims[0].prompts[done.prompt_id].output_bytes[0]
    assert [len(s.accepted_prompt_ids) for s in sims] == [1, 0]
