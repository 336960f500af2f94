"""ComfyUI workflows as pure data: build them, load them, patch them, convert them.

* :mod:`~dreamgen_async.workflows.graph` - the typed :class:`Graph` / :class:`Node` /
  :class:`Output` builder of API-format graphs.
* :mod:`~dreamgen_async.workflows.builder` - presets and :class:`FluxWorkflowBuilder`
  (txt2img / img2img graphs).
* :mod:`~dreamgen_async.workflows.recipes` - the pieces of the inpaint / outpaint / LoRA /
  ControlNet / hires-fix recipes (:class:`Lora`, :class:`ControlNet`, :class:`HiresFix`).
* :mod:`~dreamgen_async.workflows.masks` - inpainting masks checked and made ready to upload.
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
    RecipeKind,
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
from dreamgen_async.workflows.masks import (
    MaskAspectWarning,
    MaskError,
    PreparedMask,
    alpha_mask,
    prepare_mask,
)
from dreamgen_async.workflows.recipes import (
    ControlNet,
    HiresFix,
    InpaintLayout,
    Lora,
    choose_inpaint_layout,
    is_inpaint_model,
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
    "ControlNet",
    "FluxWorkflowBuilder",
    "Graph",
    "HiresFix",
    "InpaintLayout",
    "InputValue",
    "LoaderLayout",
    "Lora",
    "MaskAspectWarning",
    "MaskError",
    "Node",
    "Output",
    "PreparedMask",
    "Preset",
    "PresetName",
    "RecipeKind",
    "ServerModels",
    "Workflow",
    "alpha_mask",
    "as_api_graph",
    "choose_inpaint_layout",
    "choose_loaders",
    "convert_ui_workflow",
    "guess_preset",
    "is_inpaint_model",
    "is_ui_workflow",
    "load_workflow",
    "parse_set_assignment",
    "prepare_mask",
    "preset_for_checkpoint",
    "random_seed",
    "widget_names",
]
