"""ComfyUIClient: one aiohttp session, one WebSocket, one method per endpoint.

All HTTP goes through :meth:`ComfyUIClient._request`, the one boundary where aiohttp's
exceptions and unusable statuses become :mod:`dreamgen_async.errors` (the original is
kept as ``__cause__``) and where retries happen — only where repeating is safe.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import logging
import ssl as ssl_module
import time
import uuid
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from dreamgen_async.errors import (
    ClientClosedError,
    ConnectError,
    DreamgenError,
    ExecutionInterrupted,
    NotComfyUIError,
    PartialPromptWarning,
    PartialPromptWarningError,
    PromptLost,
    PromptRejected,
    PromptTimeout,
    ProtocolError,
    ResponseTooLargeError,
    ServerError,
    TransportError,
)
from dreamgen_async.jobs import Job, OutputImage, ProgressCallback, PromptResult
from dreamgen_async.multiplexer import Multiplexer, ReconnectPolicy, error_from_event
from dreamgen_async.protocol import (
    HistoryRecord,
    ImageRef,
    QueueState,
    parse_history,
    parse_node_errors,
    parse_queue,
)

__all__ = ["ComfyUIClient", "RetryPolicy", "UploadedImage"]

log = logging.getLogger("dreamgen_async")

PartialPolicy = Literal["warn", "error", "ignore"]
LostPolicy = Literal["resubmit", "fail"]
ImageSource = bytes | str | Path | IO[bytes]

_RETRY_STATUSES = frozenset({429, 502, 503, 504})
# Statuses that prove the request was not processed, so even POST /prompt may be re-sent.
_NOT_PROCESSED = frozenset({429, 503})


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


@dataclass(frozen=True, slots=True)
class UploadedImage:
    """Where an upload landed. Use ``reference`` as LoadImage's ``image`` input."""

    name: str
    subfolder: str
    type: str

    @property
    def reference(self) -> str:
        return f"{self.subfolder}/{self.name}" if self.subfolder else self.name


