"""The ``dreamgen`` options: the shared option groups, their parsing, and the usage checks
made before any job runs (a usage error is exit status 2)."""

from __future__ import annotations

import glob
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import click

from dreamgen_async.errors import DreamgenError
from dreamgen_async.workflow_builder import FluxWorkflowBuilder, Workflow, parse_set_assignment
from dreamgen_async.workflows import PRESETS, PresetName

__all__ = [
    "CKPT_HELP",
    "DEFAULT_SERVER",
    "IMAGE_SUFFIXES",
    "JOURNAL_NAME",
    "OUTPUT_FILE_SUFFIXES",
    "PRESET_HELP",
    "ModelChoice",
    "Options",
    "apply_set",
    "check_input_order",
    "check_inputs_exist",
    "check_output_dir",
    "common_options",
    "debug_option",
    "expand_inputs",
    "job_options",
    "journal_from",
    "journal_options",
    "json_option",
    "make_builder",
    "options_from",
    "output_option",
    "parse_inputs",
    "parse_size",
    "preset_option",
    "sampler_options",
    "server_option",
]


DEFAULT_SERVER = "http://127.0.0.1:8188"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
OUTPUT_FILE_SUFFIXES = IMAGE_SUFFIXES | {".mp4", ".webm", ".flac", ".mp3", ".wav", ".txt"}
F = TypeVar("F", bound=Callable[..., Any])
MIN_SIDE = 16  # ComfyUI's smallest latent side


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
    join_timeout: float = 60.0  # a pool's: see ComfyUIPool(join_timeout=)
    broker: str | None = None  # --broker: jobs go to `dreamgen worker` processes
    queue_timeout: float | None = None  # --queue-timeout; --timeout is the run limit
    timeline: Path | None = None  # --timeline: the run's timeline SVG


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
                help="Seconds each job may run on the server, from the moment it starts "
                "(time waiting in a queue does not count); then it is interrupted and fails.",
            ),
            click.option(
                "--queue-timeout",
                type=click.FloatRange(0, min_open=True),
                default=None,
                help="Seconds each job may wait before it starts (for a slot here, then in "
                "the server's queue); then it is removed from the queue and fails.",
            ),
            click.option(
                "--join-timeout",
                type=click.FloatRange(0),
                default=60.0,
                show_default=True,
                help="Several servers: seconds a job that no joined server can run waits for "
                "the down ones, then fails naming each server and why.",
            ),
            click.option(
                "--timeline",
                type=click.Path(dir_okay=False, path_type=Path),
                default=None,
                help="Write the run's timeline (one lane per server: busy, idle, model loads, "
                "coloured by checkpoint) to this SVG file.",
            ),
            json_option,
            click.option(
                "--quiet", "-q", is_flag=True, help="No line per successful job; only problems."
            ),
            debug_option,
        ],
    )


def broker_option(func: F) -> F:
    """``--broker`` (batch commands): jobs go to ``dreamgen worker`` processes."""
    return click.option(
        "--broker",
        envvar="DREAMGEN_BROKER",
        default=None,
        help="redis://HOST:PORT/DB (env DREAMGEN_BROKER): send the jobs to `dreamgen worker` "
        "processes listening there instead of a server; files are written here as usual.",
    )(func)


def common_options(func: F) -> F:
    """Options every job command that talks to a server takes."""
    return _apply(func, [server_option, broker_option, job_options])


