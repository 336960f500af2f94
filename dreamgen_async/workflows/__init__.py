"""ComfyUI workflows as pure data: build them, load them, patch them, convert them.

* :mod:`~dreamgen_async.workflows.graph` - the typed :class:`Graph` / :class:`Node` /
  :class:`Output` builder of API-format graphs.
* :mod:`~dreamgen_async.workflows.builder` - presets and :class:`FluxWorkflowBuilder`
  (txt2img / img2img graphs).
* :mod:`~dreamgen_async.workflows.api` - users' API-format workflows: :class:`Workflow`,
  :func:`load_workflow`, :func:`parse_set_assignment`.
* :mod:`~dreamgen_async.workflows.ui` - UI-format workflows (and subgraphs) converted to the
  API format, given the server's node definitions.

None of these modules does network I/O; :func:`load_workflow` reads one file.
"""

from dreamgen_async.workflows.api import Workflow, load_workflow, parse_set_assignment
from dreamgen_async.workflows.builder import (
    DEFAULT_CHECKPOINT,
    MAX_BATCH_SIZE,
    MAX_RESOLUTION,
    PRESETS,
    BuiltWorkflow,
    FluxWorkflowBuilder,
    LoaderLayout,
    Preset,
    PresetName,
    ServerModels,
    as_api_graph,
    choose_loaders,
    guess_preset,
    preset_for_checkpoint,
    random_seed,
)
from dreamgen_async.workflows.graph import (
    MAX_SEED,
    NODE_OUTPUTS,
    OUTPUT_NODE_CLASSES,
    Graph,
    InputValue,
    Node,
    Output,
)
from dreamgen_async.workflows.ui import convert_ui_workflow, is_ui_workflow, widget_names

__all__ = [
    "DEFAULT_CHECKPOINT",
    "MAX_BATCH_SIZE",
    "MAX_RESOLUTION",
    "MAX_SEED",
    "NODE_OUTPUTS",
    "OUTPUT_NODE_CLASSES",
    "PRESETS",
    "BuiltWorkflow",
    "FluxWorkflowBuilder",
    "Graph",
    "InputValue",
    "LoaderLayout",
    "Node",
    "Output",
    "Preset",
    "PresetName",
    "ServerModels",
    "Workflow",
    "as_api_graph",
    "choose_loaders",
    "convert_ui_workflow",
    "guess_preset",
    "is_ui_workflow",
    "load_workflow",
    "parse_set_assignment",
    "preset_for_checkpoint",
    "random_seed",
    "widget_names",
]
