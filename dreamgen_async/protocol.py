"""ComfyUI's wire protocol as pure data: frames and JSON bodies in, typed records out.

This module does no I/O and imports neither aiohttp nor asyncio (sans-I/O, as in the
websockets library): the multiplexer feeds it raw WebSocket frames, the HTTP layer feeds it
decoded JSON bodies, and the tests feed it recorded traffic of a real server.

Every parser raises only :class:`~dreamgen_async.errors.ProtocolError` on input that does
not follow the protocol (:func:`skipping_malformed` turns that into a logged warning, for a
reader that skips what it cannot read). Unknown message types are not errors: they parse to
:class:`UnknownMessage` / :class:`UnknownBinary`, which callers ignore.
"""

from __future__ import annotations

import json
import json.scanner
import logging
import re
import struct
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias, TypeVar

from dreamgen_async.errors import NodeError, OutputContentError, ProtocolError

__all__ = [
    "BinaryText",
    "Event",
    "Executed",
    "Executing",
    "ExecutionCached",
    "ExecutionErrorEvent",
    "ExecutionInterruptedEvent",
    "ExecutionStart",
    "ExecutionSuccess",
    "FeatureFlags",
    "HistoryRecord",
    "ImageRef",
    "OutputData",
    "OutputFile",
    "OutputKind",
    "PreviewImage",
    "Progress",
    "ProgressState",
    "QueueItem",
    "QueueState",
    "Status",
    "UnknownBinary",
    "UnknownMessage",
    "decode_text",
    "event_from",
    "feature_flags_message",
    "json_steps",
    "loads_frame",
    "parse_binary",
    "parse_history",
    "parse_node_errors",
    "parse_output_files",
    "parse_output_images",
    "parse_queue",
    "parse_text",
    "progress_only",
    "queue_remaining_of",
    "skipping_malformed",
    "sniff_image_format",
    "verify_output",
    "warn_malformed",
]

T = TypeVar("T")

log = logging.getLogger("dreamgen_async")

#: Binary event types (``uint32`` big-endian at the start of a binary frame).
PREVIEW_IMAGE = 1
UNENCODED_PREVIEW_IMAGE = 2
TEXT = 3
PREVIEW_IMAGE_WITH_METADATA = 4

_IMAGE_FORMATS = {1: "image/jpeg", 2: "image/png"}

JSONDict: TypeAlias = Mapping[str, Any]


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class ImageRef:
    """An image the server holds, as ``/view`` addresses it.

    ``filename`` and ``subfolder`` come from the server: never use them as a local path.
    """

    filename: str
    subfolder: str = ""
    type: str = "output"


#: What an output is: a still image, an animated image (animated WEBP/PNG, GIF), a video,
#: audio, an inline text value, or anything else (3D models, custom nodes' files).
OutputKind: TypeAlias = Literal["image", "animated", "video", "audio", "text", "other"]


@dataclass(frozen=True, slots=True)
class OutputFile:
    """One output of one node, of any kind, as the server reported it.

    Attributes:
        node_id: The node that produced it.
        kind: See :data:`OutputKind`.
        ref: Where ``/view`` finds the file (filename, subfolder, type); ``None`` for a
            text value, which has no file (see :attr:`text`).
        key: The key of the node's ui output it came under (``images``, ``gifs``, ``audio``,
            ``3d``, ``text``...).
        text: The value of a text output.
        format: The MIME type a node announced (VideoHelperSuite's ``format``), if any.
    """

    node_id: str
    kind: OutputKind
    ref: ImageRef | None
    key: str = "images"
    text: str | None = None
    format: str | None = None

    @property
    def filename(self) -> str:
        """The server's file name (``""`` for a text value): never use it as a local path."""
        return self.ref.filename if self.ref is not None else ""

    @property
    def saved(self) -> bool:
        """Whether it is a saved output (``type == "output"``) rather than a preview."""
        return self.ref is None or self.ref.type == "output"


