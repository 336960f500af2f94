"""The Backend protocol: what :class:`DreamGenerator`, the CLI and every helper need of a server.

One ComfyUI server (:class:`~dreamgen_async.ComfyUIClient`) and several behind one job API
(:class:`~dreamgen_async.ComfyUIPool`) both implement it fully, so anything written against
a ``Backend`` works with either:

- **jobs**: :meth:`Backend.submit` with ``prompt_id``, ``priority`` and ``front`` returns a
  handle (:class:`BackendJob`: ``result()``, ``events()``, ``cancel()``, ``server``,
  ``resubmitted``); ``before_post(server, client_id)`` is awaited right before each
  ``POST /prompt`` (again before the POST to another server, on failover), so a journal can
  commit where the prompt goes before it goes there;
- **adopting** a prompt already on a named server (:meth:`Backend.adopt`), under the
  ``client_id`` it was posted with;
- **files**: :meth:`Backend.upload_image`, :meth:`Backend.download` and
  :meth:`Backend.get_outputs` by ref;
- **capabilities**: :meth:`Backend.object_info` (a pool's is the union of its servers': what
  the pool as a whole can run), :meth:`Backend.object_info_by_server` (which server has what)
  and :meth:`Backend.models`;
- **status**: :meth:`Backend.status`, one :class:`ServerStatus` per server.

:func:`merge_object_info` (pure) is how a pool's union is made.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, runtime_checkable

from dreamgen_async.protocol import Event, ImageRef, OutputData

if TYPE_CHECKING:
    from dreamgen_async.comfyui_api import ImageSource, UploadedImage
    from dreamgen_async.jobs import OutputImage, PromptResult
    from dreamgen_async.workflows.builder import ServerModels

__all__ = [
    "Backend",
    "BackendJob",
    "BeforePost",
    "ServerStatus",
    "merge_object_info",
]

#: Awaited right before a ``POST /prompt``, with the server it goes to and the ``client_id``
#: it is posted under (for a pool: again before the POST to another server, on failover).
BeforePost: TypeAlias = Callable[[str, str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ServerStatus:
    """One server of a backend, as :meth:`Backend.status` (and ``pool.servers``) reports it.

    Attributes:
        url: The server (credentials never shown).
        state: ``joining``, ``up``, ``suspect``, ``down``, ``draining`` or ``removed``.
        in_flight: Our jobs on it now (posting, queued or running).
        queue: Its own queue length (every client's prompts), from its last broadcast.
        capacity: Our jobs it may hold at once (a pool: 1 running + ``over_queue``).
        done, failed: Our jobs that finished there.
        mean_job_time: Moving average of a job's execution seconds there.
        loaded_model: The checkpoint/UNet of the last job it ran.
        model_switches: Jobs that loaded another model there (first loads included).
        down_since: ``time.time()`` when it went down (``None`` unless down).
        error: Why it is down, when known.
    """

    url: str
    state: str
    in_flight: int
    queue: int | None
    capacity: int
    done: int
    failed: int
    mean_job_time: float | None
    loaded_model: str | None
    model_switches: int
    down_since: float | None = None
    error: str | None = None


@runtime_checkable
class BackendJob(Protocol):
    """A job handle a backend returns (:class:`~dreamgen_async.Job` or
    :class:`~dreamgen_async.PoolJob`); the one waiter rule of
    :class:`~dreamgen_async.handles.JobHandle`."""

    prompt_id: str

    @property
    def state(self) -> str:
        """The job's state (its value names it)."""
        ...

    @property
    def resubmitted(self) -> bool:
        """Whether it was posted again while an earlier post may still run."""
        ...

    async def result(self, timeout: float | None = None) -> PromptResult:
        """Wait for the outcome (a caller's timeout ends only its own wait)."""
        ...

    def events(self) -> AsyncIterator[Event]:
        """The job's progress events, until it ends."""
        ...

    def listen(self, on_progress: Callable[[Event], object]) -> None:
        """Send its progress events from now on to ``on_progress`` (in place of the
        callback it was submitted with); ignored once it has settled."""
        ...

    async def cancel(self) -> None:
        """Cancel it for every waiter."""
        ...

    def done(self) -> bool:
        """Whether the outcome is known."""
        ...

    @property
    def position(self) -> int | None:
        """Its place in the client-side queue (1: next to be posted); ``None`` otherwise."""
        ...


@runtime_checkable
class Backend(Protocol):
    """What runs prompts: one server (:class:`~dreamgen_async.ComfyUIClient`) or a pool of
    them (:class:`~dreamgen_async.ComfyUIPool`). See the module docstring."""

    @property
    def client_id(self) -> str | None:
        """The WebSocket ``client_id`` its prompts are posted under, when it is one for all."""
        ...

    async def open(self) -> None:
        """Connect (a pool: to every server that answers)."""
        ...

    async def aclose(self, *, detach: bool = False) -> None:
        """Close; with ``detach`` the prompts on servers stay queued there."""
        ...

    async def submit(
        self,
        workflow: Mapping[str, Any],
        *,
        priority: int = 0,
        front: bool = False,
        extra_data: Mapping[str, Any] | None = None,
        on_progress: Callable[[Event], object] | None = None,
        prompt_id: str | None = None,
        before_post: BeforePost | None = None,
        max_run_time: float | None = None,
        queue_timeout: float | None = None,
    ) -> BackendJob:
        """Queue a prompt; its handle. ``max_run_time``: seconds of execution (from
        ``execution_start``), then it is interrupted; ``queue_timeout``: seconds of waiting
        before it starts (client-side included), then it is removed. Either fails the job
        with ``PromptTimeout``."""
        ...

    async def adopt(
        self,
        prompt_id: str,
        *,
        server: str | None = None,
        client_id: str | None = None,
        workflow: Mapping[str, Any] | None = None,
        on_progress: Callable[[Event], object] | None = None,
    ) -> BackendJob | None:
        """Take charge of a prompt posted earlier to ``server`` under ``client_id``: its job,
        or ``None`` when that server does not have it.

        Raises:
            ConnectError: ``server`` is not one of this backend's, or cannot be reached
                (the prompt's fate there is unknown).
        """
        ...

    async def upload_image(
        self,
        image: ImageSource,
        *,
        name: str | None = None,
        subfolder: str = "",
        type: str = "input",
        overwrite: bool = False,
    ) -> UploadedImage:
        """Make an input image available to the prompts (``LoadImage``)."""
        ...

    async def download(self, image: ImageRef) -> bytes:
        """One output file's bytes, from the server that made it."""
        ...

    async def get_outputs(
        self, result: PromptResult | str, *, previews: bool = True
    ) -> list[OutputData]:
        """Every output of a finished prompt, from the server that ran it."""
        ...

    async def get_output_images(self, result: PromptResult | str) -> list[OutputImage]:
        """Every output image of a finished prompt."""
        ...

    async def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        """``GET /object_info``: for a pool, the union of what its servers can run."""
        ...

    async def object_info_by_server(self) -> dict[str, dict[str, Any]]:
        """Each answering server's ``/object_info``, by server URL."""
        ...

    async def models(self) -> ServerModels:
        """The model files the backend as a whole can use."""
        ...

    def position(self, prompt_id: str) -> int | None:
        """Where the job of ``prompt_id`` waits client-side for a slot (1: next to be
        posted); ``None`` once posted, ended, or unknown."""
        ...

    async def status(self) -> list[ServerStatus]:
        """One status per server (a single client checks that its server answers)."""
        ...


def _choices(spec: Any) -> list[Any] | None:
    """A combo input's choices (``[[...], {...}]`` or ``["COMBO", {"options": [...]}]``)."""
    if not isinstance(spec, list) or not spec:
        return None
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        options = spec[1].get("options")
        return options if isinstance(options, list) else None
    return None


def _merge_input(old: Any, new: Any) -> Any:
    """One input spec seen on two servers: a combo gets the union of the choices."""
    a, b = _choices(old), _choices(new)
    if a is None or b is None:
        return old
    union = list(dict.fromkeys([*a, *b]))
    if isinstance(old[0], list):
        return [union, *old[1:]]
    return [old[0], {**old[1], "options": union}, *old[2:]]


def _merge_node(old: dict[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(old)
    inputs = dict(old.get("input") or {})
    for section, specs in (new.get("input") or {}).items():
        if not isinstance(specs, Mapping):
            continue
        mine = dict(inputs.get(section) or {})
        for name, spec in specs.items():
            mine[name] = _merge_input(mine[name], spec) if name in mine else spec
        inputs[section] = mine
    if inputs:
        merged["input"] = inputs
    return merged


def merge_object_info(infos: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The union of several servers' ``/object_info`` (pure).

    Every node class any server has; a combo input (model files, say) lists the choices of
    every server that has that node. So it says what the servers *as a whole* can run, not
    that one server can run it all: :meth:`Backend.object_info_by_server` says which has what.
    """
    merged: dict[str, Any] = {}
    for info in infos.values():
        for node_class, node in info.items():
            if not isinstance(node, Mapping):
                continue
            if node_class in merged:
                merged[node_class] = _merge_node(merged[node_class], node)
            else:
                merged[node_class] = dict(node)
    return merged
