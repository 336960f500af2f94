"""The exception tree of dreamgen_async.

Every exception the library raises derives from :class:`DreamgenError`; no aiohttp or
tenacity exception escapes to callers (they are translated at one boundary, with the
original kept as ``__cause__``)::

    DreamgenError
    ├── ConfigError                   a bad constructor or option value (also a ValueError)
    ├── WorkflowError                 bad graph or builder argument (raised before any I/O)
    │   ├── UIWorkflowError           a UI-format export was given where API format is needed
    │   └── NoCapableServerError      no server of a pool has every node and model a graph names
    ├── InputImageError               an input image is missing, empty, not an image, too large
    │   └── MaskError                 an inpainting mask that is not an image, or masks nothing
    ├── ClientClosedError             the client was closed (or never opened)
    ├── ProtocolError                 a frame, body or handshake that breaks ComfyUI's protocol
    ├── TransportError                the connection failed or broke (reset, timeout)
    │   ├── ConnectError              the server does not answer (refused, DNS)
    │   │   └── TLSError              TLS failed: certificate not trusted, not a TLS server
    │   └── ConnectionLostError       the WebSocket dropped and the reconnect budget ran out
    ├── ServerError                   an HTTP answer we cannot use (.status, .body)
    │   ├── AuthenticationError       401/403: the token or password was refused
    │   ├── NotComfyUIError           the server answered, but is not ComfyUI (HTML, 404 on /prompt)
    │   └── ResponseTooLargeError     an HTTP body over the configured bound
    ├── PromptError                   anything about one prompt: carries .prompt_id
    │   ├── PromptRejected            400 from POST /prompt (.error_type, .node_errors)
    │   ├── PartialPromptWarningError 200 with non-empty node_errors, when policy is "error"
    │   ├── ExecutionError            execution_error from the server (.node_id, .node_type, ...)
    │   ├── ExecutionInterrupted      the prompt was interrupted (by us or someone else)
    │   ├── PromptLost                the server forgot the prompt (restart) and policy says fail
    │   └── PromptTimeout             waiting took too long (also a builtin TimeoutError)
    ├── OutputContentError            a downloaded output is not what it claims (magic bytes)
    └── StorageError                  a file or folder of ours is unusable (.path): read-only, full
        ├── JournalError              a batch journal that cannot be used (in use, not one, newer)
        └── CacheError                the result cache's folder or index cannot be used

Which of these are worth a retry is decided in one place,
:func:`dreamgen_async.transport_errors.classify`: authentication refusals, "not ComfyUI", TLS
failures and protocol violations are fatal at once; 429/502/503/504, resets, refused
connections and timeouts are retried. A WebSocket message over ``max_ws_message`` raises
nothing: the socket is dropped and reopened, and the prompts resynchronised (a reconnect).
There is no error for a hostile output file name: ``DreamGenerator`` names files itself
(``<name>_<seed>_<tag>_<n><suffix>``, the name passed through ``safe_stem``, which renames
rather than refuses), and the server's file name contributes only its suffix, from a fixed list.

Errors about a prompt always carry its ``prompt_id``. Their ``str()`` is written to be
read by a person: which node, which input, what to do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AuthenticationError",
    "CacheError",
    "ClientClosedError",
    "ConfigError",
    "ConnectError",
    "ConnectionLostError",
    "DreamgenError",
    "ExecutionError",
    "ExecutionInterrupted",
    "InputImageError",
    "JournalError",
    "MaskError",
    "NoCapableServerError",
    "NodeError",
    "NotComfyUIError",
    "OutputContentError",
    "PartialPromptWarning",
    "PartialPromptWarningError",
    "PromptError",
    "PromptLost",
    "PromptRejected",
    "PromptTimeout",
    "ProtocolError",
    "ResponseTooLargeError",
    "ServerError",
    "StorageError",
    "TLSError",
    "TransportError",
    "UIWorkflowError",
    "WorkflowError",
]


class DreamgenError(Exception):
    """Root of every exception raised by dreamgen_async."""


class ConfigError(DreamgenError, ValueError):
    """A constructor argument or option is invalid (a URL without a scheme, a bad limit).

    Raised at once, before any network call; the message says what to write instead.
    """


class WorkflowError(DreamgenError, ValueError):
    """A workflow or builder argument is invalid. Raised before any network call.

    Attributes:
        node_id: The node concerned, when there is one.
        input_name: The input (or builder argument) concerned, when there is one.
    """

    def __init__(
        self, message: str, *, node_id: str | None = None, input_name: str | None = None
    ) -> None:
        super().__init__(message)
        self.node_id = node_id
        self.input_name = input_name


class UIWorkflowError(WorkflowError):
    """A UI-format workflow (with ``nodes`` and ``links`` lists) was given.

    ComfyUI's HTTP API only accepts the API format.
    """


class InputImageError(DreamgenError, ValueError):
    """An input image cannot be used: missing, empty, unreadable, not an image, too large.

    Attributes:
        source: What the caller passed (a path, or ``"<bytes>"``), for messages and batch reports.
    """

    def __init__(self, message: str, *, source: str) -> None:
        super().__init__(message)
        self.source = source


class MaskError(InputImageError):
    """An inpainting mask cannot be used: not an image, or nothing to repaint.

    Attributes:
        source: What the caller passed (a path, or ``"<bytes>"``).
    """


class ClientClosedError(DreamgenError, RuntimeError):
    """The client is closed (or was never opened); pending jobs fail with this on close."""


class ProtocolError(DreamgenError):
    """A WebSocket frame, an HTTP body or the WebSocket handshake breaks ComfyUI's protocol.

    Malformed WebSocket frames are logged and skipped; an HTTP body or a handshake that breaks
    the protocol raises this, and it is never retried.
    """


class TransportError(DreamgenError):
    """The connection failed or broke: reset, closed mid-answer, timed out.

    Retried (HTTP) or reconnected (WebSocket) within the configured budgets.
    """


class ConnectError(TransportError):
    """The server did not answer: connection refused, name not resolved, connect timeout.

    Nothing reached the server, so even ``POST /prompt`` is re-sent without a check.
    """


class TLSError(ConnectError):
    """TLS with the server failed: certificate not trusted or for another name, or the
    server does not speak TLS. Never retried: it does not fix itself. Pass ``ssl=`` an
    :class:`ssl.SSLContext` that trusts your CA (or ``ssl=False`` to skip verification).
    """


class ConnectionLostError(TransportError):
    """The WebSocket dropped and could not be re-established within the reconnect budget."""


class ServerError(DreamgenError):
    """The server answered with a status or body we cannot use.

    Attributes:
        status: The HTTP status code.
        body: The (possibly truncated) response body as text.
        url: The path that was requested (never includes credentials).
    """

    def __init__(self, message: str, *, status: int, body: str = "", url: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.url = url


class AuthenticationError(ServerError):
    """The server (or a proxy in front of it) refused our credentials: HTTP 401 or 403, on a
    request or on the WebSocket handshake. Never retried: fix the token or password.
    """


class NotComfyUIError(ServerError):
    """Something answered, but it does not speak ComfyUI's API (an HTML page, a 404 on
    /prompt, a WebSocket handshake answered 200 or 404). Never retried."""


class ResponseTooLargeError(ServerError):
    """An HTTP response body exceeded its bound (``max_download`` for ``/view``).

    A WebSocket message over ``max_ws_message`` does not raise this: the socket is
    closed and reopened, and the prompts resynchronised from ``/history`` — it costs a
    reconnect, not a job.
    """


class OutputContentError(DreamgenError):
    """A downloaded output's bytes do not match its kind (an "image" that is not one).

    Nothing is written when this is raised.

    Attributes:
        filename: The server's file name.
        expected: What the name or kind promised (``"png"``, ``"image"``).
        detected: What the magic bytes say (``None``: no known image format).
    """

    def __init__(self, message: str, *, filename: str, expected: str, detected: str | None) -> None:
        super().__init__(message)
        self.filename = filename
        self.expected = expected
        self.detected = detected


class StorageError(DreamgenError):
    """A file or folder of ours cannot be used: read-only, missing, not a folder, disk full.

    ``path`` names it; the OS or SQLite error, when there is one, is ``__cause__``.
    """

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class JournalError(StorageError):
    """A batch journal cannot be used: another process holds it, it is not a journal, or
    its file or folder cannot be written (``path`` names the file)."""


class CacheError(StorageError):
    """The result cache cannot be used: its folder or its index cannot be read or written
    (``path`` names the cache folder)."""


class PromptError(DreamgenError):
    """An error about one prompt. ``prompt_id`` says which."""

    def __init__(self, message: str, *, prompt_id: str | None) -> None:
        super().__init__(message)
        self.prompt_id = prompt_id


@dataclass(frozen=True)
class NodeError:
    """One validation error of one node input, as reported in ``node_errors``.

    Attributes:
        node_id: The node's id in the graph.
        class_type: The node's class (e.g. ``KSampler``), when the server said.
        type: ComfyUI's error type (``value_not_in_list``, ``required_input_missing``...).
        message: ComfyUI's short message.
        details: ComfyUI's details (often the offending value).
        input_name: The input concerned, when the server said.
        extra_info: The raw ``extra_info`` mapping.
        dependent_outputs: The output nodes that depended on this node, so were dropped.
    """

    node_id: str
    class_type: str | None
    type: str
    message: str
    details: str = ""
    input_name: str | None = None
    extra_info: Mapping[str, Any] = field(default_factory=dict)
    dependent_outputs: tuple[str, ...] = ()

    def __str__(self) -> str:
        where = f"node {self.node_id}"
        if self.class_type:
            where += f" ({self.class_type})"
        if self.input_name:
            where += f", input {self.input_name!r}"
        text = f"{where}: {self.message}"
        if self.details:
            text += f" [{self.details}]"
        allowed = self.extra_info.get("input_config")
        if self.type == "value_not_in_list" and isinstance(allowed, list) and allowed:
            choices = allowed[0] if isinstance(allowed[0], list) else None
            if choices is not None:
                shown = ", ".join(map(str, choices[:20])) or "(none)"
                more = "" if len(choices) <= 20 else f", ... ({len(choices)} in all)"
                text += f"; the server has: {shown}{more}"
        return text


def _format_node_errors(errors: tuple[NodeError, ...]) -> str:
    return "".join(f"\n  - {e}" for e in errors)


class PromptRejected(PromptError):
    """ComfyUI refused the prompt (HTTP 400 from ``POST /prompt``).

    Attributes:
        error_type: ComfyUI's ``error.type`` (``prompt_outputs_failed_validation``...).
        error_message: ComfyUI's ``error.message``.
        node_errors: Every reported problem, one :class:`NodeError` per node input.
        raw: The JSON body as received.
    """

    def __init__(
        self,
        *,
        prompt_id: str | None,
        error_type: str,
        error_message: str,
        node_errors: tuple[NodeError, ...] = (),
        raw: Mapping[str, Any] | None = None,
    ) -> None:
        message = f"ComfyUI rejected the prompt ({error_type}): {error_message}"
        message += _format_node_errors(node_errors)
        super().__init__(message, prompt_id=prompt_id)
        self.error_type = error_type
        self.error_message = error_message
        self.node_errors = node_errors
        self.raw = dict(raw or {})


class PartialPromptWarning(UserWarning):
    """ComfyUI queued the prompt but dropped some output nodes that failed validation."""


class PartialPromptWarningError(PromptError):
    """ComfyUI queued the prompt with non-empty ``node_errors`` and the policy is ``"error"``.

    The prompt was removed from the server queue again before this was raised.
    """

    def __init__(self, *, prompt_id: str, node_errors: tuple[NodeError, ...]) -> None:
        super().__init__(
            "ComfyUI accepted the prompt but dropped outputs that failed validation"
            + _format_node_errors(node_errors),
            prompt_id=prompt_id,
        )
        self.node_errors = node_errors


class ExecutionError(PromptError):
    """A node raised while the prompt ran (``execution_error``).

    Attributes:
        node_id, node_type: Where it happened.
        exception_type, exception_message: What the server's Python raised.
        traceback: The server-side traceback lines.
    """

    def __init__(
        self,
        *,
        prompt_id: str,
        node_id: str | None,
        node_type: str | None,
        exception_type: str,
        exception_message: str,
        traceback: tuple[str, ...] = (),
    ) -> None:
        super().__init__(
            f"prompt {prompt_id} failed in node {node_id} ({node_type}): "
            f"{exception_type}: {exception_message.strip()}",
            prompt_id=prompt_id,
        )
        self.node_id = node_id
        self.node_type = node_type
        self.exception_type = exception_type
        self.exception_message = exception_message
        self.traceback = traceback


class ExecutionInterrupted(PromptError):
    """The prompt was interrupted before it finished."""

    def __init__(
        self, *, prompt_id: str, node_id: str | None = None, node_type: str | None = None
    ) -> None:
        where = f" in node {node_id} ({node_type})" if node_id else ""
        super().__init__(f"prompt {prompt_id} was interrupted{where}", prompt_id=prompt_id)
        self.node_id = node_id
        self.node_type = node_type


class PromptLost(PromptError):
    """The server no longer knows the prompt (it restarted) and it was not resubmitted."""


class PromptTimeout(PromptError, TimeoutError):
    """Waiting for the prompt exceeded the caller's timeout. The prompt was cancelled on the
    server (deleted from the queue, or interrupted with a targeted interrupt)."""


class NoCapableServerError(WorkflowError):
    """No server of a :class:`~dreamgen_async.ComfyUIPool` can run the workflow.

    Raised by ``submit`` before anything is posted. ``missing`` maps each server's URL to what
    it lacks (``"node class X"``, ``"ckpt_name 'y.safetensors'"``).
    """

    def __init__(self, message: str, *, missing: Mapping[str, tuple[str, ...]]) -> None:
        super().__init__(message)
        self.missing = dict(missing)
