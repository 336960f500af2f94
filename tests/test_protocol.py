"""The pure protocol layer, fed with every frame and body a real ComfyUI 0.8.0 sent."""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dreamgen_async.errors import ProtocolError
from dreamgen_async.protocol import (
    BinaryText,
    Executed,
    Executing,
    ExecutionCached,
    ExecutionErrorEvent,
    ExecutionInterruptedEvent,
    ExecutionStart,
    ExecutionSuccess,
    FeatureFlags,
    ImageRef,
    PreviewImage,
    Progress,
    ProgressState,
    Status,
    UnknownBinary,
    UnknownMessage,
    decode_text,
    event_from,
    loads_frame,
    parse_binary,
    parse_history,
    parse_node_errors,
    parse_output_images,
    parse_queue,
    parse_text,
    progress_only,
    queue_remaining_of,
)

TRACES = Path(__file__).parent / "fixtures" / "traces"

EXPECTED_TYPES = {
    "status": Status,
    "execution_start": ExecutionStart,
    "execution_cached": ExecutionCached,
    "executing": Executing,
    "progress": Progress,
    "progress_state": ProgressState,
    "executed": Executed,
    "execution_success": ExecutionSuccess,
    "execution_error": ExecutionErrorEvent,
    "execution_interrupted": ExecutionInterruptedEvent,
    "feature_flags": FeatureFlags,
}