@dataclass(frozen=True, slots=True)
class OutputData:
    """An output with its content: the downloaded bytes, or the UTF-8 of a text value."""

    file: OutputFile
    data: bytes = field(repr=False)

    @property
    def kind(self) -> OutputKind:
        return self.file.kind

    @property
    def node_id(self) -> str:
        return self.file.node_id


@dataclass(frozen=True, slots=True)
class Status:
    """Queue state broadcast to every socket. ``sid`` is set only on the greeting."""

    queue_remaining: int
    sid: str | None = None


@dataclass(frozen=True, slots=True)
class ExecutionStart:
    prompt_id: str
    timestamp: int | None = None


@dataclass(frozen=True, slots=True)
class ExecutionCached:
    prompt_id: str
    nodes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Executing:
    """A node started; ``node is None`` means the prompt is done and its history is written.

    ``prompt_id`` is ``None`` on the re-send the server makes to a reconnecting socket.
    """

    prompt_id: str | None
    node: str | None
    display_node: str | None = None


@dataclass(frozen=True, slots=True)
class Progress:
    prompt_id: str | None
    node: str | None
    value: float
    max: float


@dataclass(frozen=True, slots=True)
class ProgressState:
    prompt_id: str | None
    nodes: Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class Executed:
    """An output node finished; ``images`` are parsed from its ui ``output``."""

    prompt_id: str
    node: str
    output: Mapping[str, Any] | None
    images: tuple[ImageRef, ...]
    files: tuple[OutputFile, ...] = ()


@dataclass(frozen=True, slots=True)
class ExecutionSuccess:
    prompt_id: str
    timestamp: int | None = None


@dataclass(frozen=True, slots=True)
class ExecutionErrorEvent:
    prompt_id: str
    node_id: str | None
    node_type: str | None
    exception_type: str
    exception_message: str
    traceback: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ExecutionInterruptedEvent:
    prompt_id: str
    node_id: str | None
    node_type: str | None


@dataclass(frozen=True, slots=True)
class FeatureFlags:
    flags: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class UnknownMessage:
    type: str
    data: Any


@dataclass(frozen=True, slots=True)
class PreviewImage:
    """A sampler preview (not an output). ``prompt_id`` is known only after negotiation."""

    prompt_id: str | None
    node_id: str | None
    mime_type: str
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class BinaryText:
    """A TEXT binary frame (type 3): progress text from a node, broadcast to every socket."""

    node_id: str
    text: str


@dataclass(frozen=True, slots=True)
class UnknownBinary:
    event_type: int
    payload: bytes = field(repr=False)


Event: TypeAlias = (
    Status
    | ExecutionStart
    | ExecutionCached
    | Executing
    | Progress
    | ProgressState
    | Executed
    | ExecutionSuccess
    | ExecutionErrorEvent
    | ExecutionInterruptedEvent
    | FeatureFlags
    | UnknownMessage
    | PreviewImage
    | BinaryText
    | UnknownBinary
)


# --------------------------------------------------------------------------- field helpers


