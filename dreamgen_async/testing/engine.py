"""The simulator's queue, worker and execution: what happens to a prompt after ``POST /prompt``.

One worker task runs one prompt at a time, in ``(number, prompt_id)`` order, and emits exactly
the WebSocket messages a real ComfyUI 0.8.0 emits, in the recorded order (see
``docs/PROTOCOL.md`` section 6): two ``status`` frames around the dequeue,
``execution_start``, ``execution_cached``, per node ``progress_state`` + ``executing``, sampler
steps as ``progress_state``/``progress``/previews, ``executed`` for output nodes,
``execution_success``, then the history entry, ``status`` and ``executing {node: null}``.

Node outputs are cached by input signature like ComfyUI's classic cache: an entry survives only
while the next prompt still uses it, and an identical graph runs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dreamgen_async.testing.hub import Hub
from dreamgen_async.testing.nodes import (
    Latent,
    NodeRegistry,
    NodeResult,
    NodeRuntimeError,
    RunContext,
    encode_jpeg,
    resolve_input_path,
    sample_images,
)

PromptStatus = Literal["pending", "running", "success", "error", "interrupted", "deleted", "lost"]

HISTORY_CAPACITY = 10_000

logger = logging.getLogger(__name__)


@dataclass
class SimPrompt:
    """What the simulator knows about one accepted prompt (for tests to assert on).

    ``status`` is ``lost`` when a :meth:`ComfyUISimulator.restart` dropped it unfinished.
    ``outputs`` are the file records the prompt produced (or re-sent from cache) and
    ``output_bytes`` their PNG bytes, in the same order.
    """

    prompt_id: str
    client_id: str | None
    graph: dict[str, Any]
    number: float
    extra_data: dict[str, Any]
    outputs_to_execute: list[str]
    status: PromptStatus = "pending"
    outputs: list[dict[str, str]] = field(default_factory=list)
    output_bytes: list[bytes] = field(default_factory=list)
    executed_nodes: list[str] = field(default_factory=list)
    cached_nodes: list[str] = field(default_factory=list)
    started_at: float | None = None
    finished_at: float | None = None
    model_load: float = 0.0  # seconds spent loading a model (a switch, or the first load)


@dataclass(order=True)
class QueueItem:
    """One queued prompt; orders like ComfyUI's heap tuples, by (number, prompt_id)."""

    number: float
    prompt_id: str
    graph: dict[str, Any] = field(compare=False)
    extra_data: dict[str, Any] = field(compare=False)
    outputs: list[str] = field(compare=False)

    def as_list(self) -> list[Any]:
        """The ``/queue`` item form: ``[number, prompt_id, prompt, extra_data, outputs]``."""
        return [self.number, self.prompt_id, self.graph, self.extra_data, self.outputs]


@dataclass
class _CacheEntry:
    result: NodeResult
    files: list[dict[str, str]]
    data: list[bytes]


class _Interrupted(Exception):
    def __init__(self, node_id: str) -> None:
        super().__init__(node_id)
        self.node_id = node_id


@dataclass
class EngineConfig:
    """The engine's knobs (a subset of SimulatorConfig)."""

    step_time: float = 0.0
    node_time: float = 0.0
    preview_method: str = "none"
    history_delay: float = 0.0
    history_capacity: int = HISTORY_CAPACITY
    speed: float = 1.0
    model_load_time: float = 0.0


