"""Pure: a distributed job's record, what a (re)delivered job does with it, and the wire forms.

A job is named by the prompt_id the producer chose. Its record holds the batch journal's
item fields (``state``, ``server``, ``client_id``, ``prompt_id``) plus who holds it
(``worker``) and, once settled, its outcome. The worker writes ``posted`` *before* the POST,
so a worker that takes the job over can always find the prompt on the server.

What a delivered job does (:func:`on_delivery`), given the record and whether the worker named
in it is still alive:

================================================  ===========================================
the record says                                    the delivered job
================================================  ===========================================
done / failed / cancelled, or a cancel was asked  ``settled``: nothing to run (ack it)
held by another worker that is alive               ``wait``: that worker runs it (a slow job
                                                   is never run twice)
posted (by a worker that died)                     ``check``: ask the named server; finished →
                                                   collect, queued/running → adopt, absent → run
pending, or held by no live worker before a POST  ``run``
================================================  ===========================================

Nothing here awaits or touches the network.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, TypeAlias

from dreamgen_async.errors import (
    ConnectionLostError,
    DreamgenError,
    ExecutionError,
    ExecutionInterrupted,
    NoCapableServerError,
    PromptError,
    PromptLost,
    PromptRejected,
    PromptTimeout,
)
from dreamgen_async.protocol import (
    Event,
    Executing,
    ExecutionStart,
    ExecutionSuccess,
    ImageRef,
    OutputFile,
    Progress,
)

__all__ = [
    "ABSENT",
    "Delivery",
    "JobRecord",
    "JobState",
    "NoWorkerError",
    "RemoteJobError",
    "StoredOutput",
    "decode_event",
    "encode_error",
    "encode_event",
    "on_delivery",
    "on_submit",
    "rebuild_error",
]

JobState = Literal["pending", "posted", "done", "failed", "cancelled"]
#: What a delivered job does; see the module's table.
Delivery: TypeAlias = Literal["settled", "wait", "check", "run"]
#: What a producer does with a job whose record may exist (a rerun); see :func:`on_submit`.
Submission: TypeAlias = Literal["create", "collect", "retry", "follow"]

TERMINAL: frozenset[str] = frozenset({"done", "failed", "cancelled"})
#: The error type a worker settles a producer's ``adopt`` with when no server has the prompt.
ABSENT = "PromptAbsent"


class RemoteJobError(DreamgenError):
    """A job failed on a worker with an error this process cannot rebuild as its own type.

    ``error_type`` is the worker-side class name; the message is the worker's.
    """

    def __init__(self, message: str, *, error_type: str) -> None:
        super().__init__(message)
        self.error_type = error_type


class NoWorkerError(DreamgenError):
    """No ``dreamgen worker`` listens on the broker: a job found no taker in time."""


@dataclass(frozen=True, slots=True)
class StoredOutput:
    """One output of a finished job: what the server said of it, and its bytes' blob."""

    node_id: str
    kind: str
    filename: str | None
    subfolder: str
    type: str
    key: str
    text: str | None
    format: str | None
    digest: str
    size: int

    @classmethod
    def of(cls, file: OutputFile, digest: str, size: int) -> StoredOutput:
        ref = file.ref
        return cls(
            file.node_id,
            file.kind,
            None if ref is None else ref.filename,
            "" if ref is None else ref.subfolder,
            "output" if ref is None else ref.type,
            file.key,
            file.text,
            file.format,
            digest,
            size,
        )

    def output_file(self) -> OutputFile:
        ref = None if self.filename is None else ImageRef(self.filename, self.subfolder, self.type)
        return OutputFile(self.node_id, self.kind, ref, self.key, self.text, self.format)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class JobRecord:
    """The record of one distributed job (the batch journal's item fields, and more)."""

    prompt_id: str
    state: JobState = "pending"
    server: str | None = None
    client_id: str | None = None
    worker: str | None = None
    reply: str | None = None
    cancel: bool = False
    error: Mapping[str, Any] | None = None
    outputs: tuple[StoredOutput, ...] = ()
    timings: tuple[float | None, ...] = ()
    attempts: int = 0
    created: float = 0.0
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def settled(self) -> bool:
        return self.state in TERMINAL

    def to_fields(self) -> dict[str, str]:
        """The record as a flat string mapping (a Redis hash)."""
        data = asdict(self)
        return {k: json.dumps(v) for k, v in data.items()}

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> JobRecord:
        data = {k: json.loads(v) for k, v in fields.items() if k in _FIELDS}
        outputs = tuple(StoredOutput(**o) for o in data.pop("outputs", ()))
        timings = tuple(data.pop("timings", ()))
        return replace(cls(**data), outputs=outputs, timings=timings)


