"""The simulator against recordings of a real ComfyUI 0.8.0 (tests/fixtures/traces).

Each test replays the recorded request bodies over loopback with a plain aiohttp client and
compares the WebSocket message order (in probe_summary.json's notation), payload keys, and
HTTP status + JSON shapes with what the real server did.
"""

from __future__ import annotations

import copy
import json
import struct
from pathlib import Path
from typing import Any

import aiohttp

from dreamgen_async.testing import ComfyUISimulator, sample_png
from dreamgen_async.testing.traces import (
    RecordingSocket,
    describe,
    load_trace,
    normalise,
    recorded_messages,
)

TRACES = Path(__file__).parent / "fixtures" / "traces"
Message = dict[str, Any] | bytes


def trace(name: str) -> list[dict[str, Any]]:
    return load_trace(TRACES / f"{name}.jsonl")


def prompt_posts(name: str) -> list[dict[str, Any]]:
    """Request bodies of the successful POST /prompt of a trace, in order."""
    return [
        r["request_json"]
        for r in trace(name)
        if r["dir"] == "http" and r["path"] == "/prompt" and r["status"] == 200
    ]


def body_for(body: dict[str, Any], client_id: str | None) -> dict[str, Any]:
    out = copy.deepcopy(body)
    out.pop("prompt_id", None)
    if client_id is None:
        out.pop("client_id", None)
    else:
        out["client_id"] = client_id
    return out


def order(messages: list[Message]) -> list[str]:
    return [describe(m) for m in messages]


def first_of(messages: list[Message], kind: str) -> dict[str, Any]:
    for m in messages:
        if isinstance(m, dict) and m["type"] == kind:
            return m
    raise AssertionError(f"no {kind} message")


async def connect(
    http: aiohttp.ClientSession, sim: ComfyUISimulator, client_id: str | None, path: str = "/ws"
) -> RecordingSocket:
    query = f"?clientId={client_id}" if client_id else ""
    sock = RecordingSocket(await http.ws_connect(sim.url + path + query))
    await sock.next()  # the status greeting
    return sock


async def run(
    http: aiohttp.ClientSession, sim: ComfyUISimulator, sock: RecordingSocket, body: dict[str, Any]
) -> tuple[str, list[Message]]:
    """POST a prompt for ``sock``'s client and read its messages up to ``executing null``."""
    async with http.post(sim.url + "/prompt", json=body) as resp:
        assert resp.status == 200, await resp.text()
        answer = await resp.json()
    prompt_id: str = answer["prompt_id"]
    return prompt_id, await sock.until_done(prompt_id)


# ------------------------------------------------------------------------------------------


async def test_greeting_with_and_without_client_id(
    recorded_sim: ComfyUISimulator, http: aiohttp.ClientSession, summary: dict[str, Any]
) -> None:
    async with http.ws_connect(recorded_sim.url + "/ws?clientId=probe-A-a342abfb") as ws:
        assert json.loads((await ws.receive()).data) == summary["A_first_message"]
    async with http.ws_connect(recorded_sim.url + "/ws") as ws:
        first = json.loads((await ws.receive()).data)
        expected = summary["scenarios"]["00_endpoints"]["ws_without_clientId_first_msg"]
        assert first["data"].keys() == expected["data"].keys()
        assert len(first["data"]["sid"]) == 32
        int(first["data"]["sid"], 16)
    async with http.ws_connect(recorded_sim.url + "/api/ws?clientId=probe-apiws") as ws:
        first = json.loads((await ws.receive()).data)
        assert first == summary["scenarios"]["08_reconnect"]["api_ws_first"]


