"""ComfyUIClient: one aiohttp session, one WebSocket, one method per endpoint.

All HTTP goes through :meth:`ComfyUIClient._request` and the WebSocket handshake through
:meth:`ComfyUIClient._ws_connect`; both turn aiohttp's exceptions and unusable statuses into
:mod:`dreamgen_async.errors` with the one table in :mod:`dreamgen_async.transport_errors`
(the original kept as ``__cause__``), and ``_request`` retries only what its ``classify``
allows — and ``POST /prompt`` only after checking the server does not already have it.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import collections
import functools
import heapq
import io
import itertools
import json
import logging
import ssl as ssl_module
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, TypeVar
from urllib.parse import unquote, urlsplit

import aiohttp

from dreamgen_async import lifecycle as lc
from dreamgen_async.errors import (
    ClientClosedError,
    ConfigError,
    DreamgenError,
    NotComfyUIError,
    PartialPromptWarning,
    PartialPromptWarningError,
    PromptLost,
    PromptRejected,
    PromptTimeout,
    ProtocolError,
    ResponseTooLargeError,
    ServerError,
)
from dreamgen_async.jobs import Job, OutputImage, ProgressCallback, PromptResult
from dreamgen_async.lifecycle import JobState
from dreamgen_async.multiplexer import Multiplexer, ReconnectPolicy
from dreamgen_async.outcomes import error_from_history
from dreamgen_async.protocol import (
    IMAGE_SUFFIX_FORMATS,
    HistoryRecord,
    ImageRef,
    OutputData,
    OutputFile,
    QueueState,
    json_steps,
    parse_history,
    parse_node_errors,
    parse_queue,
    verify_output,
)
from dreamgen_async.retry import Backoff, in_retry_loop, retry_call
from dreamgen_async.transport_errors import (
    RETRY_STATUSES,
    classify,
    error_for_status,
    mapped_errors,
    may_have_been_processed,
)
from dreamgen_async.workflow_builder import BuiltWorkflow, Graph, Workflow, as_api_graph

__all__ = ["ComfyUIClient", "RetryPolicy", "UploadedImage"]

log = logging.getLogger("dreamgen_async")

PartialPolicy = Literal["warn", "error", "ignore"]
LostPolicy = Literal["resubmit", "fail"]
ImageSource = bytes | str | Path | IO[bytes]
#: What every entry point accepts as a workflow (see :func:`as_api_graph`).
WorkflowLike = Workflow | BuiltWorkflow | Graph | Mapping[str, Any]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries of HTTP requests that are safe to repeat.

    Connection errors, 502/503/504 and 429 (honouring ``Retry-After``, capped at
    ``max_retry_after``) are retried. ``POST /prompt`` is re-sent only after checking
    that the server does not already have the prompt.
    """

    attempts: int = 6
    max_time: float = 60.0
    initial_delay: float = 0.1
    max_delay: float = 5.0
    max_retry_after: float = 30.0

    @property
    def backoff(self) -> Backoff:
        """The delays between attempts (see :class:`~dreamgen_async.retry.Backoff`)."""
        return Backoff(self.initial_delay, self.max_delay, self.max_retry_after)


def _retryable(exc: BaseException) -> bool:
    """What an HTTP request tries again: :func:`classify`'s verdict."""
    return isinstance(exc, DreamgenError) and classify(exc) != "fatal"


def _retryable_within_budget(exc: BaseException) -> bool:
    """What a loop bounded by its own budget (removals) tries again."""
    return isinstance(exc, DreamgenError) and classify(exc, budgeted=True) != "fatal"


@dataclass(frozen=True, slots=True)
class UploadedImage:
    """Where an upload landed. Use ``reference`` as LoadImage's ``image`` input."""

    name: str
    subfolder: str
    type: str

    @property
    def reference(self) -> str:
        return f"{self.subfolder}/{self.name}" if self.subfolder else self.name


class _RetryableStatus(ServerError):
    """Internal: a "come back later" status (never escapes ``_request``)."""

    def __init__(self, status: int, body: str, path: str, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status}", status=status, body=body, url=path)
        self.retry_after = retry_after


class _AlreadyQueued(Exception):
    """Internal: a re-sent ``POST /prompt`` found the prompt already on the server."""


#: Bodies larger than this are decoded in steps (JSON) or hashed in a worker thread. json.loads
#: runs at ~30-500 MB/s, so 256 KB cost the event loop at most ~8 ms in one go.
BIG_BODY = 256 * 1024
_UNSET: Any = object()


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    content_type: str
    body: bytes
    decoded: Any = _UNSET  # the JSON body, parsed off the loop when it was large

    def text(self) -> str:
        """The start of the body as text (enough for any message; never the whole of a
        huge body, which would be decoded on the event loop)."""
        return self.body[:16384].decode("utf-8", "replace")


async def _decode_json(body: bytes) -> Any:
    """``json.loads`` of a large body in steps, the event loop running between them.

    A worker thread would not help: ``json.loads`` holds the GIL from start to end (a
    54 MB answer blocked the loop ~0.5 s). Returns (not raises) a decoding error.
    """
    try:
        decoder = codecs.getincrementaldecoder(json.detect_encoding(body))("surrogatepass")
        parts = []
        for start in range(0, len(body), 1 << 21):
            parts.append(decoder.decode(body[start : start + (1 << 21)]))
            await asyncio.sleep(0)
        parts.append(decoder.decode(b"", final=True))
        steps = json_steps("".join(parts))
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value
            await asyncio.sleep(0)
    except (ValueError, RecursionError) as exc:
        return exc


