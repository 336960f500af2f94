"""The ``dreamgen`` command: a thin layer over :class:`DreamGenerator`.

Exit status: 0 when every job succeeded, 1 when any failed (or the server could not be
used), 2 for usage errors (bad options, a bad ``--server`` URL, ``-o`` naming a file), 3 when
every job ran but the server dropped some of their outputs (a partial prompt: 200 with
``node_errors``; a warning line per job names them), 130 after Ctrl-C (our pending prompts
are taken off the server and no half-written file remains).

Output: stdout has one line per job (``ok LABEL -> FILES (seed N)``, or a JSON record with
``--json``) and nothing else; errors, warnings and the summary go to stderr. Lines are never
wrapped, whatever the terminal width.
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
from typing import Any, TypeVar, cast

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
from dreamgen_async.errors import ConfigError, DreamgenError, UIWorkflowError, WorkflowError
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
from dreamgen_async.pool import ComfyUIPool
from dreamgen_async.protocol import Event, Executing
from dreamgen_async.protocol import Progress as StepProgress
from dreamgen_async.workflow_builder import FluxWorkflowBuilder, Workflow, parse_set_assignment
from dreamgen_async.workflow_io import builder_from_server, load_workflow_from_server, server_models
from dreamgen_async.workflows import PRESETS, PresetName

__all__ = ["main"]

DEFAULT_SERVER = "http://127.0.0.1:8188"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
OUTPUT_FILE_SUFFIXES = IMAGE_SUFFIXES | {".mp4", ".webm", ".flac", ".mp3", ".wav", ".txt"}
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
    servers: tuple[str, ...] = ()  # every --server (several: a ComfyUIPool)


def _apply(func: F, decorators: Sequence[Callable[[F], F]]) -> F:
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def server_option(func: F) -> F:
    """``--server`` (commands that talk to a server)."""
    return click.option(
        "--server",
        envvar="DREAMGEN_SERVER",
        multiple=True,
        default=(DEFAULT_SERVER,),
        show_default=True,
        help="ComfyUI URL (env DREAMGEN_SERVER). Give it several times, or "
        "DREAMGEN_SERVER=url1,url2, to spread jobs over a pool of servers. "
        "A token is read from DREAMGEN_TOKEN.",
    )(func)


def json_option(func: F) -> F:
    return click.option(
        "--json", "json_lines", is_flag=True, help="JSON lines on stdout instead of text."
    )(func)


def debug_option(func: F) -> F:
    return click.option("--debug", is_flag=True, help="Tracebacks and debug logging.")(func)


def job_options(func: F) -> F:
    """Options of every command that runs jobs (not ``--server``: the demo has its own)."""
    return _apply(
        func,
        [
            click.option(
                "--concurrency",
                "-j",
                default=8,
                show_default=True,
                type=click.IntRange(1),
                help="Jobs at a time.",
            ),
            click.option(
                "--timeout",
                type=click.FloatRange(0, min_open=True),
                default=None,
                help="Seconds per job (then it is removed from the server and fails).",
            ),
            json_option,
            click.option(
                "--quiet", "-q", is_flag=True, help="No line per successful job; only problems."
            ),
            debug_option,
        ],
    )


def common_options(func: F) -> F:
    """Options every job command that talks to a server takes."""
    return _apply(func, [server_option, job_options])


def options_from(kwargs: dict[str, Any]) -> Options:
    servers = tuple(
        url.strip() for value in kwargs.pop("server", ()) for url in value.split(",") if url.strip()
    ) or (DEFAULT_SERVER,)
    opts = Options(
        server=servers[0],
        servers=servers,
        concurrency=kwargs.pop("concurrency", 1),
        timeout=kwargs.pop("timeout", None),
        json=kwargs.pop("json_lines", False),
        quiet=kwargs.pop("quiet", False),
        debug=kwargs.pop("debug", False),
    )
    logging.basicConfig(
        level=logging.DEBUG if opts.debug else logging.ERROR,
        format="%(levelname)s %(name)s: %(message)s",
    )
    return opts


def consoles() -> tuple[Console, Console]:
    """(stdout, stderr) consoles that never wrap a line: one record per line in pipes."""
    return Console(soft_wrap=True), Console(stderr=True, soft_wrap=True)


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


@dataclass
class Tally:
    """What a batch came to: the exit status follows from it."""

    failed: int = 0
    partial: int = 0


class Display:
    """Live progress on a terminal; plain lines (or JSON lines) otherwise.

    stdout carries one line per job (``ok ...`` or a JSON record); every diagnostic (job
    errors, partial-prompt warnings, the summary) goes to stderr, so pipes see data only.
    """

    def __init__(
        self, opts: Options, labels: Sequence[str], console: Console, errors: Console
    ) -> None:
        self.opts = opts
        self.labels = labels
        self.console = console
        self.errors = errors
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
        dropped = "" if isinstance(outcome, JobFailure) else partial_warning(outcome)
        if dropped:
            self.errors.print(f"warning {label}: {dropped}", highlight=False, markup=False)
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
                if dropped:
                    record["warning"] = dropped
            click.echo(json.dumps(record))
        elif isinstance(outcome, JobFailure):
            message = escape(f"{label}: {outcome.error}")  # errors may contain [brackets]
            self.errors.print(f"[red]error[/red] {message}", highlight=False)
        elif not self.opts.quiet:
            paths = ", ".join(str(p) for p in outcome.paths) or "(no output files)"
            earlier = ", done earlier" if outcome.resumed else ""
            self.console.print(
                f"ok {label} -> {paths} (seed {outcome.seed}{earlier})",
                highlight=False,
                markup=False,
            )


@dataclass(frozen=True)
class ModelChoice:
    """``--ckpt`` / ``--preset`` / ``--steps`` / ``--cfg``: resolved against the server."""

    ckpt: str | None
    preset: PresetName | None
    steps: int | None
    cfg: float | None


async def resolve_builder(opts: Options, choice: ModelChoice) -> FluxWorkflowBuilder:
    """Ask the server which models it has and build the fitting loader layout."""
    from dreamgen_async.comfyui_api import ComfyUIClient

    token = os.environ.get("DREAMGEN_TOKEN") or None
    async with ComfyUIClient(opts.server, token=token) as client:
        return await builder_from_server(
            client,
            choice.ckpt,
            preset=choice.preset,
            steps=choice.steps,
            cfg=choice.cfg,
        )


def partial_warning(result: GenerationResult) -> str:
    """One line naming the outputs a partial prompt dropped, and why; "" if none were."""
    if not result.node_errors:
        return ""
    dropped: list[str] = []
    for error in result.node_errors:
        for node_id in error.dependent_outputs or (error.node_id,):
            node = result.workflow.get(node_id)
            name = f"{node_id} ({node['class_type']})" if isinstance(node, dict) else node_id
            if name not in dropped:
                dropped.append(name)
    reasons = "; ".join(str(e) for e in result.node_errors)
    return f"the server dropped output node(s) {', '.join(dropped)}: {reasons}"


async def run_requests(
    opts: Options,
    requests: Sequence[Request],
    labels: Sequence[str],
    output: Path,
    builder: FluxWorkflowBuilder | ModelChoice,
    consoles: tuple[Console, Console],
    journal: Path | None = None,
) -> Tally:
    """Run a batch with a display; return how many jobs failed or lost outputs.

    With a journal, the client takes the journal's client_id (so the events of prompts an
    earlier run posted reach it) and the batch resumes where the journal left off.
    """
    token = os.environ.get("DREAMGEN_TOKEN") or None
    if isinstance(builder, ModelChoice):
        builder = await resolve_builder(opts, builder)
    tally = Tally()
    async with contextlib.AsyncExitStack() as stack:
        gen: DreamGenerator
        if len(opts.servers) > 1:
            if journal is not None:  # a journal records one server's prompts
                log.info("several servers: the batch runs without a journal")
                journal = None
            pool = await stack.enter_async_context(
                ComfyUIPool(opts.servers, token=token, on_partial="ignore")
            )
            gen = DreamGenerator(pool, output_dir=output, builder=builder)
        else:
            client_id = None
            if journal is not None:
                meta = await asyncio.to_thread(read_journal_meta, journal)
                client_id = meta.get("client_id")
            gen = await stack.enter_async_context(
                DreamGenerator(
                    opts.server,
                    output_dir=output,
                    builder=builder,
                    token=token,
                    max_in_flight=64,
                    on_partial="ignore",  # shown as a warning line per job, not a Python warning
                    client_id=client_id,
                )
            )
        with Display(opts, labels, *consoles) as display:
            outcomes = gen.enumerate_completed(
                requests,
                opts.concurrency,
                True,
                display.event,
                display.batch,
                journal=journal,
                timeout=opts.timeout,
            )
            async for index, outcome in outcomes:
                if isinstance(outcome, JobFailure):
                    tally.failed += 1
                elif outcome.node_errors:
                    tally.partial += 1
                display.outcome(index, outcome)
    return tally


EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130


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
        sys.exit(EXIT_INTERRUPTED)
    except ConfigError as exc:  # a bad --server or option value: a usage error
        if opts.debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except DreamgenError as exc:
        if opts.debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    if isinstance(result, Tally):
        if result.failed:
            click.echo(f"{result.failed} job(s) failed", err=True)
        if result.partial:
            click.echo(
                f"{result.partial} job(s) ran without some of their outputs "
                "(partial prompt, see the warnings)",
                err=True,
            )
        if result.failed:
            sys.exit(EXIT_FAILED)
        if result.partial:
            sys.exit(EXIT_PARTIAL)


def check_output_dir(output: Path) -> None:
    """``-o`` names a folder: refuse an existing file or a name that looks like one, at once."""
    if output.exists() and not output.is_dir():
        raise click.BadParameter(
            f"{str(output)!r} is a file; -o/--output names a folder to write into",
            param_hint="'-o' / '--output'",
        )
    if not output.exists() and output.suffix.lower() in OUTPUT_FILE_SUFFIXES:
        raise click.BadParameter(
            f"{str(output)!r} looks like a file name; -o/--output names a folder "
            f"(outputs are named after the job), e.g. -o {output.with_suffix('')}",
            param_hint="'-o' / '--output'",
        )


def check_input_order(inputs: Sequence[str], prompt: str, paths: Sequence[Path]) -> None:
    """``img2img "a prompt" frames/`` (arguments swapped) is a usage error with the order."""
    prompt_is_input = Path(prompt).exists() or bool(
        any(ch in prompt for ch in "*?[") and glob.glob(prompt, recursive=True)
    )
    missing = [p for p in paths if not p.exists()]
    if prompt_is_input and missing:
        raise click.UsageError(
            f"{str(missing[0])!r}: no such file, and the prompt {prompt!r} is a file or "
            "folder: the order is `dreamgen img2img INPUTS... PROMPT` (the prompt comes last)"
        )


def apply_set(workflow: Workflow, assignment: str, *, set_all: bool, quiet: bool) -> None:
    """Apply one ``--set``; a title or class naming several nodes needs ``--set-all``.

    Reports on stderr how many nodes it changed.
    """
    selector, input_name, _ = parse_set_assignment(assignment)
    ids = workflow.select(selector)
    if len(ids) > 1 and not set_all:
        named = ", ".join(f"{i} ({workflow.class_type(i)})" for i in ids)
        raise click.UsageError(
            f"--set {assignment!r}: {selector!r} names {len(ids)} nodes ({named}); "
            f"set one by id (e.g. '{ids[0]}.{input_name}=...') or add --set-all to change all"
        )
    count = workflow.apply_assignment(assignment)
    if not quiet:
        click.echo(f"--set {assignment}: changed {count} node(s) ({', '.join(ids)})", err=True)


def make_builder(
    ckpt: str | None, steps: int | None, cfg: float | None, preset: str | None = None
) -> ModelChoice:
    """Check the settings now (a usage error); the model is resolved on the server later."""
    checked = cast("PresetName | None", preset)  # click.Choice gave one of PRESETS
    try:
        FluxWorkflowBuilder(
            ckpt or "model.safetensors", preset=checked or "sd15", steps=steps, cfg=cfg
        )
    except DreamgenError as exc:
        raise click.UsageError(str(exc)) from exc
    return ModelChoice(ckpt, checked, steps, cfg)


CKPT_HELP = (
    "Model file on the server: an all-in-one checkpoint, or a Flux diffusion model (then "
    "loaded with the server's CLIP-L, T5 and VAE files). Default: the server's Flux schnell "
    "file, else its first model. 'dreamgen status' lists them."
)
PRESET_HELP = (
    "Sampling defaults (steps, cfg, sampler, scheduler, size) of a model family; guessed "
    "from the model's name when omitted."
)


def preset_option(func: F) -> F:
    return click.option(
        "--preset", type=click.Choice(sorted(PRESETS)), default=None, help=PRESET_HELP
    )(func)


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
@click.option(
    "--count", "-n", default=1, show_default=True, type=click.IntRange(1), help="Images to make."
)
@click.option("--seed", type=click.IntRange(0), default=None, help="First seed (then +1 each).")
@click.option("--size", default=None, help="WIDTHxHEIGHT, e.g. 1024x768.")
@click.option("--steps", type=click.IntRange(1), default=None, help="Sampler steps (preset's).")
@click.option("--cfg", type=float, default=None, help="CFG scale (preset's by default).")
@click.option("--ckpt", default=None, help=CKPT_HELP)
@preset_option
@click.option("--negative", default="", help="Negative prompt (ignored by Flux presets).")
@output_option()
@journal_options
@common_options
def txt2img(prompt: str, count: int, seed: int | None, size: str | None, **kwargs: Any) -> None:
    """Generate COUNT images from PROMPT."""
    steps, cfg, ckpt, preset, negative, output = (
        kwargs.pop(k) for k in ("steps", "cfg", "ckpt", "preset", "negative", "output")
    )
    journal = journal_from(kwargs, output)
    opts = dataclasses.replace(options_from(kwargs), journal=journal)
    width, height = parse_size(size)
    check_output_dir(output)
    builder = make_builder(ckpt, steps, cfg, preset)
    try:  # every argument checked once, before any job: a bad size is a usage error
        FluxWorkflowBuilder().build_txt2img(prompt, negative, width, height, seed=seed)
    except WorkflowError as exc:
        if exc.input_name in ("width", "height"):
            raise click.BadParameter(str(exc), param_hint="'--size'") from exc
        raise click.UsageError(str(exc)) from exc
    requests = [
        Txt2ImgRequest(prompt, negative, None if seed is None else seed + i, width, height)
        for i in range(count)
    ]
    labels = [f"#{i + 1}" for i in range(count)]
    execute(
        opts, lambda: run_requests(opts, requests, labels, output, builder, consoles(), journal)
    )


@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@click.argument("prompt")
@click.option(
    "--denoise",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.75,
    show_default=True,
    help="How much of each input to change (0-1].",
)
@click.option(
    "--max-side",
    type=click.IntRange(16),
    default=None,
    help="Downscale inputs whose longer side is over this many pixels (aspect kept).",
)
@click.option("--seed", type=click.IntRange(0), default=None, help="Seed (random by default).")
@click.option("--steps", type=click.IntRange(1), default=None, help="Sampler steps (preset's).")
@click.option("--cfg", type=float, default=None, help="CFG scale (preset's by default).")
@click.option("--ckpt", default=None, help=CKPT_HELP)
@preset_option
@click.option("--negative", default="", help="Negative prompt (ignored by Flux presets).")
@output_option()
@journal_options
@common_options
def img2img(inputs: tuple[str, ...], prompt: str, **kwargs: Any) -> None:
    """Transform each INPUT (files, folders or globs) with PROMPT; outputs named after inputs."""
    denoise, seed, steps, cfg, ckpt, preset, negative, output, max_side = (
        kwargs.pop(k)
        for k in (
            "denoise",
            "seed",
            "steps",
            "cfg",
            "ckpt",
            "preset",
            "negative",
            "output",
            "max_side",
        )
    )
    journal = journal_from(kwargs, output)
    opts = dataclasses.replace(options_from(kwargs), journal=journal)
    paths = expand_inputs(inputs)
    if not paths:
        raise click.UsageError(f"no images found in {' '.join(inputs)}")
    check_input_order(inputs, prompt, paths)
    check_output_dir(output)
    builder = make_builder(ckpt, steps, cfg, preset)
    requests = [
        Img2ImgRequest(path, prompt, denoise, negative, seed, name=path.stem, max_side=max_side)
        for path in paths
    ]
    labels = [str(p) for p in paths]
    execute(
        opts, lambda: run_requests(opts, requests, labels, output, builder, consoles(), journal)
    )


@cli.command()
@click.argument("workflow_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--set",
    "assignments",
    multiple=True,
    help="node.input=value (node: id, title or class type); repeatable.",
)
@click.option(
    "--set-all",
    is_flag=True,
    help="Let a --set title or class that names several nodes change them all.",
)
@output_option()
@journal_options
@common_options
def run(workflow_file: Path, assignments: tuple[str, ...], set_all: bool, **kwargs: Any) -> None:
    """Run your own WORKFLOW_FILE: the file ComfyUI saves (UI format, converted with the
    server's node definitions) or an API-format export."""
    output = kwargs.pop("output")
    journal = journal_from(kwargs, output)
    opts = dataclasses.replace(options_from(kwargs), journal=journal)
    check_output_dir(output)

    def apply(loaded: Workflow) -> None:
        try:
            for assignment in assignments:
                apply_set(loaded, assignment, set_all=set_all, quiet=opts.quiet)
        except DreamgenError as exc:
            raise click.UsageError(str(exc)) from exc

    workflow: Workflow | None = None
    try:
        workflow = Workflow.load(workflow_file)
    except UIWorkflowError:
        workflow = None  # UI format: converted below, with the server's node definitions
    except DreamgenError as exc:
        raise click.UsageError(str(exc)) from exc
    if workflow is not None:
        apply(workflow)  # before any job: a bad --set is a usage error

    async def go() -> Tally:
        loaded = workflow
        if loaded is None:
            from dreamgen_async.comfyui_api import ComfyUIClient

            token = os.environ.get("DREAMGEN_TOKEN") or None
            async with ComfyUIClient(opts.server, token=token) as client:
                loaded = await load_workflow_from_server(workflow_file, client)
            apply(loaded)
        requests = [WorkflowRequest(loaded, name=workflow_file.stem)]
        builder = FluxWorkflowBuilder()
        return await run_requests(
            opts, requests, [str(workflow_file)], output, builder, consoles(), journal
        )

    execute(opts, go)


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
            opts, requests, labels, output, builder or FluxWorkflowBuilder(), consoles(), journal
        ),
    )