async def test_txt2img_cold_then_cached(
    recorded_sim: ComfyUISimulator, http: aiohttp.ClientSession, summary: dict[str, Any]
) -> None:
    sim = recorded_sim
    sock = await connect(http, sim, "A")
    body = body_for(prompt_posts("trace_01_txt2img")[0], "A")
    async with http.post(sim.url + "/prompt", json=body) as resp:
        answer = await resp.json()
    assert resp.status == 200
    assert answer.keys() == summary["scenarios"]["01_txt2img"]["post_response"].keys()
    messages = await sock.until_done(answer["prompt_id"])
    assert order(messages) == normalise(summary["scenarios"]["01_txt2img"]["order"])
    recorded = recorded_messages(trace("trace_01_txt2img"), "A")
    for kind in ("execution_start", "execution_cached", "progress_state", "executing",
                 "progress", "executed", "execution_success"):  # fmt: skip
        assert first_of(messages, kind)["data"].keys() == first_of(recorded, kind)["data"].keys()
    executed = first_of(messages, "executed")["data"]
    assert executed["output"] == summary["scenarios"]["01_txt2img"]["history_outputs"]["9"]

    async with http.get(f"{sim.url}/history/{answer['prompt_id']}") as resp:
        entry = (await resp.json())[answer["prompt_id"]]
    s01 = summary["scenarios"]["01_txt2img"]
    assert list(entry) == s01["history_entry_keys"]
    assert len(entry["prompt"]) == s01["history_prompt_tuple_len"]
    assert entry["outputs"] == s01["history_outputs"]
    assert entry["meta"] == s01["history_meta"]
    assert [m[0] for m in entry["status"]["messages"]] == [
        m[0] for m in s01["history_status"]["messages"]
    ]
    assert entry["prompt"][3].keys() == {"client_id", "create_time"}

    for suffix, (ctype, magic) in {
        "": ("image/png", b"\x89PNG"),
        "&preview=webp;50": ("image/webp", b"RIFF"),
        "&preview=jpeg;80": ("image/jpeg", b"\xff\xd8"),
        "&channel=rgb": ("image/png", b"\x89PNG"),
        "&channel=a": ("image/png", b"\x89PNG"),
    }.items():
        url = f"{sim.url}/view?filename=probe_t2i_00001_.png&subfolder=&type=output{suffix}"
        async with http.get(url) as resp:
            assert resp.status == 200
            assert resp.content_type == ctype
            assert (await resp.read()).startswith(magic)
            assert resp.headers["Content-Disposition"] == 'filename="probe_t2i_00001_.png"'

    cached_id, cached = await run(http, sim, sock, body)
    assert order(cached) == normalise(summary["scenarios"]["02_txt2img_cached"]["order"])
    assert first_of(cached, "executed")["data"]["output"] == executed["output"]
    assert sim.prompts[cached_id].output_bytes == sim.prompts[answer["prompt_id"]].output_bytes
    assert [p.name for p in sim.output_dir.iterdir()] == ["probe_t2i_00001_.png"]
    await sock.ws.close()


async def test_img2img_runs(
    recorded_sim: ComfyUISimulator, http: aiohttp.ClientSession, summary: dict[str, Any]
) -> None:
    sim = recorded_sim
    sock = await connect(http, sim, "A")
    await run(http, sim, sock, body_for(prompt_posts("trace_01_txt2img")[0], "A"))
    runs = summary["scenarios"]["04_img2img"]["runs"]
    bodies = prompt_posts("trace_04_img2img")
    assert len(bodies) == len(runs)
    for index, (body, expected) in enumerate(zip(bodies, runs, strict=True)):
        prompt_id, messages = await run(http, sim, sock, body_for(body, "A"))
        assert order(messages) == normalise(expected["order"])
        images = first_of(messages, "executed")["data"]["output"]["images"]
        assert images == [
            {"filename": f"probe_i2i_{index + 1:05}_.png", "subfolder": "", "type": "output"}
        ]
        assert sim.prompts[prompt_id].output_bytes[0].startswith(b"\x89PNG")
    await sock.ws.close()