#: Loader nodes and the input naming the model they keep loaded (a change costs a load).
MODEL_LOADERS = {"CheckpointLoaderSimple": "ckpt_name", "UNETLoader": "unet_name"}


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Run:
    """One prompt's execution: what it produced so far and the messages it sent.

    The engine decides what runs; this object turns each step into the messages ComfyUI sends
    (to the prompt's client, or to everyone) and keeps what the history entry will hold.
    """

    def __init__(self, item: QueueItem, hub: Hub, record: SimPrompt | None) -> None:
        self.item = item
        self.prompt_id = item.prompt_id
        self.graph = item.graph
        sid = item.extra_data.get("client_id")
        self.sid = str(sid) if sid is not None else None
        self.hub = hub
        self.record = record
        self.messages: list[list[Any]] = []
        self.started_at = time.time()
        self.model_load = 0.0
        self.signatures: dict[str, str] = {}
        self.progress: dict[str, dict[str, Any]] = {}
        self.results: dict[str, NodeResult] = {}
        self.outputs_ui: dict[str, Any] = {}
        self.meta: dict[str, Any] = {}
        self.executed: list[str] = []
        self.final: PromptStatus = "success"
        if record is not None:
            record.started_at = self.started_at

    def add_message(self, event: str, data: dict[str, Any], broadcast: bool) -> None:
        """A message the history entry keeps, sent to the client (or to all: ``broadcast``)."""
        self.messages.append([event, data])
        if self.sid is not None or broadcast:
            self.hub.send_json(event, data, self.sid)

    def send(self, event: str, data: dict[str, Any]) -> None:
        """A message for the prompt's client only (none without one)."""
        if self.sid is not None:
            self.hub.send_json(event, data, self.sid)

    def set_progress(self, node_id: str, value: float, maximum: float, state: str) -> None:
        self.progress[node_id] = {
            "value": value,
            "max": maximum,
            "state": state,
            "node_id": node_id,
            "prompt_id": self.prompt_id,
            "display_node_id": node_id,
            "parent_node_id": None,
            "real_node_id": node_id,
        }
        self.hub.send_json(
            "progress_state",
            {"prompt_id": self.prompt_id, "nodes": {k: dict(v) for k, v in self.progress.items()}},
            self.sid,
        )

    def remember_output(self, node_id: str, ui: dict[str, Any], files: list[bytes]) -> None:
        self.outputs_ui[node_id] = ui
        self.meta[node_id] = {
            "node_id": node_id,
            "display_node": node_id,
            "parent_node": None,
            "real_node_id": node_id,
        }
        self.send(
            "executed",
            {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": self.prompt_id},
        )
        if self.record is not None:
            self.record.outputs.extend(ui.get("images", []))
            self.record.output_bytes.extend(files)

    def reused(self, node_id: str, entry: _CacheEntry) -> None:
        """A node whose outputs came from the cache (run by an earlier prompt)."""
        self.results[node_id] = entry.result
        if entry.result.ui is not None:
            self.remember_output(node_id, entry.result.ui, entry.data)
        self.set_progress(node_id, 1.0, 1.0, "finished")

    def ran(self, node_id: str, result: NodeResult, files: list[bytes], maximum: float) -> None:
        self.results[node_id] = result
        self.executed.append(node_id)
        if self.record is not None:
            self.record.executed_nodes.append(node_id)
        if result.ui is not None:
            self.remember_output(node_id, result.ui, files)
        self.set_progress(node_id, maximum, maximum, "finished")

    def failed(self, node_id: str, exc: Exception) -> None:
        """``execution_error`` for a node that raised."""
        if not isinstance(exc, NodeRuntimeError):
            exc = NodeRuntimeError(str(exc), type(exc).__name__)
        node = self.graph[node_id]
        self.add_message(
            "execution_error",
            {
                "prompt_id": self.prompt_id,
                "node_id": node_id,
                "node_type": node["class_type"],
                "executed": list(self.executed),
                "exception_message": str(exc),
                "exception_type": exc.exception_type,
                "traceback": [f'  File "simulator/nodes.py", in {node["class_type"]}\n'],
                "current_inputs": {
                    k: [v] for k, v in node.get("inputs", {}).items() if not isinstance(v, list)
                },
                "current_outputs": list(self.graph),
                "timestamp": _now_ms(),
            },
            False,
        )
        self.final = "error"

    def interrupted(self, node_id: str) -> None:
        """``execution_interrupted`` (sent to every client, as ComfyUI does)."""
        self.add_message(
            "execution_interrupted",
            {
                "prompt_id": self.prompt_id,
                "node_id": node_id,
                "node_type": self.graph[node_id]["class_type"] if node_id in self.graph else "",
                "executed": list(self.executed),
                "timestamp": _now_ms(),
            },
            True,
        )
        self.final = "interrupted"

    def history_entry(self) -> dict[str, Any]:
        status_str = "success" if self.final == "success" else "error"
        return {
            "prompt": self.item.as_list(),
            "outputs": self.outputs_ui,
            "status": {
                "status_str": status_str,
                "completed": status_str == "success",
                "messages": self.messages,
            },
            "meta": self.meta,
        }


class _ExecutionList:
    """The order ComfyUI's execution list runs nodes in: dependency order, with its UX
    tie-breaks (an output node first, then a node an output waits on, then one two steps
    from an output)."""

    def __init__(
        self, graph: dict[str, Any], cached: set[str], is_output: Callable[[str], bool]
    ) -> None:
        self.graph = graph
        self.cached = cached
        self.is_output = is_output
        self.pending: dict[str, None] = {}
        self.blockers: dict[str, set[str]] = {}
        self.blocking: dict[str, set[str]] = {}

    def links(self, node_id: str) -> list[str]:
        found = []
        for value in self.graph[node_id].get("inputs", {}).values():
            if isinstance(value, list) and len(value) == 2:
                found.append(str(value[0]))
        return found

    def add(self, start: str) -> None:
        """Add ``start`` and every uncached node it needs."""
        stack = [start]
        edges: list[tuple[str, str]] = []
        while stack:
            node_id = stack.pop()
            if node_id in self.pending:
                continue
            self.pending[node_id] = None
            self.blockers[node_id] = set()
            self.blocking[node_id] = set()
            for source in self.links(node_id):
                if source not in self.cached:
                    stack.append(source)
                edges.append((source, node_id))
        for source, target in edges:
            if source not in self.cached or source in self.pending:
                self.add(source)
                self.blocking[source].add(target)
                self.blockers[target].add(source)

    def pick(self, ready: list[str]) -> str:
        blocking = self.blocking
        for node_id in ready:
            if self.is_output(node_id):
                return node_id
        for node_id in ready:
            if any(self.is_output(b) for b in blocking[node_id]):
                return node_id
        for node_id in ready:
            if any(self.is_output(c) for b in blocking[node_id] for c in blocking[b]):
                return node_id
        return ready[0]

    def order(self) -> list[str]:
        """Take every node out, in the order they run."""
        order: list[str] = []
        while self.pending:
            ready = [n for n in self.pending if not self.blockers[n]]
            if not ready:  # a cycle: the real server errors; run what is left in id order
                ready = list(self.pending)
            node_id = self.pick(ready)
            order.append(node_id)
            del self.pending[node_id]
            for target in self.blocking.pop(node_id, set()):
                if target in self.blockers:
                    self.blockers[target].discard(node_id)
            self.blockers.pop(node_id, None)
        return order


class Engine:
    """Queue, history, cache and the worker task.

    Args:
        config: timings and preview settings (read live: changes apply to the next step).
        registry: the node classes.
        hub: where WebSocket events go.
        dirs: (input, output, temp) directories.
        prompts: the simulator's record of accepted prompts, updated as they progress.
        changed: called after every state change (wakes ``wait_until``).
    """

    def __init__(
        self,
        config: EngineConfig,
        registry: NodeRegistry,
        hub: Hub,
        dirs: tuple[Path, Path, Path],
        prompts: dict[str, SimPrompt],
        changed: Callable[[], None],
    ) -> None:
        self.config = config
        self.registry = registry
        self.hub = hub
        self.dirs = dirs
        self.prompts = prompts
        self._changed = changed
        self.queue: list[QueueItem] = []
        self.running: QueueItem | None = None
        self.history: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.cache: dict[str, _CacheEntry] = {}
        self.number = 0
        self.current_client: str | None = None
        self.last_node_id: str | None = None
        self.stalled: set[str] = set()
        self.stall_next_prompt = False
        self.loaded_model: str | None = None
        self.model_loads = 0
        self._wakeup = asyncio.Event()
        self._released = asyncio.Event()
        self._released.set()
        self._interrupt = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start the worker task."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._worker(), name="sim-worker")

    async def stop(self) -> None:
        """Cancel the worker and wait for it; the running prompt leaves no trace."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise

    async def reset(self) -> None:
        """Forget queue, history, cache and the running prompt (a server restart)."""
        unfinished = [*self.queue, *([self.running] if self.running else [])]
        await self.stop()
        for item in unfinished:
            prompt = self.prompts.get(item.prompt_id)
            if prompt is not None and prompt.status in ("pending", "running"):
                prompt.status = "lost"
        self.queue.clear()
        self.running = None
        self.history.clear()
        self.cache.clear()
        self.number = 0
        self.current_client = None
        self.last_node_id = None
        self.loaded_model = None
        self.start()
        self._changed()

    # ---------------------------------------------------------------- queue

    def queue_remaining(self) -> int:
        """Pending plus running prompts (``exec_info.queue_remaining``)."""
        return len(self.queue) + (1 if self.running is not None else 0)

    def send_status(self) -> None:
        """Broadcast ``status`` with the current queue size."""
        self.hub.send_json(
            "status", {"status": {"exec_info": {"queue_remaining": self.queue_remaining()}}}, None
        )

    def next_number(self, front: bool) -> int:
        """ComfyUI's queue number for a prompt without an explicit ``number``."""
        number = -self.number if front else self.number
        self.number += 1
        return number

    def put(self, item: QueueItem) -> None:
        """Queue a validated prompt and broadcast ``status``."""
        heapq.heappush(self.queue, item)
        self.send_status()
        self._wakeup.set()
        self._changed()

    def delete(self, prompt_ids: list[str]) -> None:
        """Remove pending prompts (a running one is untouched); one ``status`` per removal."""
        for prompt_id in prompt_ids:
            for index, item in enumerate(self.queue):
                if item.prompt_id == prompt_id:
                    self.queue.pop(index)
                    heapq.heapify(self.queue)
                    self._mark(prompt_id, "deleted")
                    self.send_status()
                    break
        self._changed()

    def clear(self) -> None:
        """Remove every pending prompt; one ``status``."""
        for item in self.queue:
            self._mark(item.prompt_id, "deleted")
        self.queue.clear()
        self.send_status()
        self._changed()

    def interrupt(self, prompt_id: str | None) -> None:
        """Interrupt the running prompt: any (``None``) or only if it is ``prompt_id``."""
        if self.running is None:
            return
        if prompt_id is None or prompt_id == self.running.prompt_id:
            self._interrupt.set()

    def hold(self) -> None:
        """Do not start another prompt until :meth:`release`."""
        self._released.clear()

    def release(self) -> None:
        """Let the worker start prompts again."""
        self._released.set()

    def _mark(self, prompt_id: str, status: PromptStatus) -> None:
        prompt = self.prompts.get(prompt_id)
        if prompt is not None:
            prompt.status = status

    # ---------------------------------------------------------------- worker

    async def _worker(self) -> None:
        while True:
            await self._released.wait()
            if not self.queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            item = heapq.heappop(self.queue)
            self.running = item
            self._interrupt.clear()
            self._mark(item.prompt_id, "running")
            self.send_status()
            self._changed()
            try:
                await self._execute(item)
            except Exception:  # a simulator bug must not kill the worker
                logger.exception("simulator: prompt %s crashed", item.prompt_id)
                self._mark(item.prompt_id, "error")
                self.running = None
                self.send_status()
                self._changed()
            finally:
                self.running = None
                self.current_client = None
                self.last_node_id = None

    async def _execute(self, item: QueueItem) -> None:
        run = _Run(item, self.hub, self.prompts.get(item.prompt_id))
        self.current_client = run.sid
        run.add_message(
            "execution_start", {"prompt_id": run.prompt_id, "timestamp": _now_ms()}, False
        )
        order = self._plan(run)
        stall = run.prompt_id in self.stalled or self.stall_next_prompt
        self.stall_next_prompt = False
        try:
            await self._run_nodes(run, order, stall)
        except _Interrupted as exc:
            run.interrupted(exc.node_id)
        # The real server writes history from another thread: a client that asks on
        # execution_success may still get {} (the history race).
        if self.config.history_delay > 0:
            await asyncio.sleep(self.config.history_delay)
        else:
            await asyncio.sleep(0)
        self._write_history(run)
        self.running = None
        self._mark(run.prompt_id, run.final)
        self.send_status()
        run.send("executing", {"node": None, "prompt_id": run.prompt_id})
        self._changed()

    def _plan(self, run: _Run) -> list[str]:
        """Sign every node, drop cache entries this prompt does not use, say which nodes are
        cached (``execution_cached``); return the order the others run in."""
        graph = run.graph
        for node_id in graph:
            self._signature(graph, node_id, run.signatures)
        used = set(run.signatures.values())
        self.cache = {key: entry for key, entry in self.cache.items() if key in used}
        cached = [node_id for node_id in graph if run.signatures[node_id] in self.cache]
        run.add_message(
            "execution_cached",
            {"nodes": cached, "prompt_id": run.prompt_id, "timestamp": _now_ms()},
            False,
        )
        if run.record is not None:
            run.record.cached_nodes = list(cached)
        return self._execution_order(graph, run.item.outputs, set(cached))

    async def _run_nodes(self, run: _Run, order: list[str], stall: bool) -> None:
        """Run (or reuse from the cache) each node in order; ``stall``: hang at the first node
        that runs until interrupted. Raises _Interrupted."""
        for node_id in order:
            entry = self.cache.get(run.signatures[node_id])
            if entry is not None:
                run.reused(node_id, entry)
                continue
            await self._enter(run, node_id)
            if stall:
                stall = False
                await self._interrupt.wait()
                self._check(node_id)
            if not await self._run_node(run, node_id):
                return
        if stall:  # everything was cached: still honour the stall
            await self._interrupt.wait()
            self._check(order[-1] if order else "")
        run.add_message(
            "execution_success", {"prompt_id": run.prompt_id, "timestamp": _now_ms()}, False
        )

    async def _enter(self, run: _Run, node_id: str) -> None:
        """A node starts: ``executing``, its model loaded, its simulated time spent."""
        run.set_progress(node_id, 0.0, 1.0, "running")
        self.last_node_id = node_id
        run.send(
            "executing", {"node": node_id, "display_node": node_id, "prompt_id": run.prompt_id}
        )
        self._changed()
        run.model_load += await self._load_model(run.graph[node_id])
        await self._pause(self.config.node_time, node_id)

    async def _run_node(self, run: _Run, node_id: str) -> bool:
        """Sample (with progress), then run one node; False when it failed (error sent)."""
        node = run.graph[node_id]
        node_def = self.registry.get(node["class_type"])
        assert node_def is not None  # validated on POST
        inputs = self._gather(node.get("inputs", {}), run.results, run.signatures)
        maximum: float = 1.0
        if node_def.steps_input is not None:
            steps = int(inputs[node_def.steps_input])
            maximum = steps
            await self._sample_steps(node_id, inputs, steps, run.item, run.sid, run.set_progress)
        ctx = RunContext(*self.dirs, prompt_id=run.prompt_id, node_id=node_id)
        try:
            result = node_def.run(ctx, inputs)
        except Exception as exc:
            run.failed(node_id, exc)
            return False
        self.cache[run.signatures[node_id]] = _CacheEntry(result, ctx.saved, ctx.written)
        run.ran(node_id, result, ctx.written, maximum)
        return True

    def _write_history(self, run: _Run) -> None:
        prompt_id = run.prompt_id
        self.history[prompt_id] = run.history_entry()
        if self.config.speed != 1.0 or self.config.model_load_time > 0:
            # Not in ComfyUI (so only with the pool knobs on): the simulator's own timings.
            self.history[prompt_id]["sim_timings"] = {
                "started": run.started_at,
                "finished": time.time(),
                "model_load": run.model_load,
                "model": self.loaded_model,
                "speed": self.config.speed,
            }
        if run.record is not None:
            run.record.finished_at = time.time()
            run.record.model_load = run.model_load
        self.history.move_to_end(prompt_id)
        while len(self.history) > self.config.history_capacity:
            self.history.popitem(last=False)

    async def _sample_steps(
        self,
        node_id: str,
        inputs: dict[str, Any],
        steps: int,
        item: QueueItem,
        sid: str | None,
        set_progress: Callable[[str, float, float, str], None],
    ) -> None:
        method = str(item.extra_data.get("preview_method", self.config.preview_method))
        previews = method not in ("none", "")
        for step in range(1, steps + 1):
            await self._pause(self.config.step_time, node_id)
            set_progress(node_id, step, steps, "running")
            jpeg = b""
            if previews:
                latent: Latent = inputs["latent_image"]
                images = sample_images(
                    Latent(latent.images[:1]),
                    inputs["positive"].text,
                    int(inputs["seed"]),
                    float(inputs["denoise"]),
                    step / steps,
                )
                jpeg = encode_jpeg(images[0])
                metadata = {
                    "node_id": node_id,
                    "prompt_id": item.prompt_id,
                    "display_node_id": node_id,
                    "parent_node_id": None,
                    "real_node_id": node_id,
                    "image_type": "image/jpeg",
                }
                self.hub.send_preview(jpeg, sid, metadata, with_metadata=True)
            self.hub.send_json(
                "progress",
                {"value": step, "max": steps, "prompt_id": item.prompt_id, "node": node_id},
                sid,
            )
            if previews:
                self.hub.send_preview(jpeg, sid, {}, with_metadata=False)

    async def _load_model(self, node: dict[str, Any]) -> float:
        """A loader naming another model than the loaded one costs ``model_load_time``."""
        name = MODEL_LOADERS.get(str(node.get("class_type")))
        model = node.get("inputs", {}).get(name) if name else None
        if not isinstance(model, str) or model == self.loaded_model:
            return 0.0
        self.loaded_model = model
        self.model_loads += 1
        seconds = self.config.model_load_time
        if seconds > 0:  # not scaled by speed: loading is disk and bus bound
            await self._wait_interrupt(seconds)
        return seconds

    async def _pause(self, seconds: float, node_id: str) -> None:
        """Spend simulated time (or just yield), then honour a pending interrupt."""
        if seconds > 0 and self.config.speed != 1.0:
            seconds /= self.config.speed
        if seconds > 0:
            await self._wait_interrupt(seconds)
        else:
            await asyncio.sleep(0)
        self._check(node_id)

    async def _wait_interrupt(self, seconds: float) -> None:
        """Wait ``seconds``, or less if interrupted. Not ``asyncio.wait_for``: on Python 3.11
        it swallows a cancellation that lands as the interrupt is set, and a cancelled worker
        then lives on (``restart()`` waited for it forever)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._interrupt.wait()

    def _check(self, node_id: str) -> None:
        if self._interrupt.is_set():
            raise _Interrupted(node_id)

    # ---------------------------------------------------------------- graph helpers

    def _gather(
        self, raw: dict[str, Any], results: dict[str, NodeResult], signatures: dict[str, str]
    ) -> dict[str, Any]:
        """A node's input values: literals, or outputs of upstream nodes (run or cached)."""
        inputs: dict[str, Any] = {}
        for name, value in raw.items():
            if isinstance(value, list) and len(value) == 2:
                source = str(value[0])
                result = results.get(source)
                if result is None:
                    result = self.cache[signatures[source]].result
                inputs[name] = result.outputs[int(value[1])]
            elif isinstance(value, dict) and "__value__" in value:
                inputs[name] = value["__value__"]
            else:
                inputs[name] = value
        return inputs

    def _signature(self, graph: dict[str, Any], node_id: str, memo: dict[str, str]) -> str:
        """A hash of the node's class, literal inputs, upstream signatures and file content."""
        if node_id in memo:
            return memo[node_id]
        node = graph[node_id]
        parts: list[Any] = [node["class_type"]]
        inputs = node.get("inputs", {})
        for name in sorted(inputs):
            value = inputs[name]
            if isinstance(value, list) and len(value) == 2 and str(value[0]) in graph:
                parts.append([name, self._signature(graph, str(value[0]), memo), value[1]])
            else:
                parts.append([name, value])
        if node["class_type"] == "LoadImage":
            path = resolve_input_path(*self.dirs, str(inputs.get("image", "")))
            try:
                parts.append(hashlib.sha256(path.read_bytes()).hexdigest())
            except OSError:
                parts.append(None)
        digest = hashlib.sha256(json.dumps(parts, default=repr).encode()).hexdigest()
        memo[node_id] = digest
        return digest

    def _execution_order(
        self, graph: dict[str, Any], outputs: list[str], cached: set[str]
    ) -> list[str]:
        """The order ComfyUI's execution list runs nodes in (dependency order, UX tie-breaks)."""

        def is_output(node_id: str) -> bool:
            node_def = self.registry.get(graph[node_id]["class_type"])
            return node_def is not None and node_def.output_node

        execution = _ExecutionList(graph, cached, is_output)
        for out in outputs:
            execution.add(out)
        return execution.order()
