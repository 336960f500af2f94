"""Files: input checks and hashing, output names, atomic writes.

Inputs are checked (exists, not empty, an image, within the size limits) before any network
call and named by content hash. Outputs are written atomically (a staging file, then a
rename) under names *we* choose — never a server-supplied path — and a write that fails
leaves nothing partial behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import itertools
import os
import re
import uuid
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from dreamgen_async.comfyui_api import BIG_BODY
from dreamgen_async.errors import InputImageError, MaskError, WorkflowError
from dreamgen_async.protocol import AUDIO_SUFFIXES, VIDEO_SUFFIXES, OutputFile, sniff_image_format
from dreamgen_async.requests import describe_input, encode_pil
from dreamgen_async.workflows.masks import PreparedMask, prepare_mask

__all__ = [
    "UPLOAD_SUBFOLDER",
    "InputLimits",
    "copy_atomically",
    "fit_within",
    "node_labels",
    "output_name",
    "output_suffix",
    "read_input",
    "read_input_hashed",
    "read_mask",
    "safe_stem",
    "sha256",
    "sweep_staging",
    "write_outputs",
]

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
#: The server-side folder inputs are uploaded into (``dreamgen/<hash><suffix>``).
UPLOAD_SUBFOLDER = "dreamgen"


# ---------------------------------------------------------------------------- names


def output_name(
    stem: str, seed: int | None, tag: str, index: int, suffix: str, node: str | None = None
) -> str:
    """``<stem>[_<seed>]_<tag>[_<node>]_<index><suffix>``: the file name of one output image
    (``node``: the label of the node that made it, see :func:`node_labels`)."""
    seed_part = f"_{seed}" if seed is not None else ""
    node_part = f"_{node}" if node else ""
    return f"{stem}{seed_part}_{tag}{node_part}_{index}{suffix}"


def node_labels(workflow: Mapping[str, Any], nodes: Sequence[str]) -> list[str | None]:
    """The label each output's node gives its file name: ``None`` for every output when they
    all come from one node (names as they always were); otherwise the node's title (as the
    workflow's ``_meta.title`` gives it, made file-name safe) when no other output node has
    the same title, else its id."""
    distinct = list(dict.fromkeys(nodes))
    if len(distinct) <= 1:
        return [None] * len(nodes)
    titles: dict[str, str] = {}
    for node_id in distinct:
        node = workflow.get(node_id)
        meta = node.get("_meta") if isinstance(node, Mapping) else None
        title = meta.get("title") if isinstance(meta, Mapping) else None
        if isinstance(title, str) and title.strip():
            titles[node_id] = safe_stem(title, default="")
    counts = Counter(titles.values())
    label = {
        node_id: titles[node_id]
        if titles.get(node_id) and counts[titles[node_id]] == 1
        else safe_stem(node_id, default="node")
        for node_id in distinct
    }
    return [label[node_id] for node_id in nodes]


def safe_stem(name: str, default: str = "image") -> str:
    """A file-name stem with no path separators, no leading dots, at most 80 characters."""
    stem = _SAFE.sub("_", _last_part(name.replace("\\", "/")).replace("\0", ""))
    stem = stem.lstrip(".")[:80].strip("_")
    return stem or default


def _last_part(path: str) -> str:
    """``PurePosixPath(path).name``, without building a path (once per request): the last
    part that is neither empty nor ``.``, or ``""``."""
    return next((part for part in reversed(path.split("/")) if part and part != "."), "")


_FORMAT_SUFFIXES = {"jpeg": ".jpg", "tiff": ".tif"}
_DEFAULT_SUFFIXES = {"video": ".mp4", "audio": ".flac", "text": ".txt", "other": ".bin"}


def output_suffix(file: OutputFile, data: bytes) -> str:
    """The suffix we write an output under: images by their magic bytes, other kinds by
    the server's suffix when it is a known one for the kind, else a default per kind."""
    if file.kind in ("image", "animated"):
        fmt = sniff_image_format(data) or "png"
        return _FORMAT_SUFFIXES.get(fmt, f".{fmt}")
    if file.kind == "text":
        return ".txt"
    suffix = PurePosixPath(file.filename).suffix.lower()
    known = {"video": VIDEO_SUFFIXES, "audio": AUDIO_SUFFIXES}.get(file.kind)
    if (known is not None and suffix in known) or (
        file.kind == "other" and re.fullmatch(r"\.[a-z0-9]{1,8}", suffix)
    ):
        return suffix
    return _DEFAULT_SUFFIXES[file.kind]


