"""UI-format workflows (the file ComfyUI saves) -> the API graph ComfyUI's frontend queues.

Pure: the node definitions (``GET /object_info``) are passed in as a mapping. The rules
follow the ComfyUI frontend's ``graphToPrompt`` and its ``ExecutableNodeDTO`` (read from
its public source; this is an independent implementation):

* **Widget values** (``widgets_values``) are matched to inputs in the order the node
  definition lists its widget inputs (required, then optional; ``input_order`` when the
  server sends it). Inputs of type ``INT``, ``FLOAT``, ``STRING``, ``BOOLEAN``, ``COMBO``
  or a list of choices are widgets unless ``forceInput`` is set. The extra value of a seed's
  "control after generate" widget, and of an upload button, is stored in the file but not
  sent.
* **Links** override widget values (a widget converted to an input). A link is resolved to
  the node that really produces the value: through ``Reroute`` nodes, through bypassed
  nodes (mode 4: the first input whose type fits, the same slot preferred), out of and into
  subgraphs. A ``PrimitiveNode`` gives its value to the inputs it feeds.
* **Muted** (mode 2) and **bypassed** (mode 4) nodes are not sent; nor are the contents of
  a muted or bypassed subgraph. An input linked to a node that is not sent is dropped.
* **Subgraphs** are expanded: a node inside subgraph instance ``12`` gets the id ``"12:5"``
  (nested: ``"12:7:5"``). A subgraph input that is not connected on the instance takes the
  instance's promoted widget value (``widgets_values`` of the instance, or, with
  ``proxyWidgets``, the inner widget's own value).
* **Group nodes** (legacy ``extra.groupNodes``) are expanded the same way, inner nodes
  getting ``"<group node id>:<index>"``.
* Notes, reroutes, primitives and subgraph instances themselves are not sent (they only
  exist in the editor).
* Text widgets marked ``dynamicPrompts`` lose their comments and get their ``{a|b}``
  choices made (:func:`process_dynamic_prompt`), as the frontend does when queueing.

A node class the server does not have (and that is neither muted nor bypassed) cannot be
converted: :class:`~dreamgen_async.errors.WorkflowError` names the node id and class.
"""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dreamgen_async.errors import WorkflowError

__all__ = [
    "FRONTEND_ONLY_NODES",
    "convert_ui_workflow",
    "is_ui_workflow",
    "process_dynamic_prompt",
    "widget_names",
]

#: Node types that exist only in the editor: never sent, whatever the server has.
FRONTEND_ONLY_NODES = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})

_MUTED = 2
_BYPASSED = 4
_SUBGRAPH_INPUT_NODE = -10
_SUBGRAPH_OUTPUT_NODE = -20
_WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
_CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize"})
_UPLOAD_FLAGS = ("image_upload", "video_upload", "animated_image_upload", "audio_upload")
_GROUP_PREFIX = re.compile(r"^workflow[>/]")


def is_ui_workflow(data: object) -> bool:
    """Whether ``data`` is a UI-format workflow (``nodes`` and ``links`` lists)."""
    return (
        isinstance(data, Mapping)
        and isinstance(data.get("nodes"), list)
        and isinstance(data.get("links"), list)
    )


# --------------------------------------------------------------------------- node definitions


@dataclass(frozen=True)
class _Widget:
    """One widget of a node, in ``widgets_values`` order."""

    name: str
    extra: str | None = None  # "control" or "upload": stored, never sent
    default: Any = None  # the value of a widget the file has no value for
    dynamic: bool = False  # a text widget whose {a|b} choices are made at queue time
    kind: str = ""  # INT, FLOAT, STRING, BOOLEAN or COMBO (for realigning stale values)
    choices: tuple[Any, ...] = ()  # a combo's choices
    low: float | None = None  # a number's min
    high: float | None = None  # a number's max


