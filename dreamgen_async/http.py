"""The HTTP transport of one server: session ownership, auth, requests, the WebSocket handshake.

Every request goes through :meth:`HttpTransport.request` and the WebSocket handshake through
:meth:`HttpTransport.ws_connect`; both turn aiohttp's exceptions and unusable statuses into
:mod:`dreamgen_async.errors` with the one table in :mod:`dreamgen_async.transport_errors`
(the original kept as ``__cause__``). ``request`` retries only what
:func:`~dreamgen_async.transport_errors.classify` allows, with the one
:class:`~dreamgen_async.retry.Backoff`, and ``POST /prompt`` only after its ``before_resend``
check. Bodies are bounded (``max_body``) and large JSON is decoded without blocking the loop.

The transport knows nothing of jobs: :class:`~dreamgen_async.ComfyUIClient` holds one and
names the endpoints.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import json
import logging
import ssl as ssl_module
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from dreamgen_async.errors import (
    ClientClosedError,
    ConfigError,
    DreamgenError,
    NotComfyUIError,
    ProtocolError,
    ResponseTooLargeError,
    ServerError,
)
from dreamgen_async.protocol import json_steps
from dreamgen_async.retry import Backoff, in_retry_loop, retry_call
from dreamgen_async.transport_errors import (
    RETRY_STATUSES,
    classify,
    error_for_status,
    mapped_errors,
    may_have_been_processed,
    reraise_translated,
)

__all__ = ["BIG_BODY", "HttpTransport", "Response", "RetryPolicy", "decode_json", "retryable"]

log = logging.getLogger("dreamgen_async")

State = Literal["unopened", "opening", "opened", "closing", "closed"]


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


class _CheckedResend:
    """A request whose re-send must first ask ``before_resend``, once an attempt may have
    got through (an unknown outcome): from then on every re-send checks."""

    __slots__ = ("_before_resend", "_send", "_unknown_outcome")

    def __init__(
        self, send: Callable[..., Awaitable[Response]], before_resend: Callable[[], Awaitable[None]]
    ) -> None:
        self._send = send
        self._before_resend = before_resend
        self._unknown_outcome = False

    async def __call__(self, *args: Any) -> Response:
        if self._unknown_outcome:
            await self._before_resend()
        try:
            return await self._send(*args)
        except DreamgenError as exc:
            if retryable(exc):
                self._unknown_outcome = self._unknown_outcome or may_have_been_processed(exc)
            raise


def retryable(exc: BaseException) -> bool:
    """What an HTTP request tries again: :func:`classify`'s verdict."""
    return isinstance(exc, DreamgenError) and classify(exc) != "fatal"


class RetryableStatus(ServerError):
    """A "come back later" status (never escapes :meth:`HttpTransport.request`)."""

    def __init__(self, status: int, body: str, path: str, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status}", status=status, body=body, url=path)
        self.retry_after = retry_after


#: Bodies larger than this are decoded in steps (JSON) or hashed in a worker thread. json.loads
#: runs at ~30-500 MB/s, so 256 KB cost the event loop at most ~8 ms in one go.
BIG_BODY = 256 * 1024
UNSET: Any = object()


@dataclass(frozen=True, slots=True)
class Response:
    """An answer read in full (within its bound)."""

    status: int
    content_type: str
    body: bytes
    decoded: Any = UNSET  # the JSON body, parsed off the loop when it was large

    def text(self) -> str:
        """The start of the body as text (enough for any message; never the whole of a
        huge body, which would be decoded on the event loop)."""
        return self.body[:16384].decode("utf-8", "replace")


async def decode_json(body: bytes) -> Any:
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