async def test_batch_of_five_interleaves_status(
    recorded_sim: ComfyUISimulator, http: aiohttp.ClientSession, summary: dict[str, Any]
) -> None:
    sim = recorded_sim
    sock = await connect(http, sim, "A")
    await run(http, sim, sock, body_for(prompt_posts("trace_01_txt2img")[0], "A"))
    await run(http, sim, sock, body_for(prompt_posts("trace_04_img2img")[0], "A"))
    bodies = [body_for(b, "A") for b in prompt_posts("trace_05_img2img_batch5")]
    sim.step_time = 0.2  # the first job is sampling while the other four are posted
    ids = []
    async with http.post(sim.url + "/prompt", json=bodies[0]) as resp:
        ids.append((await resp.json())["prompt_id"])
    await sim.wait_until(lambda: sim.engine.last_node_id == "3")
    for body in bodies[1:]:
        async with http.post(sim.url + "/prompt", json=body) as resp:
            ids.append((await resp.json())["prompt_id"])
    sim.step_time = 0.0
    async with http.get(sim.url + "/queue") as resp:
        queue = await resp.json()
    assert [i[1] for i in queue["queue_running"]] == ids[:1]
    assert sorted(i[1] for i in queue["queue_pending"]) == sorted(ids[1:])
    messages = await sock.until_done(ids[-1])
    expected = normalise(summary["scenarios"]["05_img2img_batch5"]["order_all"])
    assert order(messages) == expected
    assert [sim.prompts[i].status for i in ids] == ["success"] * 5
    await sock.ws.close()


async def test_feature_flags_negotiation(
    recorded_sim: ComfyUISimulator, http: aiohttp.ClientSession, summary: dict[str, Any]
) -> None:
    sim = recorded_sim
    scenario = summary["scenarios"]["06_feature_flags"]
    a = await connect(http, sim, "A")
    b = RecordingSocket(await http.ws_connect(sim.url + "/ws?clientId=probe-B-c0e787fd"))
    await b.ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
    assert [await b.next(), await b.next()] == scenario["B_first_messages"]
    await run(http, sim, b, body_for(prompt_posts("trace_01_txt2img")[0], "probe-B-c0e787fd"))
    await run(http, sim, b, body_for(prompt_posts("trace_04_img2img")[0], "probe-B-c0e787fd"))
    await a.until("status(q=0)")
    await a.until("status(q=0)")

    body = body_for(prompt_posts("trace_06_feature_flags")[0], "probe-B-c0e787fd")
    prompt_id, messages = await run(http, sim, b, body)
    b_order = normalise(scenario["B_order"])
    assert order(messages) == b_order[2 : b_order.index("executing:None") + 1]
    frame = next(m for m in messages if isinstance(m, bytes))
    event, length = struct.unpack(">II", frame[:8])
    metadata = json.loads(frame[8 : 8 + length])
    assert event == 4
    assert frame[8 + length :].startswith(b"\xff\xd8")
    recorded = next(
        r["frame"]["metadata"] for r in trace("trace_06_feature_flags") if r.get("kind") == "binary"
    )
    assert metadata == {**recorded, "prompt_id": prompt_id}
    assert order(await a.until("status(q=0)")) == scenario["A_saw_while_B_ran"][:3]

    # extra_data.preview_method "none" turns the server's previews off for one prompt.
    body = body_for(prompt_posts("trace_06_feature_flags")[1], "probe-B-c0e787fd")
    assert body["extra_data"] == {"preview_method": "none"}
    _, messages = await run(http, sim, b, body)
    assert order(messages) == scenario["B_order_preview_none"]
    await a.until("status(q=0)")

    # Flags sent after another first message are ignored.
    c = await connect(http, sim, "C-late-flags")
    received = sim.ws_messages_received
    await c.ws.send_str('{"type": "hello"}')
    await c.ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
    await c.ws.send_str("not json at all")
    await sim.wait_until(lambda: sim.ws_messages_received >= received + 3)
    async with http.post(sim.url + "/queue", json={"clear": True}):
        pass
    assert order([await c.next()]) == scenario["C_after_late_flags"]
    for sock in (a, b, c):
        await sock.ws.close()