_FIELDS = frozenset(JobRecord.__dataclass_fields__)


def on_delivery(record: JobRecord, *, me: str, holder_alive: bool) -> Delivery:
    """What a delivered job does with its record (see the module's table).

    ``holder_alive``: whether the worker named in ``record.worker`` still lives.
    """
    if record.settled or record.cancel:
        return "settled"
    if record.worker is not None and record.worker != me and holder_alive:
        return "wait"
    if record.state == "posted":
        return "check"
    return "run"


def on_submit(existing: JobRecord | None) -> Submission:
    """What a producer does when it submits a job whose record may already exist.

    ``create``: no record (write it, send the job); ``collect``: an earlier run's job is done
    (read its outputs, send nothing); ``retry``: it failed or was cancelled (reset the record,
    send it again); ``follow``: it is pending or running (send it again: a message lost with
    the earlier producer is replaced, and a duplicate is harmless, see :func:`on_delivery`).
    """
    if existing is None:
        return "create"
    if existing.state == "done":
        return "collect"
    if existing.settled:
        return "retry"
    return "follow"


# ---------------------------------------------------------------------------- errors


def encode_error(exc: BaseException) -> dict[str, Any]:
    """An error as JSON data the producer can rebuild (:func:`rebuild_error`)."""
    data: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, PromptError):
        data["prompt_id"] = exc.prompt_id
    if isinstance(exc, NoCapableServerError):
        data["missing"] = {k: list(v) for k, v in exc.missing.items()}
    if isinstance(exc, ExecutionError):
        data.update(
            node_id=exc.node_id,
            node_type=exc.node_type,
            exception_type=exc.exception_type,
            exception_message=exc.exception_message,
        )
    if isinstance(exc, ExecutionInterrupted):
        data.update(node_id=exc.node_id, node_type=exc.node_type)
    if isinstance(exc, PromptRejected):
        data.update(error_type=exc.error_type, error_message=exc.error_message)
    return data


#: Errors rebuilt from their message alone: the limits' timeouts, a prompt the server lost,
#: one that may still run on a server the worker lost.
_PROMPT_ERRORS: dict[str, type[PromptError]] = {
    "PromptTimeout": PromptTimeout,
    "PromptLost": PromptLost,
}


def rebuild_error(data: Mapping[str, Any], prompt_id: str) -> DreamgenError:
    """The producer-side error for a worker's :func:`encode_error` data."""
    kind = str(data.get("type", "DreamgenError"))
    message = str(data.get("message", "the job failed on a worker"))
    if kind in _PROMPT_ERRORS:
        return _PROMPT_ERRORS[kind](message, prompt_id=prompt_id)
    if kind == "ConnectionLostError":
        return ConnectionLostError(message)
    if kind == "NoCapableServerError":
        missing = {str(k): tuple(v) for k, v in dict(data.get("missing") or {}).items()}
        return NoCapableServerError(message, missing=missing)
    if kind == "ExecutionError":
        return ExecutionError(
            prompt_id=prompt_id,
            node_id=data.get("node_id"),
            node_type=data.get("node_type"),
            exception_type=str(data.get("exception_type", "")),
            exception_message=str(data.get("exception_message", "")),
        )
    if kind == "ExecutionInterrupted":
        return ExecutionInterrupted(
            prompt_id=prompt_id, node_id=data.get("node_id"), node_type=data.get("node_type")
        )
    if kind == "PromptRejected":
        return PromptRejected(
            prompt_id=prompt_id,
            error_type=str(data.get("error_type", "")),
            error_message=str(data.get("error_message", message)),
        )
    return RemoteJobError(f"{kind} on a worker: {message}", error_type=kind)


# ---------------------------------------------------------------------------- events


def encode_event(event: Event) -> dict[str, Any] | None:
    """A progress event as JSON data for the producer; ``None``: not forwarded."""
    if isinstance(event, Progress):
        return {"type": "progress", "node": event.node, "value": event.value, "max": event.max}
    if isinstance(event, Executing):
        return {"type": "executing", "node": event.node}
    if isinstance(event, ExecutionStart):
        return {"type": "start"}
    if isinstance(event, ExecutionSuccess):
        return {"type": "success"}
    return None


def decode_event(data: Mapping[str, Any], prompt_id: str) -> Event | None:
    """The producer-side event for :func:`encode_event` data (``None``: unknown)."""
    kind = data.get("type")
    if kind == "progress":
        return Progress(prompt_id, data.get("node"), float(data["value"]), float(data["max"]))
    if kind == "executing":
        return Executing(prompt_id, data.get("node"))
    if kind == "start":
        return ExecutionStart(prompt_id)
    if kind == "success":
        return ExecutionSuccess(prompt_id)
    return None
