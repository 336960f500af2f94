"""Running a batch for a command, and mapping its outcome to an exit status.

Exit status: 0 when every job succeeded, 1 when any failed (or the server could not be used),
2 for usage errors, 3 when the server dropped some outputs (a partial prompt), 130 after
Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from dreamgen_async.cli.display import Display, Tally
from dreamgen_async.cli.options import ModelChoice, Options
from dreamgen_async.errors import ConfigError, DreamgenError
from dreamgen_async.generator import (
    DreamGenerator,
    JobFailure,
    Request,
)
from dreamgen_async.journal import read_journal_meta
from dreamgen_async.pool import ComfyUIPool
from dreamgen_async.workflow_builder import FluxWorkflowBuilder
from dreamgen_async.workflow_io import builder_from_server

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_PARTIAL",
    "EXIT_USAGE",
    "execute",
    "resolve_builder",
    "run_requests",
]


log = logging.getLogger("dreamgen_async.cli")


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
        if opts.broker is not None:
            from dreamgen_async.distributed import RemoteBackend

            journal = None  # the job records live on the broker
            # Job ids derived from the output folder: a rerun collects, never runs again.
            batch = await asyncio.to_thread(os.path.abspath, output)
            backend = await stack.enter_async_context(RemoteBackend(opts.broker, batch=batch))
            gen = DreamGenerator(backend, output_dir=output, builder=builder)  # type: ignore[arg-type]
        elif len(opts.servers) > 1:
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
