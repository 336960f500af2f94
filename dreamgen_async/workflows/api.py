"""Users' API-format workflows: load, validate, patch. Pure but for reading one file.

A :class:`Workflow` is a user's exported API-format workflow (``workflow_api.json``),
validated and patchable by node id, title or class type (``wf.patch("KSampler.seed", 42)``).
:func:`load_workflow` reads one JSON file synchronously (the only I/O here).
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeAlias

from dreamgen_async.errors import UIWorkflowError, WorkflowError
from dreamgen_async.workflows.graph import (
    MAX_SEED,
    OUTPUT_NODE_CLASSES,
    InputValue,
    Output,
    _check_int,
    _check_text,
    _encode_literal,
    _id_sort_key,
    _is_link,
    _quoted,
)
from dreamgen_async.workflows.ui import convert_ui_workflow, is_ui_workflow

__all__ = ["Workflow", "load_workflow", "parse_set_assignment"]

_UI_EXPORT_HINT = (
    "ComfyUI's HTTP API only accepts the API format. In ComfyUI, use the menu "
    "Workflow → Export (API) (in older versions: enable 'Dev mode options' in Settings, "
    "then 'Save (API Format)'); it saves a workflow_api.json file - load that one instead. "
    "Or let dreamgen_async convert it: pass the server's node definitions "
    "(load_workflow(path, object_info=...), or load_workflow_from_server(path, client))."
)


# --------------------------------------------------------------------------- user workflows


def _validate_api(data: object, *, source: str) -> dict[str, dict[str, Any]]:
    """Check that ``data`` is an API-format graph; return it (not copied)."""
    where = f"{source}: " if source else ""
    if not isinstance(data, dict):
        raise WorkflowError(f"{where}a workflow is a JSON object, not {type(data).__name__}")
    if isinstance(data.get("nodes"), list) and isinstance(data.get("links"), list):
        raise UIWorkflowError(
            f"{where}this is a UI-format workflow (it has 'nodes' and 'links' lists). "
            + _UI_EXPORT_HINT
        )
    if not data:
        raise WorkflowError(f"{where}the workflow has no nodes")
    for node_id, node in data.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            hint = ""
            if node_id == "prompt" and isinstance(node, dict):
                hint = " (this looks like a POST /prompt body: pass its 'prompt' value)"
            raise WorkflowError(
                f"{where}node {node_id!r} has no 'class_type' string{hint}", node_id=str(node_id)
            )
        if not isinstance(node.get("inputs", {}), dict):
            raise WorkflowError(
                f"{where}node {node_id!r} ({node['class_type']}): 'inputs' must be an object",
                node_id=node_id,
            )
        node.setdefault("inputs", {})
    for node_id, node in data.items():
        for name, value in node["inputs"].items():
            if _is_link(value) and value[0] not in data:
                raise WorkflowError(
                    f"{where}node {node_id} ({node['class_type']}) input {name!r} links to "
                    f"node {value[0]!r}, which is not in the workflow",
                    node_id=node_id,
                    input_name=name,
                )
    return data


class Workflow:
    """A user's API-format workflow (``workflow_api.json``), validated and patchable.

    Nodes are addressed by id (``"3"``), by title (``_meta.title``, e.g. ``"Positive
    Prompt"``) or by class type (``"KSampler"``). The workflow owns a private copy of the
    data it was given; :meth:`to_api` hands out copies.

    Example:
        >>> wf = Workflow.from_dict({
        ...     "3": {"class_type": "KSampler", "inputs": {"seed": 1}},
        ...     "9": {"class_type": "SaveImage", "inputs": {"images": ["3", 0]}},
        ... })
        >>> wf.patch("KSampler.seed", 42)
        1
        >>> wf.output_node_ids()
        ('9',)
    """

    def __init__(self, api: Mapping[str, Any], *, source: str = "") -> None:
        """Validate and copy an API-format graph.

        Args:
            api: ``{node_id: {"class_type", "inputs", "_meta"?}}``.
            source: Where it came from (a file name), for error messages.

        Raises:
            UIWorkflowError: ``api`` is a UI-format export (``nodes`` and ``links`` lists).
            WorkflowError: A node lacks ``class_type`` / ``inputs``, or a link is dangling.
        """
        data = copy.deepcopy(dict(api)) if isinstance(api, Mapping) else api
        self._nodes = _validate_api(data, source=source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Workflow:
        """A workflow from an API-format mapping (deep-copied). See :meth:`__init__`."""
        return cls(data)

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "") -> Workflow:
        """A workflow from API-format JSON text.

        Raises:
            WorkflowError: The text is not JSON, or not an API-format workflow.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            where = f"{source}: " if source else ""
            raise WorkflowError(f"{where}not valid JSON: {exc}") from exc
        return cls(data, source=source)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, object_info: ObjectInfoSource | None = None
    ) -> Workflow:
        """Read a workflow file; see :func:`load_workflow`."""
        return load_workflow(path, object_info=object_info)

    # -- reading ------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes

    def __repr__(self) -> str:
        return f"<Workflow with {len(self._nodes)} nodes>"

    @property
    def node_ids(self) -> tuple[str, ...]:
        """Every node id, numerically sorted."""
        return tuple(sorted(self._nodes, key=_id_sort_key))

    def class_type(self, node_id: str) -> str:
        """The class type of a node."""
        return str(self._node(node_id)["class_type"])

    def title(self, node_id: str) -> str | None:
        """The ``_meta.title`` of a node, if it has one."""
        meta = self._node(node_id).get("_meta")
        title = meta.get("title") if isinstance(meta, dict) else None
        return title if isinstance(title, str) else None

    def get(self, node_id: str, input_name: str) -> Any:
        """A copy of one input value (a link reads as ``[node_id, index]``).

        Raises:
            WorkflowError: No such node, or no such input on it.
        """
        return copy.deepcopy(self._inputs(node_id, input_name)[input_name])

    def nodes_by_title(self, title: str) -> list[str]:
        """The ids of the nodes whose ``_meta.title`` is ``title`` (maybe none)."""
        return [i for i in self.node_ids if self.title(i) == title]

    def nodes_by_class(self, class_type: str) -> list[str]:
        """The ids of the nodes of class ``class_type`` (maybe none)."""
        return [i for i in self.node_ids if self._nodes[i]["class_type"] == class_type]

    def output_node_ids(self) -> tuple[str, ...]:
        """The ids of the image output nodes (``SaveImage``, ``PreviewImage``)."""
        return tuple(
            i for i in self.node_ids if self._nodes[i]["class_type"] in OUTPUT_NODE_CLASSES
        )

    def to_api(self) -> dict[str, Any]:
        """A deep copy of the graph in API format, ready for ``POST /prompt``."""
        return copy.deepcopy(self._nodes)

    # -- patching -----------------------------------------------------------------------

    def set(
        self, node_id: str, input_name: str, value: InputValue, *, create: bool = False
    ) -> None:
        """Set one input of one node.

        Lists that are links (``[node_id, index]``) stay links and must point to an existing
        node; any other list is wrapped as ``{"__value__": [...]}``. An :class:`Output`
        handle becomes a link.

        Args:
            node_id: The node's id.
            input_name: The input to set.
            value: The new value.
            create: Allow adding an input the node does not have yet (by default that is
                an error, which catches typos such as ``"sead"``).

        Raises:
            WorkflowError: No such node or input, or a link to a missing node.
        """
        inputs = self._inputs(node_id, None if create else input_name)
        link = value.to_api() if isinstance(value, Output) else value
        if _is_link(link):
            if link[0] not in self._nodes:
                raise WorkflowError(
                    f"node {node_id} input {input_name!r} cannot link to node {link[0]!r}, "
                    "which is not in the workflow",
                    node_id=node_id,
                    input_name=input_name,
                )
            inputs[input_name] = list(link)
        else:
            inputs[input_name] = _encode_literal(value, node_id=node_id, input_name=input_name)

    def set_by_title(self, title: str, input_name: str, value: InputValue) -> int:
        """Set an input on every node titled ``title``; return how many were set.

        Raises:
            WorkflowError: No node has that title (the message lists the titles there are).
        """
        ids = self.nodes_by_title(title)
        if not ids:
            titles = sorted({t for i in self.node_ids if (t := self.title(i)) is not None})
            raise WorkflowError(
                f"no node titled {title!r}; titles in this workflow: {_quoted(titles)}"
            )
        return self._set_all(ids, input_name, value)

    def set_by_class(self, class_type: str, input_name: str, value: InputValue) -> int:
        """Set an input on every node of class ``class_type``; return how many were set.

        Raises:
            WorkflowError: No node has that class (the message lists the classes there are).
        """
        ids = self.nodes_by_class(class_type)
        if not ids:
            raise WorkflowError(
                f"no node of class {class_type!r}; classes in this workflow: "
                f"{_quoted(self._class_types())}"
            )
        return self._set_all(ids, input_name, value)

    def replace_image(self, name: str) -> int:
        """Point every ``LoadImage`` node at ``name`` (a server-side name, e.g. from upload).

        Returns:
            How many nodes were changed.

        Raises:
            WorkflowError: ``name`` is blank, or the workflow has no ``LoadImage`` node.
        """
        _check_text(name, "image")
        return self.set_by_class("LoadImage", "image", name)

    def set_seed(self, seed: int) -> int:
        """Set every literal ``seed`` / ``noise_seed`` input (KSampler, KSamplerAdvanced...).

        Seeds fed by a link are left alone.

        Returns:
            How many inputs were changed.

        Raises:
            WorkflowError: The seed is out of range, or no node has a literal seed input.
        """
        seed = _check_int(seed, "seed", minimum=0, maximum=MAX_SEED)
        count = 0
        for node in self._nodes.values():
            for name in ("seed", "noise_seed"):
                if name in node["inputs"] and not _is_link(node["inputs"][name]):
                    node["inputs"][name] = seed
                    count += 1
        if not count:
            raise WorkflowError("no node in this workflow has a seed input", input_name="seed")
        return count

    def patch(self, target: str, value: InputValue) -> int:
        """Set ``selector.input`` to ``value``, the selector being a node id, title or class.

        ``"3.seed"`` sets node 3; ``"KSampler.seed"`` every KSampler;
        ``"Positive Prompt.text"`` every node with that title. An id wins; otherwise every
        node whose title or class type is the selector is set (see :meth:`select`).

        Returns:
            How many nodes were changed.

        Raises:
            WorkflowError: A malformed target, or a selector matching nothing (the message
                lists the ids, titles and classes there are).
        """
        selector, input_name = _split_target(target)
        return self._set_all(self.select(selector), input_name, value)

    def apply_assignment(self, assignment: str) -> int:
        """Apply a CLI-style ``selector.input=value`` (see :func:`parse_set_assignment`).

        When every selected input currently holds a string, the value is kept as the raw
        text (so ``"Positive Prompt.text=42"`` sets the text ``"42"``).

        Returns:
            How many nodes were changed.
        """
        selector, input_name, value = parse_set_assignment(assignment)
        ids = self.select(selector)
        current = [self._inputs(i, input_name)[input_name] for i in ids]
        if not isinstance(value, str) and all(isinstance(v, str) for v in current):
            value = assignment.partition("=")[2]
        return self._set_all(ids, input_name, value)

    def select(self, selector: str) -> list[str]:
        """The ids a selector names: a node id, else every node with that title or class type.

        ``"KSampler"`` thus names every KSampler, including one whose title is still the
        default ``"KSampler"``.

        Raises:
            WorkflowError: Nothing matches (the message lists what there is).
        """
        if selector in self._nodes:
            return [selector]
        ids = set(self.nodes_by_title(selector)) | set(self.nodes_by_class(selector))
        if ids:
            return sorted(ids, key=_id_sort_key)
        titles = sorted({t for i in self.node_ids if (t := self.title(i)) is not None})
        ids_text, titles_text = _quoted(list(self.node_ids)), _quoted(titles)
        raise WorkflowError(
            f"no node with id, title or class type {selector!r}; ids: {ids_text}; "
            f"titles: {titles_text}; classes: {_quoted(self._class_types())}"
        )

    # -- internals ----------------------------------------------------------------------

    def _node(self, node_id: str) -> dict[str, Any]:
        try:
            return self._nodes[node_id]
        except KeyError:
            raise WorkflowError(
                f"no node {node_id!r} in this workflow; its ids: {_quoted(list(self.node_ids))}",
                node_id=node_id,
            ) from None

    def _inputs(self, node_id: str, input_name: str | None) -> dict[str, Any]:
        """The node's inputs dict; with ``input_name``, check that input exists."""
        node = self._node(node_id)
        inputs: dict[str, Any] = node["inputs"]
        if input_name is not None and input_name not in inputs:
            raise WorkflowError(
                f"node {node_id} ({node['class_type']}) has no input {input_name!r}; "
                f"its inputs: {_quoted(list(inputs))}",
                node_id=node_id,
                input_name=input_name,
            )
        return inputs

    def _set_all(self, ids: list[str], input_name: str, value: InputValue) -> int:
        for node_id in ids:  # check them all first: all or nothing
            self._inputs(node_id, input_name)
        for node_id in ids:
            self.set(node_id, input_name, value)
        return len(ids)

    def _class_types(self) -> list[str]:
        return sorted({str(node["class_type"]) for node in self._nodes.values()})


