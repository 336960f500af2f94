"""The recipe options of ``dreamgen`` (``--lora``, ``--controlnet``, ``--pad``) and the
inpaint command's pairing of images with masks, each checked before any job runs (a usage
error is exit status 2).

Image + mask pairs: ``dreamgen inpaint IMAGE MASK PROMPT``; or ``IMAGE`` (a file or a folder)
whose masks are found by name: ``frame_0001.png`` + ``frame_0001_mask.png`` next to it
(``--mask-suffix``), or ``frame_0001.png`` in ``--masks DIR``. An image without a mask uses
its own alpha (transparent = repaint), and is a usage error when it has none.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
from PIL import Image, UnidentifiedImageError

from dreamgen_async.cli.display import Tally, consoles
from dreamgen_async.cli.options import IMAGE_SUFFIXES, ModelChoice, Options
from dreamgen_async.cli.runner import builder_for, run_requests
from dreamgen_async.errors import MaskError, WorkflowError
from dreamgen_async.generator import ControlNetInput, Request
from dreamgen_async.workflows.masks import MaskAspectWarning, alpha_mask, prepare_mask

__all__ = [
    "Pair",
    "check_pairs",
    "find_pairs",
    "parse_controlnet",
    "parse_lora",
    "parse_pad",
    "recipe_options",
    "recipes_from",
    "run_recipes",
]

F = TypeVar("F", bound=Callable[..., Any])


# ---------------------------------------------------------------------------- options


def recipe_options(func: F) -> F:
    """``--lora`` (repeatable), ``--controlnet`` and ``--canny`` (txt2img, img2img, inpaint)."""
    func = click.option(
        "--canny",
        is_flag=True,
        help="Turn the --controlnet image into edges first (ComfyUI's core Canny node).",
    )(func)
    func = click.option(
        "--controlnet",
        default=None,
        metavar="MODEL:IMAGE[:STRENGTH]",
        help="Apply a ControlNet (the server's controlnet file) with a local control image; "
        "strength 0-10, 1.0 by default.",
    )(func)
    return click.option(
        "--lora",
        "loras",
        multiple=True,
        metavar="NAME[:STRENGTH]",
        help="Chain a LoRA (the server's loras file), strength 1.0 by default; repeatable.",
    )(func)


def parse_lora(text: str) -> tuple[str, float]:
    """``NAME[:STRENGTH]`` as ``(name, strength)``."""
    name, sep, tail = text.rpartition(":")
    if sep:
        try:
            strength = float(tail)
        except ValueError:
            raise click.BadParameter(
                f"{text!r}: the strength after ':' must be a number, e.g. detail.safetensors:0.8",
                param_hint="'--lora'",
            ) from None
    else:
        name, strength = text, 1.0
    if not name.strip():
        raise click.BadParameter(f"{text!r} names no LoRA", param_hint="'--lora'")
    return name, strength


def parse_controlnet(text: str | None, canny: bool) -> ControlNetInput | None:
    """``MODEL:IMAGE[:STRENGTH]``: the control image must exist."""
    if text is None:
        if canny:
            raise click.BadParameter("--canny needs --controlnet", param_hint="'--canny'")
        return None
    parts = text.split(":")
    strength = 1.0
    if len(parts) == 3:
        try:
            strength = float(parts[2])
        except ValueError:
            parts = []
    if len(parts) not in (2, 3) or not all(parts[:2]):
        raise click.BadParameter(
            f"{text!r} is not MODEL:IMAGE[:STRENGTH], e.g. control_canny.safetensors:edges.png:0.8",
            param_hint="'--controlnet'",
        )
    image = Path(parts[1])
    if not image.is_file():
        raise click.BadParameter(
            f"the control image {parts[1]!r} is not a file", param_hint="'--controlnet'"
        )
    return ControlNetInput(parts[0], image, strength, preprocessor="canny" if canny else None)


def recipes_from(kwargs: dict[str, Any]) -> tuple[tuple[tuple[str, float], ...], Any]:
    """Pop the recipe options: ``(loras, controlnet)``."""
    loras = tuple(parse_lora(text) for text in kwargs.pop("loras"))
    return loras, parse_controlnet(kwargs.pop("controlnet"), kwargs.pop("canny"))


def parse_pad(text: str | None) -> tuple[int, int, int, int] | None:
    """``--pad left,top,right,bottom`` in pixels."""
    if text is None:
        return None
    try:
        left, top, right, bottom = (int(part) for part in text.split(","))
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not LEFT,TOP,RIGHT,BOTTOM in pixels, e.g. 0,0,128,0",
            param_hint="'--pad'",
        ) from None
    if min(left, top, right, bottom) < 0 or not any((left, top, right, bottom)):
        raise click.BadParameter(
            f"{text!r}: each side is 0 or more pixels, and one at least above 0",
            param_hint="'--pad'",
        )
    return left, top, right, bottom


# ---------------------------------------------------------------------------- pairs


@dataclass(frozen=True)
class Pair:
    """An image to inpaint and its mask file (``None``: the image's alpha)."""

    image: Path
    mask: Path | None


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _mask_for(image: Path, folder: Path, stem: str) -> Path | None:
    """``folder/<stem><suffix>`` for the image's suffix first, then any image suffix."""
    for suffix in (image.suffix, *sorted(IMAGE_SUFFIXES)):
        for candidate in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def find_pairs(args: Sequence[str], mask_suffix: str, masks: Path | None) -> list[Pair]:
    """The images of ``IMAGE [MASK]`` (IMAGE a file or a folder), each with its mask."""
    if len(args) == 2:
        image, mask = Path(args[0]), Path(args[1])
        if image.is_dir():
            raise click.UsageError(
                f"{args[0]!r} is a folder: give its masks with --masks DIR or --mask-suffix, "
                "not as a second argument"
            )
        if not mask.is_file():
            raise click.UsageError(f"the mask {args[1]!r} is not a file")
        return [Pair(image, mask)]
    if len(args) != 1:
        raise click.UsageError(
            "the arguments are IMAGE [MASK] PROMPT (IMAGE a file or a folder of images)"
        )
    path = Path(args[0])
    if path.is_dir():
        images = _images(path)
        if masks is None:  # the masks are among the images: not images to inpaint
            images = [p for p in images if not (mask_suffix and p.stem.endswith(mask_suffix))]
    else:
        images = [path]
    pairs = []
    for image in images:
        if masks is not None:
            found = _mask_for(image, masks, image.stem)
        elif mask_suffix:  # (an empty suffix would pair each image with itself)
            found = _mask_for(image, image.parent, f"{image.stem}{mask_suffix}")
        else:
            found = None
        pairs.append(Pair(image, found))
    return pairs


def _check_mask(pair: Pair, mask: Path) -> str | None:
    """Check a mask file against its image; a warning to print (its shape differs), or None."""
    try:
        with Image.open(pair.image) as img:
            size = img.size
    except (OSError, UnidentifiedImageError, ValueError):
        return None  # the image's own job reports it, by name
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MaskAspectWarning)
        prepare_mask(mask.read_bytes(), size, source=str(mask))
    return str(caught[0].message) if caught else None


