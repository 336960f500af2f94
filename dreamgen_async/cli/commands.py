"""The ``dreamgen`` commands: parse, call the library, print (see :mod:`dreamgen_async.cli`)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from dreamgen_async import __version__
from dreamgen_async.cli.display import Tally, consoles
from dreamgen_async.cli.options import (
    CKPT_HELP,
    Options,
    apply_set,
    check_input_order,
    check_output_dir,
    common_options,
    debug_option,
    expand_inputs,
    job_options,
    journal_from,
    journal_options,
    json_option,
    make_builder,
    options_from,
    output_option,
    parse_inputs,
    parse_size,
    preset_option,
    sampler_options,
    server_option,
)
from dreamgen_async.cli.recipes import (
    check_pairs,
    find_pairs,
    parse_pad,
    recipe_options,
    recipes_from,
    run_recipes,
)
from dreamgen_async.cli.runner import builder_for, execute, open_backend, run_requests
from dreamgen_async.cli.worker import worker as worker_command
from dreamgen_async.errors import DreamgenError, UIWorkflowError, WorkflowError
from dreamgen_async.generator import (
    Img2ImgRequest,
    InpaintRequest,
    Txt2ImgRequest,
    UpscaleRequest,
    WorkflowRequest,
    builder_from_spec,
    request_from_spec,
)
from dreamgen_async.journal import read_journal_meta, read_journal_requests
from dreamgen_async.workflow_builder import FluxWorkflowBuilder, Workflow
from dreamgen_async.workflow_io import server_models
from dreamgen_async.workflows.masks import MaskAspectWarning
from dreamgen_async.workflows.ui import convert_ui_workflow

__all__ = [
    "cli",
    "main",
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dreamgen")
def cli() -> None:
    """Generate images with a ComfyUI server (txt2img, img2img, your own workflows)."""


@cli.command()
@click.argument("prompt")
@click.option(
    "--count", "-n", default=1, show_default=True, type=click.IntRange(1), help="Images to make."
)
@click.option("--size", default=None, help="WIDTHxHEIGHT, e.g. 1024x768.")
@sampler_options(seed_help="First seed (then +1 each).")
@recipe_options
@output_option()
@journal_options
@common_options
def txt2img(prompt: str, count: int, seed: int | None, size: str | None, **kwargs: Any) -> None:
    """Generate COUNT images from PROMPT."""
    steps, cfg, ckpt, preset, negative, output = (
        kwargs.pop(k) for k in ("steps", "cfg", "ckpt", "preset", "negative", "output")
    )
    loras, control = recipes_from(kwargs)
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
        Txt2ImgRequest(
            prompt, negative, None if seed is None else seed + i, width, height,
            loras=loras, controlnet=control,
        )
        for i in range(count)
    ]  # fmt: skip
    labels = [f"#{i + 1}" for i in range(count)]
    execute(
        opts,
        lambda: run_recipes(opts, requests, labels, output, builder, journal, loras, control),
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
@sampler_options()
@recipe_options
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
    loras, control = recipes_from(kwargs)
    journal = journal_from(kwargs, output)
    opts = dataclasses.replace(options_from(kwargs), journal=journal)
    paths = expand_inputs(inputs)
    if not paths:
        raise click.UsageError(f"no images found in {' '.join(inputs)}")
    check_input_order(inputs, prompt, paths)
    check_output_dir(output)
    builder = make_builder(ckpt, steps, cfg, preset)
    requests = [
        Img2ImgRequest(
            path, prompt, denoise, negative, seed, name=path.stem, max_side=max_side,
            loras=loras, controlnet=control,
        )
        for path in paths
    ]  # fmt: skip
    labels = [str(p) for p in paths]
    execute(
        opts,
        lambda: run_recipes(opts, requests, labels, output, builder, journal, loras, control),
    )


@cli.command()
@click.argument("image_and_mask", metavar="IMAGE [MASK]", nargs=-1, required=True)
@click.argument("prompt")
@click.option(
    "--mask-suffix",
    default="_mask",
    show_default=True,
    help="IMAGE's mask is the file named like it plus this (frame_0001.png + "
    "frame_0001_mask.png); a folder's mask files are not inpainted themselves.",
)
@click.option(
    "--masks",
    "masks_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="A folder of masks with the images' names (instead of --mask-suffix).",
)
@click.option(
    "--pad",
    default=None,
    metavar="LEFT,TOP,RIGHT,BOTTOM",
    help="Outpaint: extend the canvas by these pixels and paint the border (no mask).",
)
@click.option(
    "--denoise",
    type=click.FloatRange(0, 1, min_open=True),
    default=1.0,
    show_default=True,
    help="How much of the masked area to change (0-1]; 1 redraws it.",
)
@click.option(
    "--grow-mask",
    type=click.IntRange(0, 4096),
    default=0,
    show_default=True,
    help="Pixels to grow each mask by.",
)
@click.option(
    "--feather",
    type=click.IntRange(0, 31),
    default=0,
    show_default=True,
    help="Soft mask edge, in pixels (inside the grown mask).",
)
@click.option(
    "--max-side",
    type=click.IntRange(16),
    default=None,
    help="Downscale images whose longer side is over this many pixels (masks follow).",
)
@sampler_options()
@recipe_options
@output_option()
@journal_options
@common_options
def inpaint(image_and_mask: tuple[str, ...], prompt: str, **kwargs: Any) -> None:
    """Repaint the masked part of IMAGE with PROMPT; every other pixel stays the input's.

    MASK: white = repaint, black = keep (any size: resized). Without MASK, IMAGE's mask is
    found by name (--mask-suffix, --masks), else its alpha is used (transparent = repaint).
    IMAGE may be a folder: frame_0001.png is paired with frame_0001_mask.png.
    """
    mask_suffix, masks_dir, pad_text, denoise, grow, feather, max_side = (
        kwargs.pop(k)
        for k in ("mask_suffix", "masks_dir", "pad", "denoise", "grow_mask", "feather", "max_side")
    )
    seed, steps, cfg, ckpt, preset, negative, output = (
        kwargs.pop(k) for k in ("seed", "steps", "cfg", "ckpt", "preset", "negative", "output")
    )
    loras, control = recipes_from(kwargs)
    pad = parse_pad(pad_text)
    journal = journal_from(kwargs, output)
    opts = dataclasses.replace(options_from(kwargs), journal=journal)
    pairs = find_pairs(image_and_mask, mask_suffix, masks_dir)
    if not pairs:
        raise click.UsageError(f"no images found in {' '.join(image_and_mask)}")
    check_input_order(image_and_mask[:1], prompt, [p.image for p in pairs])
    if pad is not None and any(p.mask is not None for p in pairs):
        raise click.UsageError("--pad outpaints the border it adds: give no masks with it")
    for note in check_pairs(pairs, outpaint=pad is not None):
        click.echo(f"warning: {note}", err=True)
    warnings.filterwarnings("ignore", category=MaskAspectWarning)  # told above, once
    check_output_dir(output)
    builder = make_builder(ckpt, steps, cfg, preset)
    requests = [
        InpaintRequest(
            p.image, p.mask, prompt, denoise, negative, seed, name=p.image.stem,
            max_side=max_side, grow_mask=grow, feather=feather, pad=pad, loras=loras,
            controlnet=control,
        )
        for p in pairs
    ]  # fmt: skip
    labels = [str(p.image) for p in pairs]
    execute(
        opts,
        lambda: run_recipes(opts, requests, labels, output, builder, journal, loras, control),
    )


@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "--model",
    default=None,
    help="Upscale model file on the server (upscale_models); default: the server's first.",
)
@click.option(
    "--max-side",
    type=click.IntRange(16),
    default=None,
    help="Downscale inputs whose longer side is over this many pixels first.",
)
@click.option("--ckpt", default=None, help=CKPT_HELP)
@preset_option
@output_option()
@journal_options
@common_options
def upscale(
    inputs: tuple[str, ...], model: str | None, max_side: int | None, **kwargs: Any
) -> None:
    """Upscale each INPUT (files, folders or globs) with an upscale model (no sampling)."""
    ckpt, preset, output = (kwargs.pop(k) for k in ("ckpt", "preset", "output"))
    journal = journal_from(kwargs, output)
    opts = dataclasses.replace(options_from(kwargs), journal=journal)
    paths = expand_inputs(inputs)
    if not paths:
        raise click.UsageError(f"no images found in {' '.join(inputs)}")
    check_output_dir(output)
    choice = make_builder(ckpt, None, None, preset)
    requests = [UpscaleRequest(path, model, name=path.stem, max_side=max_side) for path in paths]
    labels = [str(p) for p in paths]

    async def go() -> Tally:
        builder = await builder_for(opts, choice)
        try:  # a model the server lacks: a usage error listing what it has
            builder.build_upscale("check.png", model)
        except WorkflowError as exc:
            raise click.BadParameter(str(exc), param_hint="'--model'") from exc
        return await run_requests(opts, requests, labels, output, builder, consoles(), journal)

    execute(opts, go)


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
@click.option(
    "--input",
    "input_values",
    multiple=True,
    metavar="NODE=PATH",
    help="A local image for NODE's 'image' input (a LoadImage; NODE: id, title or class), "
    "uploaded by content hash; repeatable. A folder or glob makes one run per file.",
)
@output_option()
@journal_options
@common_options
def run(
    workflow_file: Path,
    assignments: tuple[str, ...],
    set_all: bool,
    input_values: tuple[str, ...],
    **kwargs: Any,
) -> None:
    """Run your own WORKFLOW_FILE: the file ComfyUI saves (UI format, converted with the
    server's node definitions) or an API-format export."""
    output = kwargs.pop("output")
    journal = journal_from(kwargs, output)
    opts = dataclasses.replace(options_from(kwargs), journal=journal)
    check_output_dir(output)
    inputs = parse_inputs(input_values)

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
        workflow_runs(workflow, workflow_file, inputs)  # and a bad --input

    async def go() -> Tally:
        loaded = workflow
        if loaded is None:  # converted with the nodes of whichever servers answer
            async with open_backend(opts) as backend:
                info = await backend.object_info()
            loaded = await asyncio.to_thread(load_ui_workflow, workflow_file, info)
            apply(loaded)
        requests, labels = workflow_runs(loaded, workflow_file, inputs)
        builder = FluxWorkflowBuilder()
        return await run_requests(opts, requests, labels, output, builder, consoles(), journal)

    execute(opts, go)


def load_ui_workflow(path: Path, object_info: dict[str, Any]) -> Workflow:
    """A UI-format file converted with the server's nodes, its "randomize" seeds kept (so
    each run draws its own, as the frontend does for each queueing). Blocking."""
    data = json.loads(path.read_text(encoding="utf-8"))
    api = convert_ui_workflow(data, object_info, source=str(path), controls=True)
    return Workflow(api, source=str(path))


def input_node(workflow: Workflow, selector: str) -> str:
    """The one node ``--input SELECTOR=...`` names; it must have an ``image`` input."""
    try:
        ids = workflow.select(selector)
    except DreamgenError as exc:
        raise click.UsageError(f"--input {selector}=...: {exc}") from exc
    if len(ids) > 1:
        named = ", ".join(f"{i} ({workflow.class_type(i)})" for i in ids)
        raise click.UsageError(
            f"--input {selector}=...: {selector!r} names {len(ids)} nodes ({named}); give one by id"
        )
    if "image" not in workflow.to_api()[ids[0]].get("inputs", {}):
        raise click.UsageError(
            f"--input {selector}=...: node {ids[0]} ({workflow.class_type(ids[0])}) has no "
            "'image' input (use a LoadImage node)"
        )
    return ids[0]


def workflow_runs(
    workflow: Workflow, workflow_file: Path, inputs: Sequence[tuple[str, list[Path]]]
) -> tuple[list[WorkflowRequest], list[str]]:
    """The runs of ``dreamgen run``: one, or one per file of the ``--input`` naming several
    (named ``<workflow>_<input file>``); with their labels."""
    nodes = [(input_node(workflow, selector), paths) for selector, paths in inputs]
    count = max((len(paths) for _, paths in nodes), default=1)
    requests: list[WorkflowRequest] = []
    labels: list[str] = []
    for i in range(count):
        files = {node: paths[i] if len(paths) > 1 else paths[0] for node, paths in nodes}
        varying = next((paths[i] for _, paths in nodes if len(paths) > 1), None)
        name = workflow_file.stem if varying is None else f"{workflow_file.stem}_{varying.stem}"
        requests.append(WorkflowRequest(workflow, name=name, inputs=files or None))
        labels.append(str(workflow_file if varying is None else varying))
    return requests, labels


@cli.command()
@click.argument("journal", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@common_options
def resume(journal: Path, **kwargs: Any) -> None:
    """Finish the batch recorded in JOURNAL (its servers, folder, model and requests).

    Done items are skipped, prompts an earlier run posted are collected (each from the
    server it was posted to), the rest run. --server overrides the journal's servers only
    when given.
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
        servers = meta.get("servers") or [meta.get("server", opts.server)]
        opts = dataclasses.replace(opts, server=servers[0], servers=tuple(servers))
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
            models = await server_models(client)
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
        models=[*models.checkpoints, *models.unets],
    )
    return row


async def status_table(opts: Options, token: str | None) -> int:
    """``dreamgen status`` with several servers: one row each, then each one's models;
    1 if any is down."""
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
                else escape(str(row.get("error", "")))
            )
            table.add_row(
                row["server"],
                row["state"],
                row.get("comfyui", "-"),
                row.get("device", "-"),
                queue,
            )
        out = Console()
        if not out.is_terminal:  # a pipe: one line per server, nothing cut
            out = Console(width=100_000)
        out.print(table)
        for row in rows:
            if row["state"] == "up":
                names = ", ".join(row["models"]) or "(none)"
                click.echo(f"models of {row['server']}: {names}")
    up = sum(row["state"] == "up" for row in rows)
    if not opts.json:
        click.echo(f"{up} of {len(rows)} servers up")
    return 0 if up == len(rows) else 1


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


cli.add_command(worker_command)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``dreamgen`` console script and ``python -m dreamgen_async``."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="dreamgen")