async def test_routing_without_client_id_and_to_absent_client(
    recorded_sim: ComfyUISimulator, http: aiohttp.ClientSession, summary: dict[str, Any]
) -> None:
    sim = recorded_sim
    warm = await connect(http, sim, "W")
    await run(http, sim, warm, body_for(prompt_posts("trace_01_txt2img")[0], "W"))
    await run(http, sim, warm, body_for(prompt_posts("trace_04_img2img")[0], "W"))
    await warm.ws.close()
    a = await connect(http, sim, "A")
    b = await connect(http, sim, "B")
    bodies = prompt_posts("trace_07_routing")
    scenario = summary["scenarios"]["07_routing"]

    async with http.post(sim.url + "/prompt", json=body_for(bodies[0], None)) as resp:
        assert resp.status == 200
    for sock, name in ((a, "A"), (b, "B")):
        got = await sock.until("status(q=0)")
        assert order(got) == normalise(scenario["no_client_id"][name])

    async with http.post(sim.url + "/prompt", json=body_for(bodies[1], "ghost")) as resp:
        ghost_id = (await resp.json())["prompt_id"]
    for sock, name in ((a, "A"), (b, "B")):
        got = await sock.until("status(q=0)")
        assert order(got) == scenario["ghost_client_id"][name]
    assert sim.prompts[ghost_id].status == "success"
    for sock in (a, b):
        await sock.ws.close()


async def test_reconnect_with_same_client_id_goes_silent(
    recorded_sim: ComfyUISimulator, http: aiohttp.ClientSession, summary: dict[str, Any]
) -> None:
    sim = recorded_sim
    scenario = summary["scenarios"]["08_reconnect"]
    client_id = "probe-R-054e0ab3"
    r1 = await connect(http, sim, client_id)
    sim.step_time = 0.01
    body = body_for(prompt_posts("trace_08_reconnect")[0], client_id)
    async with http.post(sim.url + "/prompt", json=body) as resp:
        prompt_id = (await resp.json())["prompt_id"]
    got = await r1.until("progress:3:2/40")
    r1_expected = normalise(scenario["R1_order"])
    assert order(got) == r1_expected[1 : r1_expected.index("progress:3:2/40") + 1]

    r2 = RecordingSocket(await http.ws_connect(f"{sim.url}/ws?clientId={client_id}"))
    greeting = await r2.next()
    assert isinstance(greeting, dict)
    assert greeting["data"]["sid"] == client_id
    assert await r2.next() == {"type": "executing", "data": {"node": "3"}}
    later = [describe(await r2.next()) for _ in range(3)]
    assert later[0].startswith("progress_state[")
    assert later[1].startswith("progress:3:")
    assert sim.open_websockets == 2

    await r1.ws.close()  # unregisters the id: r2 stays open but receives nothing
    await sim.wait_until(lambda: sim.open_websockets == 1)
    sim.interrupt(prompt_id)
    await sim.wait_for_status(prompt_id, "interrupted")
    await sim.send_raw('{"type": "marker"}')
    while (message := await r2.next()) != {"type": "marker"}:
        # only frames already in flight before r1 closed: no interruption, no status
        assert isinstance(message, bytes) or message["type"] in ("progress_state", "progress")
    await r2.ws.close()


