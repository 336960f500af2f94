"""The ``dreamgen`` commands: parse, call the library, print (see :mod:`dreamgen_async.cli`)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
import tempfile
import time
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
    parse_size,
    preset_option,
    server_option,
)
from dreamgen_async.cli.runner import execute, run_requests
from dreamgen_async.cli.worker import worker as worker_command
from dreamgen_async.errors import DreamgenError, UIWorkflowError, WorkflowError
from dreamgen_async.generator import (
    Img2ImgRequest,
    Txt2ImgRequest,
    WorkflowRequest,
    builder_from_spec,
    request_from_spec,
)
from dreamgen_async.journal import read_journal_meta, read_journal_requests
from dreamgen_async.workflow_builder import FluxWorkflowBuilder, Workflow
from dreamgen_async.workflow_io import load_workflow_from_server, server_models

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


cli.add_command(worker_command)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``dreamgen`` console script and ``python -m dreamgen_async``."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="dreamgen")