async def _response(status: int, content_type: str, body: bytes) -> _Response:
    """A response whose large JSON body is already decoded, without blocking the loop."""
    if len(body) > BIG_BODY and "json" in content_type:
        return _Response(status, content_type, body, await _decode_json(body))
    return _Response(status, content_type, body)


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _split_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """``(url without credentials, user, password)``; parsed by hand, not by urlsplit.

    A password may hold an unescaped ``/``, ``#``, ``?`` or ``@``, which make urlsplit cut
    the authority early and leave the secret in "path" or "fragment". The userinfo is
    everything between ``://`` and the *last* ``@``.
    """
    scheme, sep, rest = url.partition("://")
    at = rest.rfind("@")
    if not sep or at < 0:
        return url, None, None
    user, colon, password = rest[:at].partition(":")
    return f"{scheme}://{rest[at + 1 :]}", unquote(user), unquote(password) if colon else None


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages about a bad URL)."""
    head, sep, rest = url.partition("://")
    if not sep:
        head, rest = "", url
    at = rest.rfind("@")
    if at < 0:
        return url
    user = rest[:at].partition(":")[0]
    return f"{head}{sep}{user}:***@{rest[at + 1 :]}"


def _check_base_url(base_url: str) -> tuple[str, str | None, str | None]:
    """Validate ``base_url``; return it without credentials, plus the user and password.

    Raises:
        ConfigError: no ``http(s)://`` scheme, no host, or a bad port. The message never
            contains the password.
    """
    shown = redact_url(base_url)
    url, user, password = _split_userinfo(base_url.strip().rstrip("/"))
    if "://" not in url:
        raise ConfigError(
            f"base_url needs a scheme: write 'http://{redact_url(base_url.strip())}' "
            f"instead of {shown!r}"
        )
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError as exc:  # a port that is not a number or out of range
        raise ConfigError(f"base_url {shown!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise ConfigError(f"base_url must be http(s)://host[:port], got {shown!r}")
    return url, user, password


def history_input(prompt_id: str, record: HistoryRecord) -> lc.Outcome:
    """A job's lifecycle input for its ``/history`` record."""
    return lc.Outcome(
        error_from_history(prompt_id, record),
        record.outputs,
        files=record.files,
        interrupted=record.interrupted,
    )


def outcome_from_history(prompt_id: str, record: HistoryRecord) -> PromptResult | DreamgenError:
    """The result (or error) a ``/history`` record stands for, outside any job."""
    error = error_from_history(prompt_id, record)
    if error is not None:
        return error
    return PromptResult(prompt_id, dict(record.outputs), files=record.files)


async def read_image_source(image: ImageSource, name: str | None) -> tuple[bytes, str]:
    """The bytes of an upload and its name (a path's own name when none is given); files are
    read off the event loop.

    Raises:
        ConfigError: bytes or a file object without a name.
    """
    if isinstance(image, str | Path):
        path = Path(image)
        data = await asyncio.to_thread(path.read_bytes)
        name = name or path.name
    elif isinstance(image, bytes | bytearray | memoryview):
        data = bytes(image)
    else:
        data = await asyncio.to_thread(image.read)
    if not name:
        raise ConfigError("upload_image needs a name when given bytes or a file object")
    return data, name


async def collect_outputs(
    result: PromptResult,
    download: Callable[[ImageRef], Awaitable[bytes]],
    *,
    previews: bool = True,
) -> list[OutputData]:
    """Every output of ``result`` with its content (see :meth:`ComfyUIClient.get_outputs`):
    saved first, previews unless ``previews=False``, image bytes checked by their format."""
    files = result.files or tuple(
        OutputFile(node_id, "image", ref)
        for node_id, refs in result.outputs.items()
        for ref in refs
    )
    outputs = []
    for file in sorted(files, key=lambda f: not f.saved):
        if not file.saved and not previews:
            continue
        if file.ref is None:
            outputs.append(OutputData(file, (file.text or "").encode()))
            continue
        data = await download(file.ref)
        verify_output(file, data)
        outputs.append(OutputData(file, data))
    return outputs


async def collect_output_images(
    result: PromptResult, download: Callable[[ImageRef], Awaitable[bytes]]
) -> list[OutputImage]:
    """Every output image of ``result``, downloaded (saved images first); a file named as an
    image is checked by its magic bytes (:class:`OutputContentError` otherwise)."""
    images = []
    for node_id, refs in result.outputs.items():
        for ref in refs:
            data = await download(ref)
            if Path(ref.filename).suffix.lower() in IMAGE_SUFFIX_FORMATS:
                verify_output(OutputFile(node_id, "image", ref), data)
            images.append(OutputImage(node_id, ref, data))
    images.sort(key=lambda img: img.ref.type != "output")
    return images


def _terminal(state: JobState) -> bool:
    return state.terminal


def _past_posting(state: JobState) -> bool:
    """submit() returns once the POST's outcome is known (or the job settled)."""
    return state.terminal or state in (JobState.QUEUED, JobState.RUNNING, JobState.SETTLING)


def _adopted(state: JobState) -> bool:
    """adopt() returns once the server said where the prompt is (or the job settled)."""
    return state.terminal or state in (JobState.QUEUED, JobState.RUNNING)


def _removal_done(state: JobState) -> bool:
    """A cancel has done its part once the job is settled or its interrupt was sent."""
    return state.terminal or state is JobState.INTERRUPTING


