"""The batch journal, in-process: resume skips done items and collects posted prompts."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import sys
from pathlib import Path

import pytest
from _graphs import png_bytes, txt2img

from dreamgen_async import ComfyUIClient, JournalError
from dreamgen_async.generator import (
    DreamGenerator,
    GenerationResult,
    Img2ImgRequest,
    JobFailure,
    Request,
    Txt2ImgRequest,
    request_from_spec,
    request_spec,
)
from dreamgen_async.journal import (
    BatchJournal,
    JournalFile,
    JournalRun,
    file_sha256,
    read_journal_meta,
    read_journal_requests,
)
from dreamgen_async.testing import ComfyUISimulator


def frames(n: int) -> list[Request]:
    return [Txt2ImgRequest(f"frame {i}", seed=i, width=64, height=64) for i in range(n)]


def images(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


async def test_a_rerun_skips_every_done_item(comfyui_sim: ComfyUISimulator, tmp_path: Path) -> None:
    out, journal = tmp_path / "out", tmp_path / "batch.journal"
    async with DreamGenerator(comfyui_sim.url, output_dir=out) as gen:
        first = await gen.generate_many(frames(6), journal=journal)
    async with DreamGenerator(comfyui_sim.url, output_dir=out) as gen:
        second = await gen.generate_many(frames(6), journal=journal)
    assert len(comfyui_sim.accepted_prompt_ids) == 6
    assert all(isinstance(o, GenerationResult) and o.resumed for o in second)
    assert [o.paths for o in first] == [o.paths for o in second]  # type: ignore[union-attr]
    assert len(images(out)) == 6
    # A deleted file is fetched again from the server's history: no re-run.
    victim = second[2]
    assert isinstance(victim, GenerationResult)
    victim.path.unlink()
    async with DreamGenerator(comfyui_sim.url, output_dir=out) as gen:
        third = await gen.generate_many(frames(6), journal=journal)
    assert victim.path.exists()
    assert not third[2].resumed  # type: ignore[union-attr]
    assert third[2].prompt_id == victim.prompt_id  # type: ignore[union-attr]
    assert len(comfyui_sim.accepted_prompt_ids) == 6
    assert len(images(out)) == 6


async def test_posted_prompts_are_collected_under_their_client_id(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    out, journal = tmp_path / "out", tmp_path / "batch.journal"
    comfyui_sim.hold()
    async with DreamGenerator(comfyui_sim.url, output_dir=out) as gen:
        old_client_id = single(gen).client_id
        batch = asyncio.create_task(gen.generate_many(frames(6), journal=journal))
        await comfyui_sim.wait_until(lambda: len(comfyui_sim.accepted_prompt_ids) == 6)
        # Stopped on purpose: its client goes away, the prompts stay queued on the server.
        await gen.aclose(detach=True)
        outcomes = await batch
    assert all(isinstance(o, JobFailure) for o in outcomes)
    posted = list(comfyui_sim.accepted_prompt_ids)

    async with DreamGenerator(comfyui_sim.url, output_dir=out) as gen:
        assert single(gen).client_id != old_client_id
        batch = asyncio.create_task(gen.generate_many(frames(6), journal=journal))
        # Each prompt is adopted (registered) before the server is asked: then let them run.
        await comfyui_sim.wait_until(
            lambda: sum(1 for r in comfyui_sim.requests_to("/queue", "GET")) >= 6
        )
        comfyui_sim.release()
        outcomes = await batch
    assert comfyui_sim.accepted_prompt_ids == posted  # nothing was posted twice
    assert {o.prompt_id for o in outcomes} == set(posted)  # type: ignore[union-attr]
    for outcome in outcomes:
        assert isinstance(outcome, GenerationResult)
        prompt = comfyui_sim.prompts[outcome.prompt_id or ""]
        assert [
            n["inputs"].get("seed") for n in prompt.graph.values() if "seed" in n["inputs"]
        ] == [outcome.seed]
        assert outcome.path.read_bytes() == prompt.output_bytes[0]
    # The old client_id's events came to a client opened under it.
    sockets = [
        r for r in comfyui_sim.requests_to("/ws") if r.query.get("clientId") == old_client_id
    ]
    assert len(sockets) == 2
    assert len(images(out)) == 6


async def test_prompts_the_server_lost_are_run_again(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    out, journal = tmp_path / "out", tmp_path / "batch.journal"
    comfyui_sim.hold()
    async with DreamGenerator(comfyui_sim.url, output_dir=out) as gen:
        batch = asyncio.create_task(gen.generate_many(frames(3), journal=journal))
        await comfyui_sim.wait_until(lambda: len(comfyui_sim.accepted_prompt_ids) == 3)
        await gen.client.aclose(detach=True)
        await batch
    await comfyui_sim.restart()  # the queue is gone
    async with DreamGenerator(comfyui_sim.url, output_dir=out) as gen:
        outcomes = await gen.generate_many(frames(3), journal=journal)
    assert all(isinstance(o, GenerationResult) for o in outcomes)
    assert len(comfyui_sim.accepted_prompt_ids) == 6
    assert len(images(out)) == 3


async def test_the_journal_records_what_resume_needs(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    journal = tmp_path / "batch.journal"
    requests = [*frames(2), Txt2ImgRequest("free", width=64, height=64)]
    async with DreamGenerator(comfyui_sim.url, output_dir=tmp_path / "out") as gen:
        await gen.generate_many(requests, journal=journal)
        client_id = single(gen).client_id
    meta = read_journal_meta(journal)
    assert meta["client_id"] == client_id
    assert meta["server"] == comfyui_sim.url
    assert meta["output_dir"] == str(tmp_path / "out")
    async with await BatchJournal.open(journal) as opened:
        specs = await opened.requests()
        items = await opened.items()
        assert await opened.counts() == {"done": 3}
    assert [request_from_spec(s) for s in specs] == requests
    assert {item.prompt_id for item in items} == set(comfyui_sim.accepted_prompt_ids)
    assert all(item.client_id == client_id for item in items)
    # The seedless request's drawn seed is recorded: the one its prompt ran with.
    (free,) = [item for item in items if item.index == 2]
    graph = comfyui_sim.prompts[free.prompt_id or ""].graph
    assert [n["inputs"]["seed"] for n in graph.values() if "seed" in n["inputs"]] == [free.seed]
    assert request_spec(requests[2])["seed"] is None


async def test_one_journal_one_process(tmp_path: Path) -> None:
    journal = tmp_path / "batch.journal"
    async with await BatchJournal.open(journal):
        with pytest.raises(JournalError, match="in use"):
            await BatchJournal.open(journal)
    async with await BatchJournal.open(journal):
        pass  # released on close
    (tmp_path / "not.journal").write_text("hello, I am not a database" * 100)
    with pytest.raises(JournalError, match="not a batch journal"):
        await BatchJournal.open(tmp_path / "not.journal")


async def test_adopt_answers_from_history_queue_or_absence(
    comfyui_sim: ComfyUISimulator,
) -> None:
    async with ComfyUIClient(comfyui_sim.url) as first:
        done = await first.submit(txt2img(seed=1))
        await done.result()
        comfyui_sim.hold()
        queued = await first.submit(txt2img(seed=2))
        client_id = first.client_id
        await first.aclose(detach=True)  # leaves `queued` on the server
    async with ComfyUIClient(comfyui_sim.url, client_id=client_id) as second:
        assert await second.adopt("no-such-prompt") is None
        finished = await second.adopt(done.prompt_id)
        assert finished is not None
        assert finished.done()
        assert (await finished.result()).images
        waiting = await second.adopt(queued.prompt_id)
        assert waiting is not None
        assert not waiting.done()
        comfyui_sim.release()
        assert (await waiting.result(timeout=10)).images
    assert len(comfyui_sim.accepted_prompt_ids) == 2


async def test_a_journaled_batch_sweeps_staging_files_of_dead_writers(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    dead = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await dead.wait()
    stale = out / f".frame.png.{dead.pid}.{'a' * 32}.part"
    live = out / f".frame.png.{os.getpid()}.{'b' * 32}.part"
    mine = out / "notes.part"
    for path in (stale, live, mine):
        path.write_bytes(b"x")
    async with DreamGenerator(comfyui_sim.url, output_dir=out) as gen:
        await gen.generate_many(frames(1), journal=tmp_path / "j")
    assert not stale.exists()
    assert live.exists()
    assert mine.exists()


async def test_start_batch_takes_a_journal_and_odd_inputs_are_recorded(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    journal = tmp_path / "j"
    requests: list[Request] = [
        *frames(2),
        Img2ImgRequest(png_bytes(1), "bytes", seed=1),
        Img2ImgRequest(object(), "what is this", seed=1),
    ]
    async with DreamGenerator(comfyui_sim.url, output_dir=tmp_path / "out") as gen:
        outcomes = await gen.start_batch(requests, journal=journal).results()
    assert [type(o).__name__ for o in outcomes] == ["GenerationResult"] * 3 + ["JobFailure"]
    specs = read_journal_requests(journal)
    assert request_from_spec(specs[2]) == requests[2]
    assert specs[3]["image"] == {"unsupported": "<object>"}
    assert request_from_spec(specs[3]).image is None  # type: ignore[union-attr]


def single(gen: DreamGenerator) -> ComfyUIClient:
    """The generator's one client (a journal records one server's prompts)."""
    assert isinstance(gen.client, ComfyUIClient)
    return gen.client


# ---------------------------------------------------------------------------- content hashes


async def test_done_records_each_files_sha256_and_intact_checks_it(tmp_path: Path) -> None:
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    first.write_bytes(b"first image")
    second.write_bytes(b"other image")
    async with await BatchJournal.open(tmp_path / "j") as journal:
        await journal.begin("k", "k", 0)
        await journal.done("k", "p1", [first, second], seed=7)
        await journal.begin("given", "given", 1)
        await journal.done("given", "p2", [first], digests=[file_sha256(first)])
        with pytest.raises(ValueError, match="1 files but 2 digests"):
            await journal.done("given", "p2", [first], digests=["a", "b"])
        item = await journal.item("k")
        given = await journal.item("given")
    assert item is not None
    assert given is not None
    assert [f.sha256 for f in item.files] == [
        hashlib.sha256(b"first image").hexdigest(),
        hashlib.sha256(b"other image").hexdigest(),
    ]
    assert given.files == item.files[:1]
    assert item.files_intact()
    # Another seed's bytes, the same size: not the file we wrote.
    second.write_bytes(b"third image")
    assert len(b"third image") == item.files[1].size
    assert not item.files_intact()
    second.write_bytes(b"other image")
    assert item.files_intact()
    second.write_bytes(b"other image, longer")
    assert not item.files_intact()
    second.unlink()
    assert not item.files_intact()


def test_a_file_recorded_without_a_hash_cannot_be_taken_for_done(tmp_path: Path) -> None:
    file = tmp_path / "a.png"
    file.write_bytes(b"image")
    assert JournalFile(str(file), 5, hashlib.sha256(b"image").hexdigest()).intact()
    assert not JournalFile(str(file), 5).intact()  # an older journal's record: unverifiable


async def test_a_done_file_holding_other_bytes_is_collected_again_not_skipped(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    out, journal = tmp_path / "out", tmp_path / "batch.journal"
    async with DreamGenerator(comfyui_sim.url, output_dir=out) as gen:
        first = await gen.generate_many(frames(3), journal=journal)
    victim = first[1]
    assert isinstance(victim, GenerationResult)
    written = victim.path.read_bytes()
    tampered = bytearray(written)
    tampered[len(tampered) // 2] ^= 0xFF  # same size, other bytes
    victim.path.write_bytes(bytes(tampered))
    async with DreamGenerator(comfyui_sim.url, output_dir=out) as gen:
        second = await gen.generate_many(frames(3), journal=journal)
    assert [o.resumed for o in second] == [True, False, True]  # type: ignore[union-attr]
    assert second[1].prompt_id == victim.prompt_id  # type: ignore[union-attr]
    assert len(comfyui_sim.accepted_prompt_ids) == 3  # collected from history, not run again
    assert victim.path.read_bytes() == written


async def test_an_older_journal_without_hashes_collects_its_done_items_once(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    out, journal = tmp_path / "out", tmp_path / "batch.journal"
    async with DreamGenerator(comfyui_sim.url, output_dir=out) as gen:
        await gen.generate_many(frames(2), journal=journal)
    db = sqlite3.connect(journal)  # as a journal written before hashes were recorded
    try:
        for key, files in db.execute("SELECT item_key, files FROM items").fetchall():
            old = [{"path": f["path"], "size": f["size"]} for f in json.loads(files)]
            db.execute("UPDATE items SET files = ? WHERE item_key = ?", (json.dumps(old), key))
        db.commit()
    finally:
        db.close()
    async with DreamGenerator(comfyui_sim.url, output_dir=out) as gen:
        second = await gen.generate_many(frames(2), journal=journal)
    assert not any(o.resumed for o in second)  # type: ignore[union-attr]
    assert len(comfyui_sim.accepted_prompt_ids) == 2  # downloaded again, not run again
    async with DreamGenerator(comfyui_sim.url, output_dir=out) as gen:
        third = await gen.generate_many(frames(2), journal=journal)
    assert all(o.resumed for o in third)  # type: ignore[union-attr]
    assert len(images(out)) == 2


def test_reading_a_journal_being_created_or_another_database(tmp_path: Path) -> None:
    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).close()  # what another process's journal is for an instant
    assert read_journal_meta(empty) == {}
    assert read_journal_requests(empty) == []
    other = tmp_path / "other.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE photos (name TEXT)")
    db.close()
    with pytest.raises(JournalError, match="not a batch journal") as caught:
        read_journal_meta(other)
    assert caught.value.path == str(other)
    text = tmp_path / "notes.txt"
    text.write_text("hello, I am not a database" * 100)
    with pytest.raises(JournalError, match="not a batch journal"):
        read_journal_requests(text)


async def test_a_run_that_did_not_finish_is_resumed_and_a_finished_one_starts_anew(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j"
    async with await BatchJournal.open(path) as journal:
        first = await journal.begin_run()
        assert not first.resumed
        assert first.id
    async with await BatchJournal.open(path) as journal:  # interrupted: same run
        assert await journal.begin_run() == JournalRun(first.id, resumed=True)
        await journal.end_run()
    async with await BatchJournal.open(path) as journal:  # finished: a new run
        second = await journal.begin_run()
        assert not second.resumed
        assert second.id not in ("", first.id)
        assert await journal.begin_run() == JournalRun(second.id, resumed=True)
    assert read_journal_meta(path)["run"] == second.id


async def test_an_older_journal_without_runs_resumes_its_unfinished_items_under_their_keys(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j"
    async with await BatchJournal.open(path) as journal:  # as an older version left it
        await journal.begin("k", "k", 0)
        await journal.begin("k-1", "k", 1)
        await journal.done("k", "p", [], seed=1)
        assert await journal.begin_run() == JournalRun("", resumed=True)
        await journal.failed("k-1", "x")
        assert await journal.begin_run() == JournalRun("", resumed=True)  # still not done
    done = tmp_path / "other"
    async with await BatchJournal.open(done) as journal:  # every item done: a new run
        await journal.begin("k", "k", 0)
        await journal.done("k", "p", [], seed=1)
        run = await journal.begin_run()
    assert not run.resumed
    assert run.id