async def test_interrupt_targeted_and_idle(
    recorded_sim: ComfyUISimulator, http: aiohttp.ClientSession, summary: dict[str, Any]
) -> None:
    sim = recorded_sim
    scenario = summary["scenarios"]["09_interrupt"]
    sock = await connect(http, sim, "A")
    await run(http, sim, sock, body_for(prompt_posts("trace_01_txt2img")[0], "A"))
    bodies = prompt_posts("trace_09_interrupt")
    sim.step_time = 0.005
    async with http.post(sim.url + "/prompt", json=body_for(bodies[0], "A")) as resp:
        prompt_id = (await resp.json())["prompt_id"]
    got = await sock.until("progress:3:1/150")
    async with http.post(sim.url + "/interrupt", json={"prompt_id": "not-the-running-one"}) as r:
        assert r.status == 200
    got += await sock.until("progress:3:3/150")
    async with http.post(sim.url + "/interrupt", json={"prompt_id": prompt_id}) as r:
        assert r.status == 200
        assert await r.text() == ""
    got += await sock.until_done(prompt_id)
    expected = normalise(scenario["order"])
    assert order(got)[:10] == expected[:10]
    assert order(got)[-3:] == expected[-3:]
    interrupted = first_of(got, "execution_interrupted")["data"]
    assert interrupted.keys() == scenario["execution_interrupted_msg"]["data"].keys()
    assert (interrupted["node_id"], interrupted["node_type"], interrupted["executed"]) == (
        "3",
        "KSampler",
        ["5"],
    )
    async with http.get(f"{sim.url}/history/{prompt_id}") as resp:
        entry = (await resp.json())[prompt_id]
    assert entry["status"]["status_str"] == "error"
    assert entry["status"]["completed"] is False
    assert entry["status"]["messages"][-1][0] == "execution_interrupted"
    assert entry["outputs"] == {}

    sim.step_time = 0.0
    async with http.post(sim.url + "/interrupt", data=b"") as resp:  # idle global interrupt
        assert resp.status == 200
    _, messages = await run(http, sim, sock, body_for(bodies[1], "A"))
    assert order(messages) == normalise(scenario["next_job_after_idle_interrupt"])
    await sock.ws.close()


async def test_queue_ops(
    recorded_sim: ComfyUISimulator, http: aiohttp.ClientSession, summary: dict[str, Any]
) -> None:
    sim = recorded_sim
    scenario = summary["scenarios"]["10_queue_ops"]
    sock = await connect(http, sim, "A")
    bodies = [body_for(b, "A") for b in prompt_posts("trace_10_queue_ops")]
    sim.stall_next()
    ids = []
    for body in bodies:
        async with http.post(sim.url + "/prompt", json=body) as resp:
            ids.append((await resp.json())["prompt_id"])
        if len(ids) == 1:
            await sim.wait_for_status(ids[0], "running")
    running_id, pending_ids = ids[0], ids[1:]
    async with http.get(sim.url + "/queue") as resp:
        queue = await resp.json()
    assert [i[1] for i in queue["queue_running"]] == [running_id]
    pending = sorted((i[0], i[1]) for i in queue["queue_pending"])
    assert all(
        len(i) == scenario["queue_before"]["pending_item_len"] for i in queue["queue_pending"]
    )
    assert pending[0][0] < 0  # front=true
    assert pending[0][1] == pending_ids[-1]

    await sock.until(f"status(q={len(ids)})")
    async with http.post(sim.url + "/queue", json={"delete": [pending_ids[0]]}) as resp:
        assert resp.status == 200
        assert await resp.text() == ""
    assert order([await sock.next()]) == ["status(q=4)"]
    async with http.post(sim.url + "/queue", json={"delete": [running_id, "unknown"]}) as resp:
        assert resp.status == 200
    async with http.get(sim.url + "/queue") as resp:
        queue = await resp.json()
    assert [i[1] for i in queue["queue_running"]] == [running_id]
    assert len(queue["queue_pending"]) == 3
    async with http.post(sim.url + "/queue", json={"clear": True}) as resp:
        assert resp.status == 200
    assert order([await sock.next()]) == ["status(q=1)"]
    async with http.post(sim.url + "/interrupt", json={}) as resp:  # global
        assert resp.status == 200
    await sock.until_done(running_id)
    for prompt_id in pending_ids:
        assert sim.prompts[prompt_id].status == "deleted"
        async with http.get(f"{sim.url}/history/{prompt_id}") as resp:
            assert await resp.json() == {}
    assert sim.prompts[running_id].status == "interrupted"
    await sock.ws.close()


def _strip_tracebacks(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_tracebacks(v) for k, v in value.items() if k != "traceback"}
    if isinstance(value, list):
        return [_strip_tracebacks(v) for v in value]
    return value