class ComfyUIClient:
    """An asyncio client for one ComfyUI server.

    Use it as ``async with ComfyUIClient(url) as client:``. It owns one
    :class:`aiohttp.ClientSession` (unless you pass ``session``, which it then never
    closes) and one WebSocket read by a single task, so hundreds of concurrent jobs share
    one connection.

    Args:
        base_url: ``http(s)://host:port`` of the server (credentials in the URL become
            Basic auth and never appear in logs or errors).
        session: An existing session to use; the caller keeps ownership.
        client_id: The WebSocket clientId; a fresh UUID by default. Never share one
            between two live clients (see docs/PROTOCOL.md §5).
        token: Sent as ``Authorization: Bearer <token>`` on HTTP and the WebSocket.
        auth: Basic auth, as ``(user, password)``.
        headers: Extra headers for every request (an ``Origin`` header is refused:
            ComfyUI answers 403 when it differs from ``Host``).
        ssl: Passed to aiohttp: ``None`` verifies certificates (the default), an
            :class:`ssl.SSLContext` for your CA, ``False`` disables verification.
        timeout: Seconds for one HTTP request (connect included).
        retry: Retry policy for HTTP.
        reconnect: Reconnect policy for the WebSocket.
        max_in_flight: How many of this client's prompts may sit in the server queue at
            once; the rest wait locally, where cancelling them costs nothing.
        on_partial: What to do when the server queues a prompt but drops some outputs
            (200 with ``node_errors``): ``"warn"`` (a :class:`PartialPromptWarning`),
            ``"error"`` (delete it and raise), or ``"ignore"``.
        on_lost: A prompt the server forgot (it restarted): ``"resubmit"`` it once, or
            ``"fail"`` with :class:`PromptLost`.
        heartbeat: Seconds between WebSocket pings; a missed pong means a dead socket.
            Silence alone never does: jobs can take minutes.
        max_ws_message: Largest WebSocket message accepted (previews are ~40 KB).
        max_download: Largest ``/view`` body accepted.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8188",
        *,
        session: aiohttp.ClientSession | None = None,
        client_id: str | None = None,
        token: str | None = None,
        auth: tuple[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        ssl: ssl_module.SSLContext | bool | None = None,
        timeout: float = 300.0,
        retry: RetryPolicy | None = None,
        reconnect: ReconnectPolicy | None = None,
        max_in_flight: int = 8,
        on_partial: PartialPolicy = "warn",
        on_lost: LostPolicy = "resubmit",
        heartbeat: float = 30.0,
        max_ws_message: int = 32 * 1024 * 1024,
        max_download: int = 512 * 1024 * 1024,
    ) -> None:
        if max_in_flight < 1:
            raise ConfigError(f"max_in_flight must be at least 1, got {max_in_flight}")
        if not isinstance(base_url, str):
            raise ConfigError(f"base_url must be a string, got {type(base_url).__name__}")
        url, user, password = _check_base_url(base_url)
        if user is not None and auth is None:
            auth = (user, password or "")
        self.base_url = url
        self.safe_url = self.base_url
        self.client_id = client_id or str(uuid.uuid4())
        self._headers: dict[str, str] = dict(headers or {})
        if any(k.lower() == "origin" for k in self._headers):
            raise ConfigError("do not send an Origin header: ComfyUI answers 403 to it")
        if token is not None:
            self._headers["Authorization"] = f"Bearer {token}"
        elif auth is not None:
            user, password = auth
            encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
            self._headers["Authorization"] = f"Basic {encoded}"
        self._ssl: ssl_module.SSLContext | bool = True if ssl is None else ssl
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 30.0))
        self._retry = retry or RetryPolicy()
        self._on_partial: PartialPolicy = on_partial
        self._on_lost: LostPolicy = on_lost
        self._heartbeat = heartbeat
        self._max_ws_message = max_ws_message
        self._max_download = max_download
        self._max_in_flight = max_in_flight
        self._session = session
        self._owns_session = session is None
        self._state: Literal["unopened", "opening", "opened", "closing", "closed"] = "unopened"
        self._mux = Multiplexer(self, reconnect or ReconnectPolicy())
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed: asyncio.Task[None] | None = None  # the close, once begun
        # The jobs, by where they are. A job is in exactly one of: the waiting heap
        # (client-side, by priority), _live (the server may hold it), or neither (settled).
        self._waiting: list[tuple[int, int, Job]] = []
        self._order = itertools.count()
        self._live: dict[str, Job] = {}
        self._waiting_count = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._free = max_in_flight
        self._removals: list[Job] = []
        self._remover: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Seconds a removal (delete + interrupt) may take before the job is reported gone.
        self._removal_budget = 10.0
        self._recent: collections.OrderedDict[str, PromptResult | BaseException] = (
            collections.OrderedDict()
        )

    def __repr__(self) -> str:
        return f"<ComfyUIClient {self.safe_url} {self._state}>"

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> ComfyUIClient:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Create the session (unless given) and open the WebSocket.

        Raises:
            ConnectError: the server does not answer.
            NotComfyUIError: something answered that is not ComfyUI.
            ClientClosedError: the client was opened before, or closed while opening.
        """
        if self._state != "unopened":
            raise ClientClosedError(f"client is {self._state}; create a new one")
        self._loop = asyncio.get_running_loop()
        self._state = "opening"
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, connector=aiohttp.TCPConnector(limit=64)
            )
        try:
            ws = await self._ws_connect()
        except BaseException as exc:
            closed_meanwhile = self._closing_or_closed()
            self._state = "closed"
            await self._close_session()
            if closed_meanwhile and isinstance(exc, DreamgenError):
                raise ClientClosedError("the client was closed while it opened") from exc
            raise
        if self._closing_or_closed():  # aclose() ran while we connected
            await ws.close()
            raise ClientClosedError("the client was closed while it opened")
        self._mux.start(ws)
        self._state = "opened"

    def _closing_or_closed(self) -> bool:
        # A method, so that the type checker does not narrow the state across an await.
        return self._state in ("closing", "closed")

    async def aclose(self, *, detach: bool = False, timeout: float = 10.0) -> None:
        """Close the client: settle every job, close the socket and the session (if owned).

        Idempotent. Every job still waiting or running fails with :class:`ClientClosedError`,
        and everything waiting on the client wakes up. By default its prompt is taken off the
        server first (queue delete, targeted interrupt), for at most ``timeout`` seconds, so a
        job reported failed does not run. With ``detach=True`` the prompts stay queued on the
        server, for a later process to collect (e.g. a batch journal).
        """
        if self._state not in ("closing", "closed"):
            # The client owns its close, not the caller: a caller cancelled mid-way stops
            # waiting, the close goes on, and every later aclose() waits for the same one.
            opened = self._state == "opened"
            self._state = "closing"
            self._closed = asyncio.get_running_loop().create_task(
                self._close(opened, detach, timeout), name="dreamgen-close"
            )
        if self._closed is not None:
            await asyncio.shield(self._closed)

    async def _close(self, opened: bool, detach: bool, timeout: float) -> None:
        try:
            if opened:
                await self._settle_all_for_close(detach, timeout)
        finally:
            await self._mux.close()
            await self._cancel_tasks()
            self._state = "closed"
            await self._close_session()

    async def _settle_all_for_close(self, detach: bool, timeout: float) -> None:
        reason = ClientClosedError("the client was closed while the job waited")
        jobs = self._all_jobs()
        for job in jobs:
            self._drive(job, lc.Abandon(reason) if detach else lc.Cancel(reason))
        try:
            async with asyncio.timeout(timeout):
                for job in jobs:
                    await job._wait_for(_terminal)
        except TimeoutError:
            log.warning("aclose: %d prompts could not be taken back in time", len(self._live))
        for job in self._all_jobs():  # what the server did not answer for in time
            self._drive(job, lc.Abandon(reason))

    async def _close_session(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    def _check_open(self) -> aiohttp.ClientSession:
        if self._state != "opened" or self._session is None:
            raise ClientClosedError(
                "the client is not open: use `async with ComfyUIClient(url) as client`"
                if self._state == "unopened"
                else "the client is closed"
            )
        self._check_loop()
        return self._session

    def _check_loop(self) -> None:
        if self._loop is not None and asyncio.get_running_loop() is not self._loop:
            raise ClientClosedError(
                "this client was opened in another event loop (another asyncio.run?): "
                "create one client per event loop"
            )

    @property
    def queue_remaining(self) -> int | None:
        """The server's queue length from its last ``status`` broadcast."""
        return self._mux.queue_remaining

    @property
    def in_flight(self) -> int:
        """Prompts of this client the server holds (posting, queued or running) right now."""
        return len(self._live)

    @property
    def waiting(self) -> int:
        """Jobs waiting client-side for an in-flight slot."""
        return self._waiting_count

    async def wait_idle(self) -> None:
        """Return once no job of this client is waiting, posting, queued, running or being
        removed (every job submitted so far is settled). Cancelling it is safe."""
        await self._idle.wait()

    @property
    def max_in_flight(self) -> int:
        """How many of this client's prompts may be on the server at once."""
        return self._max_in_flight

    @property
    def free_slots(self) -> int:
        """In-flight slots free right now (``max_in_flight`` minus the jobs holding one)."""
        return self._free

    @property
    def connected(self) -> bool:
        """Whether the WebSocket is open right now (False while it reconnects)."""
        return self._mux.connected

    @property
    def ws_connections(self) -> int:
        """How many times the WebSocket was opened (1 + reconnects)."""
        return self._mux.connections

    # ------------------------------------------------------------------ jobs

    async def submit(
        self,
        workflow: WorkflowLike,
        *,
        front: bool = False,
        extra_data: Mapping[str, Any] | None = None,
        on_progress: ProgressCallback | None = None,
        prompt_id: str | None = None,
        priority: int = 0,
    ) -> Job:
        """Queue a prompt and return its :class:`Job` once the server accepted it.

        While ``max_in_flight`` prompts are on the server the job waits client-side, where
        ``priority`` orders it (higher first, first come first served within a priority).
        The job is registered before ``POST /prompt``, so no event can be missed.
        Cancelling this call takes the prompt back: at once while it waits for a slot, or as
        soon as the POST's outcome is known (never before, so a slow server cannot queue it
        after its delete); it returns once the removal was sent.

        Raises:
            PromptRejected: the server refused the graph (400), with ``node_errors``.
            PartialPromptWarningError: some outputs were dropped and ``on_partial="error"``.
            ConnectError, TransportError, ServerError: the server could not be used.
            ClientClosedError: the client is not open, or was closed meanwhile.
        """
        workflow = as_api_graph(workflow)  # Workflow, BuiltWorkflow, mapping; never UI format
        self._check_open()
        self._mux.ensure_running()
        job = Job(
            self,
            prompt_id or str(uuid.uuid4()),
            workflow,
            extra_data=extra_data,
            front=front,
            on_progress=on_progress,
            priority=priority,
            resubmit_lost=self._on_lost == "resubmit",
        )
        self._enqueue(job)
        try:
            await job._wait_for(_past_posting)
        except asyncio.CancelledError:
            self._drive(job, lc.Cancel(asyncio.CancelledError()))
            await self._removal_sent(job)
            raise
        if job.node_errors and self._on_partial == "error":
            # Taken back (unless it finished first: then it ran, but the policy still says no).
            raise PartialPromptWarningError(prompt_id=job.prompt_id, node_errors=job.node_errors)
        if job.queued_at is None and job.state is not JobState.DONE:
            # Never accepted: rejected, failed or closed. (DONE: it got through after all.)
            if job._future.cancelled():
                raise asyncio.CancelledError
            error = job._future.exception()
            assert error is not None
            raise error
        if job.node_errors and self._on_partial == "warn":
            text = "; ".join(map(str, job.node_errors))
            warnings.warn(
                f"prompt {job.prompt_id}: outputs dropped by the server: {text}",
                PartialPromptWarning,
                stacklevel=2,
            )
        return job

    async def queue_prompt(
        self,
        workflow: WorkflowLike,
        *,
        front: bool = False,
        extra_data: Mapping[str, Any] | None = None,
        priority: int = 0,
    ) -> str:
        """Queue a prompt and return its prompt_id; see :meth:`submit`."""
        job = await self.submit(workflow, front=front, extra_data=extra_data, priority=priority)
        return job.prompt_id

    async def run(
        self,
        workflow: WorkflowLike,
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        front: bool = False,
        extra_data: Mapping[str, Any] | None = None,
        priority: int = 0,
    ) -> PromptResult:
        """Queue a prompt and wait for its result, in one call.

        Cancelling it (or ``timeout``) removes the prompt from the server.
        """
        job = await self.submit(
            workflow,
            front=front,
            extra_data=extra_data,
            on_progress=on_progress,
            priority=priority,
        )
        return await job.result(timeout)

    async def wait_for_completion(
        self, prompt_id: str, timeout: float | None = None
    ) -> PromptResult:
        """Wait for a prompt queued by this client (or already finished) to complete.

        Raises:
            KeyError: this client never queued ``prompt_id`` and the server does not
                know it as finished.
            PromptTimeout, ExecutionError, ...: as :meth:`Job.result`.
        """
        self._check_open()
        job = self._live.get(prompt_id) or next(
            (j for _, _, j in self._waiting if j.prompt_id == prompt_id), None
        )
        if job is not None:
            return await self._await_job(job, timeout)
        outcome = self._recent.get(prompt_id)
        if outcome is None:
            record = await self.get_history(prompt_id)
            if record is None:
                raise KeyError(f"prompt {prompt_id} is unknown to this client")
            outcome = outcome_from_history(prompt_id, record)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def adopt(
        self,
        prompt_id: str,
        *,
        workflow: Mapping[str, Any] | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Job | None:
        """Take charge of a prompt posted earlier (by another process, say): its :class:`Job`.

        The job takes a ``max_in_flight`` slot like :meth:`submit`, is registered, then the
        server is asked: finished → the job is resolved from ``/history``; queued or running →
        it waits like any other job (its outcome read from ``/history`` when it ends, since
        earlier events were missed); absent (never arrived, deleted, or the server restarted)
        → ``None``. The prompt's events reach this client only if it uses the ``client_id``
        the prompt was posted under. With ``workflow``, a prompt the server later loses is
        resubmitted by the ``on_lost`` policy; without, it fails with :class:`PromptLost`.
        Cancelling this call leaves the prompt to the server.
        """
        self._check_open()
        self._mux.ensure_running()
        job = Job(
            self,
            prompt_id,
            workflow or {},
            extra_data=None,
            front=False,
            on_progress=on_progress,
            resubmit_lost=False,  # absent when adopted: None, the caller decides
            adopted=True,
        )
        self._enqueue(job)
        try:
            await job._wait_for(_adopted)
        except asyncio.CancelledError:
            self._drive(job, lc.Abandon(asyncio.CancelledError()))
            raise
        if job.state is JobState.FAILED and isinstance(job._future.exception(), PromptLost):
            return None
        job._life.resubmit_lost = workflow is not None and self._on_lost == "resubmit"
        return job

    def with_client_id(self, client_id: str) -> ComfyUIClient:
        """A new, unopened client for the same server, credentials, session and policies,
        under another ``client_id`` (to collect prompts posted under it, see :meth:`adopt`).

        It shares this client's session, which it never closes: close it before this one.
        """
        return ComfyUIClient(
            self.base_url,
            session=self._session,
            client_id=client_id,
            headers=self._headers,
            ssl=self._ssl,
            timeout=self._timeout.total or 300.0,
            retry=self._retry,
            reconnect=self._mux._policy,
            max_in_flight=self._max_in_flight,
            on_partial=self._on_partial,
            on_lost=self._on_lost,
            heartbeat=self._heartbeat,
            max_ws_message=self._max_ws_message,
            max_download=self._max_download,
        )

    async def _await_job(self, job: Job, timeout: float | None) -> PromptResult:
        """One caller's wait. Giving up ends this wait; the last waiter's also ends the job."""
        job._waiters += 1
        reason: BaseException | None = None  # set when this caller gives up
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(job._future)
        except TimeoutError:
            if job._future.done() and not job._future.cancelled():
                return job._future.result()
            last = job._waiters == 1
            reason = PromptTimeout(
                f"prompt {job.prompt_id} did not finish within {timeout} s; "
                + (
                    "it was removed from the server"
                    if last
                    else "another caller still waits for it, so it stays on the server"
                ),
                prompt_id=job.prompt_id,
            )
            raise reason from None
        except asyncio.CancelledError as exc:
            reason = exc
            raise
        finally:
            job._waiters -= 1
            if reason is not None and job._waiters == 0 and not job._future.done():
                self._drive(job, lc.Cancel(reason))
                await self._removal_sent(job)

    async def _cancel_job(self, job: Job) -> None:
        self._drive(job, lc.Cancel(asyncio.CancelledError()))
        await self._removal_sent(job)

    async def _removal_sent(self, job: Job) -> None:
        """Wait (shielded, bounded) until the job is settled or its interrupt was sent."""
        try:
            async with asyncio.timeout(self._removal_budget):
                await asyncio.shield(job._wait_for(_removal_done))
        except TimeoutError:
            log.warning("prompt %s: removal still in progress", job.prompt_id)

    # ------------------------------------------------------------------ the owner

    def _drive(self, job: Job, event: lc.Input) -> None:
        """Feed one input to a job's lifecycle and carry out the effects. Never awaits.

        This is the one place where a job's state changes.
        """
        before = job._life.state
        effects = job._life.handle(event)
        after = job._life.state
        if after is not before:
            if before is JobState.WAITING:
                self._waiting_count -= 1
            if after.terminal:
                self._live.pop(job.prompt_id, None)
                if not self._live and not self._waiting_count:
                    self._idle.set()
            elif after in lc.ON_SERVER:
                self._live[job.prompt_id] = job
            job._state_changed()
        for effect in effects:
            self._perform(job, effect)

    def _perform(self, job: Job, effect: lc.Effect) -> None:
        kind = effect.kind
        if kind == "post":
            job._post_task = self._spawn(self._post(job), "dreamgen-post")
        elif kind == "remove":
            self._removals.append(job)
            if self._remover is None or self._remover.done():
                self._remover = self._spawn(self._remove_pending(), "dreamgen-remove")
        elif kind == "reconcile":
            self._spawn(self._reconcile([job]), "dreamgen-reconcile")
        elif kind == "resync":
            self._mux.force_reconnect()
        elif kind == "resolve":
            job._resolve(effect.outputs, effect.files)  # type: ignore[arg-type]
            self._remember(job)
        elif kind == "fail":
            assert effect.error is not None
            job._fail(effect.error)
            self._remember(job)
        elif kind == "release":
            self._free += 1
            self._grant_slots()
        elif kind == "abort_post":
            if job._post_task is not None:
                job._post_task.cancel()
        else:  # pragma: no cover - the effect kinds are a closed set
            raise AssertionError(f"unknown effect {kind}")

    def _enqueue(self, job: Job) -> None:
        """A new job waits client-side for a slot (by priority), then is granted one."""
        heapq.heappush(self._waiting, (-job.priority, next(self._order), job))
        self._waiting_count += 1
        self._idle.clear()
        self._grant_slots()

    def _grant_slots(self) -> None:
        """Hand free slots to waiting jobs, highest priority first."""
        while self._free > 0 and self._waiting:
            _, _, job = heapq.heappop(self._waiting)
            if job.state is not JobState.WAITING:
                continue  # cancelled while it waited
            self._free -= 1
            self._drive(job, lc.SlotGranted(connected=self._mux.connected))

    def _all_jobs(self) -> list[Job]:
        waiting = [j for _, _, j in self._waiting if j.state is JobState.WAITING]
        return [*waiting, *self._live.values()]

    def _remember(self, job: Job) -> None:
        fut = job._future
        if fut.cancelled():
            return
        exc = fut.exception()
        self._recent[job.prompt_id] = exc if exc is not None else fut.result()
        while len(self._recent) > 1024:
            self._recent.popitem(last=False)

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run a helper coroutine that ``aclose()`` cancels and awaits."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    async def _cancel_tasks(self) -> None:
        """Cancel and await every helper task, including those spawned meanwhile.

        The set is emptied here, not by the done-callbacks: since Python 3.12 ``gather()``
        over tasks that are all done returns without yielding, so a loop waiting for
        ``_task_done`` (scheduled with ``call_soon``) to shrink the set would never end.
        """
        while self._tasks:
            tasks = list(self._tasks)
            self._tasks.clear()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- inputs from the socket

    def _gap(self) -> None:
        """The socket dropped: every job the server holds may have missed events."""
        for job in list(self._live.values()):
            self._drive(job, lc.Gap())

    def _gap_jobs(self) -> list[Job]:
        """Jobs a resync must check: those with a gap, and every one whose outcome is owed."""
        return [
            j
            for j in self._live.values()
            if j.state in lc.RECONCILABLE and (j._life.gap or j.state is JobState.SETTLING)
        ]

    def _connection_failed(self, exc: BaseException) -> None:
        """The reader gave up (budget exhausted, or fatal): every job fails with ``exc``.

        The prompts are deleted from the server in the background, best effort: the failure
        is reported at once, not after the server answers.
        """
        on_server = [j.prompt_id for j in self._live.values()]
        for job in self._all_jobs():
            self._drive(job, lc.Abandon(exc))
        if on_server and self._state == "opened":
            self._spawn(self._delete_quietly(on_server), "dreamgen-delete-lost")

    async def _delete_quietly(self, prompt_ids: list[str]) -> None:
        try:
            async with asyncio.timeout(self._removal_budget):
                await self.delete_from_queue(*prompt_ids)
        except (DreamgenError, TimeoutError) as exc:
            log.info(
                "could not delete %d prompts after losing the server: %s", len(prompt_ids), exc
            )

    # -- effects that do I/O; each reports back through _drive

    async def _post(self, job: Job) -> None:
        body: dict[str, Any] = {
            "prompt": job.workflow,
            "client_id": self.client_id,
            "prompt_id": job.prompt_id,
        }
        if job.extra_data:
            body["extra_data"] = job.extra_data
        if job.front:
            body["front"] = True
        try:
            outcome = await self._post_prompt(job, body)
        except DreamgenError as exc:
            # Refused or throttled on every attempt: it never reached the queue; otherwise
            # the server may hold it, and it is taken back.
            outcome = lc.PostFailed(exc) if may_have_been_processed(exc) else lc.PostRejected(exc)
        self._drive(job, outcome)

    async def _post_prompt(self, job: Job, body: dict[str, Any]) -> lc.Input:
        response = await self._post_prompt_once_only(body, job.prompt_id)
        if response is None:  # the server already had it (an earlier attempt got through)
            job.queued_at = job.queued_at or time.time()
            return lc.PostAccepted()
        data = self._json(response, "/prompt")
        if response.status == 400 or "error" in data:
            error = data.get("error") if isinstance(data.get("error"), dict) else {}
            assert isinstance(error, dict)
            return lc.PostRejected(
                PromptRejected(
                    prompt_id=job.prompt_id,
                    error_type=str(error.get("type", "unknown")),
                    error_message=str(error.get("message", data.get("error"))),
                    node_errors=parse_node_errors(data.get("node_errors")),
                    raw=data,
                )
            )
        echoed = data.get("prompt_id")
        if echoed is not None and echoed != job.prompt_id:
            self._spawn(self._delete_quietly([str(echoed)]), "dreamgen-delete-echo")
            return lc.PostFailed(
                ProtocolError(f"server answered prompt_id {echoed!r}, we sent {job.prompt_id!r}")
            )
        node_errors = parse_node_errors(data.get("node_errors"))
        if node_errors:
            job.node_errors = node_errors
            if self._on_partial == "error":
                return lc.PostFailed(
                    PartialPromptWarningError(prompt_id=job.prompt_id, node_errors=node_errors)
                )
        job.queued_at = job.queued_at or time.time()
        return lc.PostAccepted()

    async def _remove_pending(self) -> None:
        """Take back every job queued for removal, in batches: one delete for all of them."""
        while self._removals:
            batch, self._removals = self._removals, []
            try:
                async with asyncio.timeout(self._removal_budget):
                    await self._remove_batch(batch)
            except (DreamgenError, TimeoutError) as exc:
                log.warning("could not take %d prompts back from the server: %s", len(batch), exc)
                for job in batch:  # reported gone, though the server did not confirm it
                    if job.state is JobState.REMOVING:
                        self._drive(job, lc.Removed(running=False))

    async def _remove_batch(self, batch: list[Job]) -> None:
        """Delete (pending), then look: interrupt the one running; read history for the rest.

        In this order no race leaves a prompt running: a delete that arrives too late is a
        no-op, and the queue read after it shows the prompt that runs.
        """
        ids = [job.prompt_id for job in batch]
        queue = await self._retrying(lambda: self._delete_and_look(ids))
        for job in batch:
            if job.state is not JobState.REMOVING:
                continue
            prompt_id = job.prompt_id
            if queue.is_running(prompt_id):
                await self._retrying(functools.partial(self.interrupt, prompt_id))
                self._drive(job, lc.Removed(running=True))
                continue
            record = await self._retrying(functools.partial(self.get_history, prompt_id))
            if job.state is not JobState.REMOVING:
                continue
            if record is None:
                self._drive(job, lc.Removed(running=False))
            else:
                self._drive(job, history_input(job.prompt_id, record))

    async def _delete_and_look(self, ids: list[str]) -> QueueState:
        await self.delete_from_queue(*ids)
        return await self.get_queue()

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """Repeat ``call`` while :func:`classify` allows, with backoff (the caller bounds
        the time)."""
        return await retry_call(call, self._retry.backoff, retry_if=_retryable_within_budget)

    async def _reconcile(self, jobs: list[Job], *, raise_errors: bool = False) -> None:
        """Check jobs whose events may be incomplete against ``/queue`` and ``/history``.

        Finished → settled from history; still queued or running → keep waiting (their events
        arrive on the current socket); vanished → the lost-prompt policy. What was read applies
        only to a job that did not change meanwhile (its lifecycle's epoch): a job resubmitted
        by another check must not be judged on a snapshot from before. A failure reports
        ReconcileFailed (the socket is dropped so the resync retries), or raises.
        """
        epochs = {j.prompt_id: j._life.epoch for j in jobs if j.state in lc.RECONCILABLE}
        if not epochs:
            return
        checked = [j for j in jobs if j.prompt_id in epochs]

        def unchanged(job: Job) -> bool:
            return job._life.epoch == epochs[job.prompt_id]

        try:
            queue = await self.get_queue()
            for job in checked:
                if not unchanged(job):
                    continue
                if job.prompt_id in queue:
                    running = queue.is_running(job.prompt_id)
                    self._drive(job, lc.InQueue(running, listening=self._mux.connected))
                    continue
                record = await self.get_history(job.prompt_id)
                if not unchanged(job):
                    continue
                if record is not None:
                    self._drive(job, history_input(job.prompt_id, record))
                else:
                    lost = self._lost_error(job)
                    self._drive(job, lc.Absent(lost, listening=self._mux.connected))
        except DreamgenError:
            if raise_errors:
                raise
            for job in checked:
                if job.state in lc.RECONCILABLE:
                    self._drive(job, lc.ReconcileFailed())

    @staticmethod
    def _lost_error(job: Job) -> PromptLost:
        if job.resubmitted or job.state is JobState.INTERRUPTING:
            log.warning("prompt %s vanished from the server again", job.prompt_id)
        else:
            log.warning("prompt %s vanished from the server (did it restart?)", job.prompt_id)
        return PromptLost(
            f"the server lost prompt {job.prompt_id} (did it restart?)"
            + (" even after it was resubmitted" if job.resubmitted else ""),
            prompt_id=job.prompt_id,
        )

    # ------------------------------------------------------------------ outputs

    async def get_output_images(self, result: PromptResult | str) -> list[OutputImage]:
        """Download every output image of a finished prompt (saved images first).

        Raises:
            OutputContentError: a file named as an image holds something else.
        """
        if isinstance(result, str):
            result = await self.wait_for_completion(result)
        return await collect_output_images(result, self.download)

    async def get_outputs(
        self, result: PromptResult | str, *, previews: bool = True
    ) -> list[OutputData]:
        """Every output of a finished prompt, of every kind, with its content.

        Files (images, animated images, videos, audio, 3D...) are downloaded; a text output
        is its UTF-8. Saved outputs come first, then previews (``previews=False`` skips
        those). Image bytes are checked against their format (magic bytes).

        Raises:
            OutputContentError: an image output holds something else (nothing is returned).
            ServerError: a file could not be downloaded.
        """
        if isinstance(result, str):
            result = await self.wait_for_completion(result)
        return await collect_outputs(result, self.download, previews=previews)

    async def download(self, image: ImageRef) -> bytes:
        """``GET /view`` one image. Raises ServerError(404) if the server has no such file."""
        response = await self._request(
            "GET",
            "/view",
            params={"filename": image.filename, "subfolder": image.subfolder, "type": image.type},
            max_body=self._max_download,
        )
        if response.status != 200:
            raise ServerError(
                f"GET /view of {image.filename!r} answered {response.status}",
                status=response.status,
                body=response.text()[:500],
                url="/view",
            )
        return response.body

    # ------------------------------------------------------------------ endpoints

    async def upload_image(
        self,
        image: ImageSource,
        *,
        name: str | None = None,
        subfolder: str = "",
        type: str = "input",
        overwrite: bool = False,
    ) -> UploadedImage:
        """``POST /upload/image``. ``image`` is bytes, a path, or a binary file object.

        Always use the returned name: the server may rename (``x (1).png``).
        """
        data, name = await read_image_source(image, name)

        def form() -> aiohttp.FormData:
            fd = aiohttp.FormData()
            # A file object, not bytes: aiohttp then streams it in chunks off the loop.
            body = io.BytesIO(data)
            fd.add_field("image", body, filename=name, content_type="application/octet-stream")
            fd.add_field("type", type)
            fd.add_field("subfolder", subfolder)
            fd.add_field("overwrite", "true" if overwrite else "false")
            return fd

        response = await self._request("POST", "/upload/image", data=form)
        body = self._json(response, "/upload/image")
        if response.status != 200 or not isinstance(body.get("name"), str):
            raise ServerError(
                f"upload of {name!r} answered {response.status}",
                status=response.status,
                body=response.text()[:500],
                url="/upload/image",
            )
        return UploadedImage(
            name=body["name"],
            subfolder=str(body.get("subfolder") or ""),
            type=str(body.get("type") or type),
        )

    async def get_history(self, prompt_id: str) -> HistoryRecord | None:
        """``GET /history/{id}``; ``None`` while queued/running *or* when unknown."""
        data = await self._get_json(f"/history/{prompt_id}")
        return parse_history(prompt_id, data)

    async def _missed_by_a_silent_socket(self) -> bool:
        """Whether a socket that heard nothing for a while missed something: the server's
        queue length moved, or one of our jobs finished (then it is settled from history)."""
        remote = await self._queue_remaining()
        missed = remote is not None and remote != self._mux.queue_remaining
        for job in [j for j in self._live.values() if j.state in lc.RECONCILABLE]:
            epoch = job._life.epoch
            record = await self.get_history(job.prompt_id)
            if record is not None and job._life.epoch == epoch:
                self._drive(job, history_input(job.prompt_id, record))
                missed = True
        return missed

    async def _queue_remaining(self) -> int | None:
        """``GET /prompt``: the server's queue length (pending + running), cheaply."""
        info = (await self._get_json("/prompt")).get("exec_info")
        value = info.get("queue_remaining") if isinstance(info, dict) else None
        return value if isinstance(value, int) else None

    async def get_queue(self) -> QueueState:
        """``GET /queue``, with pending prompts in run order."""
        return parse_queue(await self._get_json("/queue"))

    async def interrupt(self, prompt_id: str) -> None:
        """Interrupt ``prompt_id`` if it is the running prompt; a no-op otherwise.

        There is deliberately no untargeted form: it would interrupt other clients' jobs.
        """
        await self._post_ok("/interrupt", {"prompt_id": prompt_id})

    async def delete_from_queue(self, *prompt_ids: str) -> None:
        """Remove pending prompts (a running one is untouched; unknown ids are ignored)."""
        if prompt_ids:
            await self._post_ok("/queue", {"delete": list(prompt_ids)})

    async def system_stats(self) -> dict[str, Any]:
        """``GET /system_stats``: versions and devices."""
        return await self._get_json("/system_stats")

    async def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        """``GET /object_info`` (all nodes, large) or ``/object_info/{class}``."""
        path = "/object_info" if node_class is None else f"/object_info/{node_class}"
        return await self._get_json(path)

    async def free_memory(self, *, unload_models: bool = False, free_memory: bool = True) -> None:
        """``POST /free``: ask the server to release memory and/or unload models."""
        await self._post_ok("/free", {"unload_models": unload_models, "free_memory": free_memory})

    # ------------------------------------------------------------------ HTTP boundary

    async def _get_json(self, path: str) -> dict[str, Any]:
        response = await self._request("GET", path)
        if response.status != 200:
            raise self._status_error(response, path)
        return self._json(response, path)

    async def _post_ok(self, path: str, body: Mapping[str, Any]) -> None:
        response = await self._request("POST", path, json_body=body)
        if response.status != 200:
            raise self._status_error(response, path)

    def _status_error(self, response: _Response, path: str) -> ServerError:
        return error_for_status(response.status, url=self.safe_url, path=path, body=response.text())

    def _json(self, response: _Response, path: str) -> dict[str, Any]:
        if response.status >= 500 or "json" not in response.content_type:
            if "html" in response.content_type:
                raise NotComfyUIError(
                    f"{self.safe_url}{path} answered an HTML page: is this a ComfyUI server?",
                    status=response.status,
                    body=response.text()[:500],
                    url=path,
                )
            raise self._status_error(response, path)
        try:
            data = response.decoded
            if data is _UNSET:
                data = json.loads(response.body)
            elif isinstance(data, Exception):
                raise data
        except (ValueError, RecursionError) as exc:
            raise NotComfyUIError(
                f"{path} answered something that is not JSON",
                status=response.status,
                body=response.text()[:500],
                url=path,
            ) from exc
        if not isinstance(data, dict):
            raise ProtocolError(f"{path} answered a JSON {type(data).__name__}, not an object")
        return data

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: Callable[[], aiohttp.FormData] | None = None,
        params: Mapping[str, str] | None = None,
        max_body: int = 64 * 1024 * 1024,
        before_resend: Callable[[], Awaitable[None]] | None = None,
    ) -> _Response:
        """Send one request, retrying where that is safe; translate every failure.

        What is retried is decided by :func:`~dreamgen_async.transport_errors.classify`
        (429/502/503/504, refused, reset, timed out); everything else raises at once, and
        401/403 raise :class:`~dreamgen_async.errors.AuthenticationError` here. Other statuses
        are returned for the caller to judge. ``before_resend`` is awaited before re-sending a
        request the server may already have processed (an unknown outcome); it may raise to
        stop the retries.
        """
        session = self._session_for_requests()
        policy = self._retry
        # Inside a caller's retry loop, one attempt: that loop does the retrying.
        attempts = 1 if in_retry_loop() else policy.attempts
        unknown_outcome = False

        async def attempt() -> _Response:
            nonlocal unknown_outcome
            if unknown_outcome and before_resend is not None:
                await before_resend()
            try:
                return await self._request_once(
                    session, method, path, json_body, data, params, max_body
                )
            except DreamgenError as exc:
                if _retryable(exc):
                    # Once an attempt may have got through, every re-send checks first.
                    unknown_outcome = unknown_outcome or may_have_been_processed(exc)
                raise

        try:
            return await retry_call(
                attempt,
                policy.backoff,
                retry_if=_retryable,
                attempts=attempts,
                max_time=policy.max_time,
            )
        except _RetryableStatus as exc:
            raise ServerError(
                f"{method} {path} answered HTTP {exc.status} after {attempts} attempt(s)",
                status=exc.status,
                body=exc.body[:2000],
                url=path,
            ) from exc

    async def _post_prompt_once_only(
        self, body: Mapping[str, Any], prompt_id: str
    ) -> _Response | None:
        """``POST /prompt``, retried so that the prompt is queued at most once.

        A re-send after a failure whose outcome is unknown (reset, read timeout, 502, 504)
        first asks ``/queue`` and ``/history`` whether an earlier attempt got through.

        Returns:
            The server's answer, or ``None`` when an earlier attempt got through (its answer
            was lost: the prompt is queued, with no ``node_errors`` to report).
        """

        async def check_before_resend() -> None:
            if await self._server_has(prompt_id):
                log.info("prompt %s got through on an earlier attempt; not re-sending", prompt_id)
                raise _AlreadyQueued

        try:
            return await self._request(
                "POST", "/prompt", json_body=body, before_resend=check_before_resend
            )
        except _AlreadyQueued:
            return None

    async def _server_has(self, prompt_id: str) -> bool:
        queue = await self.get_queue()
        return prompt_id in queue or await self.get_history(prompt_id) is not None

    async def _request_once(
        self,
        session: aiohttp.ClientSession,
        method: str,
        path: str,
        json_body: Any,
        data: Callable[[], aiohttp.FormData] | None,
        params: Mapping[str, str] | None,
        max_body: int,
    ) -> _Response:
        with mapped_errors(self.safe_url, f"{method} {path}", path):
            async with session.request(
                method,
                self.base_url + path,
                json=json_body,
                data=data() if data is not None else None,
                params=params,
                headers=self._headers,
                ssl=self._ssl,
                timeout=self._timeout,
            ) as resp:
                if resp.status in RETRY_STATUSES or resp.status in (401, 403):
                    body = (await resp.content.read(4096)).decode("utf-8", "replace")
                    if resp.status in RETRY_STATUSES:
                        retry_after = _retry_after(resp.headers.get("Retry-After"))
                        raise _RetryableStatus(resp.status, body, path, retry_after)
                    raise error_for_status(resp.status, url=self.safe_url, path=path, body=body)
                if resp.content_length is not None and resp.content_length > max_body:
                    raise ResponseTooLargeError(
                        f"{path} announced {resp.content_length} bytes (limit {max_body})",
                        status=resp.status,
                        url=path,
                    )
                if resp.content_length is not None:  # announced, and within the bound
                    return await _response(resp.status, resp.content_type, await resp.read())
                chunks = []
                size = 0
                async for chunk in resp.content.iter_chunked(1 << 20):
                    size += len(chunk)
                    if size > max_body:
                        raise ResponseTooLargeError(
                            f"{path} sent more than {max_body} bytes",
                            status=resp.status,
                            url=path,
                        )
                    chunks.append(chunk)
                return await _response(resp.status, resp.content_type, b"".join(chunks))

    async def _ws_connect(self) -> aiohttp.ClientWebSocketResponse:
        """Open the WebSocket and send the feature-flags hello (translated errors).

        Raises what :func:`~dreamgen_async.transport_errors.translate` maps to: a handshake
        answered 401/403 is an ``AuthenticationError``, 200/404 a ``NotComfyUIError``.
        """
        session = self._check_open_or_opening()
        url = self.base_url.replace("http", "ws", 1) + "/ws"
        with mapped_errors(self.safe_url, "WebSocket", "/ws"):
            ws = await session.ws_connect(
                url,
                params={"clientId": self.client_id},
                headers=self._headers,
                ssl=self._ssl,
                heartbeat=self._heartbeat,
                max_msg_size=self._max_ws_message,
                timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
            )
        try:
            with mapped_errors(self.safe_url, "WebSocket hello", "/ws"):
                await self._mux.send_feature_flags(ws)
        except BaseException:
            await ws.close()
            raise
        return ws

    def _session_for_requests(self) -> aiohttp.ClientSession:
        """The session while open, and while closing (to take prompts back)."""
        if self._state == "closing" and self._session is not None:
            return self._session
        return self._check_open()

    def _check_open_or_opening(self) -> aiohttp.ClientSession:
        if self._session is None or self._state == "closed":
            raise ClientClosedError("the client is closed")
        return self._session
