"""ComfyUIClient: configuration, open/close, and one method per endpoint of one server.

The client is a thin layer over two parts it holds:

- :class:`~dreamgen_async.http.HttpTransport` (session ownership, auth, every request with
  its retries, bounds and decoding, the WebSocket handshake; errors translated at that one
  boundary by :mod:`dreamgen_async.transport_errors`);
- :class:`~dreamgen_async.owner.JobOwner` (every job, its slot, its lifecycle, the one
  reconcile, and the :class:`~dreamgen_async.multiplexer.Multiplexer` that feeds it events).

::

    ComfyUIClient --> JobOwner --> lifecycle (pure)
          |              |-----> Multiplexer --(Listener)--> JobOwner
          |              +-----> the client's endpoints (as owner.Endpoints)
          +--> HttpTransport <-- the Multiplexer's connect
"""

from __future__ import annotations

import asyncio
import io
import logging
import ssl as ssl_module
import uuid
import warnings
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal
from urllib.parse import unquote, urlsplit

import aiohttp

from dreamgen_async.backend import BeforePost, ServerStatus
from dreamgen_async.errors import (
    ClientClosedError,
    ConfigError,
    ConnectError,
    DreamgenError,
    PartialPromptWarning,
    PartialPromptWarningError,
    PromptLost,
    ServerError,
)
from dreamgen_async.http import BIG_BODY, HttpTransport, RetryPolicy
from dreamgen_async.jobs import Job, OutputImage, ProgressCallback, PromptResult, check_limits
from dreamgen_async.lifecycle import JobState
from dreamgen_async.multiplexer import Multiplexer, ReconnectPolicy
from dreamgen_async.outcomes import error_from_history
from dreamgen_async.owner import JobOwner, PostAnswer, history_input
from dreamgen_async.protocol import (
    IMAGE_SUFFIX_FORMATS,
    HistoryRecord,
    ImageRef,
    OutputData,
    OutputFile,
    QueueState,
    feature_flags_message,
    parse_history,
    parse_queue,
    verify_output,
)
from dreamgen_async.workflow_builder import BuiltWorkflow, Graph, Workflow, as_api_graph
from dreamgen_async.workflows.builder import ServerModels

__all__ = ["BIG_BODY", "ComfyUIClient", "RetryPolicy", "UploadedImage", "history_input"]

log = logging.getLogger("dreamgen_async")

PartialPolicy = Literal["warn", "error", "ignore"]
LostPolicy = Literal["resubmit", "fail"]
ImageSource = bytes | str | Path | IO[bytes]
#: What every entry point accepts as a workflow (see :func:`as_api_graph`).
WorkflowLike = Workflow | BuiltWorkflow | Graph | Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class UploadedImage:
    """Where an upload landed. Use ``reference`` as LoadImage's ``image`` input."""

    name: str
    subfolder: str
    type: str

    @property
    def reference(self) -> str:
        return f"{self.subfolder}/{self.name}" if self.subfolder else self.name


class _AlreadyQueued(Exception):
    """Internal: a re-sent ``POST /prompt`` found the prompt already on the server."""


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


def _past_posting(state: JobState) -> bool:
    """submit() returns once the POST's outcome is known (or the job settled)."""
    return state.terminal or state in (JobState.QUEUED, JobState.RUNNING, JobState.SETTLING)


def _adopted(state: JobState) -> bool:
    """adopt() returns once the server said where the prompt is (or the job settled)."""
    return state.terminal or state in (JobState.QUEUED, JobState.RUNNING)


