"""The one WebSocket: a single reader task that routes every event to its prompt.

In one breath: the client registers a :class:`~dreamgen_async.jobs.Job` under its prompt_id
*before* ``POST /prompt``; the reader parses each frame (``protocol``) and turns it into a
lifecycle input for that job (``execution_start`` → Started, ``executing {node: null}`` →
Finished, ...). When the socket drops, the old one is closed completely, every job the server
holds is marked as having a gap, and a new socket is opened under the same clientId after a
jittered backoff; once open, every job with a gap is reconciled from ``/queue`` +
``/history`` before reading resumes.

The socket is a small state machine of its own (:class:`SocketState`), changed only by the
reader task, which is the only task that ever receives from the socket:

    CONNECTING --> OPEN --(drop)--> BACKOFF --> CONNECTING ...
         \\                                         |
          +--- budget exhausted / fatal error ------+--> FAILED --(next submit)--> CONNECTING
    any --aclose()--> CLOSED

The reconnect budget (``ReconnectPolicy.max_time``) runs from the first drop until a
connection has been open and resynchronised for ``stable_after`` seconds; every connect
attempt and every resync request is bounded by what is left of it, and backoff applies between
every two attempts, including connections that die as soon as they open.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

from dreamgen_async import lifecycle as lc
from dreamgen_async.errors import (
    ConnectionLostError,
    DreamgenError,
    ExecutionInterrupted,
    ProtocolError,
)
from dreamgen_async.outcomes import error_from_event
from dreamgen_async.protocol import (
    Event,
    Executed,
    Executing,
    ExecutionCached,
    ExecutionErrorEvent,
    ExecutionInterruptedEvent,
    ExecutionStart,
    ExecutionSuccess,
    Status,
    feature_flags_message,
    parse_binary,
    parse_text,
)
from dreamgen_async.retry import Backoff, single_attempts
from dreamgen_async.transport_errors import classify

if TYPE_CHECKING:
    from dreamgen_async.comfyui_api import ComfyUIClient

__all__ = ["ReconnectPolicy", "SocketState"]

log = logging.getLogger("dreamgen_async.ws")


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """How hard to try when the WebSocket drops.

    Attributes:
        max_time: Seconds without a working connection after which every job fails with
            :class:`~dreamgen_async.ConnectionLostError` (a ComfyUI restart takes ~15 s). A hung
            server is detected by the heartbeat first, so the bound is ``max_time`` plus one
            heartbeat.
        initial_delay: First backoff delay; doubles up to ``max_delay``; each wait is drawn
            between half the delay and the delay (jitter that keeps a floor).
        max_delay: Longest wait between two attempts.
        stable_after: A connection counts as working (the budget and the backoff start over)
            once it has been open and resynchronised this long.
        watchdog: Seconds between two checks, while jobs are on the server, that the socket
            still hears it (0 disables). ComfyUI can leave an open socket deaf: when a
            connection it dropped is cleaned up after the client reconnected under the same
            clientId, the new socket is unregistered too (docs/PROTOCOL.md §5). After two
            silent intervals the client asks: ``GET /prompt`` (the server broadcasts
            ``status`` on every queue change) and ``/history`` of each job it holds; a job the
            server finished unheard is settled from history, and the socket is reopened.
    """

    max_time: float = 120.0
    initial_delay: float = 0.05
    max_delay: float = 5.0
    stable_after: float = 1.0
    watchdog: float = 5.0

    @property
    def backoff(self) -> Backoff:
        """The delays between attempts (see :class:`~dreamgen_async.retry.Backoff`)."""
        return Backoff(self.initial_delay, self.max_delay)


class SocketState(enum.StrEnum):
    """Where the WebSocket is."""

    IDLE = "idle"
    CONNECTING = "connecting"
    OPEN = "open"
    BACKOFF = "backoff"
    FAILED = "failed"
    CLOSED = "closed"


def _fatal(exc: BaseException) -> bool:
    """Whether reconnecting cannot help (a 5xx is a server restarting: worth another try)."""
    return classify(exc, budgeted=True) == "fatal"


class Multiplexer:
    """Owns the WebSocket and the reader task. Used only by :class:`ComfyUIClient`."""

    def __init__(self, client: ComfyUIClient, policy: ReconnectPolicy) -> None:
        self._client = client
        self._policy = policy
        self.state = SocketState.IDLE
        self.queue_remaining: int | None = None
        self.connections = 0
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._running_prompt: str | None = None
        self._last_error: DreamgenError | None = None
        self._watchdog: asyncio.Task[None] | None = None
        #: Messages received on any socket (the watchdog compares it between two checks).
        self.messages = 0

    def __repr__(self) -> str:
        return f"<Multiplexer {self.state.value} connections={self.connections}>"

    # ------------------------------------------------------------------ lifecycle

    @property
    def connected(self) -> bool:
        return self.state is SocketState.OPEN

    @property
    def reader_alive(self) -> bool:
        return self._reader is not None and not self._reader.done()

    def start(self, ws: aiohttp.ClientWebSocketResponse | None = None) -> None:
        """Start the reader, on an already open socket (from ``open()``) or connecting first.

        Synchronous, so concurrent callers can never start two readers.
        """
        assert not self.reader_alive, "one reader per client"
        self._ws = ws
        self._set(SocketState.OPEN if ws is not None else SocketState.CONNECTING)
        if ws is not None:
            self.connections += 1
        self._reader = asyncio.create_task(self._run(ws), name="dreamgen-ws-reader")
        self._reader.add_done_callback(self._reader_done)
        if self._policy.watchdog > 0 and (self._watchdog is None or self._watchdog.done()):
            self._watchdog = asyncio.create_task(self._watch(), name="dreamgen-ws-watchdog")

    def ensure_running(self) -> None:
        """Restart the reader after it failed (exhausted budget), for a new submission."""
        if self.state is SocketState.FAILED:
            self.start()

    async def close(self) -> None:
        """Stop reading and close the socket. Idempotent; jobs are the client's business."""
        self._set(SocketState.CLOSED)
        reader, self._reader = self._reader, None
        watchdog, self._watchdog = self._watchdog, None
        for task in (reader, watchdog):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()

    def force_reconnect(self) -> None:
        """Drop the socket so that the reader reconnects and resynchronises every job.

        Used when a job could not be reconciled (``/history`` failed): the resync after the
        reconnect retries it, within the reconnect budget.
        """
        ws = self._ws
        if ws is not None and not ws.closed and self.state is SocketState.OPEN:
            # Closing makes the reader's `async for` end; the reader does the rest.
            self._client._spawn(ws.close(), "dreamgen-ws-drop")

    def _set(self, state: SocketState) -> None:
        if self.state is SocketState.CLOSED:
            return  # closed is final
        self.state = state

    def _reader_done(self, task: asyncio.Task[None]) -> None:
        # The reader has no try/except for its own death: whatever ended it ends every job.
        if task.cancelled() or self.state is SocketState.CLOSED:
            return
        exc = task.exception()
        assert exc is not None, "the reader only returns by failing or being cancelled"
        self._set(SocketState.FAILED)
        self._ws = None
        if not isinstance(exc, DreamgenError):
            log.error("WebSocket reader crashed", exc_info=exc)
            lost = ConnectionLostError(f"lost the WebSocket to {self._client.safe_url}: {exc}")
            lost.__cause__ = exc
            exc = lost
        else:
            log.error("WebSocket reader stopped: %s", exc)
        self._client._connection_failed(exc)

    # ------------------------------------------------------------------ the reader

    async def _run(self, ws: aiohttp.ClientWebSocketResponse | None) -> None:
        with single_attempts():  # this loop retries: its requests attempt once
            await self._reconnect_loop(ws)

    async def _reconnect_loop(self, ws: aiohttp.ClientWebSocketResponse | None) -> None:
        policy = self._policy
        # A fresh budget for a new reader: it starts with a working connection, or connecting.
        deadline = time.monotonic() + policy.max_time
        delays = policy.backoff.delays()
        while True:
            if ws is None:
                ws = await self._connect(deadline)
                if ws is None:  # the attempt failed, within the budget: back off
                    await self._backoff(next(delays))
                    continue
            opened = time.monotonic()
            resynced = await self._resync(deadline)
            if resynced:
                await self._read(ws)
            await ws.close()
            self._ws = ws = None
            self._client._gap()
            now = time.monotonic()
            if resynced and now - opened >= policy.stable_after:
                # It worked for a while: a new budget, and reconnect at once.
                deadline = now + policy.max_time
                delays = policy.backoff.delays()
            else:  # it died at once: the budget keeps running, and back off first
                await self._backoff(next(delays))

    async def _connect(self, deadline: float) -> aiohttp.ClientWebSocketResponse | None:
        """One attempt bounded by the budget: the socket, or None to back off.

        Raises:
            ConnectionLostError: the budget is spent (the last attempt's error chained).
            AuthenticationError, NotComfyUIError: retrying cannot help.
        """
        self._set(SocketState.CONNECTING)
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            async with asyncio.timeout(remaining):
                ws = await self._client._ws_connect()
        except TimeoutError as exc:
            raise self._out_of_budget("reconnect to") from (self._last_error or exc)
        except DreamgenError as exc:
            if _fatal(exc):
                raise
            self._last_error = exc
            if time.monotonic() >= deadline:
                raise self._out_of_budget("reconnect to") from exc
            log.info("reconnect to %s failed: %s", self._client.safe_url, exc)
            return None
        self._last_error = None
        self._ws = ws
        self.connections += 1
        self._set(SocketState.OPEN)
        return ws

    def _out_of_budget(self, doing: str) -> ConnectionLostError:
        return ConnectionLostError(
            f"could not {doing} {self._client.safe_url} within {self._policy.max_time:g} s"
        )

    async def _backoff(self, delay: float) -> None:
        self._set(SocketState.BACKOFF)
        await asyncio.sleep(delay)

    async def _resync(self, deadline: float) -> bool:
        """Reconcile every job whose events may have been missed; False to reconnect."""
        remaining = max(0.0, deadline - time.monotonic())
        try:
            async with asyncio.timeout(remaining):
                await self._client._reconcile(self._client._gap_jobs(), raise_errors=True)
        except (DreamgenError, TimeoutError) as exc:
            if _fatal(exc):
                raise
            if time.monotonic() >= deadline:
                raise self._out_of_budget("resynchronise with") from exc
            log.warning("resync failed (%s); reconnecting to try again", exc)
            return False
        return True

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            self.messages += 1
            if message.type is aiohttp.WSMsgType.TEXT:
                self._dispatch_frame(message.data, parse_text)
            elif message.type is aiohttp.WSMsgType.BINARY:
                self._dispatch_frame(message.data, parse_binary)
            elif message.type is aiohttp.WSMsgType.ERROR:
                log.warning("WebSocket error: %s", ws.exception())
                break
        # `async for` ends on close instead of raising: say why, the caller reconnects.
        log.warning(
            "WebSocket to %s closed (code %s, %s); reconnecting",
            self._client.safe_url,
            ws.close_code,
            ws.exception(),
        )

    async def _watch(self) -> None:
        """Reopen a socket that stopped hearing the server (see ``ReconnectPolicy.watchdog``).

        It only observes and asks: the reader stays the one task that receives.
        """
        interval = self._policy.watchdog
        heard = self.messages
        silent = 0
        while self.state is not SocketState.CLOSED:
            await asyncio.sleep(interval)
            if self.state is not SocketState.OPEN or not self._client._live:
                heard, silent = self.messages, 0
                continue
            if self.messages != heard:  # it hears the server
                heard, silent = self.messages, 0
                continue
            silent += 1
            if silent < 2:
                continue
            try:
                async with asyncio.timeout(interval):
                    deaf = await self._client._missed_by_a_silent_socket()
            except (DreamgenError, TimeoutError):
                continue  # the server's trouble is for the reader and the requests to see
            if deaf:
                log.warning(
                    "the WebSocket to %s heard nothing while the server's queue moved "
                    "(it unregistered our clientId); reopening it",
                    self._client.safe_url,
                )
                heard, silent = self.messages, 0
                self.force_reconnect()

    def _dispatch_frame(self, data: Any, parse: Callable[[Any], Event]) -> None:
        try:
            event = parse(data)
        except ProtocolError as exc:
            log.warning("ignoring a malformed frame: %s", exc)
            return
        self.dispatch(event)

    def dispatch(self, event: Event) -> None:
        """Route one parsed event. Never raises for a well-formed event, never awaits."""
        if isinstance(event, Status):
            self.queue_remaining = event.queue_remaining
            return
        prompt_id = getattr(event, "prompt_id", None)
        if prompt_id is None and not isinstance(event, Executing):
            # Previews without metadata carry no prompt_id: they belong to the running one.
            prompt_id = self._running_prompt
        job = self._client._live.get(prompt_id) if prompt_id is not None else None
        if job is None:
            return
        drive = self._client._drive
        if isinstance(event, ExecutionStart):
            self._running_prompt = job.prompt_id
            job._note_started()
            drive(job, lc.Started())
        elif isinstance(event, ExecutionCached):
            job._set_cached(event.nodes)
        elif isinstance(event, Executed):
            job._add_outputs(event.node, event.images, event.files)
        elif isinstance(event, ExecutionSuccess):
            job._mark_succeeded()
        elif isinstance(event, ExecutionErrorEvent):
            drive(job, lc.Failed(error_from_event(event)))
            return
        elif isinstance(event, ExecutionInterruptedEvent):
            error = ExecutionInterrupted(
                prompt_id=job.prompt_id, node_id=event.node_id, node_type=event.node_type
            )
            drive(job, lc.Interrupted(error))
            return
        elif isinstance(event, Executing) and event.node is None:
            self._running_prompt = None
            drive(job, lc.Finished(complete=job._succeeded))
            return
        job._deliver(event)

    async def send_feature_flags(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        await ws.send_str(feature_flags_message())
