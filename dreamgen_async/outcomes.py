"""Pure: how a prompt's end, as the server tells it, becomes a result or a typed error.

The one place that maps an ``execution_error`` event or a ``/history`` record to our
errors, used for live events and for reconciliation after a gap alike.
"""

from __future__ import annotations

from dreamgen_async.errors import DreamgenError, ExecutionError, ExecutionInterrupted
from dreamgen_async.protocol import ExecutionErrorEvent, HistoryRecord

__all__ = ["error_from_event", "error_from_history"]


def error_from_event(event: ExecutionErrorEvent) -> ExecutionError:
    """The typed error for an ``execution_error`` message (or the one in a history entry)."""
    return ExecutionError(
        prompt_id=event.prompt_id,
        node_id=event.node_id,
        node_type=event.node_type,
        exception_type=event.exception_type,
        exception_message=event.exception_message,
        traceback=event.traceback,
    )


def error_from_history(prompt_id: str, record: HistoryRecord) -> DreamgenError | None:
    """None when the record is a success; otherwise why the prompt did not succeed."""
    if record.error is not None:
        return error_from_event(record.error)
    if record.interrupted or record.status != "success":
        return ExecutionInterrupted(prompt_id=prompt_id)
    return None
