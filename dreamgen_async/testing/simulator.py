"""ComfyUISimulator: an in-process aiohttp server that behaves like ComfyUI 0.8.0.

The HTTP routes, status codes, JSON shapes and the WebSocket message order reproduce the
recordings in ``tests/fixtures/traces`` (see ``docs/PROTOCOL.md``). Every route is served at
``/path`` and ``/api/path``. The simulator records what it saw (``requests``, ``prompts``) and
offers fault injection; see the package docstring of :mod:`dreamgen_async.testing`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import json
import logging
import mimetypes
import os
import ssl
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from PIL import Image

from dreamgen_async.testing.engine import (
    Engine,
    EngineConfig,
    PromptStatus,
    QueueItem,
    SimPrompt,
)
from dreamgen_async.testing.hub import Connection, Hub
from dreamgen_async.testing.nodes import (
    DEFAULT_MODELS,
    NodeRegistry,
    split_annotation,
    validate_prompt,
)

logger = logging.getLogger(__name__)

DEFAULT_CHECKPOINTS: tuple[str, ...] = (
    "flux1-schnell.safetensors",
    "flux1-dev.safetensors",
    "sd_xl_base_1.0.safetensors",
    "v1-5-pruned-emaonly.safetensors",
)
SERVER_ERROR_TEXT = "500 Internal Server Error\n\nServer got itself in trouble"
_JOB_STATUSES = ("pending", "in_progress", "completed", "failed")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class SimulatorConfig:
    """How the simulated server behaves.

    With the default zero times a small img2img job takes about 2 ms; for benchmarks that
    should look like the recorded CPU server (~0.15 s per 64 px img2img job with 2 steps), use
    ``SimulatorConfig(step_time=0.06, node_time=0.01)``.

    Attributes:
        step_time: seconds per sampler step (0: as fast as possible).
        node_time: seconds per executed node.
        checkpoints: the names ``CheckpointLoaderSimple`` accepts (``/models/checkpoints``).
        preview_method: the server's ``--preview-method`` (``none`` = no previews unless a
            prompt sets ``extra_data.preview_method``).
        history_delay: seconds between ``execution_success`` and the history write (the
            history race window; 0 only yields to the event loop once).
        history_capacity: history entries kept (oldest evicted).
        max_upload_size: largest accepted request body, in bytes.
        models: model files by models folder (``diffusion_models``, ``text_encoders``,
            ``vae``, ``loras``, ``upscale_models``, ``controlnet``): the loaders' choices.
        speed: how fast this server's "GPU" is: step and node times are divided by it.
        model_load_time: seconds a prompt spends loading its checkpoint/UNet when it differs
            from the last one loaded (the first load too); reported per prompt in
            ``SimPrompt.model_load`` and, when ``speed`` or ``model_load_time`` is set, in the
            history entry's ``sim_timings`` (not a ComfyUI field).
    """

    step_time: float = 0.0
    node_time: float = 0.0
    checkpoints: tuple[str, ...] = DEFAULT_CHECKPOINTS
    preview_method: str = "none"
    history_delay: float = 0.0
    history_capacity: int = 10_000
    max_upload_size: int = 100 * 1024 * 1024
    models: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_MODELS))
    speed: float = 1.0
    model_load_time: float = 0.0


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request the simulator answered.

    ``path`` is the raw path (``/api/prompt``), ``route`` the same without the ``/api``
    prefix (``/prompt``); ``json`` is the parsed request body when it was JSON. A WebSocket
    upgrade (``/ws``, status 101) is recorded when that socket closes.
    """

    method: str
    path: str
    route: str
    status: int
    json: Any | None
    time: float
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Fault:
    route: str
    remaining: int
    status: int
    retry_after: float | None
    body: str
    method: str | None


def _strip_api(path: str) -> str:
    if path == "/api" or path.startswith("/api/"):
        return path[4:] or "/"
    return path


def _empty(status: int) -> web.Response:
    return web.Response(status=status)


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    return host in ("localhost", "::1") or host.startswith("127.")