async def test_validation_and_error_answers(
    recorded_sim: ComfyUISimulator, http: aiohttp.ClientSession, summary: dict[str, Any]
) -> None:
    sim = recorded_sim
    checked = 0
    partial_id = ""
    for record in trace("trace_11_errors"):
        if record["dir"] != "http":
            continue
        path: str = record["path"]
        if path.startswith("/history/") and "0000" not in path:
            continue  # ids of the recorded run
        headers = {}
        kwargs: dict[str, Any] = {}
        if "request_json" in record:
            kwargs["json"] = record["request_json"]
        elif "request_raw" in record:
            kwargs["data"] = record["request_raw"].encode()
            headers["Content-Type"] = "application/json"
        if record.get("label") == "Origin != Host":
            headers["Origin"] = "http://evil.example:8188"
        async with http.request(
            record["method"], sim.url + path, headers=headers, **kwargs
        ) as resp:
            label = record.get("label")
            assert resp.status == record["status"], (label, await resp.text())
            if "body_json" in record and record["status"] != 200:
                assert _strip_tracebacks(await resp.json()) == _strip_tracebacks(
                    record["body_json"]
                ), label
            elif "body_json" in record and path == "/prompt":
                answer = await resp.json()
                assert answer.keys() == record["body_json"].keys()
                assert answer["node_errors"] == record["body_json"]["node_errors"]
                if answer["node_errors"]:
                    partial_id = answer["prompt_id"]
            elif "body_text" in record:
                assert await resp.text() == record["body_text"], label
                if record["status"] == 500:
                    assert resp.content_type == "text/plain"
            checked += 1
    assert checked >= 30
    await sim.wait_for_status(partial_id, "success")
    scenario = summary["scenarios"]["11_errors"]
    assert sim.history[partial_id]["outputs"] == scenario["partially_valid_prompt_history_outputs"]

    # Rejected prompts produce no WebSocket traffic.
    sock = await connect(http, sim, "A")
    bad = {"prompt": {"1": {"class_type": "DoesNotExist", "inputs": {}}}, "client_id": "A"}
    async with http.post(sim.url + "/prompt", json=bad) as resp:
        assert resp.status == 400
    await sim.send_raw('{"type": "marker", "data": {}}', client_id="A")
    assert await sock.next() == {"type": "marker", "data": {}}
    await sock.ws.close()


async def test_value_bigger_than_max_and_combo_with_short_list(
    recorded_sim: ComfyUISimulator, http: aiohttp.ClientSession
) -> None:
    graph = copy.deepcopy(prompt_posts("trace_01_txt2img")[0]["prompt"])
    graph["3"]["inputs"]["denoise"] = 1.5
    graph["3"]["inputs"]["scheduler"] = "nope"
    async with http.post(recorded_sim.url + "/prompt", json={"prompt": graph}) as resp:
        body = await resp.json()
    assert resp.status == 400
    errors = body["node_errors"]["3"]["errors"]
    assert [e["type"] for e in errors] == ["value_not_in_list", "value_bigger_than_max"]
    assert errors[0]["extra_info"]["input_config"][0][0] == "simple"
    assert errors[1]["message"] == "Value 1.5 bigger than max of 1.0"


async def test_runtime_error(
    recorded_sim: ComfyUISimulator, http: aiohttp.ClientSession, summary: dict[str, Any]
) -> None:
    sim = recorded_sim
    scenario = summary["scenarios"]["12_runtime_error"]
    form = aiohttp.FormData()
    form.add_field("image", b"this is not an image", filename="probe_broken.png")
    async with http.post(sim.url + "/upload/image", data=form) as resp:
        assert await resp.json() == {"name": "probe_broken.png", "subfolder": "", "type": "input"}
    sock = await connect(http, sim, "A")
    await run(http, sim, sock, body_for(prompt_posts("trace_01_txt2img")[0], "A"))
    prompt_id, messages = await run(
        http, sim, sock, body_for(prompt_posts("trace_12_runtime_error")[0], "A")
    )
    assert order(messages) == scenario["order"]
    error = first_of(messages, "execution_error")["data"]
    expected = scenario["execution_error"]["data"]
    assert error.keys() == expected.keys()
    for key in ("node_id", "node_type", "executed", "exception_type", "current_inputs"):
        assert error[key] == expected[key]
    assert error["exception_message"].startswith("cannot identify image file")
    assert sorted(error["current_outputs"]) == sorted(expected["current_outputs"])
    entry = sim.history[prompt_id]
    assert entry["status"]["status_str"] == scenario["history_status"]["status_str"]
    assert entry["status"]["completed"] is False
    assert entry["outputs"] == scenario["history_outputs"]
    assert sim.prompts[prompt_id].status == "error"
    await sock.ws.close()


