"""The typed graph: build ComfyUI API-format graphs with checked links. Pure, no I/O.

``g.add(class_type, **inputs)`` returns a :class:`Node` whose ``node.out(i)`` is an
:class:`Output` handle; passing a handle as an input makes a link. ``g.to_api()`` gives
ComfyUI's API format::

    {"3": {"class_type": "KSampler",
           "inputs": {"seed": 42, "model": ["4", 0], ...},
           "_meta": {"title": "KSampler"}}}

A two-element ``[node_id, output_index]`` list is a link; a literal list value must be
wrapped as ``{"__value__": [...]}``. The graph does that wrapping for you.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeAlias, TypeGuard

from dreamgen_async.errors import WorkflowError

__all__ = [
    "MAX_SEED",
    "NODE_OUTPUTS",
    "OUTPUT_NODE_CLASSES",
    "Graph",
    "InputValue",
    "Node",
    "Output",
]

#: The largest seed ComfyUI's KSampler accepts (``0xffffffffffffffff``).
MAX_SEED = 0xFFFF_FFFF_FFFF_FFFF

#: Output names, by index, of the node classes this library knows. A class that is not
#: listed may have any number of outputs.
NODE_OUTPUTS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "CheckpointLoaderSimple": ("MODEL", "CLIP", "VAE"),
        "CLIPTextEncode": ("CONDITIONING",),
        "FluxGuidance": ("CONDITIONING",),
        "EmptyLatentImage": ("LATENT",),
        "EmptySD3LatentImage": ("LATENT",),
        "LoadImage": ("IMAGE", "MASK"),
        "VAEEncode": ("LATENT",),
        "KSampler": ("LATENT",),
        "VAEDecode": ("IMAGE",),
        "SaveImage": (),
        "PreviewImage": (),
    }
)

#: Node classes whose results come back as images (``executed`` / history outputs).
OUTPUT_NODE_CLASSES = frozenset({"SaveImage", "PreviewImage"})

#: What a node input may hold when building a graph: a link or a JSON literal.
InputValue: TypeAlias = "Output | str | int | float | bool | list[Any] | dict[str, Any] | None"


def _id_sort_key(node_id: str) -> tuple[int, int, str]:
    """Sort numeric ids numerically ("2" before "10"), then the others by name."""
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)


def _is_link(value: object) -> TypeGuard[list[Any]]:
    """Whether ComfyUI reads ``value`` as a link (``[str, int]``), as its executor does."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def _quoted(names: list[str], *, limit: int = 30) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return (shown + more) if names else "(none)"


# --------------------------------------------------------------------------- typed graph


@dataclass(frozen=True, slots=True)
class Output:
    """One output of one node: what a link points to.

    Attributes:
        node_id: The producing node.
        index: The output's position (``CheckpointLoaderSimple``: 0 MODEL, 1 CLIP, 2 VAE).
        type_name: The output's ComfyUI type, when the node class is known.
    """

    node_id: str
    index: int
    type_name: str | None = None

    def to_api(self) -> list[str | int]:
        """The link as ComfyUI's API format writes it: ``[node_id, index]``."""
        return [self.node_id, self.index]


@dataclass(frozen=True, eq=False)
class Node:
    """A node added to a :class:`Graph`. Use :meth:`out` to link its outputs elsewhere.

    Attributes:
        id: The node id in the graph (``"1"``, ``"2"``... unless chosen).
        class_type: The ComfyUI node class (``KSampler``...).
        title: Shown in ComfyUI as the node's title; stored in ``_meta.title``.
        inputs: The inputs as given (links still as :class:`Output` handles).
    """

    id: str
    class_type: str
    title: str
    inputs: Mapping[str, InputValue] = field(repr=False)

    @property
    def output_names(self) -> tuple[str, ...] | None:
        """The known output names by index, or ``None`` for a class this library does not know."""
        return NODE_OUTPUTS.get(self.class_type)

    def out(self, index: int | str) -> Output:
        """A handle on one of this node's outputs.

        Args:
            index: The output's position, or (for known classes) its type name, e.g. ``"VAE"``.

        Returns:
            The handle to pass as another node's input.

        Raises:
            WorkflowError: The index is negative, or past the outputs of a known class, or
                a name was given that the class does not have (or the class is unknown).
        """
        names = self.output_names
        if isinstance(index, str):
            if names is None or index not in names:
                known = "unknown for this class" if names is None else _quoted(list(names))
                raise WorkflowError(
                    f"node {self.id} ({self.class_type}) has no output named {index!r}; "
                    f"its outputs: {known}. Use an index instead.",
                    node_id=self.id,
                )
            return Output(self.id, names.index(index), index)
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise WorkflowError(
                f"unknown output index {index!r} of node {self.id} ({self.class_type}): "
                "an output index is an int >= 0",
                node_id=self.id,
            )
        if names is None:
            return Output(self.id, index)
        if index >= len(names):
            raise WorkflowError(
                f"unknown output index {index} of node {self.id} ({self.class_type}): "
                f"it has {_describe_outputs(names)}",
                node_id=self.id,
            )
        return Output(self.id, index, names[index])


def _describe_outputs(names: tuple[str, ...]) -> str:
    if not names:
        return "no outputs"
    listed = ", ".join(f"{i} {name}" for i, name in enumerate(names))
    return f"{len(names)} output{'s' if len(names) > 1 else ''}: {listed}"


