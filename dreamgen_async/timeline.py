"""Where the time went: each server's busy / idle / model-load spans, and a picture of them.

Pure (no asyncio, no I/O but :func:`write_svg`'s one file write). :class:`SpanRecorder`
keeps a bounded ring of :class:`Span` per server, fed one finished job at a time (the
:class:`~dreamgen_async.pool.ComfyUIPool` feeds one: ``pool.spans()``); :func:`render_svg`
draws spans as one lane per server, time running right, coloured by checkpoint, loads
hatched darker and idle time left grey.

The SVG is written by hand rather than with matplotlib: a few rectangles and labels are
about a hundred lines, need no dependency (users get ``--timeline FILE`` without an extra),
and the output is small, diffable text that renders on GitHub as it is.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

__all__ = ["Span", "SpanKind", "SpanRecorder", "render_svg", "write_svg"]


class SpanKind(enum.Enum):
    """What a server did during a span."""

    BUSY = "busy"  # running one of our jobs
    LOAD = "load"  # loading the checkpoint of the job that follows
    IDLE = "idle"  # nothing of ours running, between two of our jobs


@dataclass(frozen=True, slots=True)
class Span:
    """One stretch of a server's time.

    Attributes:
        server: The server (its URL, credentials never shown).
        kind: Busy, load or idle.
        start, end: Epoch seconds (``time.time()``).
        model: The checkpoint loaded (busy, idle) or being loaded (load); ``None``: none named.
        prompt_id: The job (busy and load spans).
    """

    server: str
    kind: SpanKind
    start: float
    end: float
    model: str | None = None
    prompt_id: str | None = None

    @property
    def seconds(self) -> float:
        return self.end - self.start


class SpanRecorder:
    """The last ``capacity`` spans of each server, fed by :meth:`job`.

    A job's time is from the start of its execution to its end as the client saw them; a
    server runs one prompt at a time, so a job starting before the previous one ended starts
    at that end. A gap between two jobs is an idle span. A job that loaded another model
    is split into a load span and a busy span, the busy part being the server's usual time
    for a job of that model (``plain``, when known; the whole job is a load otherwise).
    """

    def __init__(self, capacity: int = 1000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._rings: dict[str, deque[Span]] = {}
        self._last_end: dict[str, float] = {}

    def add_server(self, server: str) -> None:
        """Give ``server`` a lane (empty until its first job)."""
        self._rings.setdefault(server, deque(maxlen=self.capacity))

    def job(
        self,
        server: str,
        start: float,
        end: float,
        *,
        model: str | None,
        loaded: bool = False,
        plain: float | None = None,
        prompt_id: str | None = None,
    ) -> None:
        """Record one finished job (``loaded``: it loaded ``model`` first)."""
        self.add_server(server)
        ring = self._rings[server]
        last = self._last_end.get(server)
        if last is not None:
            if start > last:
                ring.append(Span(server, SpanKind.IDLE, last, start, ring[-1].model, None))
            start = max(start, last)
        end = max(end, start)
        if loaded:
            split = end if plain is None else max(start, end - plain)
            ring.append(Span(server, SpanKind.LOAD, start, split, model, prompt_id))
            start = split
        if end > start or not loaded:
            ring.append(Span(server, SpanKind.BUSY, start, end, model, prompt_id))
        self._last_end[server] = end

    def spans(self) -> dict[str, tuple[Span, ...]]:
        """Each server's spans, oldest first (servers in the order they were added)."""
        return {server: tuple(ring) for server, ring in self._rings.items()}


# ---------------------------------------------------------------------------- the picture

#: Checkpoint colours (the Okabe-Ito palette: distinguishable with colour-blindness).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442")
IDLE_COLOUR = "#E6E6E6"
LANE_HEIGHT = 28
LABEL_WIDTH = 210
PLOT_WIDTH = 760
TOP = 40


def _lanes(spans: Mapping[str, Iterable[Span]] | Iterable[Span]) -> dict[str, list[Span]]:
    if isinstance(spans, Mapping):
        return {str(server): list(lane) for server, lane in spans.items()}
    lanes: dict[str, list[Span]] = {}
    for span in spans:
        lanes.setdefault(span.server, []).append(span)
    return lanes


def _short(model: str) -> str:
    for suffix in (".safetensors", ".ckpt", ".gguf", ".sft", ".pth", ".pt", ".bin"):
        if model.endswith(suffix):
            return model[: -len(suffix)]
    return model


