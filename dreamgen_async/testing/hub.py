"""The simulator's WebSocket registry: who is connected, and routing of events by client id.

Routing follows ComfyUI 0.8.0 exactly, including its reconnect bug: sockets are registered in a
dict keyed by client id, so a second socket with the same id silently replaces the first (which
stays open and receives nothing), and when *any* socket with that id closes, the id is
unregistered. Events for an id with no registered socket are dropped; ``sid=None`` broadcasts
to every registered socket.

Sending never awaits: each frame is put on the target connection's outgoing queue, and one
writer task per connection drains it, so frames keep the order in which they were emitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

logger = logging.getLogger(__name__)

PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
JPEG = 1


@dataclass(eq=False)
class Connection:
    """One open server-side WebSocket."""

    sid: str
    ws: web.WebSocketResponse
    request: web.Request
    outgoing: asyncio.Queue[str | bytes | None] = field(default_factory=asyncio.Queue)
    supports_preview_metadata: bool = False

    def put(self, frame: str | bytes) -> None:
        """Queue a frame for this socket (never blocks)."""
        self.outgoing.put_nowait(frame)

    def close(self) -> None:
        """Tell the writer task to stop after the frames already queued."""
        self.outgoing.put_nowait(None)

    async def writer(self) -> None:
        """Send queued frames until a ``None`` sentinel or the socket fails.

        Cancelling it is safe: unsent frames are dropped.
        """
        while True:
            frame = await self.outgoing.get()
            if frame is None or self.ws.closed:
                return
            try:
                if isinstance(frame, bytes):
                    await self.ws.send_bytes(frame)
                else:
                    await self.ws.send_str(frame)
            except (ConnectionError, RuntimeError) as exc:
                logger.debug("simulator: send to %s failed: %r", self.sid, exc)
                return


class Hub:
    """Registered sockets by client id, plus every open connection."""

    def __init__(self) -> None:
        self.registered: dict[str, Connection] = {}
        self.connections: set[Connection] = set()
        self.total_opened = 0

    def register(self, conn: Connection) -> None:
        """Register a new socket under its id, replacing (not closing) any previous one."""
        self.registered[conn.sid] = conn
        self.connections.add(conn)
        self.total_opened += 1

    def unregister(self, conn: Connection) -> None:
        """Forget a closed socket *and* whatever socket holds its id (ComfyUI's bug)."""
        self.connections.discard(conn)
        self.registered.pop(conn.sid, None)

    def _targets(self, sid: str | None) -> list[Connection]:
        if sid is None:
            return list(self.registered.values())
        conn = self.registered.get(sid)
        return [conn] if conn is not None else []

    def send_json(self, event: str, data: Any, sid: str | None) -> None:
        """Send ``{"type": event, "data": data}`` to ``sid``'s socket, or to all when None."""
        targets = self._targets(sid)
        if not targets:
            return
        text = json.dumps({"type": event, "data": data})
        for conn in targets:
            conn.put(text)

    def send_bytes(self, frame: bytes, sid: str | None) -> None:
        """Send a raw binary frame to ``sid``'s socket, or to all when None."""
        for conn in self._targets(sid):
            conn.put(frame)

    def send_preview(
        self, jpeg: bytes, sid: str | None, metadata: dict[str, Any], with_metadata: bool
    ) -> None:
        """Send a preview in the form each target negotiated.

        Called twice per sampler step: once with ``with_metadata=True`` (type 4, only to a
        client that sent ``supports_preview_metadata`` first), once with False (type 1 to the
        others). A broadcast prompt (``sid=None``) always uses type 1, like ComfyUI.
        """
        for conn in self._targets(sid):
            modern = sid is not None and conn.supports_preview_metadata
            if modern != with_metadata:
                continue
            if modern:
                meta = json.dumps(metadata).encode()
                frame = struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(meta)) + meta + jpeg
            else:
                frame = struct.pack(">II", PREVIEW_IMAGE, JPEG) + jpeg
            conn.put(frame)

    async def close_all(self, abrupt: bool = True) -> None:
        """Close every open socket from the server side.

        Args:
            abrupt: drop the TCP connection without a close frame (a crash or network cut);
                False sends a normal close frame (code 1001, going away).
        """
        for conn in list(self.connections):
            conn.close()
            if abrupt:
                transport = conn.request.transport
                if transport is not None:
                    transport.abort()
            else:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await conn.ws.close(code=1001)