WorkflowSource: TypeAlias = "str | os.PathLike[str] | Mapping[str, Any]"
ObjectInfoSource: TypeAlias = "Mapping[str, Any] | str | os.PathLike[str]"


def load_workflow(
    source: WorkflowSource, *, object_info: ObjectInfoSource | None = None
) -> Workflow:
    """Load a workflow: an API-format one, or a UI-format one converted for the server.

    ``source`` is a file path or the already-parsed JSON. A UI-format workflow (the file
    ComfyUI saves, with ``nodes`` and ``links``) needs ``object_info``: the server's node
    definitions (``await client.object_info()``, or the path of a saved copy of that JSON);
    it is then converted as ComfyUI's frontend would (see :mod:`dreamgen_async.workflows.ui`).

    Reading files is this module's only I/O (synchronous); call it before entering the event
    loop, or through ``asyncio.to_thread`` from inside it.

    Raises:
        UIWorkflowError: A UI-format workflow and no ``object_info``; the message says how to
            export the API format instead.
        WorkflowError: A file cannot be read, is not JSON, or is not a valid workflow; or a
            UI-format node cannot be converted (its class is not on the server).
    """
    if isinstance(source, Mapping):
        data: Any = source
        name = ""
    else:
        name = str(Path(source))
        data = _read_json(source, "workflow file")
    if object_info is not None and is_ui_workflow(data):
        info = object_info
        if not isinstance(info, Mapping):
            info = _read_json(info, "object_info file")
            if not isinstance(info, Mapping):
                raise WorkflowError(f"{str(object_info)!r} is not an object_info JSON object")
        return Workflow(convert_ui_workflow(data, info, source=name), source=name)
    return Workflow(data, source=name)