def _ticks(length: float) -> list[float]:
    """About six round tick values from 0 to ``length`` seconds."""
    raw = max(length, 1e-3) / 6
    steps = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
    step = next((s for s in steps if s >= raw), 600 * (raw // 600 + 1))
    count = int(length / step) + 1
    return [round(i * step, 6) for i in range(count)]


def render_svg(
    spans: Mapping[str, Iterable[Span]] | Iterable[Span],
    *,
    title: str | None = None,
    start: float | None = None,
) -> str:
    """An SVG document: one lane per server (``spans`` by server, or a flat iterable grouped
    by :attr:`Span.server`), time from ``start`` (default: the earliest span) to the last end,
    spans coloured by checkpoint (loads darker and striped, idle grey), a legend and an axis
    in seconds. Idle spans narrower than a pixel are not drawn: at the picture's scale they
    are the gaps between back-to-back jobs, and a mark for each would read as idle time."""
    lanes = _lanes(spans)
    every = [s for lane in lanes.values() for s in lane]
    origin = start if start is not None else min((s.start for s in every), default=0.0)
    length = max((s.end for s in every), default=origin) - origin
    scale = PLOT_WIDTH / length if length > 0 else 0.0
    models = sorted({s.model for s in every if s.model is not None})
    colour = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(models)}
    height = TOP + LANE_HEIGHT * len(lanes) + 60
    width = LABEL_WIDTH + PLOT_WIDTH + 20
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        "<defs>"
        '<pattern id="load" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="3" height="6" fill="#000" '
        'fill-opacity="0.35"/></pattern></defs>',
        f'<rect width="{width}" height="{height}" fill="#FFFFFF"/>',
    ]
    if title:
        out.append(f'<text x="10" y="20" font-size="14" font-weight="bold">{escape(title)}</text>')
    for row, (server, lane) in enumerate(lanes.items()):
        y = TOP + row * LANE_HEIGHT
        out.append(f'<g class="lane" data-server={quoteattr(server)}>')
        out.append(f'<text x="10" y="{y + 18}">{escape(server)}</text>')
        out.append(
            f'<rect x="{LABEL_WIDTH}" y="{y + 2}" width="{PLOT_WIDTH}" '
            f'height="{LANE_HEIGHT - 4}" fill="none" stroke="#CCCCCC"/>'
        )
        for span in lane:
            if span.kind is SpanKind.IDLE and span.seconds * scale < 1.0:
                continue  # narrower than a pixel: the gap between two back-to-back jobs
            out.extend(_rect(span, origin, scale, y, colour))
        out.append("</g>")
    out.extend(_axis(TOP + LANE_HEIGHT * len(lanes), length, scale))
    out.extend(_legend(colour, height - 18))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _rect(span: Span, origin: float, scale: float, y: int, colour: Mapping[str, str]) -> list[str]:
    x = LABEL_WIDTH + (span.start - origin) * scale
    w = max(span.seconds * scale, 0.5)
    fill = IDLE_COLOUR if span.kind is SpanKind.IDLE else colour.get(span.model or "", "#888888")
    tip = f"{span.kind.value} {span.seconds:.3f} s" + (f" {span.model}" if span.model else "")
    attrs = f'x="{x:.2f}" y="{y + 4}" width="{w:.2f}" height="{LANE_HEIGHT - 8}"'
    lines = [
        f'<rect class="{span.kind.value}" {attrs} fill="{fill}"><title>{escape(tip)}</title></rect>'
    ]
    if span.kind is SpanKind.LOAD:
        lines.append(f'<rect {attrs} fill="url(#load)"/>')
    return lines


def _axis(y: int, length: float, scale: float) -> list[str]:
    out = [
        f'<line x1="{LABEL_WIDTH}" y1="{y + 2}" x2="{LABEL_WIDTH + PLOT_WIDTH}" y2="{y + 2}" '
        'stroke="#444444"/>'
    ]
    for tick in _ticks(length):
        x = LABEL_WIDTH + tick * scale
        out.append(f'<line x1="{x:.2f}" y1="{y + 2}" x2="{x:.2f}" y2="{y + 7}" stroke="#444444"/>')
        out.append(f'<text x="{x:.2f}" y="{y + 20}" text-anchor="middle">{tick:g} s</text>')
    return out


def _legend(colour: Mapping[str, str], y: int) -> list[str]:
    items: list[tuple[str, str, bool]] = [(_short(m), c, False) for m, c in colour.items()]
    items += [("model load", "#888888", True), ("idle", IDLE_COLOUR, False)]
    out = []
    x = 10
    for label, fill, hatched in items:
        out.append(f'<rect x="{x}" y="{y - 10}" width="14" height="12" fill="{fill}"/>')
        if hatched:
            out.append(f'<rect x="{x}" y="{y - 10}" width="14" height="12" fill="url(#load)"/>')
        out.append(f'<text x="{x + 18}" y="{y}">{escape(label)}</text>')
        x += 30 + 7 * len(label)
    return out


def write_svg(
    spans: Mapping[str, Iterable[Span]] | Iterable[Span],
    path: str | Path,
    *,
    title: str | None = None,
    start: float | None = None,
) -> Path:
    """Write :func:`render_svg` of ``spans`` to ``path`` (UTF-8); returns the path."""
    target = Path(path)
    target.write_text(render_svg(spans, title=title, start=start), encoding="utf-8")
    return target