async def make_response(status: int, content_type: str, body: bytes) -> Response:
    """A response whose large JSON body is already decoded, without blocking the loop."""
    if len(body) > BIG_BODY and "json" in content_type:
        return Response(status, content_type, body, await decode_json(body))
    return Response(status, content_type, body)


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class HttpTransport:
    """The session, the credentials and the bounds of every request to one server.

    It owns the :class:`aiohttp.ClientSession` it creates (:meth:`open_session`,
    :meth:`close_session`); a session passed in stays the caller's. ``state`` is the client's
    lifetime (unopened, opening, opened, closing, closed): requests are sent while opened, and
    while closing (to take prompts back); the WebSocket handshake also while opening.

    Args:
        base_url: ``http(s)://host:port``, without credentials.
        session: A session to use and never close.
        headers: Headers for every request (``Origin`` is refused: ComfyUI answers 403).
        token, auth: Bearer token, or Basic ``(user, password)``.
        ssl, timeout, retry: As :class:`~dreamgen_async.ComfyUIClient` takes them.
        heartbeat, max_ws_message: The WebSocket's ping interval and largest message.
    """

    def __init__(
        self,
        base_url: str,
        *,
        session: aiohttp.ClientSession | None,
        headers: Mapping[str, str] | None,
        token: str | None,
        auth: tuple[str, str] | None,
        ssl: ssl_module.SSLContext | bool | None,
        timeout: float,
        retry: RetryPolicy,
        heartbeat: float,
        max_ws_message: int,
    ) -> None:
        self.base_url = base_url
        self.safe_url = base_url
        self.headers: dict[str, str] = dict(headers or {})
        if any(k.lower() == "origin" for k in self.headers):
            raise ConfigError("do not send an Origin header: ComfyUI answers 403 to it")
        if token is not None:
            self.headers["Authorization"] = f"Bearer {token}"
        elif auth is not None:
            user, password = auth
            encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
            self.headers["Authorization"] = f"Basic {encoded}"
        self.ssl: ssl_module.SSLContext | bool = True if ssl is None else ssl
        self.timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 30.0))
        self._retry = retry
        self._backoff = retry.backoff  # the policy is frozen: its backoff too
        self.heartbeat = heartbeat
        self.max_ws_message = max_ws_message
        self.session = session
        self._owns_session = session is None
        self.state: State = "unopened"
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def retry(self) -> RetryPolicy:
        """How requests are retried (set when the transport is made)."""
        return self._retry

    # ------------------------------------------------------------------ the session

    def open_session(self) -> None:
        """Bind to the running loop and create the session, unless one was given."""
        self._loop = asyncio.get_running_loop()
        if self.session is None:
            self.session = aiohttp.ClientSession(
                timeout=self.timeout, connector=aiohttp.TCPConnector(limit=64)
            )

    async def close_session(self) -> None:
        """Close the session if this transport created it (idempotent)."""
        if self._owns_session and self.session is not None:
            await self.session.close()
        self.session = None

    def check_open(self) -> aiohttp.ClientSession:
        """The session, when requests may be sent from this loop.

        Raises:
            ClientClosedError: not opened yet, closed, or another event loop.
        """
        if self.state != "opened" or self.session is None:
            raise ClientClosedError(
                "the client is not open: use `async with ComfyUIClient(url) as client`"
                if self.state == "unopened"
                else "the client is closed"
            )
        if self._loop is not None and asyncio.get_running_loop() is not self._loop:
            raise ClientClosedError(
                "this client was opened in another event loop (another asyncio.run?): "
                "create one client per event loop"
            )
        return self.session

    def _session_for_requests(self) -> aiohttp.ClientSession:
        """The session while open, and while closing (to take prompts back)."""
        if self.state == "closing" and self.session is not None:
            return self.session
        return self.check_open()

    # ------------------------------------------------------------------ requests

    async def get_json(self, path: str) -> dict[str, Any]:
        response = await self.request("GET", path)
        if response.status != 200:
            raise self.status_error(response, path)
        return self.body_json(response, path)

    async def post_ok(self, path: str, body: Mapping[str, Any]) -> None:
        response = await self.request("POST", path, json_body=body)
        if response.status != 200:
            raise self.status_error(response, path)

    def status_error(self, response: Response, path: str) -> ServerError:
        return error_for_status(response.status, url=self.safe_url, path=path, body=response.text())

    def body_json(self, response: Response, path: str) -> dict[str, Any]:
        if response.status >= 500 or "json" not in response.content_type:
            if "html" in response.content_type:
                raise NotComfyUIError(
                    f"{self.safe_url}{path} answered an HTML page: is this a ComfyUI server?",
                    status=response.status,
                    body=response.text()[:500],
                    url=path,
                )
            raise self.status_error(response, path)
        try:
            data = response.decoded
            if data is UNSET:
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

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: Callable[[], aiohttp.FormData] | None = None,
        params: Mapping[str, str] | None = None,
        max_body: int = 64 * 1024 * 1024,
        before_resend: Callable[[], Awaitable[None]] | None = None,
    ) -> Response:
        """Send one request, retrying where that is safe; translate every failure.

        Inside a caller's retry loop (:func:`~dreamgen_async.retry.in_retry_loop`) it makes one
        attempt: that loop does the retrying.

        What is retried is decided by :func:`~dreamgen_async.transport_errors.classify`
        (429/502/503/504, refused, reset, timed out); everything else raises at once, and
        401/403 raise :class:`~dreamgen_async.errors.AuthenticationError` here. Other statuses
        are returned for the caller to judge. ``before_resend`` is awaited before re-sending a
        request the server may already have processed (an unknown outcome); it may raise to
        stop the retries.
        """
        session = self._session_for_requests()
        policy = self.retry
        # Inside a caller's retry loop, one attempt: that loop does the retrying.
        attempts = 1 if in_retry_loop() else policy.attempts
        send: Callable[..., Awaitable[Response]] = self._request_once
        if before_resend is not None:
            send = _CheckedResend(send, before_resend)
        try:
            # No closure per request: the arguments go through the retry loop as they are.
            return await retry_call(
                send,
                self._backoff,
                session,
                method,
                path,
                json_body,
                data,
                params,
                max_body,
                retry_if=retryable,
                attempts=attempts,
                max_time=policy.max_time,
            )
        except RetryableStatus as exc:
            raise ServerError(
                f"{method} {path} answered HTTP {exc.status} after {attempts} attempt(s)",
                status=exc.status,
                body=exc.body[:2000],
                url=path,
            ) from exc

    async def _request_once(
        self,
        session: aiohttp.ClientSession,
        method: str,
        path: str,
        json_body: Any,
        data: Callable[[], aiohttp.FormData] | None,
        params: Mapping[str, str] | None,
        max_body: int,
    ) -> Response:
        # mapped_errors, written out: no context manager built for every request.
        try:
            async with session.request(
                method,
                self.base_url + path,
                json=json_body,
                data=data() if data is not None else None,
                params=params,
                headers=self.headers,
                ssl=self.ssl,
                timeout=self.timeout,
            ) as resp:
                if resp.status in RETRY_STATUSES or resp.status in (401, 403):
                    body = (await resp.content.read(4096)).decode("utf-8", "replace")
                    if resp.status in RETRY_STATUSES:
                        retry_after = _retry_after(resp.headers.get("Retry-After"))
                        raise RetryableStatus(resp.status, body, path, retry_after)
                    raise error_for_status(resp.status, url=self.safe_url, path=path, body=body)
                if resp.content_length is not None and resp.content_length > max_body:
                    raise ResponseTooLargeError(
                        f"{path} announced {resp.content_length} bytes (limit {max_body})",
                        status=resp.status,
                        url=path,
                    )
                if resp.content_length is not None:  # announced, and within the bound
                    return await make_response(resp.status, resp.content_type, await resp.read())
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
                return await make_response(resp.status, resp.content_type, b"".join(chunks))
        except DreamgenError:
            raise
        except Exception as exc:
            reraise_translated(exc, self.safe_url, f"{method} {path}", path)

    async def ws_connect(
        self, params: Mapping[str, str], hello: str
    ) -> aiohttp.ClientWebSocketResponse:
        """Open the WebSocket and send ``hello`` (translated errors), while opening or open.

        Raises what :func:`~dreamgen_async.transport_errors.translate` maps to: a handshake
        answered 401/403 is an ``AuthenticationError``, 200/404 a ``NotComfyUIError``;
        ``ClientClosedError`` once closed.
        """
        if self.session is None or self.state == "closed":
            raise ClientClosedError("the client is closed")
        url = self.base_url.replace("http", "ws", 1) + "/ws"
        with mapped_errors(self.safe_url, "WebSocket", "/ws"):
            ws = await self.session.ws_connect(
                url,
                params=params,
                headers=self.headers,
                ssl=self.ssl,
                heartbeat=self.heartbeat,
                max_msg_size=self.max_ws_message,
                timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
            )
        try:
            with mapped_errors(self.safe_url, "WebSocket hello", "/ws"):
                await ws.send_str(hello)
        except BaseException:
            await ws.close()
            raise
        return ws
