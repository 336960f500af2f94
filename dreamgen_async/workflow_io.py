"""The thin I/O shell around :mod:`dreamgen_async.workflows`: ask a server, then decide.

The decisions (which loader layout, which preset, what API graph a UI file becomes) are
pure functions in ``workflows``; these coroutines only fetch ``GET /object_info`` (and read
files in a worker thread) before calling them.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from dreamgen_async.workflows.api import Workflow, WorkflowSource, load_workflow
from dreamgen_async.workflows.builder import (
    FluxWorkflowBuilder,
    PresetName,
    ServerModels,
)

__all__ = ["builder_from_server", "load_workflow_from_server", "server_models"]


class ObjectInfoClient(Protocol):
    """Anything with ComfyUIClient's ``object_info()`` coroutine."""

    async def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        """``GET /object_info``."""
        ...


async def server_models(client: ObjectInfoClient) -> ServerModels:
    """The checkpoints, diffusion models, CLIP, VAE and LoRA files the server offers.

    Cancelling it cancels the one ``GET /object_info`` request.
    """
    return ServerModels.from_object_info(await client.object_info())


async def load_workflow_from_server(source: WorkflowSource, client: ObjectInfoClient) -> Workflow:
    """Load a workflow file or dict; a UI-format one is converted with the server's nodes.

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
    client: ObjectInfoClient,
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

    Raises:
        WorkflowError: The model is missing; the message lists what the server has.
    """
    info = await client.object_info()
    return FluxWorkflowBuilder.for_server(info, model, preset=preset, **settings)