class _RetryableStatus(Exception):
    """Internal: a status worth retrying (never escapes ``_request``)."""

    def __init__(self, status: int, body: str, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    content_type: str
    body: bytes

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _strip_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=host))


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
            between two live clients (see COMFYUI_PROTOCOL.md §5).
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
            raise ValueError("max_in_flight must be at least 1")
        parts = urlsplit(base_url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be http(s)://host[:port], got {base_url!r}")
        if parts.username is not None and auth is None:
            auth = (unquote(parts.username), unquote(parts.password or ""))
        self.base_url = _strip_credentials(base_url.rstrip("/"))
        self.safe_url = self.base_url
        self.client_id = client_id or str(uuid.uuid4())
        self._headers: dict[str, str] = dict(headers or {})
        if any(k.lower() == "origin" for k in self._headers):
            raise ValueError("do not send an Origin header: ComfyUI answers 403 to it")
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
        self._state: Literal["unopened", "opened", "closed"] = "unopened"
        self._mux = Multiplexer(self, reconnect or ReconnectPolicy())
        self._slots: asyncio.Semaphore | None = None
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
        """
        if self._state != "unopened":
            raise ClientClosedError(f"client is {self._state}; create a new one")
        self._slots = asyncio.Semaphore(self._max_in_flight)
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, connector=aiohttp.TCPConnector(limit=64)
            )
        try:
            await self._mux.start()
        except BaseException:
            await self._close_session()
            self._state = "closed"
            raise
        self._state = "opened"

    async def aclose(self) -> None:
        """Close the socket and the session (if owned). Idempotent.

        Jobs still waiting fail with :class:`ClientClosedError`; their prompts are left on
        the server (cancel them first if that matters).
        """
        if self._state == "closed":
            return
        self._state = "closed"
        await self._mux.close(ClientClosedError("the client was closed while the job waited"))
        await self._close_session()

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
        return self._session

    @property
    def queue_remaining(self) -> int | None:
        """The server's queue length from its last ``status`` broadcast."""
        return self._mux.queue_remaining

    @property
    def in_flight(self) -> int:
        """Prompts of this client the server holds (queued or running) right now."""
        return len(self._mux.jobs)

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
        workflow: Mapping[str, Any],
        *,
        front: bool = False,
        extra_data: Mapping[str, Any] | None = None,
        on_progress: ProgressCallback | None = None,
        prompt_id: str | None = None,
    ) -> Job:
        """Queue a prompt and return its :class:`Job` (waits while ``max_in_flight`` is reached).

        The job is registered before ``POST /prompt``, so no event can be missed.
        Cancelling this call while it posts takes the prompt off the server.

        Raises:
            PromptRejected: the server refused the graph (400), with ``node_errors``.
            PartialPromptWarningError: some outputs were dropped and ``on_partial="error"``.
            ConnectError, TransportError, ServerError: the server could not be used.
        """
        self._check_open()
        await self._mux.ensure_running()
        assert self._slots is not None
        # Wait for a slot before building the job: a job waiting here costs only this frame.
        await self._slots.acquire()
        try:
            job = Job(
                self,
                prompt_id or str(uuid.uuid4()),
                workflow,
                extra_data=extra_data,
                front=front,
                on_progress=on_progress,
            )
        except BaseException:
            self._slots.release()
            raise
        job._future.add_done_callback(lambda _: self._release_slot(job))
        try:
            self._check_open()
            await self._post(job)
        except BaseException as exc:
            self._mux.jobs.pop(job.prompt_id, None)
            if job.state == "posting":
                # Cancelled, or given up on, mid-POST: the server may have queued it anyway.
                # Take it back, so that a job we report as failed never runs.
                await asyncio.shield(self._remove_from_server(job))
            job._fail(exc if isinstance(exc, DreamgenError) else asyncio.CancelledError())
            raise
        return job

    def _release_slot(self, job: Job) -> None:
        if self._slots is not None:
            self._slots.release()
        self._remember(job)

    def _remember(self, job: Job) -> None:
        fut = job._future
        outcome: PromptResult | BaseException
        if fut.cancelled():
            return
        exc = fut.exception()
        outcome = exc if exc is not None else fut.result()
        self._recent[job.prompt_id] = outcome
        while len(self._recent) > 1024:
            self._recent.popitem(last=False)

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
        self._mux.jobs[job.prompt_id] = job
        job.state = "posting"
        job.gap = not self._mux.connected
        response = await self._request(
            "POST", "/prompt", json_body=body, check_before_resend=job.prompt_id
        )
        job.state = "queued" if job.state == "posting" else job.state
        job.queued_at = job.queued_at or time.time()
        if response is None:  # the server already had it (an earlier attempt got through)
            return
        data = self._json(response, "/prompt")
        if response.status == 400 or "error" in data:
            self._mux.jobs.pop(job.prompt_id, None)
            error = data.get("error") if isinstance(data.get("error"), dict) else {}
            assert isinstance(error, dict)
            raise PromptRejected(
                prompt_id=job.prompt_id,
                error_type=str(error.get("type", "unknown")),
                error_message=str(error.get("message", data.get("error"))),
                node_errors=parse_node_errors(data.get("node_errors")),
                raw=data,
            )
        echoed = data.get("prompt_id")
        if echoed is not None and echoed != job.prompt_id:
            raise ProtocolError(f"server answered prompt_id {echoed!r}, we sent {job.prompt_id!r}")
        node_errors = parse_node_errors(data.get("node_errors"))
        if node_errors:
            job.node_errors = node_errors
            if self._on_partial == "error":
                self._mux.jobs.pop(job.prompt_id, None)
                await self._remove_from_server(job)
                raise PartialPromptWarningError(prompt_id=job.prompt_id, node_errors=node_errors)
            if self._on_partial == "warn":
                text = "; ".join(map(str, node_errors))
                warnings.warn(
                    f"prompt {job.prompt_id}: outputs dropped by the server: {text}",
                    PartialPromptWarning,
                    stacklevel=4,
                )
        if job.gap and self._mux.connected:
            # The socket dropped while we posted: events may have been missed.
            self._mux.spawn(self._mux.resync(only=job), "dreamgen-resync-one")

    async def queue_prompt(
        self,
        workflow: Mapping[str, Any],
        *,
        front: bool = False,
        extra_data: Mapping[str, Any] | None = None,
    ) -> str:
        """Queue a prompt and return its prompt_id; see :meth:`submit`."""
        job = await self.submit(workflow, front=front, extra_data=extra_data)
        return job.prompt_id

    async def run(
        self,
        workflow: Mapping[str, Any],
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        front: bool = False,
        extra_data: Mapping[str, Any] | None = None,
    ) -> PromptResult:
        """Queue a prompt and wait for its result, in one call.

        Cancelling it (or ``timeout``) removes the prompt from the server.
        """
        job = await self.submit(
            workflow, front=front, extra_data=extra_data, on_progress=on_progress
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
        job = self._mux.jobs.get(prompt_id)
        if job is not None:
            return await self._await_job(job, timeout)
        outcome = self._recent.get(prompt_id)
        if outcome is None:
            record = await self.get_history(prompt_id)
            if record is None:
                raise KeyError(f"prompt {prompt_id} is unknown to this client")
            outcome = self._outcome_from_history(prompt_id, record, None)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def _await_job(self, job: Job, timeout: float | None) -> PromptResult:
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(job._future)
        except TimeoutError:
            if job._future.done() and not job._future.cancelled():
                return job._future.result()
            await asyncio.shield(self._cancel_job(job))
            raise PromptTimeout(
                f"prompt {job.prompt_id} did not finish within {timeout} s; "
                "it was removed from the server",
                prompt_id=job.prompt_id,
            ) from None
        except asyncio.CancelledError:
            if not job._future.done():
                await asyncio.shield(self._cancel_job(job))
            raise

    async def _cancel_job(self, job: Job) -> None:
        if job.done():
            return
        self._mux.jobs.pop(job.prompt_id, None)
        job._fail(asyncio.CancelledError())
        await self._remove_from_server(job)

    async def _remove_from_server(self, job: Job) -> None:
        """Delete the prompt if pending, then interrupt it if running — targeted both times.

        In this order no race can leave it running: a delete that arrives too late is a
        no-op, and the interrupt then names the prompt that runs.
        """
        try:
            await self.delete_from_queue(job.prompt_id)
            await self.interrupt(job.prompt_id)
        except DreamgenError as exc:
            log.warning("could not remove prompt %s from the server: %s", job.prompt_id, exc)

    async def _settle_from_history(self, job: Job) -> None:
        """Resolve a job whose events may be incomplete from its ``/history`` entry."""
        if job.done():
            return
        record = await self.get_history(job.prompt_id)
        if record is None and job.state in ("queued", "running"):
            queue = await self.get_queue()
            if job.prompt_id in queue:
                return  # still there after all: keep waiting for its events
            record = await self.get_history(job.prompt_id)
        if record is None:
            if self._on_lost == "resubmit" and not job.resubmitted:
                log.warning("prompt %s vanished from the server; resubmitting it", job.prompt_id)
                job.resubmitted = True
                job.gap = False
                self._mux.jobs.pop(job.prompt_id, None)
                try:
                    await self._post(job)
                except DreamgenError as exc:
                    self._mux.jobs.pop(job.prompt_id, None)
                    job._fail(exc)
                return
            self._mux.jobs.pop(job.prompt_id, None)
            job._fail(
                PromptLost(
                    f"the server lost prompt {job.prompt_id} (did it restart?)"
                    + (" even after it was resubmitted" if job.resubmitted else ""),
                    prompt_id=job.prompt_id,
                )
            )
            return
        self._mux.jobs.pop(job.prompt_id, None)
        outcome = self._outcome_from_history(job.prompt_id, record, job)
        if isinstance(outcome, BaseException):
            job._fail(outcome)
        else:
            job._resolve(outcome.outputs)

    @staticmethod
    def _outcome_from_history(
        prompt_id: str, record: HistoryRecord, job: Job | None
    ) -> PromptResult | DreamgenError:
        if record.error is not None:
            return error_from_event(record.error)
        if record.interrupted or record.status != "success":
            return ExecutionInterrupted(prompt_id=prompt_id)
        return PromptResult(prompt_id=prompt_id, outputs=dict(record.outputs))

    # ------------------------------------------------------------------ outputs

    async def get_output_images(self, result: PromptResult | str) -> list[OutputImage]:
        """Download every output image of a finished prompt (saved images first)."""
        if isinstance(result, str):
            result = await self.wait_for_completion(result)
        images = []
        for node_id, refs in result.outputs.items():
            for ref in refs:
                images.append(OutputImage(node_id, ref, await self.download(ref)))
        images.sort(key=lambda img: img.ref.type != "output")
        return images

    async def download(self, image: ImageRef) -> bytes:
        """``GET /view`` one image. Raises ServerError(404) if the server has no such file."""
        response = await self._request(
            "GET",
            "/view",
            params={"filename": image.filename, "subfolder": image.subfolder, "type": image.type},
            max_body=self._max_download,
        )
        assert response is not None
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
        if isinstance(image, str | Path):
            path = Path(image)
            data = await asyncio.to_thread(path.read_bytes)
            name = name or path.name
        elif isinstance(image, bytes | bytearray | memoryview):
            data = bytes(image)
        else:
            data = await asyncio.to_thread(image.read)
        if not name:
            raise ValueError("upload_image needs a name when given bytes or a file object")

        def form() -> aiohttp.FormData:
            fd = aiohttp.FormData()
            fd.add_field("image", data, filename=name, content_type="application/octet-stream")
            fd.add_field("type", type)
            fd.add_field("subfolder", subfolder)
            fd.add_field("overwrite", "true" if overwrite else "false")
            return fd

        response = await self._request("POST", "/upload/image", data=form)
        assert response is not None
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
        assert response is not None
        if response.status != 200:
            raise self._status_error(response, path)
        return self._json(response, path)

    async def _post_ok(self, path: str, body: Mapping[str, Any]) -> None:
        response = await self._request("POST", path, json_body=body)
        assert response is not None
        if response.status != 200:
            raise self._status_error(response, path)

    def _status_error(self, response: _Response, path: str) -> ServerError:
        cls = NotComfyUIError if response.status == 404 and path == "/prompt" else ServerError
        return cls(
            f"{path} answered HTTP {response.status}: {response.text()[:200]}",
            status=response.status,
            body=response.text()[:2000],
            url=path,
        )

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
            data = json.loads(response.body)
        except ValueError as exc:
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
        check_before_resend: str | None = None,
        max_body: int = 64 * 1024 * 1024,
    ) -> _Response | None:
        """Send one request, retrying where that is safe; translate every failure.

        With ``check_before_resend=prompt_id`` (POST /prompt), a retry after an unknown
        outcome first asks ``/queue`` and ``/history`` whether the prompt got through, and
        returns ``None`` if it did.
        """
        session = self._check_open()
        policy = self._retry
        unknown_outcome = False

        def retryable(exc: BaseException) -> bool:
            return isinstance(exc, _RetryableStatus | ConnectError | TransportError) and not (
                isinstance(exc, ResponseTooLargeError)
            )

        backoff = wait_exponential_jitter(
            multiplier=policy.initial_delay, max=policy.max_delay, jitter=policy.initial_delay
        )

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, _RetryableStatus) and exc.retry_after is not None:
                return min(exc.retry_after, policy.max_retry_after)
            return backoff(state)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(policy.attempts) | stop_after_delay(policy.max_time),
            wait=wait,
            retry=retry_if_exception(retryable),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    if (
                        unknown_outcome
                        and check_before_resend is not None
                        and await self._server_has(check_before_resend)
                    ):
                        return None
                    try:
                        return await self._request_once(
                            session, method, path, json_body, data, params, max_body
                        )
                    except _RetryableStatus as exc:
                        unknown_outcome = exc.status not in _NOT_PROCESSED
                        log.info("%s %s answered %s; retrying", method, path, exc.status)
                        raise
                    except TransportError as exc:
                        unknown_outcome = not isinstance(exc, ConnectError)
                        log.info("%s %s failed (%s); retrying", method, path, exc)
                        raise
        except _RetryableStatus as exc:
            raise ServerError(
                f"{method} {path} answered HTTP {exc.status} after {policy.attempts} attempts",
                status=exc.status,
                body=exc.body[:2000],
                url=path,
            ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

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
        try:
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
                if resp.status in _RETRY_STATUSES:
                    body = (await resp.content.read(4096)).decode("utf-8", "replace")
                    raise _RetryableStatus(
                        resp.status, body, _retry_after(resp.headers.get("Retry-After"))
                    )
                if resp.content_length is not None and resp.content_length > max_body:
                    raise ResponseTooLargeError(
                        f"{path} announced {resp.content_length} bytes (limit {max_body})",
                        status=resp.status,
                        url=path,
                    )
                if resp.content_length is not None:  # announced, and within the bound
                    return _Response(resp.status, resp.content_type, await resp.read())
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
                return _Response(resp.status, resp.content_type, b"".join(chunks))
        except aiohttp.ClientConnectorError as exc:
            raise ConnectError(f"cannot connect to {self.safe_url}: {exc.os_error}") from exc
        except aiohttp.ClientSSLError as exc:
            raise ConnectError(f"TLS to {self.safe_url} failed: {exc}") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransportError(
                f"{method} {path} on {self.safe_url} failed: {type(exc).__name__}: {exc}"
            ) from exc

    async def _ws_connect(self) -> aiohttp.ClientWebSocketResponse:
        """Open the WebSocket and send the feature-flags hello (translated errors)."""
        session = self._check_open_or_opening()
        url = self.base_url.replace("http", "ws", 1) + "/ws"
        try:
            ws = await session.ws_connect(
                url,
                params={"clientId": self.client_id},
                headers=self._headers,
                ssl=self._ssl,
                heartbeat=self._heartbeat,
                max_msg_size=self._max_ws_message,
                timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
            )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in (200, 404):
                raise NotComfyUIError(
                    f"{self.safe_url} has no ComfyUI WebSocket at /ws (HTTP {exc.status})",
                    status=exc.status,
                    url="/ws",
                ) from exc
            raise ServerError(
                f"WebSocket handshake answered HTTP {exc.status}", status=exc.status, url="/ws"
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise ConnectError(f"cannot connect to {self.safe_url}: {exc.os_error}") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransportError(f"WebSocket to {self.safe_url} failed: {exc}") from exc
        try:
            await self._mux.send_feature_flags(ws)
        except (aiohttp.ClientError, ConnectionError) as exc:
            await ws.close()
            raise TransportError(f"WebSocket to {self.safe_url} closed at once: {exc}") from exc
        return ws

    def _check_open_or_opening(self) -> aiohttp.ClientSession:
        if self._session is None or self._state == "closed":
            raise ClientClosedError("the client is closed")
        return self._session