def options_from(kwargs: dict[str, Any]) -> Options:
    servers = tuple(
        url.strip() for value in kwargs.pop("server", ()) for url in value.split(",") if url.strip()
    ) or (DEFAULT_SERVER,)
    seen: dict[str, str] = {}
    for url in servers:
        key = _server_key(url)
        if key in seen:
            also = f" (as {seen[key]})" if seen[key] != url else ""
            raise click.UsageError(f"--server {url} is given twice{also}")
        seen[key] = url
    opts = Options(
        server=servers[0],
        servers=servers,
        join_timeout=kwargs.pop("join_timeout", 60.0),
        concurrency=kwargs.pop("concurrency", 1),
        timeout=kwargs.pop("timeout", None),
        queue_timeout=kwargs.pop("queue_timeout", None),
        json=kwargs.pop("json_lines", False),
        quiet=kwargs.pop("quiet", False),
        debug=kwargs.pop("debug", False),
        broker=kwargs.pop("broker", None),
        timeline=kwargs.pop("timeline", None),
    )
    logging.basicConfig(
        level=logging.DEBUG if opts.debug else logging.ERROR,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not opts.debug:  # a server of a pool going down or coming back: one line each
        logging.getLogger("dreamgen_async.pool.health").setLevel(logging.WARNING)
    return opts


def _server_key(url: str) -> str:
    """A ``--server`` as compared for duplicates: no credentials, case or trailing slash."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    host = (parts.hostname or "").lower()
    try:
        port = parts.port if parts.port is not None else {"https": 443}.get(parts.scheme, 80)
    except ValueError:  # a bad port: the client reports it
        return url
    return f"{parts.scheme.lower()}://{host}:{port}{parts.path.rstrip('/')}"


def parse_size(text: str | None) -> tuple[int | None, int | None]:
    if text is None:
        return None, None
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not WIDTHxHEIGHT, e.g. 1024x768", param_hint="'--size'"
        ) from None
    if min(width, height) < MIN_SIDE:
        raise click.BadParameter(
            f"{text!r}: each side must be at least {MIN_SIDE} pixels (the server's minimum)",
            param_hint="'--size'",
        )
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


@dataclass(frozen=True)
class ModelChoice:
    """``--ckpt`` / ``--preset`` / ``--steps`` / ``--cfg``: resolved against the server."""

    ckpt: str | None
    preset: PresetName | None
    steps: int | None
    cfg: float | None


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
    """``img2img "a prompt" frames/`` (arguments swapped) is a usage error with the order;
    so is any input that does not exist."""
    prompt_is_input = Path(prompt).exists() or bool(
        any(ch in prompt for ch in "*?[") and glob.glob(prompt, recursive=True)
    )
    missing = [p for p in paths if not p.exists()]
    if prompt_is_input and missing:
        raise click.UsageError(
            f"{str(missing[0])!r}: no such file, and the prompt {prompt!r} is a file or "
            "folder: the order is `dreamgen img2img INPUTS... PROMPT` (the prompt comes last)"
        )
    check_inputs_exist(paths)


def check_inputs_exist(paths: Sequence[Path]) -> None:
    """A missing input is a usage error (exit status 2), before any job runs."""
    missing = [p for p in paths if not p.exists()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise click.UsageError(f"{missing[0]}: no such file{more}")


def parse_inputs(values: Sequence[str]) -> list[tuple[str, list[Path]]]:
    """``--input NODE=PATH`` values: each node with its files (a folder or glob: several).

    At most one of them may name several files: the runs are one per file of that one.
    """
    parsed: list[tuple[str, list[Path]]] = []
    for value in values:
        node, sep, pattern = value.partition("=")
        if not sep or not node or not pattern:
            raise click.BadParameter(
                f"{value!r} is not NODE=PATH (NODE: an id, title or class type)",
                param_hint="'--input'",
            )
        paths = expand_inputs([pattern])
        if not paths:
            raise click.UsageError(f"--input {value!r}: no images found in {pattern}")
        check_inputs_exist(paths)
        parsed.append((node, paths))
    if sum(len(paths) > 1 for _, paths in parsed) > 1:
        raise click.UsageError("only one --input may name several files (one run per file)")
    return parsed


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


def sampler_options(seed_help: str = "Seed (random by default).") -> Callable[[F], F]:
    """``--seed --steps --cfg --ckpt --preset --negative``: what every sampling command takes."""
    options: list[Callable[[F], F]] = [
        click.option("--seed", type=click.IntRange(0), default=None, help=seed_help),
        click.option(
            "--steps", type=click.IntRange(1), default=None, help="Sampler steps (preset's)."
        ),
        click.option("--cfg", type=float, default=None, help="CFG scale (preset's by default)."),
        click.option("--ckpt", default=None, help=CKPT_HELP),
        preset_option,
        click.option("--negative", default="", help="Negative prompt (ignored by Flux presets)."),
    ]

    def decorate(func: F) -> F:
        for option in reversed(options):  # applied bottom-up: listed order in --help
            func = option(func)
        return func

    return decorate


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