def _str(data: JSONDict, key: str, what: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise ProtocolError(f"{what}: field {key!r} must be a string, got {value!r:.80}")
    return value


def _opt_str(data: JSONDict, key: str, what: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, str | int) and not isinstance(value, bool):
        return str(value)
    raise ProtocolError(f"{what}: field {key!r} must be a string or null, got {value!r:.80}")


def _number(data: JSONDict, key: str, what: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"{what}: field {key!r} must be a number, got {value!r:.80}")
    return float(value)


def _opt_int(data: JSONDict, key: str) -> int | None:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _dict(value: Any, what: str) -> JSONDict:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


# --------------------------------------------------------------------------- text frames


def parse_output_images(output: Any) -> tuple[ImageRef, ...]:
    """The images of one node's ui output (``{"images": [{filename, subfolder, type}]}``).

    Entries that are not well-formed image records are skipped: a custom node may put
    anything in its ui dict, and that must not cost us the other images.
    """
    if not isinstance(output, dict):
        return ()
    images = output.get("images")
    if not isinstance(images, list):
        return ()
    refs = []
    for item in images:
        if isinstance(item, dict) and isinstance(item.get("filename"), str):
            subfolder = item.get("subfolder")
            kind = item.get("type")
            refs.append(
                ImageRef(
                    filename=item["filename"],
                    subfolder=subfolder if isinstance(subfolder, str) else "",
                    type=kind if isinstance(kind, str) else "output",
                )
            )
    return tuple(refs)


VIDEO_SUFFIXES = frozenset({".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v", ".mpg", ".mpeg"})
AUDIO_SUFFIXES = frozenset({".flac", ".mp3", ".wav", ".ogg", ".opus", ".m4a", ".aac"})
#: Image formats by suffix, as :func:`sniff_image_format` names them.
IMAGE_SUFFIX_FORMATS: Mapping[str, str] = {
    ".png": "png",
    ".apng": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".webp": "webp",
    ".gif": "gif",
    ".bmp": "bmp",
    ".tif": "tiff",
    ".tiff": "tiff",
}


def _suffix(filename: str) -> str:
    dot = filename.rfind(".")
    return filename[dot:].lower() if dot > 0 and "/" not in filename[dot:] else ""


def _output_kind(key: str, filename: str, fmt: str | None, animated: bool) -> OutputKind:
    suffix = _suffix(filename)
    mime = (fmt or "").lower()
    if suffix in VIDEO_SUFFIXES or mime.startswith("video/") or key in ("video", "videos"):
        return "video"  # SaveWEBM / SaveVideo report videos under "images", animated
    if suffix in AUDIO_SUFFIXES or mime.startswith("audio/") or key == "audio":
        return "audio"
    if key in ("images", "gifs") and (animated or key == "gifs"):
        return "animated"
    if key in ("images", "gifs") or suffix in IMAGE_SUFFIX_FORMATS:
        return "image"
    return "other"


def parse_output_files(node_id: str, output: Any) -> tuple[OutputFile, ...]:
    """Every output of one node's ui dict, of every kind, in the order of its keys.

    Files are the ``{filename, subfolder, type}`` records under any key (``images``,
    ``gifs``, ``audio``, ``video``, ``3d``...); the ``animated`` flag (``[true]``) marks
    the node's images as animated; ``text`` values become text outputs. Anything else (a
    custom node's free-form data) is skipped, never an error.
    """
    if not isinstance(output, dict):
        return ()
    flag = output.get("animated")
    animated = any(flag) if isinstance(flag, list | tuple) else flag is True
    files: list[OutputFile] = []
    for key, value in output.items():
        if key == "animated" or not isinstance(value, list | tuple):
            continue
        for item in value:
            if key == "text" and isinstance(item, str):
                files.append(OutputFile(str(node_id), "text", None, key, text=item))
            elif isinstance(item, dict) and isinstance(item.get("filename"), str):
                subfolder, kind, fmt = item.get("subfolder"), item.get("type"), item.get("format")
                ref = ImageRef(
                    filename=item["filename"],
                    subfolder=subfolder if isinstance(subfolder, str) else "",
                    type=kind if isinstance(kind, str) else "output",
                )
                fmt = fmt if isinstance(fmt, str) else None
                files.append(
                    OutputFile(
                        str(node_id), _output_kind(key, ref.filename, fmt, animated), ref, key,
                        format=fmt,
                    )
                )  # fmt: skip
    return tuple(files)


def sniff_image_format(data: bytes) -> str | None:
    """The image format the magic bytes say (``png``, ``jpeg``, ``webp``, ``gif``, ``bmp``,
    ``tiff``), or ``None``."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data.startswith(b"BM") and len(data) > 14:
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return None


def verify_output(file: OutputFile, data: bytes) -> str | None:
    """Check an image output's bytes against its kind and name; return the format found.

    Outputs that are not images (video, audio, text, other) are not checked (``None``).

    Raises:
        OutputContentError: an image whose bytes are no known image format, or a format
            other than its file name says (``x.png`` holding a JPEG, or an HTML page).
    """
    if file.kind not in ("image", "animated"):
        return None
    detected = sniff_image_format(data)
    claimed = IMAGE_SUFFIX_FORMATS.get(_suffix(file.filename))
    if detected is None or (claimed is not None and claimed != detected):
        expected = claimed or "an image"
        what = f"{detected} data" if detected else f"no image ({data[:16]!r}...)"
        raise OutputContentError(
            f"output {file.filename!r} of node {file.node_id} should be {expected} but the "
            f"server sent {what}; nothing was written",
            filename=file.filename,
            expected=expected,
            detected=detected,
        )
    return detected


def queue_remaining_of(data: Any) -> int:
    """A decoded ``status`` message's ``queue_remaining`` (all a client reads of most of
    them), checked as :func:`event_from` checks it, without making the event.

    Raises:
        ProtocolError: the field is missing or malformed.
    """
    status = _dict(_dict(data, "status.data").get("status"), "status.status")
    exec_info = _dict(status.get("exec_info"), "status.exec_info")
    return int(_number(exec_info, "queue_remaining", "status"))


def _parse_status(data: JSONDict) -> Status:
    sid = data.get("sid")
    remaining = queue_remaining_of(data)
    return Status(queue_remaining=remaining, sid=sid if isinstance(sid, str) else None)


def _parse_executing(data: JSONDict) -> Executing:
    return Executing(
        prompt_id=_opt_str(data, "prompt_id", "executing"),
        node=_opt_str(data, "node", "executing"),
        display_node=_opt_str(data, "display_node", "executing"),
    )


def _parse_cached(data: JSONDict) -> ExecutionCached:
    nodes = data.get("nodes")
    if not isinstance(nodes, list):
        raise ProtocolError("execution_cached: field 'nodes' must be a list")
    return ExecutionCached(
        prompt_id=_str(data, "prompt_id", "execution_cached"),
        nodes=tuple(str(n) for n in nodes),
    )


def _parse_progress(data: JSONDict) -> Progress:
    return Progress(
        prompt_id=_opt_str(data, "prompt_id", "progress"),
        node=_opt_str(data, "node", "progress"),
        value=_number(data, "value", "progress"),
        max=_number(data, "max", "progress"),
    )


def _parse_progress_state(data: JSONDict) -> ProgressState:
    nodes = _dict(data.get("nodes"), "progress_state.nodes")
    return ProgressState(
        prompt_id=_opt_str(data, "prompt_id", "progress_state"),
        nodes={str(k): v for k, v in nodes.items() if isinstance(v, dict)},
    )


def _parse_executed(data: JSONDict) -> Executed:
    output = data.get("output")
    if output is not None and not isinstance(output, dict):
        raise ProtocolError("executed: field 'output' must be an object or null")
    prompt_id = _str(data, "prompt_id", "executed")
    node = _str(data, "node", "executed")
    files = parse_output_files(node, output)
    return Executed(
        prompt_id=prompt_id,
        node=node,
        output=output,
        # What parse_output_images(output) gives, from the files parsed once.
        images=tuple(f.ref for f in files if f.key == "images" and f.ref is not None),
        files=files,
    )


def _parse_error(data: JSONDict) -> ExecutionErrorEvent:
    tb = data.get("traceback")
    return ExecutionErrorEvent(
        prompt_id=_str(data, "prompt_id", "execution_error"),
        node_id=_opt_str(data, "node_id", "execution_error"),
        node_type=_opt_str(data, "node_type", "execution_error"),
        exception_type=str(data.get("exception_type") or "Exception"),
        exception_message=str(data.get("exception_message") or ""),
        traceback=tuple(str(line) for line in tb) if isinstance(tb, list) else (),
    )


def _parse_interrupted(data: JSONDict) -> ExecutionInterruptedEvent:
    return ExecutionInterruptedEvent(
        prompt_id=_str(data, "prompt_id", "execution_interrupted"),
        node_id=_opt_str(data, "node_id", "execution_interrupted"),
        node_type=_opt_str(data, "node_type", "execution_interrupted"),
    )


_TEXT_PARSERS: dict[str, Callable[[JSONDict], Event]] = {
    "status": _parse_status,
    "execution_start": lambda d: ExecutionStart(
        _str(d, "prompt_id", "execution_start"), _opt_int(d, "timestamp")
    ),
    "execution_cached": _parse_cached,
    "executing": _parse_executing,
    "progress": _parse_progress,
    "progress_state": _parse_progress_state,
    "executed": _parse_executed,
    "execution_success": lambda d: ExecutionSuccess(
        _str(d, "prompt_id", "execution_success"), _opt_int(d, "timestamp")
    ),
    "execution_error": _parse_error,
    "execution_interrupted": _parse_interrupted,
    "feature_flags": lambda d: FeatureFlags(dict(d)),
}


def parse_text(frame: str | bytes) -> Event:
    """Parse one text frame (``{"type": T, "data": {...}}``) into an event.

    Raises:
        ProtocolError: not JSON, not an object, or a known type with malformed fields.
    """
    return event_from(*decode_text(frame))


#: The C scanner ``json.loads`` ends in (the standard decoder's, built once). typeshed
#: types make_scanner's argument as a scanner; it is the decoder whose settings it takes.
_SCAN: Callable[[str, int], tuple[Any, int]] = json.scanner.make_scanner(
    json.JSONDecoder()  # type: ignore[arg-type]
)


def loads_frame(frame: str | bytes) -> Any:
    """``json.loads(frame)``, the same value or the same error, faster for what a server
    sends: a string that is one JSON value from its first character to its last goes
    straight to the scanner (``json.loads``' own checks cost half as much again as the scan
    of a small frame, and a job gets ~24 frames); anything else goes through ``json.loads``.
    """
    if isinstance(frame, str):
        try:
            value, end = _SCAN(frame, 0)
        except StopIteration:  # not a value at 0 (space first, or not JSON): json.loads says
            pass
        else:
            if end == len(frame):
                return value
    return json.loads(frame)


def decode_text(frame: str | bytes) -> tuple[str, Any]:
    """A text frame's ``(type, data)``, decoded but not parsed further (see
    :func:`event_from`).

    Raises:
        ProtocolError: not JSON, not an object, or no string ``type``.
    """
    try:
        message = loads_frame(frame)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(f"text frame is not JSON: {exc}") from exc
    if type(message) is not dict:  # the check _dict makes, inline: every frame passes here
        _dict(message, "a text frame")
    kind = message.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("text frame has no string 'type'")
    return kind, message.get("data")


def event_from(kind: str, data: Any) -> Event:
    """The event of a decoded text frame (:func:`decode_text`).

    Raises:
        ProtocolError: a known type with malformed fields.
    """
    parser = _TEXT_PARSERS.get(kind)
    if parser is None:
        return UnknownMessage(type=kind, data=data)
    return parser(_dict(data, f"{kind}.data"))


def skipping_malformed(parse: Callable[..., T], *args: Any) -> T | None:
    """``parse(*args)``, or ``None`` after a warning when the frame is malformed: what a
    client does with a frame it cannot read (it skips it and reads on)."""
    try:
        return parse(*args)
    except ProtocolError as exc:
        warn_malformed(exc)
        return None


def warn_malformed(exc: ProtocolError) -> None:
    """Say that a frame was skipped, and why (the one wording of that warning)."""
    log.warning("ignoring a malformed frame: %s", exc)


#: The messages that only inform a job's listeners: nothing in a job's lifecycle reads them.
_PROGRESS_ONLY = frozenset({"progress", "progress_state", "executing"})


def progress_only(kind: str, data: Any) -> bool:
    """Whether a decoded message (:func:`decode_text`) only informs listeners, with a
    ``prompt_id`` that is a string or absent: ``progress``, ``progress_state``, and
    ``executing`` a node (``executing`` no node ends a prompt). Such a message can be
    routed by its ``prompt_id`` and parsed only if someone listens (a malformed one is
    then dropped with a warning, as it would have been on receipt)."""
    if kind not in _PROGRESS_ONLY or not isinstance(data, dict):
        return False
    prompt_id = data.get("prompt_id")
    if prompt_id is not None and not isinstance(prompt_id, str):
        return False
    return kind != "executing" or data.get("node") is not None


def feature_flags_message() -> str:
    """The first message a client sends to get previews attributed to their prompt."""
    return json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}})


# --------------------------------------------------------------------------- binary frames

_U32 = struct.Struct(">I")


def _u32(data: bytes, offset: int, what: str) -> int:
    if len(data) < offset + 4:
        raise ProtocolError(f"binary frame truncated: no room for {what}")
    value: int = _U32.unpack_from(data, offset)[0]
    return value


def parse_binary(frame: bytes) -> Event:
    """Parse one binary frame (``uint32`` big-endian event type, then a payload).

    Raises:
        ProtocolError: truncated headers, lengths past the end, bad metadata JSON.
    """
    event_type = _u32(frame, 0, "the event type")
    if event_type == PREVIEW_IMAGE:
        image_format = _u32(frame, 4, "the image format")
        return PreviewImage(
            prompt_id=None,
            node_id=None,
            mime_type=_IMAGE_FORMATS.get(image_format, "application/octet-stream"),
            data=bytes(frame[8:]),
        )
    if event_type == PREVIEW_IMAGE_WITH_METADATA:
        length = _u32(frame, 4, "the metadata length")
        if 8 + length > len(frame):
            raise ProtocolError(
                f"binary frame: metadata length {length} runs past the frame ({len(frame)} bytes)"
            )
        try:
            metadata = json.loads(frame[8 : 8 + length])
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ProtocolError(f"preview metadata is not JSON: {exc}") from exc
        metadata = _dict(metadata, "preview metadata")
        image_type = metadata.get("image_type")
        return PreviewImage(
            prompt_id=_opt_str(metadata, "prompt_id", "preview metadata"),
            node_id=_opt_str(metadata, "node_id", "preview metadata"),
            mime_type=image_type if isinstance(image_type, str) else "application/octet-stream",
            data=bytes(frame[8 + length :]),
        )
    if event_type == TEXT:
        length = _u32(frame, 4, "the node id length")
        if 8 + length > len(frame):
            raise ProtocolError(f"binary text frame: node id length {length} runs past the frame")
        try:
            node_id = frame[8 : 8 + length].decode()
            text = frame[8 + length :].decode()
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"binary text frame is not UTF-8: {exc}") from exc
        return BinaryText(node_id=node_id, text=text)
    return UnknownBinary(event_type=event_type, payload=bytes(frame[4:]))


# --------------------------------------------------------------------------- HTTP bodies


@dataclass(frozen=True, slots=True)
class QueueItem:
    """One entry of ``GET /queue``. Only the fields a client needs are kept."""

    number: float
    prompt_id: str
    client_id: str | None


@dataclass(frozen=True, slots=True)
class QueueState:
    """``GET /queue``: ``pending`` is sorted in run order (the server sends a raw heap)."""

    running: tuple[QueueItem, ...]
    pending: tuple[QueueItem, ...]

    def __contains__(self, prompt_id: object) -> bool:
        return any(item.prompt_id == prompt_id for item in (*self.running, *self.pending))

    def is_running(self, prompt_id: str) -> bool:
        return any(item.prompt_id == prompt_id for item in self.running)


def _queue_item(raw: Any) -> QueueItem:
    if not isinstance(raw, list) or len(raw) < 2:
        raise ProtocolError(f"queue item must be a list of at least 2 entries, got {raw!r:.80}")
    number, prompt_id = raw[0], raw[1]
    if isinstance(number, bool) or not isinstance(number, int | float):
        raise ProtocolError(f"queue item number must be a number, got {number!r:.40}")
    if not isinstance(prompt_id, str):
        raise ProtocolError(f"queue item prompt_id must be a string, got {prompt_id!r:.40}")
    extra = raw[3] if len(raw) > 3 and isinstance(raw[3], dict) else {}
    client_id = extra.get("client_id")
    return QueueItem(float(number), prompt_id, client_id if isinstance(client_id, str) else None)


def parse_queue(body: Any) -> QueueState:
    """Parse ``GET /queue`` into a :class:`QueueState` with pending in run order."""
    body = _dict(body, "/queue body")
    running = body.get("queue_running", [])
    pending = body.get("queue_pending", [])
    if not isinstance(running, list) or not isinstance(pending, list):
        raise ProtocolError("/queue body: queue_running and queue_pending must be lists")
    items = sorted((_queue_item(x) for x in pending), key=lambda i: (i.number, i.prompt_id))
    return QueueState(running=tuple(_queue_item(x) for x in running), pending=tuple(items))


@dataclass(frozen=True, slots=True)
class HistoryRecord:
    """One ``/history/{id}`` entry.

    Attributes:
        status: ``"success"`` or ``"error"`` (``status_str``).
        completed: The server's ``completed`` flag.
        outputs: Images per output node id.
        interrupted: Whether the last message was ``execution_interrupted``.
        error: The ``execution_error`` message data, when the prompt failed.
        files: Every output of every kind, in node order (see :func:`parse_output_files`).
    """

    prompt_id: str
    status: str
    completed: bool
    outputs: Mapping[str, tuple[ImageRef, ...]]
    interrupted: bool = False
    error: ExecutionErrorEvent | None = None
    files: tuple[OutputFile, ...] = ()


def parse_history(prompt_id: str, body: Any) -> HistoryRecord | None:
    """Parse ``GET /history/{id}``; ``None`` when the server has no entry (``{}``).

    ``{}`` means either "queued or running" or "unknown": ask ``/queue`` to tell them apart.
    """
    body = _dict(body, "/history body")
    entry = body.get(prompt_id)
    if entry is None:
        return None
    entry = _dict(entry, f"/history entry {prompt_id}")
    outputs_raw = entry.get("outputs") or {}
    outputs_raw = _dict(outputs_raw, "history outputs")
    outputs = {str(node): parse_output_images(ui) for node, ui in outputs_raw.items()}
    files = tuple(f for node, ui in outputs_raw.items() for f in parse_output_files(node, ui))
    status = entry.get("status") or {}
    status = _dict(status, "history status")
    messages = status.get("messages") or []
    last_event = None
    error = None
    if isinstance(messages, list):
        for item in messages:
            if isinstance(item, list) and len(item) == 2 and isinstance(item[0], str):
                last_event = item[0]
                if item[0] == "execution_error" and isinstance(item[1], dict):
                    error = _parse_error({"prompt_id": prompt_id, **item[1]})
    status_str = status.get("status_str")
    return HistoryRecord(
        prompt_id=prompt_id,
        status=status_str if isinstance(status_str, str) else "success",
        completed=bool(status.get("completed", True)),
        outputs=outputs,
        interrupted=last_event == "execution_interrupted",
        error=error,
        files=files,
    )


def parse_node_errors(raw: Any) -> tuple[NodeError, ...]:
    """Flatten ``node_errors`` (``{node_id: {"errors": [...], "class_type": ...}}``).

    One :class:`NodeError` per reported error, in node order; the input name is taken from
    ``extra_info.input_name`` when the server gave it.
    """
    if not isinstance(raw, dict):
        return ()
    result = []
    for node_id, node in raw.items():
        if not isinstance(node, dict):
            continue
        class_type = node.get("class_type")
        dependents = node.get("dependent_outputs")
        dependent_outputs = (
            tuple(str(d) for d in dependents) if isinstance(dependents, list) else ()
        )
        for err in node.get("errors") or []:
            if not isinstance(err, dict):
                continue
            extra = err.get("extra_info")
            extra = extra if isinstance(extra, dict) else {}
            input_name = extra.get("input_name")
            result.append(
                NodeError(
                    node_id=str(node_id),
                    class_type=class_type if isinstance(class_type, str) else None,
                    type=str(err.get("type") or "unknown"),
                    message=str(err.get("message") or ""),
                    details=str(err.get("details") or ""),
                    input_name=input_name if isinstance(input_name, str) else None,
                    extra_info=extra,
                    dependent_outputs=dependent_outputs,
                )
            )
    return tuple(result)


# --------------------------------------------------------------------------- large JSON bodies

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
_scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]
_MAX_STEP_DEPTH = 32
_MAX_WINDOW = 64 * 1024
_PER_ITEM = 64  # the Python cost of one walked member, counted as this many characters

JSONSteps: TypeAlias = Generator[None, None, Any]


def json_steps(text: str, budget: int = 64 * 1024) -> JSONSteps:
    """Decode a JSON document in steps: a generator that yields (``None``) after about
    ``budget`` characters of work and finally returns the value (``StopIteration.value``).

    ``json.loads`` holds the GIL for its whole run, so a worker thread does not help: the
    event loop cannot run meanwhile. Large bodies are decoded this way instead, the event
    loop running between steps. Containers are walked in Python until their members are small
    enough (under 64 KB) for the C decoder; the result equals ``json.loads(text)``. Only a
    single huge string cannot be split.

    Raises:
        json.JSONDecodeError: the text is not one valid JSON document.
    """
    done = [0]
    value, end = yield from _value_steps(text, _skip(text, 0), 0, budget, done)
    end = _skip(text, end)
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return value


def _skip(text: str, idx: int) -> int:
    match = _WHITESPACE.match(text, idx)
    return match.end() if match else idx


def _small(text: str, idx: int, window: int) -> tuple[Any, int]:
    """Decode the container at ``idx`` if it ends within ``window`` characters (a closed
    bracket proves it is whole); ``end == -1`` when it does not (or is invalid)."""
    try:
        value, end = _DECODER.raw_decode(text[idx : idx + window])
    except (ValueError, RecursionError):
        return None, -1
    return value, idx + end


def _value_steps(
    text: str, idx: int, depth: int, budget: int, done: list[int], window: int = _MAX_WINDOW
) -> Generator[None, None, tuple[Any, int]]:
    if text[idx : idx + 1] in ("{", "[") and depth < _MAX_STEP_DEPTH:
        value, end = _small(text, idx, window)
        if end < 0:
            return (yield from _container_steps(text, idx, depth, budget, done))
    else:
        value, end = _DECODER.raw_decode(text, idx)
    done[0] += end - idx + _PER_ITEM
    if done[0] >= budget:
        done[0] = 0
        yield
    return value, end


def _container_steps(
    text: str, idx: int, depth: int, budget: int, done: list[int]
) -> Generator[None, None, tuple[Any, int]]:
    is_object = text[idx] == "{"
    close = "}" if is_object else "]"
    result: Any = {} if is_object else []
    idx = _skip(text, idx + 1)
    if text[idx : idx + 1] == close:
        return result, idx + 1
    window = 1024  # grows with the members seen: a small member costs a small slice
    while True:
        key = ""
        if is_object:
            if text[idx : idx + 1] != '"':
                raise json.JSONDecodeError(
                    "Expecting property name enclosed in double quotes", text, idx
                )
            key, idx = _scanstring(text, idx + 1)
            idx = _skip(text, idx)
            if text[idx : idx + 1] != ":":
                raise json.JSONDecodeError("Expecting ':' delimiter", text, idx)
            idx = _skip(text, idx + 1)
        start = idx
        value, idx = yield from _value_steps(text, idx, depth + 1, budget, done, window)
        window = min(max(2 * (idx - start), 1024), _MAX_WINDOW)
        if is_object:
            result[key] = value
        else:
            result.append(value)
        idx = _skip(text, idx)
        delimiter = text[idx : idx + 1]
        if delimiter == ",":
            idx = _skip(text, idx + 1)
        elif delimiter == close:
            return result, idx + 1
        else:
            raise json.JSONDecodeError(f"Expecting ',' delimiter or {close!r}", text, idx)