def _input_specs(class_def: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``(name, spec)`` of the required then optional inputs, in the server's order."""
    inputs = class_def.get("input") or {}
    order = class_def.get("input_order") or {}
    result: list[tuple[str, Any]] = []
    for category in ("required", "optional"):
        specs = inputs.get(category) or {}
        names = order.get(category) or list(specs)
        result.extend((name, specs[name]) for name in names if name in specs)
    return result


def _spec_type_and_options(spec: Any) -> tuple[Any, Mapping[str, Any]]:
    if isinstance(spec, list | tuple) and spec:
        options = spec[1] if len(spec) > 1 and isinstance(spec[1], Mapping) else {}
        return spec[0], options
    return spec, {}


def _widgets(class_def: Mapping[str, Any]) -> list[_Widget]:
    widgets: list[_Widget] = []
    uploads: list[_Widget] = []
    for name, spec in _input_specs(class_def):
        kind, options = _spec_type_and_options(spec)
        is_combo = isinstance(kind, list) or kind == "COMBO"
        if not (is_combo or kind in _WIDGET_TYPES) or options.get("forceInput"):
            continue
        default = options.get("default")
        choices = (
            (kind if isinstance(kind, list) else options.get("options") or []) if is_combo else []
        )
        if default is None and is_combo:
            default = choices[0] if choices else None
        widgets.append(
            _Widget(
                name, None, default, bool(options.get("dynamicPrompts")),
                "COMBO" if is_combo else str(kind), tuple(choices),
                _number(options.get("min")), _number(options.get("max")),
            )
        )  # fmt: skip
        if options.get("control_after_generate"):
            widgets.append(_Widget(name, "control"))
        elif kind == "INT" and name in ("seed", "noise_seed"):
            widgets.append(_Widget(name, "maybe-control"))
        if any(options.get(flag) for flag in _UPLOAD_FLAGS):
            uploads.append(_Widget("upload", "upload"))
    return widgets + uploads


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


#: The cost of a stored value that is out of its widget's range, of a widget left at its
#: default, of a stored value dropped; a value of the wrong type never matches.
_OUT_OF_RANGE, _SKIP = 2, 1
_NO_MATCH = 1_000


def _fit(widget: _Widget, value: Any) -> int:
    """0 if ``value`` suits ``widget``, :data:`_OUT_OF_RANGE`, or :data:`_NO_MATCH`."""
    if widget.extra == "upload":
        return 0
    if widget.extra is not None:  # a control slot takes a control word only
        return 0 if isinstance(value, str) and value in _CONTROL_VALUES else _NO_MATCH
    kind = widget.kind
    if kind == "COMBO":  # a file name the server lacks still is a file name
        if value in widget.choices:
            return 0
        return 0 if isinstance(value, str) and value not in _CONTROL_VALUES else _NO_MATCH
    if kind == "STRING":  # custom text widgets store lists and objects too
        return _NO_MATCH if isinstance(value, str) and value in _CONTROL_VALUES else 0
    if kind == "BOOLEAN":
        return 0 if isinstance(value, bool | int) else _NO_MATCH
    if kind in ("INT", "FLOAT"):
        number = _number(value)
        if number is None or (kind == "INT" and not number.is_integer()):
            return _NO_MATCH
        low, high = widget.low, widget.high
        in_range = (low is None or number >= low) and (high is None or number <= high)
        return 0 if in_range else _OUT_OF_RANGE
    return 0  # a widget type this converter does not know: anything goes


def _positional(
    widgets: list[_Widget], stored: list[Any], controls: dict[str, str] | None = None
) -> tuple[dict[str, Any], int]:
    """The frontend's positional matching (a seed's control word skipped if present).

    Returns the values and how badly they fit (0: every value suits its widget); the
    control words found go into ``controls`` (by the input they control).
    """
    values: dict[str, Any] = {}
    cost = 0
    position = 0
    for widget in widgets:
        if position >= len(stored):
            if widget.extra is None:
                values[widget.name] = widget.default
            continue
        value = stored[position]
        is_control = isinstance(value, str) and value in _CONTROL_VALUES
        if widget.extra in ("control", "maybe-control") and is_control and controls is not None:
            controls[widget.name] = value
        if widget.extra == "maybe-control":
            if is_control:
                position += 1
            continue
        position += 1
        if widget.extra is None:
            values[widget.name] = value
            cost += _fit(widget, value)
    return values, cost


def _realigned(
    widgets: list[_Widget], stored: list[Any], controls: dict[str, str] | None = None
) -> tuple[dict[str, Any], int]:
    """The cheapest alignment of stored values to widgets, for a node whose definition
    changed since the file was saved (a widget added, removed or moved).

    Each value either goes to the next widget (free when it suits it) or is dropped (a
    widget that no longer exists); each widget either takes the next value or keeps its
    default (a widget added since). Ties go to the earlier match.
    """
    n, m = len(stored), len(widgets)
    best = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n, -1, -1):
        for j in range(m, -1, -1):
            if i == n and j == m:
                continue
            options = []
            if i < n and j < m:
                options.append(_fit(widgets[j], stored[i]) + best[i + 1][j + 1])
            if j < m:
                options.append((0 if widgets[j].extra else _SKIP) + best[i][j + 1])
            if i < n:
                options.append(_SKIP + best[i + 1][j])
            best[i][j] = min(options)
    values: dict[str, Any] = {}
    i = j = 0
    while j < m:
        widget = widgets[j]
        if i < n and _fit(widget, stored[i]) + best[i + 1][j + 1] == best[i][j]:
            if widget.extra is None:
                values[widget.name] = stored[i]
            elif widget.extra != "upload" and controls is not None:
                controls[widget.name] = stored[i]
            i, j = i + 1, j + 1
        elif (0 if widget.extra else _SKIP) + best[i][j + 1] == best[i][j]:
            if widget.extra is None:
                values[widget.name] = widget.default
            j += 1
        else:
            i += 1
    return values, best[0][0]


