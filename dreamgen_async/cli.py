"""The ``dreamgen`` command: a thin layer over :class:`DreamGenerator`.

Exit status: 0 when every job succeeded, 1 when any failed (or the server could not be
used), 2 for usage errors, 130 after Ctrl-C (our pending prompts are taken off the server
and no half-written file remains).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import glob
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from dreamgen_async import __version__
from dreamgen_async.errors import DreamgenError
from dreamgen_async.generator import (
    BatchProgress,
    DreamGenerator,
    GenerationResult,
    Img2ImgRequest,
    JobFailure,
    Request,
    Txt2ImgRequest,
    WorkflowRequest,
)
from dreamgen_async.pool import ComfyUIPool
from dreamgen_async.protocol import Event, Executing
from dreamgen_async.protocol import Progress as StepProgress
from dreamgen_async.workflow_builder import FluxWorkflowBuilder, Workflow

__all__ = ["main"]

DEFAULT_SERVER = "http://127.0.0.1:8188"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("dreamgen_async.cli")


@dataclass(frozen=True)
class Options:
    server: str
    concurrency: int
    timeout: float | None
    json: bool
    quiet: bool
    debug: bool
    servers: tuple[str, ...] = ()  # every --server (several: a ComfyUIPool)


def common_options(func: F) -> F:
    """Options every job command takes."""
    decorators = [
        click.option(
            "--server",
            envvar="DREAMGEN_SERVER",
            multiple=True,
            default=(DEFAULT_SERVER,),
            show_default=True,
            help="ComfyUI URL (env DREAMGEN_SERVER). Give it several times, or "
            "DREAMGEN_SERVER=url1,url2, to spread jobs over a pool of servers. "
            "A token is read from DREAMGEN_TOKEN.",
        ),
        click.option("--concurrency", "-j", default=8, show_default=True, type=click.IntRange(1)),
        click.option("--timeout", type=float, default=None, help="Seconds per job."),
        click.option("--json", "json_lines", is_flag=True, help="One JSON line per result."),
        click.option("--quiet", "-q", is_flag=True, help="Print only errors."),
        click.option("--debug", is_flag=True, help="Tracebacks and debug logging."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def options_from(kwargs: dict[str, Any]) -> Options:
    servers = tuple(
        url.strip() for value in kwargs.pop("server") for url in value.split(",") if url.strip()
    ) or (DEFAULT_SERVER,)
    opts = Options(
        server=servers[0],
        servers=servers,
        concurrency=kwargs.pop("concurrency"),
        timeout=kwargs.pop("timeout"),
        json=kwargs.pop("json_lines"),
        quiet=kwargs.pop("quiet"),
        debug=kwargs.pop("debug"),
    )
    logging.basicConfig(
        level=logging.DEBUG if opts.debug else logging.ERROR,
        format="%(levelname)s %(name)s: %(message)s",
    )
    return opts


def parse_size(text: str | None) -> tuple[int | None, int | None]:
    if text is None:
        return None, None
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not WIDTHxHEIGHT, e.g. 1024x768") from None
    return width, height


def expand_inputs(patterns: Iterable[str]) -> list[Path]:
    """Files, folders (their images, sorted) and globs, in the order given."""
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        elif any(ch in pattern for ch in "*?["):
            found.extend(sorted(Path(p) for p in glob.glob(pattern, recursive=True)))
        else:
            found.append(path)  # a missing file is reported by its job, by name
    return found


# ---------------------------------------------------------------------------- running


class Display:
    """Live progress on a terminal; plain lines (or JSON lines) otherwise."""

    def __init__(self, opts: Options, labels: Sequence[str], console: Console) -> None:
        self.opts = opts
        self.labels = labels
        self.console = console
        self.live = console.is_terminal and not opts.quiet and not opts.json
        self.progress: Progress | None = None
        self.overall: TaskID | None = None
        self.steps: dict[int, TaskID] = {}

    def __enter__(self) -> Display:
        if self.live:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.progress.start()
            self.overall = self.progress.add_task("jobs", total=len(self.labels))
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def batch(self, state: BatchProgress) -> None:
        if self.progress is None or self.overall is None:
            return
        queued = len(self.labels) - state.done - state.failed - state.running
        self.progress.update(
            self.overall,
            completed=state.done + state.failed,
            description=(
                f"done {state.done}  failed {state.failed}  running {state.running}  "
                f"queued {queued}"
            ),
        )

    def event(self, index: int, event: Event) -> None:
        if self.progress is None:
            return
        if isinstance(event, StepProgress):
            task = self.steps.get(index)
            if task is None:
                task = self.progress.add_task(f"  {self.labels[index]}", total=event.max)
                self.steps[index] = task
            self.progress.update(task, completed=event.value, total=event.max)
        elif isinstance(event, Executing) and event.node is None:
            self.finish(index)

    def finish(self, index: int) -> None:
        task = self.steps.pop(index, None)
        if task is not None and self.progress is not None:
            self.progress.remove_task(task)

    def outcome(self, index: int, outcome: GenerationResult | JobFailure) -> None:
        self.finish(index)
        label = self.labels[index]
        if self.opts.json:
            record: dict[str, Any] = {"input": label}
            if isinstance(outcome, JobFailure):
                record["error"] = str(outcome.error)
                record["error_type"] = type(outcome.error).__name__
            else:
                record.update(
                    outputs=[str(p) for p in outcome.paths],
                    prompt_id=outcome.prompt_id,
                    seed=outcome.seed,
                    cached=outcome.cached,
                )
            click.echo(json.dumps(record))
        elif isinstance(outcome, JobFailure):
            message = escape(f"{label}: {outcome.error}")  # errors may contain [brackets]
            self.console.print(f"[red]error[/red] {message}", highlight=False)
        elif not self.opts.quiet:
            paths = ", ".join(str(p) for p in outcome.paths)
            self.console.print(
                f"ok {label} -> {paths} (seed {outcome.seed})", highlight=False, markup=False
            )


async def run_requests(
    opts: Options,
    requests: Sequence[Request],
    labels: Sequence[str],
    output: Path,
    builder: FluxWorkflowBuilder,
    console: Console,
) -> int:
    """Run a batch with a display; return the number of failed jobs."""
    token = os.environ.get("DREAMGEN_TOKEN") or None
    failed = 0
    async with contextlib.AsyncExitStack() as stack:
        if len(opts.servers) > 1:
            pool = await stack.enter_async_context(ComfyUIPool(opts.servers, token=token))
            gen = DreamGenerator(pool, output_dir=output, builder=builder)
        else:
            gen = await stack.enter_async_context(
                DreamGenerator(
                    opts.server, output_dir=output, builder=builder, token=token, max_in_flight=64
                )
            )
        with Display(opts, labels, console) as display:
            outcomes = gen.enumerate_completed(
                requests, opts.concurrency, True, display.event, display.batch
            )
            async for index, outcome in outcomes:
                failed += isinstance(outcome, JobFailure)
                display.outcome(index, outcome)
    return failed


def execute(opts: Options, coro_factory: Callable[[], Any]) -> None:
    """Run a coroutine; map outcomes to exit statuses and errors to one readable line."""
    try:
        result = asyncio.run(coro_factory())
    except KeyboardInterrupt:
        click.echo("interrupted: pending prompts were removed from the server", err=True)
        sys.exit(130)
    except DreamgenError as exc:
        if opts.debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    if isinstance(result, int) and result:
        if not opts.json:
            click.echo(f"{result} job(s) failed", err=True)
        sys.exit(1)


def make_builder(ckpt: str | None, steps: int | None, cfg: float | None) -> FluxWorkflowBuilder:
    try:
        if ckpt:
            return FluxWorkflowBuilder(ckpt, steps=steps, cfg=cfg)
        return FluxWorkflowBuilder(steps=steps, cfg=cfg)
    except DreamgenError as exc:
        raise click.UsageError(str(exc)) from exc


# ---------------------------------------------------------------------------- commands


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dreamgen")
def cli() -> None:
    """Generate images with a ComfyUI server (txt2img, img2img, your own workflows)."""


def output_option(default: str = "dreamgen-output") -> Callable[[F], F]:
    return click.option(
        "-o", "--output", type=click.Path(path_type=Path), default=default, show_default=True
    )


@cli.command()
@click.argument("prompt")
@click.option("--count", "-n", default=1, show_default=True, type=click.IntRange(1))
@click.option("--seed", type=click.IntRange(0), default=None, help="First seed (then +1 each).")
@click.option("--size", default=None, help="WIDTHxHEIGHT, e.g. 1024x768.")
@click.option("--steps", type=click.IntRange(1), default=None)
@click.option("--cfg", type=float, default=None)
@click.option("--ckpt", default=None, help="Checkpoint name (flux1-schnell by default).")
@click.option("--negative", default="")
@output_option()
@common_options
def txt2img(prompt: str, count: int, seed: int | None, size: str | None, **kwargs: Any) -> None:
    """Generate COUNT images from PROMPT."""
    steps, cfg, ckpt, negative, output = (
        kwargs.pop(k) for k in ("steps", "cfg", "ckpt", "negative", "output")
    )
    opts = options_from(kwargs)
    width, height = parse_size(size)
    builder = make_builder(ckpt, steps, cfg)
    requests = [
        Txt2ImgRequest(prompt, negative, None if seed is None else seed + i, width, height)
        for i in range(count)
    ]
    labels = [f"#{i + 1}" for i in range(count)]
    execute(opts, lambda: run_requests(opts, requests, labels, output, builder, Console()))


@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@click.argument("prompt")
@click.option("--denoise", type=click.FloatRange(0, 1, min_open=True), default=0.75)
@click.option("--seed", type=click.IntRange(0), default=None)
@click.option("--steps", type=click.IntRange(1), default=None)
@click.option("--cfg", type=float, default=None)
@click.option("--ckpt", default=None)
@click.option("--negative", default="")
@output_option()
@common_options
def img2img(inputs: tuple[str, ...], prompt: str, **kwargs: Any) -> None:
    """Transform each INPUT (files, folders or globs) with PROMPT; outputs named after inputs."""
    denoise, seed, steps, cfg, ckpt, negative, output = (
        kwargs.pop(k) for k in ("denoise", "seed", "steps", "cfg", "ckpt", "negative", "output")
    )
    opts = options_from(kwargs)
    paths = expand_inputs(inputs)
    if not paths:
        raise click.UsageError(f"no images found in {' '.join(inputs)}")
    builder = make_builder(ckpt, steps, cfg)
    requests = [
        Img2ImgRequest(path, prompt, denoise, negative, seed, name=path.stem) for path in paths
    ]
    labels = [str(p) for p in paths]
    execute(opts, lambda: run_requests(opts, requests, labels, output, builder, Console()))


@cli.command()
@click.argument("workflow_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--set", "assignments", multiple=True, help="node.input=value (node: id, title or class)."
)
@output_option()
@common_options
def run(workflow_file: Path, assignments: tuple[str, ...], **kwargs: Any) -> None:
    """Run your own API-format WORKFLOW_FILE (exported from ComfyUI)."""
    output = kwargs.pop("output")
    opts = options_from(kwargs)
    try:
        workflow = Workflow.load(workflow_file)
        for assignment in assignments:
            workflow.apply_assignment(assignment)
    except DreamgenError as exc:
        raise click.UsageError(str(exc)) from exc
    requests = [WorkflowRequest(workflow, name=workflow_file.stem)]
    builder = FluxWorkflowBuilder()
    execute(
        opts,
        lambda: run_requests(opts, requests, [str(workflow_file)], output, builder, Console()),
    )


@cli.command()
@common_options
def status(**kwargs: Any) -> None:
    """Is the server reachable? Its version, devices and queue."""
    opts = options_from(kwargs)

    async def check() -> int:
        from dreamgen_async.comfyui_api import ComfyUIClient

        token = os.environ.get("DREAMGEN_TOKEN") or None
        if len(opts.servers) > 1:
            return await status_table(opts, token)
        async with ComfyUIClient(opts.server, token=token) as client:
            stats = await client.system_stats()
            queue = await client.get_queue()
        system = stats.get("system", {})
        if opts.json:
            click.echo(json.dumps({"server": client.safe_url, **stats}))
            return 0
        click.echo(f"server   {client.safe_url} (reachable)")
        click.echo(f"comfyui  {system.get('comfyui_version', '?')}")
        click.echo(f"python   {str(system.get('python_version', '?')).split()[0]}")
        for device in stats.get("devices", []):
            free = device.get("vram_free", 0) / 2**30
            total = device.get("vram_total", 0) / 2**30
            click.echo(f"device   {device.get('name')} ({free:.1f} / {total:.1f} GiB free)")
        click.echo(f"queue    {len(queue.running)} running, {len(queue.pending)} pending")
        return 0

    execute(opts, check)


async def server_row(url: str, token: str | None) -> dict[str, Any]:
    """One server's line of ``dreamgen status``: reachable or not, version, device, queue."""
    from dreamgen_async.comfyui_api import ComfyUIClient

    row: dict[str, Any] = {"server": url, "state": "down"}
    try:
        async with ComfyUIClient(url, token=token) as client:
            row["server"] = client.safe_url
            stats = await client.system_stats()
            queue = await client.get_queue()
    except DreamgenError as exc:
        row["error"] = str(exc)
        return row
    devices = stats.get("devices") or [{}]
    row.update(
        state="up",
        comfyui=stats.get("system", {}).get("comfyui_version", "?"),
        device=devices[0].get("name", "?"),
        vram_free_gib=round(devices[0].get("vram_free", 0) / 2**30, 1),
        running=len(queue.running),
        pending=len(queue.pending),
    )
    return row