def records(kind: str) -> Iterator[dict[str, Any]]:
    for path in sorted(TRACES.glob("trace_*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record["dir"] == kind:
                yield record


def test_every_recorded_text_frame_parses_to_its_typed_event() -> None:
    count = 0
    for record in records("ws_in"):
        if record["kind"] != "text":
            continue
        message = record["msg"]
        event = parse_text(json.dumps(message))
        assert isinstance(event, EXPECTED_TYPES[message["type"]])
        data = message["data"]
        if "prompt_id" in data and hasattr(event, "prompt_id"):
            assert event.prompt_id == data["prompt_id"]
        count += 1
    assert count > 500


def test_done_signal_and_reconnect_resend() -> None:
    done = parse_text('{"type": "executing", "data": {"node": null, "prompt_id": "p"}}')
    assert done == Executing(prompt_id="p", node=None)
    resend = parse_text('{"type": "executing", "data": {"node": "3"}}')
    assert resend == Executing(prompt_id=None, node="3")


def test_executed_collects_images_and_tolerates_null_output() -> None:
    executed = [
        parse_text(json.dumps(r["msg"]))
        for r in records("ws_in")
        if r["kind"] == "text" and r["msg"]["type"] == "executed"
    ]
    assert executed
    for event in executed:
        assert isinstance(event, Executed)
        assert all(isinstance(ref, ImageRef) for ref in event.images)
    assert any(ref.filename.endswith(".png") for e in executed for ref in e.images)  # type: ignore[union-attr]
    null = parse_text(
        '{"type": "executed", "data": {"node": "9", "output": null, "prompt_id": "p"}}'
    )
    assert isinstance(null, Executed)
    assert null.images == ()


def rebuild_binary(frame: dict[str, Any]) -> bytes:
    """Rebuild a recorded binary frame from its decoded headers (the trace keeps no pixels)."""
    event = frame["event"]
    if event == 1:
        return struct.pack(">II", 1, frame["image_type"]) + b"\xff\xd8" + b"\0" * 16
    if event == 4:
        meta = json.dumps(frame["metadata"]).encode()
        return struct.pack(">II", 4, len(meta)) + meta + b"\xff\xd8" + b"\0" * 16
    if event == 3:
        node = str(frame["node_id"]).encode()
        return struct.pack(">II", 3, len(node)) + node + str(frame["text"]).encode()
    raise AssertionError(f"unexpected binary event {event}")


def test_every_recorded_binary_frame_parses() -> None:
    kinds = set()
    for record in records("ws_in"):
        if record["kind"] != "binary":
            continue
        frame = record["frame"]
        event = parse_binary(rebuild_binary(frame))
        kinds.add(frame["event"])
        if frame["event"] == 1:
            assert isinstance(event, PreviewImage)
            assert event.prompt_id is None
            assert event.mime_type == "image/jpeg"
        elif frame["event"] == 4:
            assert isinstance(event, PreviewImage)
            assert event.prompt_id == frame["metadata"]["prompt_id"]
            assert event.node_id == frame["metadata"]["node_id"]
            assert event.data.startswith(b"\xff\xd8")
        else:
            assert event == BinaryText(node_id=frame["node_id"], text=frame["text"])
    assert kinds == {1, 3, 4}


def test_unknown_types_are_not_errors() -> None:
    assert parse_text('{"type": "crystools.monitor", "data": {"x": 1}}') == UnknownMessage(
        type="crystools.monitor", data={"x": 1}
    )
    assert parse_binary(struct.pack(">I", 99) + b"abc") == UnknownBinary(99, b"abc")


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        "[1, 2]",
        '{"data": {}}',
        '{"type": "progress", "data": {"value": "x", "max": 2}}',
        '{"type": "executed", "data": {"node": "9", "output": [1], "prompt_id": "p"}}',
        '{"type": "execution_start", "data": {"prompt_id": 5}}',
        '{"type": "status", "data": {"status": null}}',
        '{"type": "status", "data": []}',
    ],
)
def test_malformed_text_frames_raise_protocol_error(frame: str) -> None:
    with pytest.raises(ProtocolError):
        parse_text(frame)


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x00\x00",
        struct.pack(">I", 1),
        struct.pack(">II", 4, 1 << 31) + b"{}",
        struct.pack(">II", 4, 2) + b"[]",
        struct.pack(">II", 4, 3) + b"{x}",
        struct.pack(">II", 3, 10) + b"abc",
        struct.pack(">II", 3, 1) + b"\xff\xfe",
    ],
)
def test_malformed_binary_frames_raise_protocol_error(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_binary(frame)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_binary_parser_raises_only_protocol_error(frame: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        parse_binary(frame)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([*EXPECTED_TYPES, "other"]), json_values)
def test_text_parser_raises_only_protocol_error(kind: str, data: Any) -> None:
    with contextlib.suppress(ProtocolError):
        parse_text(json.dumps({"type": kind, "data": data}))


image_records = st.fixed_dictionaries(
    {"filename": st.text(max_size=8) | st.integers()},
    optional={"subfolder": json_values, "type": json_values, "format": json_values},
)
ui_outputs = st.none() | st.dictionaries(
    st.sampled_from(["images", "gifs", "audio", "text", "animated", "other"]),
    st.lists(image_records | json_values, max_size=3) | json_values,
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(ui_outputs)
def test_an_executed_events_images_are_its_image_files(output: Any) -> None:
    """``Executed.images`` (made from the files parsed once) is what parse_output_images
    makes of the same ui output."""
    frame = {"type": "executed", "data": {"prompt_id": "p", "node": "9", "output": output}}
    with contextlib.suppress(ProtocolError):
        event = parse_text(json.dumps(frame))
        assert isinstance(event, Executed)
        assert event.images == parse_output_images(output)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([*EXPECTED_TYPES, "other"]), json_values)
def test_a_decoded_message_parses_as_its_frame(kind: str, data: Any) -> None:
    """Decoding, then parsing (what a job does with a progress-only message someone listens
    to) gives the event, or the error, that parsing the frame gives."""
    frame = json.dumps({"type": kind, "data": data})
    try:
        expected: Any = parse_text(frame)
    except ProtocolError as exc:
        expected = str(exc)
    decoded = decode_text(frame)
    try:
        got: Any = event_from(*decoded)
    except ProtocolError as exc:
        got = str(exc)
    assert got == expected
    if progress_only(*decoded):  # routed by its prompt_id before it is parsed
        assert isinstance(got, str | Progress | ProgressState | Executing)
        assert isinstance(got, str) or got.prompt_id == decoded[1].get("prompt_id")
    if kind == "status":  # read for its queue length only, checked the same way
        try:
            remaining: Any = queue_remaining_of(decoded[1])
        except ProtocolError as exc:
            remaining = str(exc)
        assert remaining == (got if isinstance(got, str) else got.queue_remaining)


@pytest.mark.parametrize(
    "data",
    [
        {"status": {"exec_info": {"queue_remaining": 3}}, "sid": "abc"},
        {"status": {"exec_info": {"queue_remaining": 2.0}}},
        {"status": {"exec_info": {"queue_remaining": "2"}}},
        {"status": {"exec_info": {}}},
        {"status": []},
        [],
        None,
    ],
)
def test_a_status_queue_length_is_read_as_its_event_says(data: Any) -> None:
    """The multiplexer reads only ``queue_remaining`` of a status: the same number, or the
    same error, as the parsed :class:`Status` (the property test above draws the rest)."""
    frame = json.dumps({"type": "status", "data": data})
    try:
        expected: Any = parse_text(frame)
        assert isinstance(expected, Status)
        expected = expected.queue_remaining
    except ProtocolError as exc:
        expected = str(exc)
    try:
        got: Any = queue_remaining_of(data)
    except ProtocolError as exc:
        got = str(exc)
    assert got == expected


def _loaded(loads: Callable[[Any], Any], frame: str | bytes) -> str:
    """What ``loads`` makes of ``frame``: its value's repr, or its error's type and text."""
    try:
        return repr(loads(frame))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


@settings(max_examples=500, deadline=None)
@given(
    json_values,
    st.sampled_from([None, 0, 2]),
    st.sampled_from(["", " ", "\n", "x", "{}"]),
    st.sampled_from(["", " ", "\t"]),
    st.booleans(),
)
def test_a_frame_loads_as_json_loads_loads_it(
    value: Any, indent: int | None, after: str, before: str, as_bytes: bool
) -> None:
    """The scanner's short cut gives json.loads' value, or its error, for every frame:
    spaces around it, trailing data, bytes."""
    text = before + json.dumps(value, indent=indent) + after
    frame = text.encode() if as_bytes else text
    assert _loaded(loads_frame, frame) == _loaded(json.loads, frame)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet='{}[]":,0123456789.eE+-tfrunalsNIy \\\n', max_size=30))