def widget_names(class_def: Mapping[str, Any]) -> list[str]:
    """The names of the inputs a node class shows as widgets, in ``widgets_values`` order.

    Extra stored values (a seed's "control after generate", an upload button) are left out.
    """
    return [w.name for w in _widgets(class_def) if w.extra is None]


def _widget_values(
    node: Mapping[str, Any],
    class_def: Mapping[str, Any],
    rng: Callable[[], float] | None = None,
    controls: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The inputs a node's widgets give, by input name.

    Stored values are matched in order; a widget the file has no value for (a node saved
    by an older version) gets its definition's default, as the frontend creates it. With
    ``rng``, text widgets marked ``dynamicPrompts`` are processed (see
    :func:`process_dynamic_prompt`), as the frontend does when queueing. The "control after
    generate" words stored (``randomize``...) go into ``controls``, by the input they control.
    """
    widgets = _widgets(class_def)
    stored = node.get("widgets_values")
    values: dict[str, Any] = {}
    if isinstance(stored, Mapping):  # some nodes store a dict by widget name
        for widget in widgets:
            if widget.extra is None:
                values[widget.name] = stored.get(widget.name, widget.default)
    else:
        stored_list = stored if isinstance(stored, list) else []
        found: dict[str, str] = {}
        values, cost = _positional(widgets, stored_list, found)
        if cost:
            again: dict[str, str] = {}
            realigned, better = _realigned(widgets, stored_list, again)
            if better < cost:
                values, found = realigned, again
        if controls is not None:
            controls.update(found)
    if rng is not None:
        for widget in widgets:
            if widget.dynamic and isinstance(values.get(widget.name), str):
                values[widget.name] = process_dynamic_prompt(values[widget.name], rng)
    return values


_BLOCK_COMMENT = re.compile(r"/\*.*?\*/", re.S)
_LINE_COMMENT = re.compile(r"//[^\n]*")


def process_dynamic_prompt(text: str, rng: Callable[[], float] = random.random) -> str:
    """What the frontend sends for a ``dynamicPrompts`` text: comments out, choices made.

    ``/* ... */`` and ``// ...`` comments are removed; each ``{a|b|c}`` group (nested groups
    too, an unclosed one running to the end) becomes one of its options, option
    ``floor(rng() * count)``; a backslash makes the next character literal (``\\{``).

    Example:
        >>> process_dynamic_prompt("a {red|blue} fox // draft", lambda: 0.9)
        'a blue fox '
    """
    text = _LINE_COMMENT.sub("", _BLOCK_COMMENT.sub("", text))
    out: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            out.append(text[index + 1])
            index += 2
        elif char == "{":
            choice, index = _choose_group(text, index + 1, rng)
            out.append(choice)
        else:
            out.append(char)
            index += 1
    return "".join(out)


def _choose_group(text: str, index: int, rng: Callable[[], float]) -> tuple[str, int]:
    """Parse a ``{...}`` group from just after its ``{``; return the chosen option."""
    options: list[list[str]] = [[]]
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            options[-1].append(text[index + 1])
            index += 2
        elif char == "{":
            choice, index = _choose_group(text, index + 1, rng)
            options[-1].append(choice)
        elif char == "|":
            options.append([])
            index += 1
        elif char == "}":
            index += 1
            break
        else:
            options[-1].append(char)
            index += 1
    pick = min(int(rng() * len(options)), len(options) - 1)
    return "".join(options[pick]), index


def _api_value(value: Any) -> Any:
    """Lists are links in the API format: a list widget value is wrapped."""
    return {"__value__": copy.deepcopy(value)} if isinstance(value, list) else value


# --------------------------------------------------------------------------- the graph


@dataclass(frozen=True)
class _Link:
    origin_id: int | str
    origin_slot: int
    target_id: int | str
    target_slot: int
    type: Any


@dataclass
class _Graph:
    """The root graph or one subgraph definition."""

    nodes: dict[str, dict[str, Any]]
    links: dict[str, _Link]
    inputs: list[dict[str, Any]] = field(default_factory=list)  # subgraph inputs
    outputs: list[dict[str, Any]] = field(default_factory=list)  # subgraph outputs
    name: str = ""


def _key(node_id: object) -> str:
    return str(node_id)


def _parse_links(raw: object, where: str) -> dict[str, _Link]:
    links: dict[str, _Link] = {}
    if not isinstance(raw, list):
        return links
    for item in raw:
        if isinstance(item, list) and len(item) >= 5:
            link_id, origin, origin_slot, target, target_slot = item[:5]
            link_type = item[5] if len(item) > 5 else "*"
        elif isinstance(item, Mapping):
            link_id = item.get("id")
            origin, origin_slot = item.get("origin_id"), item.get("origin_slot")
            target, target_slot = item.get("target_id"), item.get("target_slot")
            link_type = item.get("type", "*")
        else:
            raise WorkflowError(f"{where}: a link is neither a list nor an object: {item!r}")
        links[_key(link_id)] = _Link(origin, int(origin_slot), target, int(target_slot), link_type)
    return links


def _parse_graph(data: Mapping[str, Any], where: str) -> _Graph:
    nodes: dict[str, dict[str, Any]] = {}
    for node in data.get("nodes") or []:
        if not isinstance(node, Mapping) or "id" not in node or "type" not in node:
            raise WorkflowError(f"{where}: a node has no 'id' or 'type': {node!r}"[:300])
        nodes[_key(node["id"])] = dict(node)
    return _Graph(
        nodes,
        _parse_links(data.get("links"), where),
        list(data.get("inputs") or []),
        list(data.get("outputs") or []),
        str(data.get("name") or ""),
    )


@dataclass
class _Exec:
    """One node as it will be executed: a node of some graph, at some subgraph path."""

    id: str
    node: dict[str, Any]
    graph: _Graph
    path: tuple[str, ...]
    instance: _Exec | None  # the subgraph instance holding this node
    subgraph: _Graph | None = None  # set when this node is a subgraph instance
    group: _GroupDef | None = None  # set when this node is a legacy group node
    group_node: _Exec | None = None  # the group node holding this node

    @property
    def type(self) -> str:
        return str(self.node["type"])

    @property
    def mode(self) -> int:
        mode = self.node.get("mode", 0)
        return mode if isinstance(mode, int) else 0

    @property
    def inputs(self) -> list[dict[str, Any]]:
        return list(self.node.get("inputs") or [])

    @property
    def outputs(self) -> list[dict[str, Any]]:
        return list(self.node.get("outputs") or [])


@dataclass(frozen=True)
class _Value:
    """A resolved input that is a value, not a link (a primitive, a promoted widget)."""

    value: Any


@dataclass(frozen=True)
class _Origin:
    """A resolved input that is a link to ``[exec_id, slot]``."""

    exec_id: str
    slot: int


_Resolved = _Value | _Origin | None


def _types_fit(a: Any, b: Any) -> bool:
    """LiteGraph's connection check: equal types, ``*``/empty matches all, lists by item."""
    if a in ("", "*", 0, None) or b in ("", "*", 0, None) or a == b:
        return True
    left, right = str(a).lower(), str(b).lower()
    if "," not in left and "," not in right:
        return left == right
    return any(x == y for x in left.split(",") for y in right.split(","))


class _Converter:
    def __init__(
        self,
        data: Mapping[str, Any],
        object_info: Mapping[str, Any],
        source: str,
        rng: Callable[[], float] | None,
        controls: bool = False,
    ) -> None:
        self.where = source or "workflow"
        self.rng = rng
        self.controls = controls
        self.object_info = object_info
        self.root = _parse_graph(data, self.where)
        self.subgraphs: dict[str, _Graph] = {}
        self._collect_subgraphs(data)
        self.groups = _parse_group_nodes(data, self.where)
        self.execs: dict[str, _Exec] = {}
        self.order: list[_Exec] = []
        self.unlinked: set[tuple[str, str]] = set()  # (node, input) left unconnected

    def _collect_subgraphs(self, data: Mapping[str, Any]) -> None:
        definitions = data.get("definitions") or {}
        for sub in definitions.get("subgraphs") or []:
            if isinstance(sub, Mapping) and "id" in sub:
                self.subgraphs[str(sub["id"])] = _parse_graph(sub, f"{self.where} subgraph")
                self._collect_subgraphs(sub)

    # -- flattening --------------------------------------------------------------------

    def flatten(self, graph: _Graph, path: tuple[str, ...], instance: _Exec | None) -> None:
        for key, node in graph.nodes.items():
            exec_id = ":".join((*path, key))
            node_type = str(node["type"])
            ex = _Exec(exec_id, node, graph, path, instance)
            ex.subgraph = self.subgraphs.get(node_type)
            ex.group = self.groups.get(_GROUP_PREFIX.sub("", node_type))
            if ex.group is not None and not _GROUP_PREFIX.match(node_type):
                ex.group = None
            self.execs[exec_id] = ex
            if ex.mode in (_MUTED, _BYPASSED):
                self.order.append(ex)
                continue
            if ex.subgraph is not None:
                if len(path) > 32:
                    raise WorkflowError(f"{self.where}: subgraphs nested too deep at {exec_id}")
                self.order.append(ex)
                self.flatten(ex.subgraph, (*path, key), ex)
            elif ex.group is not None:
                self.order.append(ex)
                self._flatten_group(ex)
            else:
                self.order.append(ex)

    # -- link resolution ---------------------------------------------------------------

    def resolve_input(self, ex: _Exec, slot: int, visited: set[tuple[str, str, int]]) -> _Resolved:
        key = (ex.id, "I", slot)
        if key in visited:
            raise WorkflowError(
                f"{self.where}: node {ex.id} ({ex.type}) input {slot} is part of a link cycle",
                node_id=ex.id,
            )
        visited.add(key)
        inputs = ex.inputs
        if slot >= len(inputs):
            return None
        link_id = inputs[slot].get("link")
        if link_id is None:
            return None
        link = ex.graph.links.get(_key(link_id))
        if link is None:
            raise WorkflowError(
                f"{self.where}: node {ex.id} ({ex.type}) input "
                f"{inputs[slot].get('name')!r} uses link {link_id}, which is not in the graph",
                node_id=ex.id,
                input_name=str(inputs[slot].get("name")),
            )
        if ex.instance is not None and _key(link.origin_id) == str(_SUBGRAPH_INPUT_NODE):
            return self._resolve_subgraph_input(ex.instance, link.origin_slot, visited)
        origin_key = _key(link.origin_id)
        if ex.group_node is not None and origin_key.startswith(".."):  # out of a group node
            origin = self.execs.get(":".join((*ex.group_node.path, origin_key[2:])))
        else:
            origin = self.execs.get(":".join((*ex.path, origin_key)))
        if origin is None:
            raise WorkflowError(
                f"{self.where}: node {ex.id} ({ex.type}) input {inputs[slot].get('name')!r} "
                f"links to node {link.origin_id}, which is not in the graph",
                node_id=ex.id,
                input_name=str(inputs[slot].get("name")),
            )
        return self.resolve_output(origin, link.origin_slot, inputs[slot].get("type"), visited)

    def resolve_output(
        self, ex: _Exec, slot: int, wanted: Any, visited: set[tuple[str, str, int]]
    ) -> _Resolved:
        key = (ex.id, "O", slot)
        if key in visited:
            raise WorkflowError(
                f"{self.where}: node {ex.id} ({ex.type}) output {slot} is part of a link cycle",
                node_id=ex.id,
            )
        visited.add(key)
        if ex.mode == _BYPASSED:
            index = self._bypass_slot(ex, slot, wanted)
            return None if index is None else self.resolve_input(ex, index, visited)
        if ex.mode == _MUTED:
            return _Origin(ex.id, slot)  # dropped later: a muted node is not sent
        if ex.subgraph is not None:
            return self._resolve_subgraph_output(ex, slot, wanted, visited)
        if ex.group is not None:
            return self._resolve_group_output(ex, slot, wanted, visited)
        if ex.type == "PrimitiveNode":
            stored = ex.node.get("widgets_values")
            if isinstance(stored, list) and stored:
                return _Value(stored[0])
            return None
        if ex.type in FRONTEND_ONLY_NODES:  # Reroute (and the like): pass the same slot on
            return self.resolve_input(ex, slot, visited) if slot < len(ex.inputs) else None
        return _Origin(ex.id, slot)

    def _bypass_slot(self, ex: _Exec, slot: int, wanted: Any) -> int | None:
        inputs = ex.inputs
        outputs = ex.outputs
        if wanted in ("*", ""):
            return slot if len(inputs) > slot else (0 if inputs else None)
        out_type = outputs[slot].get("type") if slot < len(outputs) else "*"
        if (
            slot < len(inputs)
            and _types_fit(inputs[slot].get("type"), out_type)
            and _types_fit(inputs[slot].get("type"), wanted)
        ):
            return slot
        for index, item in enumerate(inputs):
            if item.get("type") == wanted:
                return index
        for index, item in enumerate(inputs):
            if _types_fit(item.get("type"), out_type) and _types_fit(item.get("type"), wanted):
                return index
        return None

    def _resolve_subgraph_input(
        self, instance: _Exec, slot: int, visited: set[tuple[str, str, int]]
    ) -> _Resolved:
        assert instance.subgraph is not None
        sub_inputs = instance.subgraph.inputs
        if slot >= len(sub_inputs):
            return None
        name = sub_inputs[slot].get("name")
        outer_inputs = instance.inputs
        for index, item in enumerate(outer_inputs):
            if item.get("name") == name and item.get("link") is not None:
                return self.resolve_input(instance, index, visited)
        return self._promoted_value(instance, slot, str(name))

    def _promoted_value(self, instance: _Exec, slot: int, name: str) -> _Resolved:
        """The value of an unconnected subgraph input's promoted widget, if it has one.

        Three ways a saved instance holds it: ``properties.proxyWidgets`` (newer frontends:
        ``["-1", name]`` is the instance's own widget, its value in ``widgets_values``;
        ``[inner_id, widget]`` shows an inner widget, its value the inner one); else one
        ``widgets_values`` entry per subgraph input that feeds a widget, in input order
        (older frontends); else the first inner widget's value (a fresh promotion).
        """
        assert instance.subgraph is not None
        stored = instance.node.get("widgets_values")
        stored_list = stored if isinstance(stored, list) else []
        props = instance.node.get("properties") or {}
        proxy = props.get("proxyWidgets") if isinstance(props, Mapping) else None
        if isinstance(proxy, list):
            return self._proxied_value(instance, slot, name, proxy, stored_list)
        if stored_list:
            feeding = [
                index
                for index in range(len(instance.subgraph.inputs))
                if self._inner_widget_targets(instance.subgraph, index)
            ]
            if slot in feeding and feeding.index(slot) < len(stored_list):
                return _Value(stored_list[feeding.index(slot)])
            return None
        targets = self._inner_widget_targets(instance.subgraph, slot)
        return _Value(next(iter(targets.values()))) if targets else None

    def _proxied_value(
        self, instance: _Exec, slot: int, name: str, proxy: list[Any], stored: list[Any]
    ) -> _Resolved:
        """A promoted widget's value with ``proxyWidgets``, as the frontend restores it.

        ``widgets_values[i]`` belongs to ``proxyWidgets[i]`` (the same index, counting
        every entry), and only ``["-1", name]`` entries take it; a ``null`` there leaves the
        widget as created, with the inner widget's value. An inner ``[node, widget]``
        entry shows that inner widget, whose own value is sent.
        """
        assert instance.subgraph is not None
        targets = self._inner_widget_targets(instance.subgraph, slot)
        for index, entry in enumerate(proxy):
            if not isinstance(entry, list | tuple) or len(entry) < 2:
                continue
            node_id, widget = str(entry[0]), str(entry[1])
            if node_id == "-1" and widget == name:
                value = stored[index] if index < len(stored) else None
                if value is not None:
                    return _Value(value)
                return _Value(next(iter(targets.values()))) if targets else None
            if (node_id, widget) in targets:
                return _Value(targets[(node_id, widget)])
        return None

    def _inner_widget_targets(self, sub: _Graph, slot: int) -> dict[tuple[str, str], Any]:
        """The inner widgets a subgraph input feeds: ``{(node id, widget): its value}``."""
        targets: dict[tuple[str, str], Any] = {}
        if slot >= len(sub.inputs):
            return targets
        for link_id in sub.inputs[slot].get("linkIds") or []:
            link = sub.links.get(_key(link_id))
            node = None if link is None else sub.nodes.get(_key(link.target_id))
            if link is None or node is None:
                continue
            inputs = node.get("inputs") or []
            class_def = self.object_info.get(str(node["type"]))
            if link.target_slot >= len(inputs) or not isinstance(class_def, Mapping):
                continue
            input_name = str(inputs[link.target_slot].get("name"))
            values = _widget_values(node, class_def)
            if input_name in values:
                targets[(_key(node["id"]), input_name)] = values[input_name]
        return targets

    def _resolve_subgraph_output(
        self, ex: _Exec, slot: int, wanted: Any, visited: set[tuple[str, str, int]]
    ) -> _Resolved:
        assert ex.subgraph is not None
        outputs = ex.subgraph.outputs
        if slot >= len(outputs):
            return None
        link_ids = outputs[slot].get("linkIds") or []
        if not link_ids:
            return None
        link = ex.subgraph.links.get(_key(link_ids[0]))
        if link is None:
            return None
        if _key(link.origin_id) == str(_SUBGRAPH_INPUT_NODE):  # input wired straight out
            return self._resolve_subgraph_input(ex, link.origin_slot, visited)
        inner = self.execs.get(f"{ex.id}:{_key(link.origin_id)}")
        if inner is None:
            return None
        return self.resolve_output(inner, link.origin_slot, wanted, visited)

    # -- legacy group nodes ------------------------------------------------------------

    def _flatten_group(self, ex: _Exec) -> None:
        assert ex.group is not None
        graph = ex.group.graph_for(ex)
        for key, node in graph.nodes.items():
            inner = _Exec(f"{ex.id}:{key}", node, graph, (ex.id,), None, group_node=ex)
            self.execs[inner.id] = inner
            self.order.append(inner)

    def _resolve_group_output(
        self, ex: _Exec, slot: int, wanted: Any, visited: set[tuple[str, str, int]]
    ) -> _Resolved:
        assert ex.group is not None
        target = ex.group.output_source(slot)
        if target is None:
            return None
        inner = self.execs.get(f"{ex.id}:{target[0]}")
        if inner is None:
            return None
        return self.resolve_output(inner, target[1], wanted, visited)

    # -- serialising -------------------------------------------------------------------

    def convert(self) -> dict[str, Any]:
        self.flatten(self.root, (), None)
        output: dict[str, Any] = {}
        for ex in self.order:
            if ex.mode in (_MUTED, _BYPASSED) or ex.subgraph is not None or ex.group is not None:
                continue
            if ex.type in FRONTEND_ONLY_NODES:
                continue
            class_def = self.object_info.get(ex.type)
            if not isinstance(class_def, Mapping):
                raise WorkflowError(
                    f"{self.where}: node {ex.id} is a {ex.type!r}, a node class this server "
                    "does not have (a custom node that is not installed?)",
                    node_id=ex.id,
                )
            controls: dict[str, str] = {}
            widgets = _widget_values(ex.node, class_def, self.rng, controls)
            inputs = {name: _api_value(value) for name, value in widgets.items()}
            for slot, item in enumerate(ex.inputs):
                if item.get("link") is None:
                    if item.get("widget") is None:
                        self.unlinked.add((ex.id, str(item.get("name"))))
                    continue
                resolved = self.resolve_input(ex, slot, set())
                if resolved is None:
                    continue
                name = str(item.get("name"))
                if isinstance(resolved, _Value):
                    inputs[name] = _api_value(resolved.value)
                else:
                    inputs[name] = [resolved.exec_id, resolved.slot]
            title = ex.node.get("title") or class_def.get("display_name") or ex.type
            meta: dict[str, Any] = {"title": title}
            randomized = sorted(n for n, word in controls.items() if word == "randomize")
            if self.controls and randomized:
                meta["randomize"] = randomized
            output[ex.id] = {"inputs": inputs, "class_type": ex.type, "_meta": meta}
        for node in output.values():  # inputs linked to nodes that are not sent are dropped
            for name, value in list(node["inputs"].items()):
                if isinstance(value, list) and len(value) == 2 and value[0] not in output:
                    del node["inputs"][name]
        return output


# --------------------------------------------------------------------------- group nodes


@dataclass
class _GroupDef:
    """A legacy group node definition (``extra.groupNodes[name]``)."""

    name: str
    nodes: list[dict[str, Any]]
    links: list[list[Any]]
    external: list[list[Any]]

    def graph_for(self, ex: _Exec) -> _Graph:
        """The inner nodes of one group node instance, as a graph keyed by inner index.

        Inner links keep their inner ends; inputs fed from outside the group are re-linked
        to the instance's own input links (in the order the frontend numbers them).
        """
        nodes: dict[str, dict[str, Any]] = {}
        links: dict[str, _Link] = {}
        internal: set[tuple[int, int]] = set()
        for number, raw_link in enumerate(self.links):
            origin, origin_slot, target, target_slot = raw_link[:4]
            if origin is None or target is None:
                continue
            links[f"g{number}"] = _Link(origin, int(origin_slot), target, int(target_slot), "*")
            internal.add((int(target), int(target_slot)))
        outer_inputs = iter(ex.inputs)
        stored = ex.node.get("widgets_values")
        counts = [len(n.get("widgets_values") or []) for n in self.nodes]
        spread = isinstance(stored, list) and len(stored) == sum(counts)
        position = 0
        for number, inner in enumerate(self.nodes):
            index = int(inner.get("index", len(nodes)))
            node = copy.deepcopy(dict(inner))
            node["id"] = index
            node.setdefault("mode", 0)
            if spread and isinstance(stored, list) and counts[number]:
                node["widgets_values"] = list(stored[position : position + counts[number]])
            position += counts[number]
            new_inputs = []
            for slot, raw in enumerate(node.get("inputs") or []):
                item = dict(raw)
                if (index, slot) in internal:
                    link_key = next(
                        k
                        for k, v in links.items()
                        if _key(v.target_id) == str(index) and v.target_slot == slot
                    )
                    item["link"] = link_key
                else:
                    outer = next(outer_inputs, None)
                    item["link"] = None
                    if outer is not None and outer.get("link") is not None:
                        outer_link = ex.graph.links.get(_key(outer["link"]))
                        if outer_link is not None:
                            key = f"o{index}:{slot}"
                            links[key] = _Link(
                                f"..{_key(outer_link.origin_id)}",
                                outer_link.origin_slot,
                                index,
                                slot,
                                item.get("type", "*"),
                            )
                            item["link"] = key
                new_inputs.append(item)
            node["inputs"] = new_inputs
            nodes[str(index)] = node
        return _Graph(nodes, links, name=self.name)

    def output_source(self, slot: int) -> tuple[str, int] | None:
        """Which inner node and slot the group's output ``slot`` is."""
        visible: list[tuple[str, int]] = []
        linked = {(int(item[0]), int(item[1])) for item in self.links if item[0] is not None}
        external = {(int(item[0]), int(item[1])) for item in self.external}
        for inner in self.nodes:
            index = int(inner.get("index", 0))
            for out_slot, _ in enumerate(inner.get("outputs") or []):
                if (index, out_slot) in linked and (index, out_slot) not in external:
                    continue
                visible.append((str(index), out_slot))
        return visible[slot] if slot < len(visible) else None


def _parse_group_nodes(data: Mapping[str, Any], where: str) -> dict[str, _GroupDef]:
    groups = (data.get("extra") or {}).get("groupNodes") or {}
    result: dict[str, _GroupDef] = {}
    if not isinstance(groups, Mapping):
        return result
    for name, group in groups.items():
        if not isinstance(group, Mapping):
            raise WorkflowError(f"{where}: group node {name!r} has no definition")
        result[str(name)] = _GroupDef(
            str(name),
            [dict(n) for n in group.get("nodes") or []],
            [list(x) for x in group.get("links") or []],
            [list(x) for x in group.get("external") or []],
        )
    return result


# --------------------------------------------------------------------------- entry point


def convert_ui_workflow(
    data: Mapping[str, Any],
    object_info: Mapping[str, Any],
    *,
    source: str = "",
    rng: Callable[[], float] | None = random.random,
    controls: bool = False,
) -> dict[str, Any]:
    """Convert a UI-format workflow to the API graph ComfyUI's frontend would queue.

    Args:
        data: The saved workflow (``nodes``, ``links``, maybe ``definitions.subgraphs``).
        object_info: The server's node definitions (``GET /object_info``).
        source: Where the workflow came from (a file name), for error messages.
        rng: Draws the ``{a|b}`` choices of ``dynamicPrompts`` texts (as the frontend's
            ``Math.random``); ``None`` sends such texts as written.
        controls: Keep which inputs the file marks "control after generate: randomize":
            their names go into the node's ``_meta["randomize"]`` (ComfyUI ignores
            ``_meta``), and :class:`~dreamgen_async.generator.DreamGenerator` then draws a
            new seed for them in each run, as the frontend does for each queueing.

    Returns:
        ``{node_id: {"inputs", "class_type", "_meta": {"title"}}}``.

    Raises:
        WorkflowError: ``data`` is not a UI-format workflow, a link is broken, or a node's
            class is not on the server (the message names the node id and class).
    """
    if not is_ui_workflow(data):
        raise WorkflowError(f"{source or 'workflow'}: not a UI-format workflow")
    if not isinstance(object_info, Mapping) or not object_info:
        raise WorkflowError("converting a UI-format workflow needs the server's node definitions")
    converter = _Converter(data, object_info, source, rng, controls)
    result = converter.convert()
    if not result:
        raise WorkflowError(f"{source or 'workflow'}: no node is left to run after conversion")
    _check_some_output_can_run(result, object_info, converter.unlinked, source or "workflow")
    return result


def _missing_link(
    graph: Mapping[str, Any],
    object_info: Mapping[str, Any],
    unlinked: set[tuple[str, str]],
    node_id: str,
    seen: set[str],
) -> tuple[str, str] | None:
    """The first required input, of a node or its ancestors, that the file left unlinked."""
    if node_id in seen or node_id not in graph:
        return None
    seen.add(node_id)
    node = graph[node_id]
    class_def = object_info.get(node["class_type"])
    if isinstance(class_def, Mapping):
        required = (class_def.get("input") or {}).get("required") or {}
        for name in required:
            if name not in node["inputs"] and (node_id, name) in unlinked:
                return node_id, name
    for value in node["inputs"].values():
        if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
            found = _missing_link(graph, object_info, unlinked, value[0], seen)
            if found is not None:
                return found
    return None


def _check_some_output_can_run(
    graph: Mapping[str, Any],
    object_info: Mapping[str, Any],
    unlinked: set[tuple[str, str]],
    where: str,
) -> None:
    """Raise when every output node needs an input the file left unconnected.

    Such a workflow is unfinished (``gsc_starter_1`` asks the user to draw the last link):
    the frontend would queue it and ComfyUI reject it (``required_input_missing``). An
    input dropped because its source is muted or bypassed is the user's choice and is
    not checked; an output whose branch is complete still runs, so one is enough.
    """
    outputs = [
        node_id
        for node_id, node in graph.items()
        if (object_info.get(node["class_type"]) or {}).get("output_node")
    ]
    missing = [_missing_link(graph, object_info, unlinked, node_id, set()) for node_id in outputs]
    first = next((m for m in missing if m is not None), None)
    if outputs and first is not None and all(m is not None for m in missing):
        node_id, name = first
        class_type = graph[node_id]["class_type"]
        raise WorkflowError(
            f"{where}: node {node_id} ({class_type}) input {name!r} is not connected, so no "
            "output can run; connect it in ComfyUI and save the workflow again",
            node_id=node_id,
            input_name=name,
        )