async def test_history_race(recorded_sim: ComfyUISimulator, http: aiohttp.ClientSession) -> None:
    sim = recorded_sim
    sim.history_delay = 0.05
    sock = await connect(http, sim, "A")
    async with http.post(
        sim.url + "/prompt", json=body_for(prompt_posts("trace_14_history_race")[0], "A")
    ) as resp:
        prompt_id = (await resp.json())["prompt_id"]
    await sock.until("execution_success")
    async with http.get(f"{sim.url}/history/{prompt_id}") as resp:
        assert await resp.json() == {}
    await sock.until_done(prompt_id)
    async with http.get(f"{sim.url}/history/{prompt_id}") as resp:
        assert list(await resp.json()) == [prompt_id]
    await sock.ws.close()


async def test_misc_prompt_options(
    recorded_sim: ComfyUISimulator, http: aiohttp.ClientSession, summary: dict[str, Any]
) -> None:
    sim = recorded_sim
    scenario = summary["scenarios"]["13_misc"]
    sock = await connect(http, sim, "A")
    records = [
        r
        for r in trace("trace_13_misc")
        if r["dir"] == "http" and r["path"] == "/prompt" and r["method"] == "POST"
    ]
    by_label = {r["label"]: r["request_json"] for r in records}
    custom = dict(by_label["client-chosen prompt_id"], client_id="A")
    async with http.post(sim.url + "/prompt", json=custom) as resp:
        first = await resp.json()
    assert first["prompt_id"] == custom["prompt_id"]
    await sock.until_done(first["prompt_id"])
    async with http.post(sim.url + "/prompt", json=custom) as resp:
        again = await resp.json()
    assert again["prompt_id"] == first["prompt_id"]
    assert again["number"] == first["number"] + 1
    await sock.until_done(first["prompt_id"])
    assert sim.accepted_prompt_ids.count(first["prompt_id"]) == 2

    explicit = dict(by_label["explicit number"], client_id="A")
    async with http.post(sim.url + "/prompt", json=explicit) as resp:
        answer = await resp.json()
    assert answer["number"] == scenario["explicit_number"]["number"]
    await sock.until_done(answer["prompt_id"])

    partial = body_for(by_label["partial_execution_targets=['19']"], "A")
    _, messages = await run(http, sim, sock, partial)
    assert order(messages) == normalise(scenario["partial_execution_targets"]["order"])

    preview = body_for(by_label["PreviewImage"], "A")
    prompt_id, messages = await run(http, sim, sock, preview)
    (image,) = first_of(messages, "executed")["data"]["output"]["images"]
    assert image["type"] == "temp"
    assert image["filename"].startswith("ComfyUI_temp_")
    async with http.get(
        sim.url + "/view", params={"filename": image["filename"], "type": "temp", "subfolder": ""}
    ) as resp:
        assert resp.status == 200
        assert (await resp.read()).startswith(b"\x89PNG")

    async with http.get(sim.url + "/history", params={"max_items": "2"}) as resp:
        last_two = list(await resp.json())
    assert last_two == list(sim.history)[-2:]
    async with http.get(sim.url + "/history", params={"max_items": "1", "offset": "0"}) as resp:
        assert list(await resp.json()) == list(sim.history)[:1]
    async with http.get(f"{sim.url}/api/jobs/{prompt_id}") as resp:
        job = await resp.json()
    assert set(job) <= set(scenario["api_job_detail_keys"])
    assert job["status"] == "completed"

    async with http.post(sim.url + "/history", json={"delete": [first["prompt_id"]]}) as resp:
        assert resp.status == 200
    async with http.get(f"{sim.url}/history/{first['prompt_id']}") as resp:
        assert await resp.json() == scenario["history_after_delete"]
    async with http.post(sim.url + "/free", json={"unload_models": True}) as resp:
        assert resp.status == scenario["free_status"]
    async with http.post(sim.url + "/history", json={"clear": True}) as resp:
        assert resp.status == 200
    async with http.get(sim.url + "/history") as resp:
        assert await resp.json() == scenario["history_after_clear"]
    await sock.ws.close()