# ---------------------------------------------------------------------------- inputs


def verify_image(data: bytes, source: str, max_pixels: int) -> str:
    """Check that ``data`` decodes as an image; return its file suffix."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                fmt = (img.format or "PNG").lower()
                img.verify()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputImageError(
            f"{source}: the image is too large for Pillow to open safely ({exc}); "
            f"downscale it (max_input_pixels is {max_pixels})",
            source=source,
        ) from exc
    except UnidentifiedImageError as exc:
        raise InputImageError(
            f"{source}: not a readable image (not PNG, JPEG, WEBP or another known format)",
            source=source,
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        detail = re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "the data", str(exc))
        raise InputImageError(
            f"{source}: not a readable image (it looks damaged: {detail})", source=source
        ) from exc
    if width * height > max_pixels:
        raise InputImageError(
            f"{source}: image is {width}x{height} = {width * height} pixels, over "
            f"max_input_pixels={max_pixels}; pass max_side= to downscale it, or raise "
            "DreamGenerator(max_input_pixels=...)",
            source=source,
        )
    return {"jpeg": ".jpg"}.get(fmt, f".{fmt}")


async def sha256(data: bytes) -> str:
    """The hex digest; in a worker thread for large data (10 MB take ~10 ms to hash)."""
    if len(data) > BIG_BODY:
        return await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
    return hashlib.sha256(data).hexdigest()


def fit_within(width: int, height: int, max_side: int, multiple: int = 8) -> tuple[int, int]:
    """The size to downscale ``width`` x ``height`` to so that its longer side is at most
    ``max_side``: aspect kept, both sides a multiple of ``multiple``. Unchanged if it fits."""
    if max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    limit = max(multiple, max_side // multiple * multiple)

    def side(value: int) -> int:
        return min(limit, max(multiple, round(value * scale / multiple) * multiple))

    return side(width), side(height)


def downscale(data: bytes, source: str, max_side: int, multiple: int) -> bytes:
    """Runs in a worker thread: ``data`` re-encoded as PNG within ``max_side`` (EXIF
    orientation applied first, as ComfyUI's LoadImage does), or ``data`` if it fits."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                size = fit_within(img.width, img.height, max_side, multiple)
                if size == img.size:
                    return data
                upright = ImageOps.exif_transpose(img)
                size = fit_within(upright.width, upright.height, max_side, multiple)
                mode = "RGBA" if "A" in upright.getbands() else "RGB"
                resized = upright.convert(mode).resize(size, Image.Resampling.LANCZOS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputImageError(
            f"{source}: the image is too large for Pillow to open safely ({exc})", source=source
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputImageError(
            f"{source}: not a readable image (not PNG, JPEG, WEBP or another known format)",
            source=source,
        ) from exc
    buffer = io.BytesIO()
    resized.save(buffer, format="PNG", compress_level=4)
    return buffer.getvalue()


def _check_max_side(max_side: int | None) -> None:
    if max_side is not None and (
        isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 16
    ):
        raise WorkflowError(
            f"max_side must be an integer of at least 16 pixels, got {max_side!r}",
            input_name="max_side",
        )


async def _read_file(path: Path, source: str, max_bytes: int) -> bytes:
    return await asyncio.to_thread(_read_file_blocking, path, source, max_bytes)


def _read_file_blocking(path: Path, source: str, max_bytes: int) -> bytes:
    """One thread hop for the size check and the read."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise InputImageError(
                    f"{source}: {size} bytes, over max_input_bytes={max_bytes}", source=source
                )
            return f.read()
    except FileNotFoundError as exc:
        raise InputImageError(f"{source}: no such file", source=source) from exc
    except IsADirectoryError as exc:
        raise InputImageError(f"{source}: is a directory", source=source) from exc
    except PermissionError as exc:
        raise InputImageError(f"{source}: permission denied", source=source) from exc


@dataclass(frozen=True, slots=True)
class InputLimits:
    """What an input image may be: bytes, pixels; ``multiple``: the sides a downscale keeps."""

    max_bytes: int
    max_pixels: int
    multiple: int = 8


async def read_input(
    image: Any, limits: InputLimits, max_side: int | None = None
) -> tuple[bytes, str, str]:
    """The bytes of an input image, checked (and downscaled to ``max_side``):
    ``(data, suffix, source)``.

    Raises:
        InputImageError: missing, empty, not an image, or over a limit; ``.source`` names it.
        WorkflowError: ``max_side`` is not an integer of at least 16.
    """
    data, suffix, source, _ = await read_input_hashed(image, limits, max_side)
    return data, suffix, source


# A job's outputs this small are written without a thread hop (a few syscalls, tens of µs).
_INLINE_WRITE = 64 * 1024
# Content already checked: (sha256, max_pixels) -> suffix. A batch giving the same input to
# every request opens it with Pillow once, not once per request.
_VERIFIED: dict[tuple[str, int], str] = {}
_VERIFIED_MAX = 1024
# Inputs this small are checked on the event loop (~25 µs for a 64 px PNG): a thread hop
# costs more than the check.
_INLINE_CHECK = 64 * 1024


async def read_input_hashed(
    image: Any, limits: InputLimits, max_side: int | None = None
) -> tuple[bytes, str, str, str]:
    """:func:`read_input`, and the data's sha256 hex digest: ``(data, suffix, source, digest)``.

    Each content is hashed once and opened with Pillow once per process (a batch reusing one
    input image pays for neither per request); small inputs are checked without a thread hop.
    """
    source = describe_input(image)
    _check_max_side(max_side)
    if isinstance(image, Image.Image):
        data = await asyncio.to_thread(encode_pil, image)
    elif isinstance(image, bytes | bytearray):
        data = bytes(image)
    elif isinstance(image, str | os.PathLike):
        data = await _read_file(Path(image), source, limits.max_bytes)
    else:
        raise InputImageError(
            f"unsupported image input {source}: give a path, bytes or a PIL image",
            source=source,
        )
    if not data:
        raise InputImageError(f"{source}: the file is empty", source=source)
    if len(data) > limits.max_bytes:
        raise InputImageError(
            f"{source}: {len(data)} bytes, over max_input_bytes={limits.max_bytes}",
            source=source,
        )
    if max_side is not None:
        data = await asyncio.to_thread(downscale, data, source, max_side, limits.multiple)
    digest = await sha256(data)
    suffix = _VERIFIED.get((digest, limits.max_pixels))
    if suffix is None:
        if len(data) <= _INLINE_CHECK:
            suffix = verify_image(data, source, limits.max_pixels)
        else:
            suffix = await asyncio.to_thread(verify_image, data, source, limits.max_pixels)
        if len(_VERIFIED) >= _VERIFIED_MAX:
            _VERIFIED.pop(next(iter(_VERIFIED)))
        _VERIFIED[digest, limits.max_pixels] = suffix
    return data, suffix, source, digest


def upright_size(data: bytes) -> tuple[int, int]:
    """An image's (width, height) as ComfyUI's ``LoadImage`` sees it (EXIF rotation
    applied); blocking, reads only the header."""
    with Image.open(io.BytesIO(data)) as img:
        width, height = img.size
        rotated = img.getexif().get(0x0112) in (5, 6, 7, 8)  # Orientation: a quarter turn
    return (height, width) if rotated else (width, height)


def _prepare_mask(mask: bytes, image: bytes, source: str) -> PreparedMask:
    return prepare_mask(mask, upright_size(image), source=source)


async def read_mask(mask: Any, image: bytes, limits: InputLimits) -> PreparedMask:
    """A mask file read, checked and resized to ``image``'s size (the image as sent, after
    any downscale): see :func:`~dreamgen_async.workflows.masks.prepare_mask`.

    Raises:
        MaskError: The mask is missing, not an image, over a limit, or masks nothing.

    Warns:
        MaskAspectWarning: Its shape differs from the image's (it is stretched to fit).
    """
    try:
        data, _, source = await read_input(mask, limits)
    except MaskError:
        raise
    except InputImageError as exc:
        raise MaskError(f"the mask {exc}", source=exc.source) from exc
    return await asyncio.to_thread(_prepare_mask, data, image, source)


# ---------------------------------------------------------------------------- writes


async def write_outputs(
    folder: Path, names: Sequence[str], images: Sequence[tuple[str, bytes]]
) -> tuple[Path, ...]:
    """Write ``(suffix, data)`` images atomically into ``folder``, each under its name in
    ``names``; on any failure (or cancellation) the ones written are removed.

    Small outputs (at most ``_INLINE_WRITE`` bytes in all) are written on the event loop: a
    thread hop costs more than the write. Larger ones take one worker-thread hop for the
    whole job (not one per open, write, close and rename).
    """
    finals = [(folder / name, data) for name, (_, data) in zip(names, images, strict=True)]
    if sum(len(data) for _, data in finals) <= _INLINE_WRITE:
        return write_outputs_blocking(finals)
    writing = asyncio.ensure_future(asyncio.to_thread(write_outputs_blocking, finals))
    try:
        return await asyncio.shield(writing)
    except asyncio.CancelledError:
        # The thread finishes its writes regardless; remove them once it has.
        writing.add_done_callback(_remove_written)
        raise


def _remove_written(writing: asyncio.Future[tuple[Path, ...]]) -> None:
    if writing.cancelled() or writing.exception() is not None:
        return
    for path in writing.result():
        with contextlib.suppress(OSError):
            os.unlink(path)


def write_outputs_blocking(finals: list[tuple[Path, bytes]]) -> tuple[Path, ...]:
    """:func:`write_outputs`' work, blocking: all or nothing.

    The folder is created when a write finds it missing (not checked before every job: two
    system calls each, for a folder that nearly always exists).
    """
    paths: list[Path] = []
    try:
        for final, data in finals:
            try:
                _write_atomically(final, data)
            except FileNotFoundError:
                os.makedirs(final.parent, exist_ok=True)
                _write_atomically(final, data)
            paths.append(final)
    except BaseException:
        for path in paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise
    return tuple(paths)


def copy_atomically(data: bytes, folder: Path, name: str) -> None:
    """Write ``data`` as ``folder/name`` unless it exists (a content-named input), through a
    staging file like every output (:func:`_write_atomically`)."""
    target = folder / name
    if target.exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomically(target, data)


_STAGING = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{32}\.part$")


def sweep_staging(folder: Path) -> int:
    """Remove staging files left by writer processes that died mid-write (blocking).

    A staging file names its writer's pid; files of a live process are left alone.
    """
    removed = 0
    try:
        entries = list(folder.iterdir())
    except FileNotFoundError:
        return 0
    for path in entries:
        match = _STAGING.match(path.name)
        if match is None or _alive(int(match.group(1))):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but not ours to signal
        return True
    return True


_STAGING_PREFIX = uuid.uuid4().hex[:16]
_staging_numbers = itertools.count()


def _staging_token() -> str:
    """32 hex digits, unique in this process (no urandom call per file)."""
    return f"{_STAGING_PREFIX}{next(_staging_numbers) & 0xFFFFFFFFFFFFFFFF:016x}"


_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)


def _write_atomically(final: Path, data: bytes) -> None:
    # The staging file beside it, as a string (no Path built, no split or join per file).
    path, name = os.fspath(final), final.name
    folder = path[: len(path) - len(name)]  # "" or ending with the separator
    staging = f"{folder}.{name}.{os.getpid()}.{_staging_token()}.part"
    try:
        # os.open, not open(): no buffer object, no isatty/fstat/lseek calls for one write.
        fd = os.open(staging, _WRITE_FLAGS, 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(staging, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        raise