def check_pairs(pairs: Sequence[Pair], *, outpaint: bool) -> list[str]:
    """Every mask an image, with something to repaint; every image without a mask has an
    alpha that masks something (unless outpainting). Returns the warnings to print.

    Raises:
        click.UsageError: The first pair that cannot be used, naming it.
    """
    notes = []
    for pair in pairs:
        try:
            if pair.mask is not None:
                note = _check_mask(pair, pair.mask)
                if note is not None:
                    notes.append(note)
            elif not outpaint and pair.image.is_file():
                alpha_mask(pair.image.read_bytes(), source=str(pair.image))
        except MaskError as exc:
            raise click.UsageError(f"{exc}{_mask_hint(pair)}") from exc
        except OSError as exc:
            raise click.UsageError(f"cannot read the mask of {pair.image}: {exc}") from exc
    return notes


def _mask_hint(pair: Pair) -> str:
    if pair.mask is not None:
        return ""
    return " (and no mask file was found for it: see --mask-suffix and --masks)"


# ---------------------------------------------------------------------------- running


async def run_recipes(
    opts: Options,
    requests: Sequence[Request],
    labels: Sequence[str],
    output: Path,
    choice: ModelChoice,
    journal: Path | None,
    loras: Sequence[tuple[str, float]] = (),
    controlnet: ControlNetInput | None = None,
) -> Tally:
    """:func:`run_requests`, after checking the LoRA and ControlNet names against the
    server's files (a usage error that lists what the server has)."""
    if not loras and controlnet is None:
        return await run_requests(opts, requests, labels, output, choice, consoles(), journal)
    builder = await builder_for(opts, choice)
    try:
        if loras:
            builder.with_loras(loras)
        if controlnet is not None:
            builder.with_controlnet(controlnet.model, "control.png")
    except WorkflowError as exc:
        option = "--lora" if exc.input_name == "loras" else "--controlnet"
        raise click.BadParameter(str(exc), param_hint=f"'{option}'") from exc
    return await run_requests(opts, requests, labels, output, builder, consoles(), journal)