async def status_table(opts: Options, token: str | None) -> int:
    """``dreamgen status`` with several servers: one row each; 1 if none is up."""
    from rich.table import Table

    rows = await asyncio.gather(*(server_row(url, token) for url in opts.servers))
    if opts.json:
        for row in rows:
            click.echo(json.dumps(row))
    else:
        table = Table("server", "state", "comfyui", "device", "queue", box=None)
        for row in rows:
            queue = (
                f"{row['running']} running, {row['pending']} pending"
                if row["state"] == "up"
                else escape(str(row.get("error", "")))[:60]
            )
            table.add_row(
                row["server"],
                row["state"],
                row.get("comfyui", "-"),
                row.get("device", "-"),
                queue,
            )
        Console(width=160).print(table)
    up = sum(row["state"] == "up" for row in rows)
    if not opts.json:
        click.echo(f"{up} of {len(rows)} servers up")
    return 0 if up else 1


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8188, show_default=True, type=click.IntRange(0, 65535))
@click.option("--step-time", default=0.0, show_default=True, help="Seconds per sampler step.")
@click.option("--node-time", default=0.0, show_default=True, help="Seconds per node.")
@click.option("--root", type=click.Path(path_type=Path), default=None, help="Files folder.")
@click.option(
    "--servers", default=1, show_default=True, type=click.IntRange(1), help="Ports PORT.."
)
@click.option("--speeds", default=None, help="Speed factor per server, e.g. 2,1,1,0.5.")
@click.option(
    "--model-load-time", default=0.0, show_default=True, help="Seconds a model switch costs."
)
def sim(
    host: str,
    port: int,
    step_time: float,
    node_time: float,
    root: Path | None,
    servers: int,
    speeds: str | None,
    model_load_time: float,
) -> None:
    """Run the ComfyUI simulator (no GPU needed) until Ctrl-C; --servers N runs N of them
    on ports PORT..PORT+N-1 (to try a pool)."""
    from dreamgen_async.testing import SimulatorConfig, serve, serve_many

    try:
        factors = [float(x) for x in speeds.split(",")] if speeds else [1.0] * servers
    except ValueError:
        raise click.BadParameter(
            f"{speeds!r} is not a list of numbers", param_hint="--speeds"
        ) from None
    if speeds and len(factors) != servers:
        if servers != 1:
            raise click.BadParameter(
                f"{len(factors)} speeds for {servers} servers", param_hint="--speeds"
            )
        servers = len(factors)
    configs = [
        SimulatorConfig(
            step_time=step_time, node_time=node_time, speed=f, model_load_time=model_load_time
        )
        for f in factors
    ]

    def ready(started: Any) -> None:
        click.echo(f"ComfyUI simulator listening on {started.url}", err=True)

    def ready_many(started: list[Any]) -> None:
        for one, factor in zip(started, factors, strict=True):
            click.echo(f"ComfyUI simulator listening on {one.url} (speed {factor:g})", err=True)
        urls = ",".join(one.url for one in started)
        click.echo(f"try: DREAMGEN_SERVER={urls} dreamgen status", err=True)

    try:
        if servers == 1:
            asyncio.run(serve(host, port, configs[0], root, ready=ready))
        else:
            asyncio.run(serve_many(host, port, configs, root, ready=ready_many))
    except KeyboardInterrupt:
        sys.exit(130)


