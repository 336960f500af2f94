"""Compatibility shim: the workflow code now lives in :mod:`dreamgen_async.workflows`.

Every name this module used to define is re-exported unchanged, so
``from dreamgen_async.workflow_builder import FluxWorkflowBuilder`` keeps working.
"""

from dreamgen_async.workflows.api import Workflow, load_workflow, parse_set_assignment
from dreamgen_async.workflows.builder import (
    MAX_BATCH_SIZE,
    MAX_RESOLUTION,
    PRESETS,
    BuiltWorkflow,
    FluxWorkflowBuilder,
    Preset,
    PresetName,
    as_api_graph,
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

__all__ = [
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
    "Node",
    "Output",
    "Preset",
    "PresetName",
    "Workflow",
    "as_api_graph",
    "load_workflow",
    "parse_set_assignment",
    "preset_for_checkpoint",
    "random_seed",
]
