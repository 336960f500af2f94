"""The thin I/O shell around :mod:`dreamgen_async.workflows`: ask a server, then decide.

The decisions (which loader layout, which preset, what API graph a UI file becomes) are
pure functions in ``workflows``; these coroutines only fetch ``GET /object_info`` (and read
files in a worker thread) before calling them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from dreamgen_async.backend import Backend, merge_object_info
from dreamgen_async.errors import WorkflowError
from dreamgen_async.workflows.api import Workflow, WorkflowSource, load_workflow
from dreamgen_async.workflows.builder import (
    FluxWorkflowBuilder,
    PresetName,
    ServerModels,
)

__all__ = [
    "builder_from_server",
    "load_workflow_from_server",
    "models_by_server",
    "server_models",
]


async def server_models(client: Backend) -> ServerModels:
    """The checkpoints, diffusion models, CLIP, VAE and LoRA files the backend offers: one
    server's, or for a :class:`~dreamgen_async.ComfyUIPool` those of every server that
    answers (what the pool as a whole can run; :func:`models_by_server` says which has what).

    Cancelling it cancels the ``GET /object_info`` requests.
    """
    return await client.models()


async def models_by_server(client: Backend) -> dict[str, ServerModels]:
    """Each answering server's model files, by server URL."""
    infos = await client.object_info_by_server()
    return {url: ServerModels.from_object_info(info) for url, info in infos.items()}


async def load_workflow_from_server(source: WorkflowSource, client: Backend) -> Workflow:
    """Load a workflow file or dict; a UI-format one is converted with the server's nodes
    (a pool's: the nodes of every server that answers).

    ``GET /object_info`` is only requested for a UI-format workflow. The file is read in a
    worker thread. Cancelling it cancels the request.

    Raises:
        WorkflowError: See :func:`~dreamgen_async.workflows.api.load_workflow`.
    """
    data: Any = source
    if not isinstance(source, dict):
        data = await asyncio.to_thread(_read, source)
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        info = await client.object_info()
        return load_workflow(data, object_info=info)
    return load_workflow(data) if isinstance(data, dict) else load_workflow(source)


def _read(source: WorkflowSource) -> Any:
    import json
    from pathlib import Path

    try:
        return json.loads(Path(str(source)).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None  # load_workflow reports it with the file name


async def builder_from_server(
    client: Backend,
    model: str | None = None,
    *,
    preset: PresetName | None = None,
    **settings: Any,
) -> FluxWorkflowBuilder:
    """A :class:`FluxWorkflowBuilder` for the models the server has.

    An all-in-one checkpoint loads with ``CheckpointLoaderSimple``; a Flux diffusion model
    alone with ``UNETLoader`` + ``DualCLIPLoader(type="flux")`` + ``VAELoader``. The preset
    is guessed from the model name (and logged) when not given. Cancelling it cancels the
    one ``GET /object_info`` request.

    With a pool, the models are those of every server that answers, and a missing model's
    message lists each server's.

    Raises:
        WorkflowError: The model is missing; the message lists what the server has.
    """
    infos = await client.object_info_by_server()
    merged = merge_object_info(infos)
    try:
        return FluxWorkflowBuilder.for_server(merged, model, preset=preset, **settings)
    except WorkflowError as exc:
        if len(infos) == 1:
            raise
        by_server = "; ".join(
            f"{url} has {ServerModels.from_object_info(info).describe()}"
            for url, info in infos.items()
        )
        raise WorkflowError(
            f"{exc} (every server of the pool counted); by server: {by_server}",
            node_id=exc.node_id,
            input_name=exc.input_name,
        ) from exc
