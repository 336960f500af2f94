"""Sample input images for the demo, drawn on the fly (no binary files in the package)."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw

__all__ = ["sample_image", "write_samples"]

_PALETTE = [
    ((255, 94, 77), (30, 60, 140)),
    ((255, 200, 87), (120, 40, 90)),
    ((80, 200, 160), (20, 30, 60)),
    ((200, 220, 255), (90, 60, 30)),
]


def sample_image(index: int, size: int = 128) -> bytes:
    """A deterministic PNG: a two-colour gradient with a few shapes, different per index."""
    top, bottom = _PALETTE[index % len(_PALETTE)]
    img = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(img)
    for y in range(size):
        t = y / (size - 1)
        colour = tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
        draw.line([(0, y), (size, y)], fill=colour)
    step = size // 8
    for k in range(3):
        x = (index * 3 + k * 5) % 6 * step + step // 2
        draw.ellipse([x, x // 2 + step, x + 2 * step, x // 2 + 3 * step], outline=(255, 255, 255))
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def write_samples(folder: Path, count: int, size: int = 128) -> list[Path]:
    """Write ``count`` sample PNGs named ``sample_00.png``... into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"sample_{i:02d}.png"
        path.write_bytes(sample_image(i, size))
        paths.append(path)
    return paths
