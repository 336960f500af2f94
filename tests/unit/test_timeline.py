"""timeline.py with plain data: the span ring, and the SVG it draws."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from dreamgen_async.timeline import Span, SpanKind, SpanRecorder, render_svg, write_svg

SVG = "{http://www.w3.org/2000/svg}"


def test_jobs_become_busy_idle_and_load_spans() -> None:
    r = SpanRecorder()
    r.add_server("b")  # a lane with no job yet
    r.job("a", 10.0, 11.5, model="A", loaded=True, plain=0.5, prompt_id="p1")
    r.job("a", 11.4, 12.0, model="A", prompt_id="p2")  # overlaps: starts at the last end
    r.job("a", 13.0, 13.5, model="B", loaded=True, prompt_id="p3")  # no plain time: all load
    lanes = r.spans()
    assert list(lanes) == ["b", "a"]
    assert lanes["b"] == ()
    assert [(s.kind, s.start, s.end, s.model) for s in lanes["a"]] == [
        (SpanKind.LOAD, 10.0, 11.0, "A"),
        (SpanKind.BUSY, 11.0, 11.5, "A"),
        (SpanKind.BUSY, 11.5, 12.0, "A"),
        (SpanKind.IDLE, 12.0, 13.0, "A"),  # idle with A still loaded
        (SpanKind.LOAD, 13.0, 13.5, "B"),
    ]
    assert lanes["a"][1].prompt_id == "p1"
    assert lanes["a"][3].prompt_id is None


def test_the_ring_is_bounded_per_server() -> None:
    r = SpanRecorder(capacity=3)
    for i in range(10):
        r.job("a", float(i), i + 0.5, model="A")
        r.job("b", float(i), i + 1.0, model="A")
    a, b = r.spans().values()
    assert len(a) == len(b) == 3
    assert a[-1].end == 9.5  # the newest kept
    assert all(s.kind is SpanKind.BUSY for s in b)  # back to back: no idle
    with pytest.raises(ValueError, match="at least 1"):
        SpanRecorder(0)


def test_the_svg_is_well_formed_with_one_lane_per_server(tmp_path: Path) -> None:
    spans = {
        "http://a<&>": (
            Span("http://a<&>", SpanKind.LOAD, 0.0, 1.0, "x.safetensors"),
            Span("http://a<&>", SpanKind.BUSY, 1.0, 2.0, "x.safetensors", "p"),
            Span("http://a<&>", SpanKind.IDLE, 2.0, 2.5, "x.safetensors"),
        ),
        "http://b": (Span("http://b", SpanKind.BUSY, 0.5, 3.0, "y.ckpt"),),
        "http://c": (),
    }
    path = write_svg(spans, tmp_path / "t.svg", title="a <run>")
    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG}svg"
    lanes = root.findall(f"{SVG}g[@class='lane']")
    assert [g.get("data-server") for g in lanes] == list(spans)
    kinds = [[r.get("class") for r in g.findall(f"{SVG}rect") if r.get("class")] for g in lanes]
    assert kinds == [["load", "busy", "idle"], ["busy"], []]
    # Time runs right: the first span starts at the plot's left edge, the last ends at its
    # right edge; the two checkpoints have two colours; the legend names them.
    a_load, a_busy = lanes[0].findall(f"{SVG}rect[@class]")[:2]
    assert float(a_load.get("x", "")) < float(a_busy.get("x", ""))
    assert a_load.get("fill") != lanes[1].find(f"{SVG}rect[@class='busy']").get("fill")  # type: ignore[union-attr]
    texts = {t.text for t in root.iter(f"{SVG}text")}
    assert {"a <run>", "x", "y", "model load", "idle", "0 s"} <= texts


def test_a_flat_list_of_spans_and_an_empty_one_draw_too() -> None:
    flat = [Span("s1", SpanKind.BUSY, 0.0, 1.0, None), Span("s2", SpanKind.BUSY, 0.0, 2.0, "m")]
    root = ET.fromstring(render_svg(flat))
    assert len(root.findall(f"{SVG}g[@class='lane']")) == 2
    assert ET.fromstring(render_svg({})).tag == f"{SVG}svg"


def test_idle_gaps_narrower_than_a_pixel_are_not_drawn() -> None:
    """Back-to-back jobs leave sub-millisecond gaps; at a picture's scale they are no idle time."""
    lane = [Span("a", SpanKind.BUSY, 0.0, 1.0, "m"), Span("a", SpanKind.IDLE, 1.0, 1.0001, "m")]
    lane += [Span("a", SpanKind.BUSY, 1.0001, 5.0, "m"), Span("a", SpanKind.IDLE, 5.0, 9.0, "m")]
    lane += [Span("a", SpanKind.BUSY, 9.0, 10.0, "m")]
    root = ET.fromstring(render_svg({"a": lane}))
    kinds = [r.get("class") for r in root.iter(f"{SVG}rect") if r.get("class")]
    assert kinds == ["busy", "busy", "idle", "busy"]  # the 0.1 ms gap is gone, 4 s stays
