"""A ComfyUI simulator for tests and benchmarks: a real aiohttp server on loopback.

It reproduces ComfyUI 0.8.0's HTTP routes, error bodies and WebSocket message order as recorded
from a real server, with cheap deterministic "generation" (Pillow blends) that writes real PNGs::

    from dreamgen_async.testing import ComfyUISimulator, SimulatorConfig

    async with ComfyUISimulator(SimulatorConfig(step_time=0.01), root=tmp_path) as sim:
        ...  # talk to sim.url with any HTTP/WebSocket client

Observability (what the server saw):
    ``sim.requests`` (:class:`RecordedRequest` list), ``sim.prompts`` (prompt_id →
    :class:`SimPrompt`, with ``status`` and the PNG ``output_bytes``),
    ``sim.accepted_prompt_ids``, ``sim.history``, ``sim.ws_connections_total``,
    ``sim.open_websockets``, ``sim.input_files()``, ``sim.input_dir``/``output_dir``/``temp_dir``.
    ``await sim.wait_until(predicate)`` and ``await sim.wait_for_status(prompt_id, "running")``
    wake on every state change: tests never need to sleep.

Control and fault injection (methods and attributes of the simulator):
    ``hold()``/``release()`` (the worker starts no new prompt while held),
    ``stall(prompt_id)``/``stall_next()`` (a prompt that runs until interrupted),
    ``interrupt(prompt_id=None)``, ``await drop_websockets(abrupt=True)``,
    ``await restart()`` (queue, history and cache lost; files kept; same port),
    ``fail_next(route, n, status=503, retry_after=None, body=..., method=None)``,
    ``latency`` (seconds added to every answer) and ``route_latency[route]``,
    ``previews`` / ``step_time`` / ``node_time`` / ``history_delay`` (live knobs),
    ``await send_raw(data, client_id=None)`` (any text/binary frame to one or all sockets).

Pytest: ``pytest_plugins = ["dreamgen_async.testing.pytest_plugin"]`` gives the function-scoped
async fixture ``comfyui_sim``,
and ``comfyui_farm`` (a :class:`SimulatorFarm`: ``await comfyui_farm.start(config, ...)``
starts one simulator per config, e.g. with different ``speed`` or ``checkpoints``, for a
pool). ``speed`` and ``model_load_time`` make a server slower or faster and charge a model
switch (reported per prompt: ``SimPrompt.model_load`` and the history's ``sim_timings``).
Standalone: :func:`serve` / :func:`run_simulator` / :func:`serve_many`.
"""

from dreamgen_async.testing.engine import SimPrompt
from dreamgen_async.testing.nodes import sample_png
from dreamgen_async.testing.simulator import (
    DEFAULT_CHECKPOINTS,
    ComfyUISimulator,
    RecordedRequest,
    SimulatorConfig,
    SimulatorFarm,
    run_simulator,
    serve,
    serve_many,
)

__all__ = [
    "DEFAULT_CHECKPOINTS",
    "ComfyUISimulator",
    "RecordedRequest",
    "SimPrompt",
    "SimulatorConfig",
    "SimulatorFarm",
    "run_simulator",
    "sample_png",
    "serve",
    "serve_many",
]
