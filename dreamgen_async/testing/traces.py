"""Helpers to read recorded ComfyUI traffic and compare it with the simulator's.

The notation is the one of ``probe_summary.json``: ``status(q=1)``, ``executing:3``,
``progress:3:1/2``, ``progress_state[4=finished,5=running]``, ``execution_cached['4', '6']``,
``executed:9``, ``executing:None``, ``<binary PREVIEW_IMAGE>`` (sizes dropped).
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

_BINARY_NAMES = {1: "PREVIEW_IMAGE", 3: "TEXT", 4: "PREVIEW_IMAGE_WITH_METADATA"}
_SIZE = re.compile(r"^<binary (\w+) \d+B>$")


def load_trace(path: Path | str) -> list[dict[str, Any]]:
    """The records of a ``.jsonl`` trace file, in order."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def describe(message: dict[str, Any] | bytes) -> str:
    """One WebSocket message (decoded JSON or a binary frame) in the summary notation."""
    if isinstance(message, bytes):
        (event,) = struct.unpack(">I", message[:4])
        return f"<binary {_BINARY_NAMES.get(event, str(event))}>"
    kind = message.get("type")
    data = message.get("data") or {}
    if kind == "status":
        return f"status(q={data['status']['exec_info']['queue_remaining']})"
    if kind == "executing":
        return f"executing:{data.get('node')}"
    if kind == "progress":
        return f"progress:{data['node']}:{data['value']}/{data['max']}"
    if kind == "progress_state":
        nodes = ",".join(f"{k}={v['state']}" for k, v in data["nodes"].items())
        return f"progress_state[{nodes}]"
    if kind == "execution_cached":
        return f"execution_cached{data['nodes']}"
    if kind == "executed":
        return f"executed:{data['node']}"
    return str(kind)


def normalise(order: list[str]) -> list[str]:
    """Drop the byte sizes of binary frames from a summary ``order`` list."""
    return [_SIZE.sub(r"<binary \1>", item) for item in order]


def recorded_messages(records: list[dict[str, Any]], ws: str) -> list[dict[str, Any] | bytes]:
    """The messages socket ``ws`` received, binary frames as a 4-byte type header only."""
    out: list[dict[str, Any] | bytes] = []
    for record in records:
        if record.get("dir") != "ws_in" or record.get("ws") != ws:
            continue
        if record.get("kind") == "binary":
            out.append(struct.pack(">I", int(record["frame"]["event"])))
        else:
            out.append(record["msg"])
    return out


class RecordingSocket:
    """A test-side WebSocket that decodes frames and can read up to a given message.

    Args:
        ws: an open ``aiohttp.ClientWebSocketResponse``.
    """

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any] | bytes] = []

    async def next(self, timeout: float = 5.0) -> dict[str, Any] | bytes:
        """The next message (text decoded as JSON, binary as bytes).

        Raises:
            ConnectionError: the socket closed.
            TimeoutError: nothing within ``timeout``.
        """
        import aiohttp

        msg = await self.ws.receive(timeout=timeout)
        if msg.type == aiohttp.WSMsgType.TEXT:
            decoded: dict[str, Any] | bytes = json.loads(msg.data)
        elif msg.type == aiohttp.WSMsgType.BINARY:
            decoded = bytes(msg.data)
        else:
            raise ConnectionError(f"socket closed: {msg.type!r}")
        self.seen.append(decoded)
        return decoded

    async def until(self, description: str, timeout: float = 5.0) -> list[dict[str, Any] | bytes]:
        """Read messages up to and including the first one described as ``description``."""
        got: list[dict[str, Any] | bytes] = []
        while True:
            message = await self.next(timeout)
            got.append(message)
            if describe(message) == description:
                return got

    async def until_done(
        self, prompt_id: str, timeout: float = 5.0
    ) -> list[dict[str, Any] | bytes]:
        """Read messages up to ``executing {node: null, prompt_id}`` for ``prompt_id``."""
        got: list[dict[str, Any] | bytes] = []
        while True:
            message = await self.next(timeout)
            got.append(message)
            if (
                isinstance(message, dict)
                and message.get("type") == "executing"
                and message["data"].get("node") is None
                and message["data"].get("prompt_id") == prompt_id
            ):
                return got