def _encode_literal(value: object, *, node_id: str, input_name: str) -> Any:
    """A builder input value as API-format JSON (links handled by the caller)."""
    if isinstance(value, Output):
        return value.to_api()
    if value is None or isinstance(value, str | int | float | bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise WorkflowError(
                f"node {node_id} input {input_name!r}: {value} is not a finite number",
                node_id=node_id,
                input_name=input_name,
            )
        return value
    if isinstance(value, list):
        return {"__value__": copy.deepcopy(value)}
    if isinstance(value, dict):
        return copy.deepcopy(value)
    hint = " (use node.out(index) to link a node's output)" if isinstance(value, Node) else ""
    raise WorkflowError(
        f"node {node_id} input {input_name!r}: cannot use a {type(value).__name__} as an "
        f"input value{hint}",
        node_id=node_id,
        input_name=input_name,
    )


class Graph:
    """A ComfyUI graph under construction, with typed links.

    Example:
        >>> g = Graph()
        >>> ckpt = g.add("CheckpointLoaderSimple", ckpt_name="flux1-schnell.safetensors")
        >>> text = g.add("CLIPTextEncode", text="a fox", clip=ckpt.out(1))
        >>> g.to_api()["2"]["inputs"]
        {'text': 'a fox', 'clip': ['1', 1]}
    """

    def __init__(self) -> None:
        self._nodes: dict[str, Node] = {}
        self._counter = 0

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(self._nodes.values())

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes

    def node(self, node_id: str) -> Node:
        """The node with this id.

        Raises:
            WorkflowError: There is no such node.
        """
        try:
            return self._nodes[node_id]
        except KeyError:
            ids = sorted(self._nodes, key=_id_sort_key)
            raise WorkflowError(
                f"no node {node_id!r} in the graph; its nodes: {_quoted(ids)}", node_id=node_id
            ) from None

    def add(
        self,
        class_type: str,
        *,
        title: str | None = None,
        node_id: str | None = None,
        **inputs: InputValue,
    ) -> Node:
        """Add a node.

        Args:
            class_type: The ComfyUI node class.
            title: The ``_meta.title`` (defaults to ``class_type``); used to patch by title.
            node_id: The id to use; by default the next free one of ``"1"``, ``"2"``...
            **inputs: The node's inputs: :class:`Output` handles for links, JSON literals
                otherwise (lists are wrapped as ``{"__value__": [...]}`` on export).

        Returns:
            The new node, whose :meth:`Node.out` gives handles on its outputs.

        Raises:
            WorkflowError: Empty class type, duplicate id, or an input value that is
                neither a link nor a JSON literal.
        """
        if not isinstance(class_type, str) or not class_type.strip():
            raise WorkflowError(f"class_type must be a non-empty string, not {class_type!r}")
        if node_id is None:
            node_id = self._next_id()
        elif not isinstance(node_id, str) or not node_id:
            raise WorkflowError(f"a node id must be a non-empty string, not {node_id!r}")
        elif node_id in self._nodes:
            raise WorkflowError(f"node id {node_id!r} is already in the graph", node_id=node_id)
        for name, value in inputs.items():
            _encode_literal(value, node_id=node_id, input_name=name)  # type check now
        node = Node(node_id, class_type, title if title is not None else class_type, inputs)
        self._nodes[node_id] = node
        return node

    def _next_id(self) -> str:
        while True:
            self._counter += 1
            candidate = str(self._counter)
            if candidate not in self._nodes:
                return candidate

    def validate(self) -> None:
        """Check that every link points to an existing node and to an output it has.

        Raises:
            WorkflowError: Naming the node and input of the first bad link.
        """
        for node in self._nodes.values():
            for name, value in node.inputs.items():
                if not isinstance(value, Output):
                    continue
                source = self._nodes.get(value.node_id)
                if source is None:
                    raise WorkflowError(
                        f"node {node.id} ({node.class_type}) input {name!r} links to node "
                        f"{value.node_id!r}, which is not in the graph",
                        node_id=node.id,
                        input_name=name,
                    )
                names = source.output_names
                if names is not None and value.index >= len(names):
                    raise WorkflowError(
                        f"node {node.id} ({node.class_type}) input {name!r} links to unknown "
                        f"output index {value.index} of node {source.id} ({source.class_type}), "
                        f"which has {_describe_outputs(names)}",
                        node_id=node.id,
                        input_name=name,
                    )

    def to_api(self) -> dict[str, Any]:
        """The graph in ComfyUI's API format (a new dict each call), after :meth:`validate`.

        Raises:
            WorkflowError: A link is dangling (see :meth:`validate`).
        """
        self.validate()
        return {
            node.id: {
                "class_type": node.class_type,
                "inputs": {
                    name: _encode_literal(value, node_id=node.id, input_name=name)
                    for name, value in node.inputs.items()
                },
                "_meta": {"title": node.title},
            }
            for node in self._nodes.values()
        }

    def output_node_ids(self) -> tuple[str, ...]:
        """The ids of the image output nodes (``SaveImage``, ``PreviewImage``), in order added."""
        return tuple(n.id for n in self._nodes.values() if n.class_type in OUTPUT_NODE_CLASSES)


# --------------------------------------------------------------------------- argument checks


def _check_text(value: object, name: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise WorkflowError(f"{name} must be a string, not {type(value).__name__}", input_name=name)
    if not allow_empty and not value.strip():
        raise WorkflowError(f"{name} must not be empty", input_name=name)
    return value


def _check_int(value: object, name: str, *, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise WorkflowError(
            f"{name} must be an int, not {type(value).__name__} ({value!r})", input_name=name
        )
    if not minimum <= value <= maximum:
        raise WorkflowError(
            f"{name} must be between {minimum} and {maximum}, got {value}", input_name=name
        )
    return value