def test_any_text_loads_as_json_loads_loads_it(frame: str) -> None:
    assert _loaded(loads_frame, frame) == _loaded(json.loads, frame)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_text_parser_survives_arbitrary_text(frame: str) -> None:
    with contextlib.suppress(ProtocolError):
        parse_text(frame)


def http_bodies(path_prefix: str) -> Iterator[dict[str, Any]]:
    for record in records("http"):
        body = record.get("body_json")
        # Very large bodies were recorded as a "<json N bytes>" placeholder.
        if record["path"].startswith(path_prefix) and isinstance(body, dict):
            yield record


def test_recorded_history_entries_parse() -> None:
    parsed = 0
    for record in http_bodies("/history/"):
        prompt_id = record["path"].split("/history/", 1)[1].split("?")[0]
        result = parse_history(prompt_id, record["body_json"])
        if record["body_json"] == {}:
            assert result is None
            continue
        assert result is not None
        assert result.status in ("success", "error")
        parsed += 1
    assert parsed > 5


def test_history_tells_interrupted_and_error_apart() -> None:
    interrupted = failed = 0
    for record in http_bodies("/history"):
        for prompt_id in record["body_json"]:
            result = parse_history(prompt_id, record["body_json"])
            if result is None:
                continue
            interrupted += result.interrupted
            failed += result.error is not None
            if result.error is not None:
                assert result.error.node_type == "LoadImage"
    assert interrupted
    assert failed


def test_recorded_queues_parse_in_run_order() -> None:
    seen_pending = False
    for record in http_bodies("/queue"):
        if record["method"] != "GET":
            continue
        state = parse_queue(record["body_json"])
        numbers = [item.number for item in state.pending]
        assert numbers == sorted(numbers)
        seen_pending |= bool(state.pending)
        for item in state.running:
            assert item.prompt_id in state
            assert state.is_running(item.prompt_id)
    assert seen_pending


def test_node_errors_name_node_input_and_choices() -> None:
    rejected = [r for r in records("http") if r["path"] == "/prompt" and r["status"] == 400]
    by_label = {r["label"]: r["body_json"] for r in rejected}
    errors = parse_node_errors(by_label["non-existent ckpt_name"]["node_errors"])
    (error,) = errors
    assert (error.node_id, error.class_type, error.input_name) == (
        "4",
        "CheckpointLoaderSimple",
        "ckpt_name",
    )
    assert error.type == "value_not_in_list"
    assert "tiny-sd15.safetensors" in str(error)
    missing = parse_node_errors(by_label["missing node input (KSampler.model)"]["node_errors"])
    assert [(e.node_id, e.input_name, e.type) for e in missing] == [
        ("3", "model", "required_input_missing")
    ]
    for body in by_label.values():
        for e in parse_node_errors(body["node_errors"]):
            assert e.node_id in str(e)


def test_node_errors_tolerate_garbage() -> None:
    assert parse_node_errors(None) == ()
    assert parse_node_errors({"1": "x", "2": {"errors": ["y", {"type": "t"}]}})[0].type == "t"