def _read_json(path: str | os.PathLike[str], what: str) -> Any:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkflowError(f"cannot read {what} {str(file)!r}: {exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkflowError(f"{file}: not valid JSON: {exc}") from exc


def _split_target(target: str) -> tuple[str, str]:
    """``"Positive Prompt.text"`` → ``("Positive Prompt", "text")`` (split at the last dot)."""
    selector, dot, input_name = target.rpartition(".")
    if not dot or not selector.strip() or not input_name.strip():
        raise WorkflowError(
            f"{target!r} is not 'node.input' (node = id, title or class type, "
            "e.g. '3.seed' or 'KSampler.steps')"
        )
    return selector.strip(), input_name.strip()


def parse_set_assignment(text: str) -> tuple[str, str, Any]:
    """Parse a CLI ``--set`` assignment: ``"3.seed=42"`` → ``("3", "seed", 42)``.

    The value is read as JSON when it is JSON (numbers, ``true``/``false``, ``null``,
    lists, objects, ``"quoted strings"``), else kept as text: ``KSampler.cfg=3.5`` gives
    ``3.5``, ``Positive Prompt.text=a red fox`` gives ``"a red fox"``. ``True``/``False`` in
    any case are booleans too.

    Raises:
        WorkflowError: No ``=``, or the left side is not ``node.input``.
    """
    target, equals, raw = text.partition("=")
    if not equals:
        raise WorkflowError(f"{text!r} is not an assignment: expected 'node.input=value'")
    selector, input_name = _split_target(target)
    return selector, input_name, _parse_value(raw)


def _parse_value(raw: str) -> Any:
    lowered = raw.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    if isinstance(value, float) and not math.isfinite(value):
        return raw  # "NaN", "Infinity": keep the text
    return value