def spec_label(spec: dict[str, Any], index: int) -> str:
    """How ``dreamgen resume`` names a recorded request in its output."""
    image = spec.get("image")
    if isinstance(image, dict) and "path" in image:
        return str(image["path"])
    return str(spec.get("name") or f"#{index + 1}")


@cli.command()
@server_option
@json_option
@debug_option
def status(**kwargs: Any) -> None:
    """Is the server reachable? Its version, devices, queue and model files."""
    opts = options_from(kwargs)

    async def check() -> int:
        from dreamgen_async.comfyui_api import ComfyUIClient

        token = os.environ.get("DREAMGEN_TOKEN") or None
        if len(opts.servers) > 1:
            return await status_table(opts, token)
        async with ComfyUIClient(opts.server, token=token) as client:
            stats = await client.system_stats()
            queue = await client.get_queue()
            models = await server_models(client)
        system = stats.get("system", {})
        listing = {
            "checkpoints": models.checkpoints,
            "unets": models.unets,
            "clip": models.clips,
            "vae": models.vaes,
        }
        if opts.json:
            record = {"server": client.safe_url, **stats}
            record["models"] = {kind: list(names) for kind, names in listing.items()}
            click.echo(json.dumps(record))
            return 0
        click.echo(f"server   {client.safe_url} (reachable)")
        click.echo(f"comfyui  {system.get('comfyui_version', '?')}")
        click.echo(f"python   {str(system.get('python_version', '?')).split()[0]}")
        for device in stats.get("devices", []):
            free = device.get("vram_free", 0) / 2**30
            total = device.get("vram_total", 0) / 2**30
            click.echo(f"device   {device.get('name')} ({free:.1f} / {total:.1f} GiB free)")
        click.echo(f"queue    {len(queue.running)} running, {len(queue.pending)} pending")
        for kind, names in listing.items():
            click.echo(f"{kind:<12} {', '.join(names) if names else '(none)'}")
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
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=8188,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port (0: a free one).",
)
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
@click.option(
    "--count", "-n", default=8, show_default=True, type=click.IntRange(1), help="Images to make."
)
@click.option("--step-time", default=0.02, show_default=True, help="Simulated seconds per step.")
@output_option("dreamgen-demo")
@job_options
def demo(count: int, step_time: float, output: Path, **kwargs: Any) -> None:
    """Start the simulator in-process and img2img COUNT sample images (no GPU needed)."""
    opts = options_from(kwargs)

    async def go() -> Tally:
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
                tally = await run_requests(
                    demo_opts,
                    requests,
                    [p.name for p in inputs],
                    output,
                    FluxWorkflowBuilder(),
                    consoles(),
                )
                elapsed = time.perf_counter() - started
        if not opts.quiet:
            click.echo(
                f"wrote {count - tally.failed} images to {output}/ in {elapsed:.2f} s "
                f"(simulated ComfyUI at {server.url}, {opts.concurrency} at a time)",
                err=True,
            )
        return tally

    execute(opts, go)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``dreamgen`` console script and ``python -m dreamgen_async``."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="dreamgen")
