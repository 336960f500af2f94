"""The ``dreamgen`` command: a thin layer over :class:`DreamGenerator`.

Exit status: 0 when every job succeeded, 1 when any failed (or the server could not be
used), 2 for usage errors, 130 after Ctrl-C (our pending prompts are taken off the server
and no half-written file remains).
"""

from __future__ import annotations

import asyncio
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
    builder_from_spec,
    request_from_spec,
)
from dreamgen_async.journal import read_journal_meta, read_journal_requests
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
    journal: Path | None = None


def common_options(func: F) -> F:
    """Options every job command takes."""
    decorators = [
        click.option(
            "--server",
            envvar="DREAMGEN_SERVER",
            default=DEFAULT_SERVER,
            show_default=True,
            help="ComfyUI URL (env DREAMGEN_SERVER). A token is read from DREAMGEN_TOKEN.",
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
    opts = Options(
        server=kwargs.pop("server"),
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
                    resumed=outcome.resumed,
                )
            click.echo(json.dumps(record))
        elif isinstance(outcome, JobFailure):
            message = escape(f"{label}: {outcome.error}")  # errors may contain [brackets]
            self.console.print(f"[red]error[/red] {message}", highlight=False)
        elif not self.opts.quiet:
            paths = ", ".join(str(p) for p in outcome.paths)
            earlier = ", done earlier" if outcome.resumed else ""
            self.console.print(
                f"ok {label} -> {paths} (seed {outcome.seed}{earlier})",
                highlight=False,
                markup=False,
            )


async def run_requests(
    opts: Options,
    requests: Sequence[Request],
    labels: Sequence[str],
    output: Path,
    builder: FluxWorkflowBuilder,
    console: Console,
    journal: Path | None = None,
) -> int:
    """Run a batch with a display; return the number of failed jobs.

    With a journal, the client takes the journal's client_id (so the events of prompts an
    earlier run posted reach it) and the batch resumes where the journal left off.
    """
    token = os.environ.get("DREAMGEN_TOKEN") or None
    failed = 0
    client_id = None
    if journal is not None:
        client_id = (await asyncio.to_thread(read_journal_meta, journal)).get("client_id")
    async with DreamGenerator(
        opts.server,
        output_dir=output,
        builder=builder,
        token=token,
        max_in_flight=64,
        client_id=client_id,
    ) as gen:
        with Display(opts, labels, console) as display:
            outcomes = gen.enumerate_completed(
                requests, opts.concurrency, True, display.event, display.batch, journal=journal
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
        if opts.journal is not None:
            click.echo(
                f"the journal {opts.journal} keeps the batch: rerun the same command, or "
                f"`dreamgen resume {opts.journal}`, to finish it",
                err=True,
            )
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


JOURNAL_NAME = ".dreamgen-journal.sqlite"


def journal_options(func: F) -> F:
    """``--journal FILE`` / ``--no-journal`` for the batch commands."""
    func = click.option(
        "--no-journal", is_flag=True, help="Keep no journal (a rerun then starts over)."
    )(func)
    return click.option(
        "--journal",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help=f"The batch's journal (default: OUTPUT/{JOURNAL_NAME}). A rerun of the same "
        "command resumes from it: done items are skipped, posted prompts collected.",
    )(func)


def journal_from(kwargs: dict[str, Any], output: Path) -> Path | None:
    journal: Path | None = kwargs.pop("journal")
    if kwargs.pop("no_journal"):
        return None
    return journal if journal is not None else output / JOURNAL_NAME


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
@journal_options
@common_options
def txt2img(prompt: str, count: int, seed: int | None, size: str | None, **kwargs: Any) -> None:
    """Generate COUNT images from PROMPT."""
    steps, cfg, ckpt, negative, output = (
        kwargs.pop(k) for k in ("steps", "cfg", "ckpt", "negative", "output")
    )
    journal = journal_from(kwargs, output)
    opts = dataclasses.replace(options_from(kwargs), journal=journal)
    width, height = parse_size(size)
    builder = make_builder(ckpt, steps, cfg)
    requests = [
        Txt2ImgRequest(prompt, negative, None if seed is None else seed + i, width, height)
        for i in range(count)
    ]
    labels = [f"#{i + 1}" for i in range(count)]
    execute(opts, lambda: run_requests(opts, requests, labels, output, builder, Console(), journal))


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
@journal_options
@common_options
def img2img(inputs: tuple[str, ...], prompt: str, **kwargs: Any) -> None:
    """Transform each INPUT (files, folders or globs) with PROMPT; outputs named after inputs."""
    denoise, seed, steps, cfg, ckpt, negative, output = (
        kwargs.pop(k) for k in ("denoise", "seed", "steps", "cfg", "ckpt", "negative", "output")
    )
    journal = journal_from(kwargs, output)
    opts = dataclasses.replace(options_from(kwargs), journal=journal)
    paths = expand_inputs(inputs)
    if not paths:
        raise click.UsageError(f"no images found in {' '.join(inputs)}")
    builder = make_builder(ckpt, steps, cfg)
    requests = [
        Img2ImgRequest(path, prompt, denoise, negative, seed, name=path.stem) for path in paths
    ]
    labels = [str(p) for p in paths]
    execute(opts, lambda: run_requests(opts, requests, labels, output, builder, Console(), journal))


@cli.command()
@click.argument("workflow_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--set", "assignments", multiple=True, help="node.input=value (node: id, title or class)."
)
@output_option()
@journal_options
@common_options
def run(workflow_file: Path, assignments: tuple[str, ...], **kwargs: Any) -> None:
    """Run your own API-format WORKFLOW_FILE (exported from ComfyUI)."""
    output = kwargs.pop("output")
    journal = journal_from(kwargs, output)
    opts = dataclasses.replace(options_from(kwargs), journal=journal)
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
        lambda: run_requests(
            opts, requests, [str(workflow_file)], output, builder, Console(), journal
        ),
    )


@cli.command()
@click.argument("journal", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@common_options
def resume(journal: Path, **kwargs: Any) -> None:
    """Finish the batch recorded in JOURNAL (its server, folder, model and requests).

    Done items are skipped, prompts an earlier run posted are collected, the rest run.
    --server overrides the journal's server only when given.
    """
    server_given = click.get_current_context().get_parameter_source("server")
    opts = dataclasses.replace(options_from(kwargs), journal=journal)
    try:
        meta = read_journal_meta(journal)
        specs = read_journal_requests(journal)
        builder = builder_from_spec(meta["builder"]) if "builder" in meta else None
    except (DreamgenError, KeyError, TypeError) as exc:
        raise click.UsageError(f"{journal}: cannot resume from it ({exc})") from exc
    if not specs or "output_dir" not in meta:
        raise click.UsageError(f"{journal} records no requests to resume")
    if server_given not in (
        click.core.ParameterSource.COMMANDLINE,
        click.core.ParameterSource.ENVIRONMENT,
    ):
        opts = dataclasses.replace(opts, server=meta.get("server", opts.server))
    requests = [request_from_spec(spec) for spec in specs]
    labels = [spec_label(spec, i) for i, spec in enumerate(specs)]
    output = Path(meta["output_dir"])
    execute(
        opts,
        lambda: run_requests(
            opts, requests, labels, output, builder or FluxWorkflowBuilder(), Console(), journal
        ),
    )


def spec_label(spec: dict[str, Any], index: int) -> str:
    """How ``dreamgen resume`` names a recorded request in its output."""
    image = spec.get("image")
    if isinstance(image, dict) and "path" in image:
        return str(image["path"])
    return str(spec.get("name") or f"#{index + 1}")


@cli.command()
@common_options
def status(**kwargs: Any) -> None:
    """Is the server reachable? Its version, devices and queue."""
    opts = options_from(kwargs)

    async def check() -> int:
        from dreamgen_async.comfyui_api import ComfyUIClient

        token = os.environ.get("DREAMGEN_TOKEN") or None
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


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8188, show_default=True, type=click.IntRange(0, 65535))
@click.option("--step-time", default=0.0, show_default=True, help="Seconds per sampler step.")
@click.option("--node-time", default=0.0, show_default=True, help="Seconds per node.")
@click.option("--root", type=click.Path(path_type=Path), default=None, help="Files folder.")
def sim(host: str, port: int, step_time: float, node_time: float, root: Path | None) -> None:
    """Run the ComfyUI simulator (no GPU needed) until Ctrl-C."""
    from dreamgen_async.testing import SimulatorConfig, serve

    config = SimulatorConfig(step_time=step_time, node_time=node_time)

    def ready(started: Any) -> None:
        click.echo(f"ComfyUI simulator listening on {started.url}", err=True)

    try:
        asyncio.run(serve(host, port, config, root, ready=ready))
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
                demo_opts = dataclasses.replace(opts, server=server.url)
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