class ComfyUISimulator:
    """A fake ComfyUI server for tests and benchmarks, on a real loopback socket.

    Args:
        config: behaviour knobs; defaults to :class:`SimulatorConfig()`.
        root: directory holding ``input/``, ``output/`` and ``temp/``; a temporary directory
            (removed on :meth:`stop`) when None.
    """

    def __init__(self, config: SimulatorConfig | None = None, root: Path | str | None = None):
        self.config = config or SimulatorConfig()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="comfyui-sim-")
            root = self._tmp.name
        self.root = Path(root)
        self.input_dir = self.root / "input"
        self.output_dir = self.root / "output"
        self.temp_dir = self.root / "temp"
        for folder in (self.input_dir, self.output_dir, self.temp_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.requests: list[RecordedRequest] = []
        self.prompts: dict[str, SimPrompt] = {}
        self.accepted_prompt_ids: list[str] = []
        self.ws_messages_received = 0
        self.latency: float = 0.0
        self.route_latency: dict[str, float] = {}
        # Requests being handled now, by route (a client that dies mid-request leaves its
        # request running here: tests wait for zero before checking what the server accepted).
        self.in_progress: collections.Counter[str] = collections.Counter()
        self._faults: list[_Fault] = []
        self._change = asyncio.Event()
        self.hub = Hub()
        self.registry = NodeRegistry(
            list(self.config.checkpoints), self.input_dir, dict(self.config.models)
        )
        self._engine_config = EngineConfig(
            step_time=self.config.step_time,
            node_time=self.config.node_time,
            preview_method=self.config.preview_method,
            history_delay=self.config.history_delay,
            history_capacity=self.config.history_capacity,
            speed=self.config.speed,
            model_load_time=self.config.model_load_time,
        )
        self.engine = Engine(
            self._engine_config,
            self.registry,
            self.hub,
            (self.input_dir, self.output_dir, self.temp_dir),
            self.prompts,
            self._changed,
        )
        self.app = self._make_app()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._host = "127.0.0.1"
        self._scheme = "http"

    # ---------------------------------------------------------------- lifecycle

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        """Listen on ``host:port`` (0 = a free port) and start the worker.

        With ``ssl_context`` it serves HTTPS and WSS (``url`` then starts with ``https``).
        """
        if self._runner is not None:
            raise RuntimeError("simulator already started")
        self._change = asyncio.Event()
        # In-flight requests (e.g. an injected latency) get a short grace period on stop().
        runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
        await site.start()
        self._scheme = "https" if ssl_context is not None else "http"
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        self._host = host
        self.engine.start()
        logger.info("ComfyUI simulator listening on %s", self.url)

    async def stop(self) -> None:
        """Stop the worker, drop every socket, stop listening and remove a temporary root.

        Idempotent. Cancelling it mid-way may leave the port open.
        """
        await self.engine.stop()
        await self.hub.close_all(abrupt=True)
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def __aenter__(self) -> ComfyUISimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The TCP port the simulator listens on."""
        if self._port is None:
            raise RuntimeError("simulator not started")
        return self._port

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (``https`` when started with an SSL context)."""
        return f"{self._scheme}://{self._host}:{self.port}"

    # ---------------------------------------------------------------- observability

    @property
    def ws_connections_total(self) -> int:
        """WebSockets ever opened."""
        return self.hub.total_opened

    @property
    def open_websockets(self) -> int:
        """WebSockets open now (including silent replaced ones)."""
        return len(self.hub.connections)

    @property
    def history(self) -> dict[str, dict[str, Any]]:
        """A copy of the server's history, oldest first."""
        return dict(self.engine.history)

    @property
    def queue_remaining(self) -> int:
        """Pending plus running prompts."""
        return self.engine.queue_remaining()

    @property
    def model_loads(self) -> int:
        """How many times a prompt loaded a model (first loads and switches)."""
        return self.engine.model_loads

    @property
    def loaded_model(self) -> str | None:
        """The checkpoint/UNet loaded now (the last one a prompt used)."""
        return self.engine.loaded_model

    def input_files(self) -> list[str]:
        """Files in the input directory, relative, with ``/`` separators, sorted."""
        return sorted(
            p.relative_to(self.input_dir).as_posix()
            for p in self.input_dir.rglob("*")
            if p.is_file()
        )

    def requests_to(self, route: str, method: str | None = None) -> list[RecordedRequest]:
        """The recorded requests for ``route`` (``/prompt`` also matches ``/api/prompt``)."""
        return [
            r for r in self.requests if r.route == route and (method is None or r.method == method)
        ]

    def _changed(self) -> None:
        event, self._change = self._change, asyncio.Event()
        event.set()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until ``predicate()`` is true, re-checking after every state change.

        State changes are: a request answered, a prompt queued/started/finished/deleted, a
        socket opened/closed or a frame received. Cancelling the wait is safe.

        Raises:
            TimeoutError: not true within ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            while not predicate():
                await self._change.wait()

    async def wait_for_status(
        self, prompt_id: str, status: PromptStatus, timeout: float = 10.0
    ) -> None:
        """Wait until the prompt ``prompt_id`` exists with ``status``."""

        def reached() -> bool:
            prompt = self.prompts.get(prompt_id)
            return prompt is not None and prompt.status == status

        await self.wait_until(reached, timeout)

    # ---------------------------------------------------------------- control and faults

    def hold(self) -> None:
        """Do not start the next prompt until :meth:`release` (the running one continues)."""
        self.engine.hold()

    def release(self) -> None:
        """Undo :meth:`hold`."""
        self.engine.release()

    def stall(self, prompt_id: str) -> None:
        """Make ``prompt_id`` run forever (until interrupted) when it starts."""
        self.engine.stalled.add(prompt_id)

    def stall_next(self) -> None:
        """Make the next prompt that starts run forever (until interrupted)."""
        self.engine.stall_next_prompt = True

    @property
    def previews(self) -> bool:
        """Whether sampler steps send preview images (the server's ``--preview-method``)."""
        return self._engine_config.preview_method not in ("none", "")

    @previews.setter
    def previews(self, enabled: bool) -> None:
        self._engine_config.preview_method = "latent2rgb" if enabled else "none"

    @property
    def step_time(self) -> float:
        """Seconds per sampler step (live)."""
        return self._engine_config.step_time

    @step_time.setter
    def step_time(self, seconds: float) -> None:
        self._engine_config.step_time = seconds

    @property
    def node_time(self) -> float:
        """Seconds per executed node (live)."""
        return self._engine_config.node_time

    @node_time.setter
    def node_time(self, seconds: float) -> None:
        self._engine_config.node_time = seconds

    @property
    def history_delay(self) -> float:
        """Seconds between ``execution_success`` and the history write (live)."""
        return self._engine_config.history_delay

    @history_delay.setter
    def history_delay(self, seconds: float) -> None:
        self._engine_config.history_delay = seconds

    def fail_next(
        self,
        route: str,
        n: int = 1,
        status: int = 503,
        retry_after: float | None = None,
        body: str = "simulated failure",
        method: str | None = None,
    ) -> None:
        """Answer the next ``n`` requests to ``route`` with ``status`` (and a Retry-After).

        ``route`` is matched without the ``/api`` prefix (``"/prompt"`` matches both), or
        ``route + "/"`` as a prefix (``"/history"`` also matches ``/history/ID``) when it ends
        with ``/*``. The failed requests are recorded and never reach the handler.
        """
        self._faults.append(
            _Fault(route, n, status, retry_after, body, method.upper() if method else None)
        )

    def clear_faults(self) -> None:
        """Forget every fault injected with :meth:`fail_next` that has not fired yet."""
        self._faults.clear()

    async def drop_websockets(self, abrupt: bool = True) -> None:
        """Close every WebSocket now, from the server side (abruptly by default)."""
        await self.hub.close_all(abrupt=abrupt)
        self._changed()

    async def restart(self) -> None:
        """Simulate a server restart: lose queue, history, cache and the running prompt.

        Files stay, sockets are dropped, the server keeps listening on the same port;
        prompts that were pending or running get status ``lost``.
        """
        await self.hub.close_all(abrupt=True)
        self.engine.release()
        await self.engine.reset()

    async def send_raw(self, data: str | bytes, client_id: str | None = None) -> None:
        """Send a raw text or binary frame to ``client_id``'s socket, or to every socket."""
        targets = (
            list(self.hub.connections)
            if client_id is None
            else [c for c in self.hub.connections if c.sid == client_id]
        )
        for conn in targets:
            conn.put(data)

    def interrupt(self, prompt_id: str | None = None) -> None:
        """Interrupt the running prompt, as ``POST /interrupt`` would."""
        self.engine.interrupt(prompt_id)

    # ---------------------------------------------------------------- the app

    def _make_app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._middleware], client_max_size=self.config.max_upload_size
        )
        routes: list[tuple[str, str, Handler]] = [
            ("GET", "/ws", self._ws),
            ("GET", "/prompt", self._get_prompt),
            ("POST", "/prompt", self._post_prompt),
            ("GET", "/queue", self._get_queue),
            ("POST", "/queue", self._post_queue),
            ("POST", "/interrupt", self._post_interrupt),
            ("GET", "/history", self._get_history),
            ("GET", "/history/{prompt_id}", self._get_history_item),
            ("POST", "/history", self._post_history),
            ("GET", "/view", self._view),
            ("POST", "/upload/image", self._upload_image),
            ("POST", "/upload/mask", self._upload_mask),
            ("GET", "/system_stats", self._system_stats),
            ("GET", "/object_info", self._object_info),
            ("GET", "/object_info/{node_class}", self._object_info_one),
            ("GET", "/features", self._features),
            ("POST", "/free", self._free),
            ("GET", "/models", self._models),
            ("GET", "/models/{folder}", self._models_folder),
            ("GET", "/embeddings", self._embeddings),
            ("GET", "/api/jobs", self._jobs),
            ("GET", "/api/jobs/{job_id}", self._job),
        ]
        # The real server registers its jobs routes with the prefix already, so the /api
        # copies are /api/api/jobs (recorded); plain /jobs is 404.
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
            app.router.add_route(method, "/api" + path, handler)
        return app

    def _take_fault(self, request: web.Request, route: str) -> _Fault | None:
        for fault in self._faults:
            if fault.remaining <= 0:
                continue
            if fault.method is not None and fault.method != request.method:
                continue
            prefix = fault.route[:-2] if fault.route.endswith("/*") else None
            if route == fault.route or (
                prefix is not None and (route == prefix or route.startswith(prefix + "/"))
            ):
                fault.remaining -= 1
                return fault
        return None

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = _strip_api(request.path)
        body_json: Any | None = None
        if request.can_read_body and request.content_type == "application/json":
            raw = await request.read()
            with contextlib.suppress(ValueError):
                body_json = json.loads(raw)
        status = 500
        self.in_progress[route] += 1
        self._changed()
        try:
            response = await self._answer(request, route, handler)
            status = response.status
            return response
        finally:
            self.in_progress[route] -= 1
            self.requests.append(
                RecordedRequest(
                    request.method,
                    request.path,
                    route,
                    status,
                    body_json,
                    time.time(),
                    dict(request.query),
                    dict(request.headers),
                )
            )
            self._changed()

    async def _answer(
        self, request: web.Request, route: str, handler: Handler
    ) -> web.StreamResponse:
        if not self._origin_ok(request):
            return _empty(403)
        fault = self._take_fault(request, route)
        delay = self.route_latency.get(route, 0.0) + self.latency
        if delay > 0:
            await asyncio.sleep(delay)
        if fault is not None:
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = f"{fault.retry_after:g}"
            return web.Response(status=fault.status, text=fault.body, headers=headers)
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return _empty(404)
        except web.HTTPMethodNotAllowed:
            return _empty(404 if request.method == "GET" else 405)
        except web.HTTPException as exc:
            return web.Response(status=exc.status, text=exc.text or "")
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.debug("simulator: handler error for %s", request.path, exc_info=True)
            return web.Response(status=500, text=SERVER_ERROR_TEXT, content_type="text/plain")

    @staticmethod
    def _origin_ok(request: web.Request) -> bool:
        host = request.headers.get("Host")
        origin = request.headers.get("Origin")
        if not host or not origin:
            return True
        parsed_origin = urllib.parse.urlparse(origin)
        parsed_host = urllib.parse.urlsplit("//" + host.lower())
        host_value: str | None = host.lower()
        origin_value: str | None = parsed_origin.netloc.lower()
        if parsed_origin.port is None:
            host_value = parsed_host.hostname
        if parsed_host.port is None:
            origin_value = parsed_origin.hostname
        if not _is_loopback(parsed_host.hostname) or not host_value or not origin_value:
            return True
        return host_value == origin_value

    # ---------------------------------------------------------------- WebSocket

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=self.config.max_upload_size)
        await ws.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        conn = Connection(sid, ws, request)
        self.hub.register(conn)
        self._changed()
        writer = asyncio.get_running_loop().create_task(conn.writer(), name=f"sim-ws-{sid}")
        try:
            status = {"exec_info": {"queue_remaining": self.engine.queue_remaining()}}
            conn.put(json.dumps({"type": "status", "data": {"status": status, "sid": sid}}))
            if self.engine.current_client == sid and self.engine.last_node_id is not None:
                executing = {"node": self.engine.last_node_id}
                conn.put(json.dumps({"type": "executing", "data": executing}))
            first = True
            async for msg in ws:
                self.ws_messages_received += 1
                self._changed()
                if msg.type.name != "TEXT":
                    continue
                try:
                    data = json.loads(msg.data)
                    if (
                        first
                        and isinstance(data, dict)
                        and data.get("type") == "feature_flags"
                        and isinstance(data.get("data"), dict)
                    ):
                        conn.supports_preview_metadata = bool(
                            data["data"].get("supports_preview_metadata")
                        )
                        conn.put(
                            json.dumps({"type": "feature_flags", "data": self._server_flags()})
                        )
                except ValueError:
                    logger.debug("simulator: invalid JSON from %s", sid)
                finally:
                    first = False
        finally:
            self.hub.unregister(conn)
            writer.cancel()  # the socket is gone: unsent frames are dropped
            await asyncio.wait([writer])
            self._changed()
        return ws

    def _server_flags(self) -> dict[str, Any]:
        return {
            "supports_preview_metadata": True,
            "max_upload_size": self.config.max_upload_size,
            "extension": {"manager": {"supports_v4": True}},
        }

    # ---------------------------------------------------------------- prompt and queue

    async def _get_prompt(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"exec_info": {"queue_remaining": self.engine.queue_remaining()}})

    async def _post_prompt(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not isinstance(body, dict):
            raise TypeError("body must be an object")
        number: float
        if "number" in body:
            number = float(body["number"])
        else:
            number = self.engine.next_number(bool(body.get("front")))
        if "prompt" not in body:
            return web.json_response(
                {
                    "error": {
                        "type": "no_prompt",
                        "message": "No prompt provided",
                        "details": "No prompt provided",
                        "extra_info": {},
                    },
                    "node_errors": {},
                },
                status=400,
            )
        graph = body["prompt"]
        prompt_id = str(body["prompt_id"]) if "prompt_id" in body else str(uuid.uuid4())
        targets = body.get("partial_execution_targets")
        result = validate_prompt(
            graph,
            self.registry,
            (self.input_dir, self.output_dir, self.temp_dir),
            [str(t) for t in targets] if isinstance(targets, list) else None,
        )
        extra_data = body.get("extra_data", {})
        if not isinstance(extra_data, dict):
            extra_data = {}
        if "client_id" in body:
            extra_data["client_id"] = body["client_id"]
        if result.error is not None:
            return web.json_response(
                {"error": result.error, "node_errors": result.node_errors}, status=400
            )
        extra_data["create_time"] = int(time.time() * 1000)
        client_id = extra_data.get("client_id")
        self.prompts[prompt_id] = SimPrompt(
            prompt_id=prompt_id,
            client_id=str(client_id) if client_id is not None else None,
            graph=graph,
            number=number,
            extra_data=extra_data,
            outputs_to_execute=list(result.outputs),
        )
        self.accepted_prompt_ids.append(prompt_id)
        self.engine.put(QueueItem(number, prompt_id, graph, extra_data, list(result.outputs)))
        return web.json_response(
            {"prompt_id": prompt_id, "number": number, "node_errors": result.node_errors}
        )

    async def _get_queue(self, request: web.Request) -> web.StreamResponse:
        running = self.engine.running
        return web.json_response(
            {
                "queue_running": [running.as_list()] if running is not None else [],
                "queue_pending": [item.as_list() for item in self.engine.queue],
            }
        )

    async def _post_queue(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("clear"):
            self.engine.clear()
        if "delete" in body:
            self.engine.delete([str(i) for i in body["delete"]])
        return web.Response(status=200)

    async def _post_interrupt(self, request: web.Request) -> web.StreamResponse:
        prompt_id: str | None = None
        with contextlib.suppress(ValueError):
            body = await request.json()
            if isinstance(body, dict) and body.get("prompt_id") is not None:
                prompt_id = str(body["prompt_id"])
        self.engine.interrupt(prompt_id)
        return web.Response(status=200)

    # ---------------------------------------------------------------- history

    async def _get_history(self, request: web.Request) -> web.StreamResponse:
        history = self.engine.history
        max_items_raw = request.query.get("max_items")
        if max_items_raw is None:
            return web.json_response(dict(history))
        max_items = int(max_items_raw)
        offset = int(request.query.get("offset", -1))
        keys = list(history)
        if offset < 0:
            offset = max(0, len(keys) - max_items)
        return web.json_response({k: history[k] for k in keys[offset : offset + max_items]})

    async def _get_history_item(self, request: web.Request) -> web.StreamResponse:
        prompt_id = request.match_info["prompt_id"]
        entry = self.engine.history.get(prompt_id)
        return web.json_response({prompt_id: entry} if entry is not None else {})

    async def _post_history(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("clear"):
            self.engine.history.clear()
        if "delete" in body:
            for prompt_id in body["delete"]:
                self.engine.history.pop(str(prompt_id), None)
        self._changed()
        return web.Response(status=200)

    # ---------------------------------------------------------------- files

    def _dir_for(self, kind: str) -> Path | None:
        return {"input": self.input_dir, "output": self.output_dir, "temp": self.temp_dir}.get(kind)

    async def _view(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        filename = query.get("filename")
        if filename is None:
            return _empty(404)
        if not filename:
            return _empty(400)
        if filename[0] == "/" or ".." in filename:
            return _empty(400)
        base = self._dir_for(query.get("type", "output"))
        if base is None:
            return _empty(400)
        folder = base
        if "subfolder" in query:
            folder = (base / query["subfolder"]).resolve()
            if os.path.commonpath((str(base.resolve()), str(folder))) != str(base.resolve()):
                return _empty(403)
        path = folder / os.path.basename(filename)
        if not path.is_file():
            return _empty(404)
        data = path.read_bytes()
        name = path.name
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        preview = query.get("preview")
        channel = query.get("channel")
        if preview or channel in ("rgb", "a"):
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                image: Image.Image = img
            buf = io.BytesIO()
            if preview:
                fmt, _, quality = preview.partition(";")
                fmt = fmt if fmt in ("webp", "jpeg") else "webp"
                q = int(quality) if quality.isdigit() else 90
                image.convert("RGB").save(buf, format=fmt.upper(), quality=q)
                content_type = f"image/{fmt}"
            elif channel == "rgb":
                image.convert("RGB").save(buf, format="PNG")
                content_type = "image/png"
            else:
                alpha = image.convert("RGBA").getchannel("A")
                out = Image.new("RGBA", image.size, (0, 0, 0, 0))
                out.putalpha(alpha)
                out.save(buf, format="PNG")
                content_type = "image/png"
            data = buf.getvalue()
        return web.Response(
            body=data,
            content_type=content_type,
            headers={"Content-Disposition": f'filename="{name}"'},
        )

    async def _upload_image(self, request: web.Request) -> web.StreamResponse:
        return self._store_upload(await request.post(), None)

    async def _upload_mask(self, request: web.Request) -> web.StreamResponse:
        """``/upload/mask``: the upload's alpha channel onto a copy of ``original_ref``'s image.

        As ComfyUI 0.8.0: ``original_ref`` is JSON ``{"filename", "subfolder", "type"}``
        (type ``output`` by default); the original's RGB (and PNG text) are kept, its alpha
        replaced by the uploaded image's alpha, and the result written under the upload's
        name. A missing original writes nothing but still answers 200 with the name.
        """
        post = await request.post()
        try:
            ref = json.loads(str(post.get("original_ref")))
        except ValueError:
            return _empty(500)
        if not isinstance(ref, dict):
            return _empty(500)
        name, annotated = split_annotation(str(ref.get("filename", "")))
        kind = annotated or str(ref.get("type", "output") or "output")
        if not name or name[0] == "/" or ".." in name:
            return _empty(400)
        base = self._dir_for(kind)
        if base is None:
            return _empty(400)
        original = (base / str(ref.get("subfolder", "") or "") / name).resolve()
        if os.path.commonpath((str(base.resolve()), str(original))) != str(base.resolve()):
            return _empty(403)

        def merge(data: bytes) -> bytes | None:
            if not original.is_file():
                return None
            with Image.open(original) as source, Image.open(io.BytesIO(data)) as mask:
                merged = source.convert("RGBA")
                merged.putalpha(mask.convert("RGBA").getchannel("A"))
            buf = io.BytesIO()
            merged.save(buf, format="PNG", compress_level=4)
            return buf.getvalue()

        return self._store_upload(post, merge)

    def _store_upload(
        self, post: Mapping[str, Any], transform: Callable[[bytes], bytes | None] | None
    ) -> web.StreamResponse:
        """ComfyUI's ``image_upload``: name, subfolder, duplicate check, then write."""
        image = post.get("image")
        if not isinstance(image, web.FileField) or not image.filename:
            return _empty(400)
        kind = str(post.get("type", "input") or "input")
        base = self._dir_for(kind)
        if base is None:
            return _empty(400)
        subfolder = str(post.get("subfolder", "") or "")
        folder = (base / subfolder).resolve()
        if os.path.commonpath((str(base.resolve()), str(folder))) != str(base.resolve()):
            return _empty(400)
        overwrite = str(post.get("overwrite", "")) in ("true", "1")
        data = image.file.read()
        filename = os.path.basename(image.filename)
        stem, ext = os.path.splitext(filename)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / filename
        duplicate = False
        if not overwrite:
            counter = 1
            while path.exists():
                if path.read_bytes() == data:
                    duplicate = True
                    break
                filename = f"{stem} ({counter}){ext}"
                path = folder / filename
                counter += 1
        if not duplicate:
            written = data if transform is None else transform(data)
            if written is not None:
                path.write_bytes(written)
        self._changed()
        return web.json_response({"name": filename, "subfolder": subfolder, "type": kind})

    # ---------------------------------------------------------------- info

    async def _system_stats(self, request: web.Request) -> web.StreamResponse:
        ram = 16 * 1024**3
        return web.json_response(
            {
                "system": {
                    "os": sys.platform,
                    "ram_total": ram,
                    "ram_free": ram // 2,
                    "comfyui_version": "0.8.0",
                    "required_frontend_version": "1.35.9",
                    "installed_templates_version": "0.7.67",
                    "required_templates_version": "0.7.67",
                    "python_version": sys.version,
                    "pytorch_version": "simulated",
                    "embedded_python": False,
                    "argv": ["main.py", "--cpu", "--simulated"],
                },
                "devices": [
                    {
                        "name": "cpu",
                        "type": "cpu",
                        "index": None,
                        "vram_total": ram,
                        "vram_free": ram // 2,
                        "torch_vram_total": ram,
                        "torch_vram_free": ram // 2,
                    }
                ],
            }
        )

    async def _object_info(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.registry.object_info())

    async def _object_info_one(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["node_class"]
        node = self.registry.get(name)
        return web.json_response({name: node.object_info(self.registry)} if node else {})

    async def _features(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._server_flags())

    async def _free(self, request: web.Request) -> web.StreamResponse:
        await request.json()  # malformed JSON: 500, like the real server
        # Unloading models does not clear the execution cache (recorded: still cached after).
        return web.Response(status=200)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        folders = ["checkpoints", "loras", "vae", "embeddings", *self.config.models]
        return web.json_response(list(dict.fromkeys(folders)))

    async def _models_folder(self, request: web.Request) -> web.StreamResponse:
        folder = request.match_info["folder"]
        if folder == "checkpoints":
            return web.json_response(list(self.config.checkpoints))
        if folder in self.config.models:
            return web.json_response(list(self.config.models[folder]))
        if folder in ("loras", "vae", "embeddings"):
            return web.json_response([])
        return _empty(404)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        return web.json_response([])

    # ---------------------------------------------------------------- jobs (0.8.0+)

    def _job_record(self, prompt_id: str) -> dict[str, Any] | None:
        engine = self.engine
        item: QueueItem | None = None
        status = ""
        if engine.running is not None and engine.running.prompt_id == prompt_id:
            item, status = engine.running, "in_progress"
        else:
            for queued in engine.queue:
                if queued.prompt_id == prompt_id:
                    item, status = queued, "pending"
        entry = engine.history.get(prompt_id)
        if item is None and entry is not None:
            number, _, graph, extra_data, outputs = entry["prompt"][:5]
            item = QueueItem(number, prompt_id, graph, extra_data, outputs)
            status = "completed" if entry["status"]["status_str"] == "success" else "failed"
        if item is None:
            return None
        outputs_ui = entry["outputs"] if entry is not None else {}
        count = sum(len(ui.get("images", [])) for ui in outputs_ui.values())
        record: dict[str, Any] = {
            "id": prompt_id,
            "status": status,
            "priority": item.number,
            "create_time": item.extra_data.get("create_time"),
            "outputs_count": count,
        }
        if entry is not None:
            record["outputs"] = outputs_ui
            record["execution_status"] = entry["status"]
        return record

    async def _jobs(self, request: web.Request) -> web.StreamResponse:
        wanted = request.query.get("status")
        statuses = set(_JOB_STATUSES)
        if wanted:
            asked = [s.strip() for s in wanted.split(",") if s.strip()]
            bad = [s for s in asked if s not in _JOB_STATUSES]
            if bad:
                return web.json_response(
                    {
                        "error": f"Invalid status value(s): {', '.join(bad)}. "
                        f"Valid values: {', '.join(_JOB_STATUSES)}"
                    },
                    status=400,
                )
            statuses = set(asked)
        ids = [i.prompt_id for i in self.engine.queue]
        if self.engine.running is not None:
            ids.append(self.engine.running.prompt_id)
        ids.extend(reversed(list(self.engine.history)))
        jobs = [j for j in (self._job_record(i) for i in ids) if j and j["status"] in statuses]
        offset = int(request.query.get("offset", 0))
        limit_raw = request.query.get("limit")
        limit = int(limit_raw) if limit_raw else None
        page = jobs[offset : offset + limit if limit is not None else None]
        return web.json_response(
            {
                "jobs": page,
                "pagination": {
                    "offset": offset,
                    "limit": limit,
                    "total": len(jobs),
                    "has_more": offset + len(page) < len(jobs),
                },
            }
        )

    async def _job(self, request: web.Request) -> web.StreamResponse:
        record = self._job_record(request.match_info["job_id"])
        if record is None:
            return web.json_response({"error": "Job not found"}, status=404)
        return web.json_response(record)


async def serve(
    host: str = "127.0.0.1",
    port: int = 8188,
    config: SimulatorConfig | None = None,
    root: Path | str | None = None,
    ready: Callable[[ComfyUISimulator], None] | None = None,
) -> None:
    """Run a simulator until cancelled (what ``dreamgen sim --port N`` calls).

    Args:
        ready: called with the started simulator (e.g. to print its URL).

    Cancelling it stops the simulator cleanly.
    """
    sim = ComfyUISimulator(config, root=root)
    await sim.start(host, port)
    try:
        if ready is not None:
            ready(sim)
        await asyncio.Event().wait()
    finally:
        await sim.stop()


class SimulatorFarm:
    """Several simulators (a pool's worth), started together and stopped together.

    Each has its own files under ``root/server-<i>``. ``farm.sims`` and ``farm.urls`` list them
    in start order. Use ``async with SimulatorFarm(root) as farm: await farm.start(...)``.
    """

    def __init__(self, root: Path | str | None = None) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="comfyui-farm-")
            root = self._tmp.name
        self.root = Path(root)
        self.sims: list[ComfyUISimulator] = []

    @property
    def urls(self) -> list[str]:
        return [sim.url for sim in self.sims]

    async def start(
        self, *configs: SimulatorConfig, host: str = "127.0.0.1", port: int = 0
    ) -> list[ComfyUISimulator]:
        """Start one simulator per config (ports ``port``, ``port + 1``... or free ones)."""
        started: list[ComfyUISimulator] = []
        for config in configs:
            index = len(self.sims)
            sim = ComfyUISimulator(config, root=self.root / f"server-{index}")
            await sim.start(host, port + len(started) if port else 0)
            self.sims.append(sim)
            started.append(sim)
        return started

    async def stop(self) -> None:
        """Stop every simulator. Idempotent."""
        sims, self.sims = self.sims, []
        for sim in sims:
            await sim.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def __aenter__(self) -> SimulatorFarm:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


async def serve_many(
    host: str = "127.0.0.1",
    port: int = 8188,
    configs: list[SimulatorConfig] | None = None,
    root: Path | str | None = None,
    ready: Callable[[list[ComfyUISimulator]], None] | None = None,
) -> None:
    """Run several simulators on ports ``port .. port + N - 1`` until cancelled
    (``dreamgen sim --servers N``)."""
    async with SimulatorFarm(root) as farm:
        sims = await farm.start(*(configs or [SimulatorConfig()]), host=host, port=port)
        if ready is not None:
            ready(sims)
        await asyncio.Event().wait()


def run_simulator(
    host: str = "127.0.0.1",
    port: int = 8188,
    config: SimulatorConfig | None = None,
    root: Path | str | None = None,
) -> None:
    """Blocking form of :func:`serve`; returns on Ctrl-C."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(host, port, config, root))
