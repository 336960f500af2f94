"""The one WebSocket: a single reader task that hands every event to the jobs' owner.

In one breath: the owner registers a :class:`~dreamgen_async.jobs.Job` under its prompt_id
*before* ``POST /prompt``; the reader parses each frame (``protocol``) and hands it to its
:class:`Listener` (the :class:`~dreamgen_async.owner.JobOwner`, which turns it into a lifecycle
input for that job). When the socket drops, the old one is closed completely, the listener is
told (every job the server holds gets a gap), and a new socket is opened under the same
clientId after a jittered backoff (:class:`~dreamgen_async.retry.Backoff`); once open, the
listener resyncs (``/queue`` + ``/history``) before reading resumes. The multiplexer never
holds the client: it opens sockets with the ``connect`` callable it was given.

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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from dreamgen_async.errors import ConnectionLostError, DreamgenError, ProtocolError
from dreamgen_async.protocol import (
    Event,
    JSONDict,
    Status,
    decode_text,
    event_from,
    parse_binary,
    progress_only,
    queue_remaining_of,
    skipping_malformed,
    warn_malformed,
)
from dreamgen_async.retry import Backoff, single_attempts
from dreamgen_async.transport_errors import classify

__all__ = ["Listener", "Multiplexer", "ReconnectPolicy", "SocketState"]

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


_TEXT = aiohttp.WSMsgType.TEXT
#: What ends a socket's messages (what ends `async for message in ws`).
_CLOSED = frozenset({aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED})


def _fatal(exc: BaseException) -> bool:
    """Whether reconnecting cannot help (a 5xx is a server restarting: worth another try)."""
    return classify(exc, budgeted=True) == "fatal"


class Listener(Protocol):
    """What the multiplexer tells the owner of the jobs (:class:`~dreamgen_async.owner.JobOwner`).

    The multiplexer holds nothing else of the client: it opens sockets with the ``connect``
    callable it was given and reports through these six methods.
    """

    def on_event(self, event: Event) -> None:
        """A parsed event other than ``status``, in the order received. Must not raise."""

    def on_progress_message(self, kind: str, data: JSONDict, frame: str) -> None:
        """A message that only informs listeners (:func:`~dreamgen_async.protocol.progress_only`),
        decoded from ``frame`` but not parsed: the listener parses it
        (:func:`~dreamgen_async.protocol.event_from`) only for a job someone listens to. In the
        order received, among the events. Must not raise."""

    def on_gap(self) -> None:
        """The socket dropped: events may be missed until the next resync."""

    async def resync(self) -> None:
        """A new socket is open: reconcile what was missed before reading resumes.

        Raises:
            DreamgenError: it could not; the multiplexer reconnects and asks again (or gives
                up when the error is fatal or the budget is spent).
        """

    async def missed_while_silent(self) -> bool:
        """The open socket heard nothing for two watchdog intervals: did it miss something?
        True reopens it. Errors are ignored (the next interval asks again)."""
        return False

    def on_failed(self, error: DreamgenError) -> None:
        """The reader gave up (fatal error, or the budget spent): ``error`` says why."""


class Multiplexer:
    """Owns the WebSocket and the reader task; reports to a :class:`Listener`.

    Args:
        connect: Opens a WebSocket (handshake and hello done), raising our errors.
        listener: Told about events, gaps and failures; asked to resync.
        policy: The reconnect policy.
        url: The server's URL without credentials, for messages.
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[aiohttp.ClientWebSocketResponse]],
        listener: Listener,
        policy: ReconnectPolicy,
        url: str,
    ) -> None:
        self._open_socket = connect
        self._listener = listener
        self._url = url
        self.policy = policy
        self.state = SocketState.IDLE
        self.queue_remaining: int | None = None
        self.connections = 0
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._dropping: asyncio.Task[None] | None = None
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
        if self.policy.watchdog > 0 and (self._watchdog is None or self._watchdog.done()):
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
        dropping, self._dropping = self._dropping, None
        for task in (reader, watchdog, dropping):
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
        dropping = self._dropping is not None and not self._dropping.done()
        if ws is not None and not ws.closed and self.state is SocketState.OPEN and not dropping:
            # Closing makes the reader's `async for` end; the reader does the rest.
            self._dropping = asyncio.create_task(self._drop(ws), name="dreamgen-ws-drop")

    @staticmethod
    async def _drop(ws: aiohttp.ClientWebSocketResponse) -> None:
        await ws.close()

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
            lost = ConnectionLostError(f"lost the WebSocket to {self._url}: {exc}")
            lost.__cause__ = exc
            exc = lost
        else:
            log.error("WebSocket reader stopped: %s", exc)
        self._listener.on_failed(exc)

    # ------------------------------------------------------------------ the reader

    async def _run(self, ws: aiohttp.ClientWebSocketResponse | None) -> None:
        with single_attempts():  # this loop retries: its requests attempt once
            await self._reconnect_loop(ws)

    async def _reconnect_loop(self, ws: aiohttp.ClientWebSocketResponse | None) -> None:
        policy = self.policy
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
            self._listener.on_gap()
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
                ws = await self._open_socket()
        except TimeoutError as exc:
            raise self._out_of_budget("reconnect to") from (self._last_error or exc)
        except DreamgenError as exc:
            if _fatal(exc):
                raise
            self._last_error = exc
            if time.monotonic() >= deadline:
                raise self._out_of_budget("reconnect to") from exc
            log.info("reconnect to %s failed: %s", self._url, exc)
            return None
        self._last_error = None
        self._ws = ws
        self.connections += 1
        self._set(SocketState.OPEN)
        return ws

    def _out_of_budget(self, doing: str) -> ConnectionLostError:
        return ConnectionLostError(
            f"could not {doing} {self._url} within {self.policy.max_time:g} s"
        )

    async def _backoff(self, delay: float) -> None:
        self._set(SocketState.BACKOFF)
        await asyncio.sleep(delay)

    async def _resync(self, deadline: float) -> bool:
        """Reconcile every job whose events may have been missed; False to reconnect."""
        remaining = max(0.0, deadline - time.monotonic())
        try:
            async with asyncio.timeout(remaining):
                await self._listener.resync()
        except (DreamgenError, TimeoutError) as exc:
            if _fatal(exc):
                raise
            if time.monotonic() >= deadline:
                raise self._out_of_budget("resynchronise with") from exc
            log.warning("resync failed (%s); reconnecting to try again", exc)
            return False
        return True

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        # ws.receive(), not `async for message in ws`: one coroutine less per message.
        while (message := await ws.receive()).type not in _CLOSED:
            self.messages += 1
            if message.type is _TEXT:
                self._dispatch_text(message.data)
            elif message.type is aiohttp.WSMsgType.BINARY:
                self._dispatch_binary(message.data)
            elif message.type is aiohttp.WSMsgType.ERROR:
                log.warning("WebSocket error: %s", ws.exception())
                break
        # A closed socket ends the loop instead of raising: say why, the caller reconnects.
        log.warning(
            "WebSocket to %s closed (code %s, %s); reconnecting",
            self._url,
            ws.close_code,
            ws.exception(),
        )

    async def _watch(self) -> None:
        """Reopen a socket that stopped hearing the server (see ``ReconnectPolicy.watchdog``).

        It only observes and asks: the reader stays the one task that receives.
        """
        interval = self.policy.watchdog
        heard = self.messages
        silent = 0
        while self.state is not SocketState.CLOSED:
            await asyncio.sleep(interval)
            if self.state is not SocketState.OPEN:
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
                    deaf = await self._listener.missed_while_silent()
            except (DreamgenError, TimeoutError):
                continue  # the server's trouble is for the reader and the requests to see
            if deaf:
                log.warning(
                    "the WebSocket to %s heard nothing while the server's queue moved "
                    "(it unregistered our clientId); reopening it",
                    self._url,
                )
                heard, silent = self.messages, 0
                self.force_reconnect()

    def _dispatch_text(self, frame: str) -> None:
        """Route one text frame; a progress-only message unparsed (most of a job's messages:
        parsed only if someone listens), a ``status`` read for its queue length only. A
        malformed frame is skipped with a warning.

        Every message a job gets passes here: one decode, one branch, one hand-off.
        """
        event: Event | None = None
        try:
            kind, data = decode_text(frame)
            if kind == "status":
                self.queue_remaining = queue_remaining_of(data)
                return
            if not progress_only(kind, data):
                event = event_from(kind, data)
        except ProtocolError as exc:
            warn_malformed(exc)
            return
        if event is None:
            self._listener.on_progress_message(kind, data, frame)
        else:
            self.dispatch(event)

    def _dispatch_binary(self, frame: bytes) -> None:
        event = skipping_malformed(parse_binary, frame)
        if event is not None:
            self.dispatch(event)

    def dispatch(self, event: Event) -> None:
        """Route one parsed event. Never raises for a well-formed event, never awaits."""
        if isinstance(event, Status):
            self.queue_remaining = event.queue_remaining
            return
        self._listener.on_event(event)