async def test_read_endpoints(
    recorded_sim: ComfyUISimulator, http: aiohttp.ClientSession, summary: dict[str, Any]
) -> None:
    sim = recorded_sim
    expected = summary["scenarios"]["00_endpoints"]
    skipped = ("/internal/", "/view_metadata/")
    for record in trace("trace_00_endpoints"):
        if record["dir"] != "http" or record["path"].startswith(skipped):
            continue
        path = record["path"]
        async with http.get(sim.url + path) as resp:
            assert resp.status == record["status"], path
            if resp.status != 200:
                continue
            body = await resp.json()
        shape = expected.get(path, {})
        if "json_type" in shape:
            assert type(body).__name__ == shape["json_type"], path
        recorded: Any = record.get("body_json")
        if path.startswith("/object_info/") and path != "/object_info/LoadImage":
            assert body == recorded, path
        elif path == "/object_info/LoadImage":
            recorded["LoadImage"]["input"]["required"]["image"][0] = ["probe_src.png"]
            assert body == recorded
        elif path.endswith("/system_stats"):
            assert body.keys() == recorded.keys()
            assert body["system"].keys() == recorded["system"].keys()
            assert body["devices"][0].keys() == recorded["devices"][0].keys()
        elif path in ("/features", "/api/features", "/models/checkpoints", "/queue", "/prompt"):
            assert body == recorded, path
        elif path == "/object_info":
            assert {"KSampler", "LoadImage", "SaveImage", "FluxGuidance"} <= set(body)


async def test_upload_sequence(
    recorded_sim: ComfyUISimulator, http: aiohttp.ClientSession, summary: dict[str, Any]
) -> None:
    sim = recorded_sim
    expected = summary["scenarios"]["03_upload"]
    src = (sim.input_dir / "probe_src.png").read_bytes()
    other = sample_png(colour=(1, 2, 3))
    sub = {"subfolder": "probe_sub", "type": "input"}
    overwrite = {"overwrite": "true"}
    steps: list[tuple[str, str, bytes, dict[str, str]]] = [
        ("first upload", "probe_src.png", src, {}),
        ("same name, same bytes (dedupe by hash)", "probe_src.png", src, {}),
        ("same name, different bytes, no overwrite", "probe_src.png", other, {}),
        ("same name, different bytes, overwrite=true", "probe_src.png", other, overwrite),
        ("subfolder + type=input", "probe_src.png", src, sub),
        ("type=temp", "probe_tmp.png", src, {"type": "temp"}),
        ("final: restore src (overwrite=1)", "probe_src.png", src, {"overwrite": "1"}),
        ("garbage upload", "probe_broken.png", b"not a png", {}),
    ]
    for label, name, data, fields in steps:
        form = aiohttp.FormData()
        form.add_field("image", data, filename=name, content_type="image/png")
        for key, value in fields.items():
            form.add_field(key, value)
        async with http.post(sim.url + "/upload/image", data=form) as resp:
            assert resp.status == expected[label]["status"], label
            assert await resp.json() == expected[label]["body"], label
    form = aiohttp.FormData()
    form.add_field("subfolder", "x")
    async with http.post(sim.url + "/upload/image", data=form) as resp:
        assert resp.status == expected["no image field"]["status"]
    for params, label in (
        ({"filename": "probe_src.png", "type": "input"}, "view input"),
        ({"filename": "probe_src.png", "type": "input", **sub}, "view input subfolder"),
    ):
        async with http.get(sim.url + "/view", params=params) as resp:
            assert resp.status == expected[label]["status"]
            assert await resp.read() == src