class ComfyUIClient:
    """An asyncio client for one ComfyUI server (a :class:`~dreamgen_async.backend.Backend`).

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
        self._retry = retry or RetryPolicy()
        self._http = HttpTransport(
            url,
            session=session,
            headers=headers,
            token=token,
            auth=auth,
            ssl=ssl,
            timeout=timeout,
            retry=self._retry,
            heartbeat=heartbeat,
            max_ws_message=max_ws_message,
        )
        self._on_partial: PartialPolicy = on_partial
        self._on_lost: LostPolicy = on_lost
        self._max_download = max_download
        self._reconnect = reconnect or ReconnectPolicy()
        self._owner = JobOwner(
            self,
            connect=self._ws_connect,
            url=self.safe_url,
            reconnect=self._reconnect,
            backoff=self._retry.backoff,
            max_in_flight=max_in_flight,
            on_partial=on_partial,
            resubmit_lost=on_lost == "resubmit",
        )
        self._mux: Multiplexer = self._owner.mux
        self._closed: asyncio.Task[None] | None = None  # the close, once begun
        self._adopters: dict[str, ComfyUIClient] = {}  # by client_id: see adopt()
        self._adopters_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<ComfyUIClient {self.safe_url} {self._state}>"

    @property
    def _state(self) -> Literal["unopened", "opening", "opened", "closing", "closed"]:
        """Where the client is in its life (kept by its transport)."""
        return self._http.state

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
        http = self._http
        if http.state != "unopened":
            raise ClientClosedError(f"client is {http.state}; create a new one")
        http.state = "opening"
        http.open_session()
        try:
            ws = await self._ws_connect()
        except BaseException as exc:
            closed_meanwhile = self._closing_or_closed()
            http.state = "closed"
            await http.close_session()
            if closed_meanwhile and isinstance(exc, DreamgenError):
                raise ClientClosedError("the client was closed while it opened") from exc
            raise
        if self._closing_or_closed():  # aclose() ran while we connected
            await ws.close()
            raise ClientClosedError("the client was closed while it opened")
        self._mux.start(ws)
        http.state = "opened"

    def _closing_or_closed(self) -> bool:
        # A method, so that the type checker does not narrow the state across an await.
        return self._http.state in ("closing", "closed")

    async def aclose(self, *, detach: bool = False, timeout: float = 10.0) -> None:
        """Close the client: settle every job, close the socket and the session (if owned).

        Idempotent. Every job still waiting or running fails with :class:`ClientClosedError`,
        and everything waiting on the client wakes up. By default its prompt is taken off the
        server first (queue delete, targeted interrupt), for at most ``timeout`` seconds, so a
        job reported failed does not run. With ``detach=True`` the prompts stay queued on the
        server, for a later process to collect (e.g. a batch journal).
        """
        if not self._closing_or_closed():
            # The client owns its close, not the caller: a caller cancelled mid-way stops
            # waiting, the close goes on, and every later aclose() waits for the same one.
            opened = self._http.state == "opened"
            self._http.state = "closing"
            self._closed = asyncio.get_running_loop().create_task(
                self._close(opened, detach, timeout), name="dreamgen-close"
            )
        if self._closed is not None:
            await asyncio.shield(self._closed)

    async def _close(self, opened: bool, detach: bool, timeout: float) -> None:
        adopters, self._adopters = list(self._adopters.values()), {}
        for adopter in adopters:  # they share this client's session: closed first
            await adopter.aclose(detach=detach, timeout=timeout)
        try:
            if opened:
                reason = ClientClosedError("the client was closed while the job waited")
                await self._owner.close(reason, detach=detach, timeout=timeout)
        finally:
            await self._owner.stop()
            self._http.state = "closed"
            await self._http.close_session()

    @property
    def queue_remaining(self) -> int | None:
        """The server's queue length from its last ``status`` broadcast."""
        return self._mux.queue_remaining

    @property
    def in_flight(self) -> int:
        """Prompts of this client the server holds (posting, queued or running) right now."""
        return len(self._owner.live)

    @property
    def waiting(self) -> int:
        """Jobs waiting client-side for an in-flight slot."""
        return self._owner.waiting

    async def wait_idle(self) -> None:
        """Return once no job of this client is waiting, posting, queued, running or being
        removed (every job submitted so far is settled). Cancelling it is safe."""
        await self._owner.wait_idle()

    @property
    def max_in_flight(self) -> int:
        """How many of this client's prompts may be on the server at once."""
        return self._owner.max_in_flight

    @property
    def free_slots(self) -> int:
        """In-flight slots free right now (``max_in_flight`` minus the jobs holding one)."""
        return self._owner.free_slots

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
        before_post: BeforePost | None = None,
        max_run_time: float | None = None,
        queue_timeout: float | None = None,
    ) -> Job:
        """Queue a prompt and return its :class:`Job` once the server accepted it.

        While ``max_in_flight`` prompts are on the server the job waits client-side, where
        ``priority`` orders it (higher first, first come first served within a priority).
        The job is registered before ``POST /prompt``, so no event can be missed.
        Cancelling this call takes the prompt back: at once while it waits for a slot, or as
        soon as the POST's outcome is known (never before, so a slow server cannot queue it
        after its delete); it returns once the removal was sent. ``before_post(server,
        client_id)`` is awaited before anything is sent (a journal commits the prompt_id there).

        Per-job limits (``None``: none), beside a caller's ``result(timeout=)`` which bounds
        the whole wait: ``max_run_time`` seconds of execution, counted from
        ``execution_start`` (then the prompt is interrupted on the server), and
        ``queue_timeout`` seconds of waiting before it starts, client-side for a slot and in
        the server's queue (then it is taken off the queue). Either fails the job with
        :class:`PromptTimeout` naming the limit.

        Raises:
            PromptRejected: the server refused the graph (400), with ``node_errors``.
            PromptTimeout: ``queue_timeout`` passed before the server accepted the prompt.
            PartialPromptWarningError: some outputs were dropped and ``on_partial="error"``.
            ConnectError, TransportError, ServerError: the server could not be used.
            ClientClosedError: the client is not open, or was closed meanwhile.
        """
        workflow = as_api_graph(workflow)  # Workflow, BuiltWorkflow, mapping; never UI format
        check_limits(max_run_time, queue_timeout)
        self._http.check_open()
        if before_post is not None:
            await before_post(self.safe_url, self.client_id)
        self._mux.ensure_running()
        job = self._owner.add(
            prompt_id or str(uuid.uuid4()),
            workflow,
            extra_data=extra_data,
            front=front,
            on_progress=on_progress,
            priority=priority,
            max_run_time=max_run_time,
            queue_timeout=queue_timeout,
        )
        try:
            await job.wait_for(_past_posting)
        except asyncio.CancelledError:
            await self._owner.cancel(job, asyncio.CancelledError())
            raise
        if job.node_errors and self._on_partial == "error":
            # Taken back (unless it finished first: then it ran, but the policy still says no).
            raise PartialPromptWarningError(prompt_id=job.prompt_id, node_errors=job.node_errors)
        if job.queued_at is None and job.state is not JobState.DONE:
            # Never accepted: rejected, failed or closed. (DONE: it got through after all.)
            error = job.settled_error()
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

    def position(self, prompt_id: str) -> int | None:
        """Where the job of ``prompt_id`` waits for a slot client-side (1: the next to be
        posted, by priority then first come); ``None`` once posted, ended, or unknown."""
        job = self._owner.find(prompt_id)
        return None if job is None else self._owner.position(job)

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
        self._http.check_open()
        job = self._owner.find(prompt_id)
        if job is not None:
            return await job.result(timeout)
        outcome = self._owner.recent(prompt_id)
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
        server: str | None = None,
        client_id: str | None = None,
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

        ``server`` (when given) must be this client's; a ``client_id`` other than this
        client's is served by a companion client under that id (see :meth:`with_client_id`),
        opened on first use and closed with this one, so the prompt's events arrive.

        Raises:
            ConnectError: ``server`` is another server (this client cannot ask it).
        """
        self._http.check_open()
        if server is not None and server != self.safe_url:
            raise ConnectError(f"prompt {prompt_id} was posted to {server}, not {self.safe_url}")
        if client_id is not None and client_id != self.client_id:
            adopter = await self._adopter(client_id)
            return await adopter.adopt(prompt_id, workflow=workflow, on_progress=on_progress)
        self._mux.ensure_running()
        job = self._owner.add(prompt_id, workflow or {}, on_progress=on_progress, adopted=True)
        try:
            await job.wait_for(_adopted)
        except asyncio.CancelledError:
            self._owner.abandon(job, asyncio.CancelledError())
            raise
        if job.state is JobState.FAILED and isinstance(job.settled_error(), PromptLost):
            return None
        self._owner.resubmit_if_lost(job, workflow is not None)
        return job

    async def _adopter(self, client_id: str) -> ComfyUIClient:
        async with self._adopters_lock:
            adopter = self._adopters.get(client_id)
            if adopter is None:
                adopter = self.with_client_id(client_id)
                await adopter.open()
                self._adopters[client_id] = adopter
        return adopter

    def with_client_id(self, client_id: str) -> ComfyUIClient:
        """A new, unopened client for the same server, credentials, session and policies,
        under another ``client_id`` (to collect prompts posted under it, see :meth:`adopt`).

        It shares this client's session, which it never closes: close it before this one.
        """
        return ComfyUIClient(
            self.base_url,
            session=self._http.session,
            client_id=client_id,
            headers=self._http.headers,
            ssl=self._http.ssl,
            timeout=self._http.timeout.total or 300.0,
            retry=self._retry,
            reconnect=self._reconnect,
            max_in_flight=self._owner.max_in_flight,
            on_partial=self._on_partial,
            on_lost=self._on_lost,
            heartbeat=self._http.heartbeat,
            max_ws_message=self._http.max_ws_message,
            max_download=self._max_download,
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
        response = await self._http.request(
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

        response = await self._http.request("POST", "/upload/image", data=form)
        body = self._http.body_json(response, "/upload/image")
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
        data = await self._http.get_json(f"/history/{prompt_id}")
        return parse_history(prompt_id, data)

    async def get_queue(self) -> QueueState:
        """``GET /queue``, with pending prompts in run order."""
        return parse_queue(await self._http.get_json("/queue"))

    async def interrupt(self, prompt_id: str) -> None:
        """Interrupt ``prompt_id`` if it is the running prompt; a no-op otherwise.

        There is deliberately no untargeted form: it would interrupt other clients' jobs.
        """
        await self._http.post_ok("/interrupt", {"prompt_id": prompt_id})

    async def delete_from_queue(self, *prompt_ids: str) -> None:
        """Remove pending prompts (a running one is untouched; unknown ids are ignored)."""
        if prompt_ids:
            await self._http.post_ok("/queue", {"delete": list(prompt_ids)})

    async def system_stats(self) -> dict[str, Any]:
        """``GET /system_stats``: versions and devices."""
        return await self._http.get_json("/system_stats")

    async def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        """``GET /object_info`` (all nodes, large) or ``/object_info/{class}``."""
        path = "/object_info" if node_class is None else f"/object_info/{node_class}"
        return await self._http.get_json(path)

    async def object_info_by_server(self) -> dict[str, dict[str, Any]]:
        """``{server: /object_info}`` (the :class:`Backend` form; one server here)."""
        return {self.safe_url: await self.object_info()}

    async def models(self) -> ServerModels:
        """The checkpoints, diffusion models, CLIP, VAE and LoRA files the server offers."""
        return ServerModels.from_object_info(await self.object_info())

    async def status(self) -> list[ServerStatus]:
        """The server's status (``up`` if ``/system_stats`` answers, else ``down``)."""
        error = None
        try:
            await self.system_stats()
        except DreamgenError as exc:
            error = str(exc)
        return [
            ServerStatus(
                url=self.safe_url,
                state="down" if error else "up",
                in_flight=self.in_flight,
                queue=self.queue_remaining,
                capacity=self.max_in_flight,
                done=0,
                failed=0,
                mean_job_time=None,
                loaded_model=None,
                model_switches=0,
                error=error,
            )
        ]

    async def free_memory(self, *, unload_models: bool = False, free_memory: bool = True) -> None:
        """``POST /free``: ask the server to release memory and/or unload models."""
        await self._http.post_ok(
            "/free", {"unload_models": unload_models, "free_memory": free_memory}
        )

    async def post_prompt(self, body: Mapping[str, Any], prompt_id: str) -> PostAnswer | None:
        """``POST /prompt``, retried so that the prompt is queued at most once.

        A re-send after a failure whose outcome is unknown (reset, read timeout, 502, 504)
        first asks ``/queue`` and ``/history`` whether an earlier attempt got through. Jobs
        post through :meth:`submit`; this is the endpoint their owner calls.

        Returns:
            The server's answer (status and JSON object), or ``None`` when an earlier attempt
            got through (its answer was lost: the prompt is queued, with no ``node_errors``).
        """

        async def check_before_resend() -> None:
            queue = await self.get_queue()
            if prompt_id in queue or await self.get_history(prompt_id) is not None:
                log.info("prompt %s got through on an earlier attempt; not re-sending", prompt_id)
                raise _AlreadyQueued

        try:
            response = await self._http.request(
                "POST", "/prompt", json_body=body, before_resend=check_before_resend
            )
        except _AlreadyQueued:
            return None
        return PostAnswer(response.status, self._http.body_json(response, "/prompt"))

    async def _ws_connect(self) -> aiohttp.ClientWebSocketResponse:
        """Open the WebSocket under our clientId and say hello (the feature flags)."""
        return await self._http.ws_connect({"clientId": self.client_id}, feature_flags_message())
