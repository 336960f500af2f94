"""The job-record store on a real redis-server, and the pure delivery table."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from _redis import broker_url_fixture, redis_server_fixture  # noqa: F401 (fixtures)

from dreamgen_async.distributed.records import (
    JobRecord,
    StoredOutput,
    encode_error,
    on_delivery,
    rebuild_error,
)
from dreamgen_async.distributed.store import RedisJobStore
from dreamgen_async.errors import ConnectError, ExecutionError, NoCapableServerError
from dreamgen_async.protocol import ImageRef, OutputFile


@pytest_asyncio.fixture
async def store(broker_url: str) -> AsyncIterator[RedisJobStore]:
    opened = RedisJobStore(broker_url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.aclose()


async def test_a_record_round_trips_with_the_journal_item_fields(store: RedisJobStore) -> None:
    assert await store.get("p1") is None
    assert await store.create(JobRecord("p1", reply="chan", created=1.0))
    assert not await store.create(JobRecord("p1", reply="other"))  # never overwritten
    await store.update("p1", state="posted", server="http://a", client_id="c1")
    output = StoredOutput.of(OutputFile("9", "image", ImageRef("x.png", "", "output")), "d" * 64, 3)
    await store.update("p1", state="done", outputs=(output,), timings=(1.0, 2.0, None))
    record = await store.get("p1")
    assert record is not None
    assert (record.state, record.server, record.client_id, record.prompt_id) == (
        "done",
        "http://a",
        "c1",
        "p1",
    )
    assert record.reply == "chan"
    assert record.outputs == (output,)
    assert record.outputs[0].output_file().ref == ImageRef("x.png", "", "output")
    assert record.timings == (1.0, 2.0, None)


async def test_a_live_holder_keeps_its_job_and_a_dead_one_loses_it(store: RedisJobStore) -> None:
    await store.create(JobRecord("p2"))
    await store.beat("w1", 30)
    claimed = await store.claim("p2", "w1")
    assert claimed is not None
    assert claimed.worker == "w1"
    assert claimed.attempts == 1
    assert await store.claim("p2", "w2") is None  # w1 is alive: never run twice
    await store.retire("w1")
    taken = await store.claim("p2", "w2")
    assert taken is not None
    assert taken.worker == "w2"
    assert taken.attempts == 2
    assert await store.claim("missing", "w2") is None


async def test_blobs_are_content_addressed(store: RedisJobStore) -> None:
    digest = await store.put_blob(b"abc")
    assert digest == await store.put_blob(b"abc")
    assert await store.get_blob(digest) == b"abc"
    assert await store.has_blob(digest)
    small = RedisJobStore(store.url, max_blob=2)
    with pytest.raises(Exception, match="over the broker's blob limit"):
        await small.put_blob(b"abc")
    await small.aclose()


async def test_an_unreachable_broker_is_one_line() -> None:
    store = RedisJobStore("redis://127.0.0.1:1/0")
    with pytest.raises(ConnectError, match=r"^cannot reach the broker at redis://127.0.0.1:1/0"):
        await store.open()


def test_the_delivery_table() -> None:
    pending = JobRecord("p")
    assert on_delivery(pending, me="a", holder_alive=False) == "run"
    held = JobRecord("p", worker="b")
    assert on_delivery(held, me="a", holder_alive=True) == "wait"
    assert on_delivery(held, me="a", holder_alive=False) == "run"
    posted = JobRecord("p", state="posted", worker="b")
    assert on_delivery(posted, me="a", holder_alive=False) == "check"
    assert on_delivery(posted, me="a", holder_alive=True) == "wait"
    for state in ("done", "failed", "cancelled"):
        assert on_delivery(JobRecord("p", state=state), me="a", holder_alive=False) == "settled"
    assert on_delivery(JobRecord("p", cancel=True), me="a", holder_alive=False) == "settled"


def test_errors_are_rebuilt_as_their_own_type() -> None:
    missing = NoCapableServerError("no server can", missing={"http://a": ("node class X",)})
    rebuilt = rebuild_error(encode_error(missing), "p")
    assert isinstance(rebuilt, NoCapableServerError)
    assert rebuilt.missing == {"http://a": ("node class X",)}
    failed = ExecutionError(
        prompt_id="p",
        node_id="3",
        node_type="KSampler",
        exception_type="RuntimeError",
        exception_message="boom",
    )
    again = rebuild_error(encode_error(failed), "p")
    assert isinstance(again, ExecutionError)
    assert str(again) == str(failed)
    other = rebuild_error({"type": "OSError", "message": "disk full"}, "p")
    assert "OSError on a worker: disk full" in str(other)


async def test_concurrent_claims_one_winner_and_no_deadlock(broker_url: str) -> None:
    # More claims than connections: a claim holds no connection while it waits for another.
    store = RedisJobStore(broker_url, max_connections=4)
    try:
        await store.create(JobRecord("p3"))
        for i in range(50):
            await store.beat(f"w{i}", 30)
        claims = await asyncio.wait_for(
            asyncio.gather(*(store.claim("p3", f"w{i}") for i in range(50))), 20
        )
        winners = [c for c in claims if c is not None]
        assert len(winners) == 1
        record = await store.get("p3")
        assert record is not None
        assert record.worker == winners[0].worker
        assert record.attempts == 1
    finally:
        await store.aclose()