@cli.command()
@click.option("--count", "-n", default=8, show_default=True, type=click.IntRange(1))
@click.option("--step-time", default=0.02, show_default=True, help="Simulated seconds per step.")
@output_option("dreamgen-demo")
@common_options
def demo(count: int, step_time: float, output: Path, **kwargs: Any) -> None:
    """Start the simulator in-process and img2img COUNT sample images (no GPU needed)."""
    opts = options_from(kwargs)

    async def go() -> int:
        from dreamgen_async.samples import write_samples
        from dreamgen_async.testing import ComfyUISimulator, SimulatorConfig

        with tempfile.TemporaryDirectory(prefix="dreamgen-demo-") as scratch:
            inputs = write_samples(Path(scratch) / "inputs", count)
            config = SimulatorConfig(step_time=step_time)
            async with ComfyUISimulator(config, root=Path(scratch) / "server") as server:
                demo_opts = dataclasses.replace(opts, server=server.url, servers=(server.url,))
                requests = [
                    Img2ImgRequest(p, "a watercolour landscape", 0.6, seed=i, steps=4, name=p.stem)
                    for i, p in enumerate(inputs)
                ]
                started = time.perf_counter()
                failed = await run_requests(
                    demo_opts,
                    requests,
                    [p.name for p in inputs],
                    output,
                    FluxWorkflowBuilder(),
                    Console(),
                )
                elapsed = time.perf_counter() - started
        if not opts.quiet and not opts.json:
            click.echo(
                f"wrote {count - failed} images to {output}/ in {elapsed:.2f} s "
                f"(simulated ComfyUI at {server.url}, {opts.concurrency} at a time)"
            )
        return failed

    execute(opts, go)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``dreamgen`` console script and ``python -m dreamgen_async``."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="dreamgen")
