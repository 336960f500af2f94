"""Running a batch for a command, and mapping its outcome to an exit status.

Exit status: 0 when every job succeeded, 1 when any failed (or the server could not be used),
2 for usage errors (an unwritable output or journal folder among them, found before anything
is posted), 3 when the server dropped some outputs (a partial prompt), 130 after Ctrl-C
(SIGINT), 143 after SIGTERM. Either signal takes our prompts off the server first (pending
ones deleted, the running one interrupted) and keeps the journal; a second one exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from dreamgen_async.backend import Backend
from dreamgen_async.cli.display import Display, Tally, error_text
from dreamgen_async.cli.options import ModelChoice, Options
from dreamgen_async.comfyui_api import ComfyUIClient
from dreamgen_async.errors import ConfigError, DreamgenError, StorageError
from dreamgen_async.generator import (
    DreamGenerator,
    GenerationResult,
    JobFailure,
    Request,
)
from dreamgen_async.journal import read_journal_meta
from dreamgen_async.placement import requirements
from dreamgen_async.pool import ComfyUIPool
from dreamgen_async.signals import SignalExit, stop_on_signals
from dreamgen_async.storage import check_writable
from dreamgen_async.timeline import Span, SpanRecorder, write_svg
from dreamgen_async.workflow_builder import FluxWorkflowBuilder
from dreamgen_async.workflow_io import builder_from_server

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_PARTIAL",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "builder_for",
    "check_folders",
    "execute",
    "open_backend",
    "resolve_builder",
    "run_requests",
    "single_server_spans",
    "write_timeline",
]


log = logging.getLogger("dreamgen_async.cli")


@contextlib.asynccontextmanager
async def open_backend(
    opts: Options, *, client_id: str | None = None, span_history: int = 1000
) -> AsyncIterator[Backend]:
    """The one backend of a command: a client for one ``--server``, a pool for several
    (whichever servers answer; a dead one rejoins when it can; ``span_history``: the spans
    it keeps per server, for ``--timeline``)."""
    token = os.environ.get("DREAMGEN_TOKEN") or None
    backend: Backend
    if len(opts.servers) > 1:
        backend = ComfyUIPool(
            opts.servers,
            token=token,
            on_partial="ignore",
            join_timeout=opts.join_timeout,
            span_history=span_history,
        )
    else:
        backend = ComfyUIClient(
            opts.server,
            token=token,
            max_in_flight=64,
            on_partial="ignore",  # shown as a warning line per job, not a Python warning
            client_id=client_id,
        )
    await backend.open()
    try:
        yield backend
    finally:
        await backend.aclose()


async def resolve_builder(backend: Backend, choice: ModelChoice) -> FluxWorkflowBuilder:
    """Ask the backend which models it has and build the fitting loader layout."""
    return await builder_from_server(
        backend,
        choice.ckpt,
        preset=choice.preset,
        steps=choice.steps,
        cfg=choice.cfg,
    )


async def builder_for(opts: Options, choice: ModelChoice) -> FluxWorkflowBuilder:
    """:func:`resolve_builder` on a backend of its own (a command that checks names first)."""
    async with open_backend(opts) as backend:
        return await resolve_builder(backend, choice)


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

    One backend runs it (a pool for several ``--server``s), with the journal either way.
    With a journal, a single server's client takes the journal's client_id (so the events of
    prompts an earlier run posted reach it; a pool adopts each under its own) and the batch
    resumes where the journal left off.
    """
    if opts.broker is not None:
        journal = None  # the job records live on the broker
    await asyncio.to_thread(check_folders, output, journal, opts.timeline)
    client_id = None
    if journal is not None:
        meta = await asyncio.to_thread(read_journal_meta, journal)
        client_id = meta.get("client_id")
        if not opts.quiet:
            consoles[1].print(run_kind(journal, meta), highlight=False, markup=False)
    tally = Tally()
    pool: ComfyUIPool | None = None
    results: list[GenerationResult] = []
    async with contextlib.AsyncExitStack() as stack:
        backend: Backend
        if opts.timeline is not None:
            stack.callback(lambda: write_timeline(opts, pool, results))
        if opts.broker is not None:
            from dreamgen_async.distributed import RemoteBackend

            # Job ids derived from the output folder: a rerun collects, never runs again.
            batch = await asyncio.to_thread(os.path.abspath, output)
            backend = await stack.enter_async_context(RemoteBackend(opts.broker, batch=batch))
        else:
            # --timeline draws the whole run: room for every job's spans (idle, load, busy).
            history = max(1000, 3 * len(requests)) if opts.timeline is not None else 1000
            backend = await stack.enter_async_context(
                open_backend(opts, client_id=client_id, span_history=history)
            )
            pool = backend if isinstance(backend, ComfyUIPool) else None
        if isinstance(builder, ModelChoice):  # the models of whichever servers answer
            builder = await resolve_builder(backend, builder)
        gen = DreamGenerator(backend, output_dir=output, builder=builder)
        with Display(opts, labels, *consoles, pool=pool) as display:
            outcomes = gen.enumerate_completed(
                requests,
                opts.concurrency,
                True,
                display.event,
                display.batch,
                journal=journal,
                max_run_time=opts.timeout,
                queue_timeout=opts.queue_timeout,
                on_job=display.job if pool is not None else None,
            )
            async for index, outcome in outcomes:
                if isinstance(outcome, JobFailure):
                    tally.failed += 1
                else:
                    results.append(outcome)
                    if outcome.node_errors:
                        tally.partial += 1
                display.outcome(index, outcome)
    return tally


def write_timeline(
    opts: Options, pool: ComfyUIPool | None, results: Sequence[GenerationResult]
) -> None:
    """``--timeline``: the run's spans as an SVG, one lane per server (blocking, small).

    A pool records its servers' spans itself (model loads split out with its learned job
    times); with one server the lane is built from the results' execution times, coloured
    by checkpoint (a model switch is not split out: one client learns no job times).
    """
    assert opts.timeline is not None
    spans = pool.spans() if pool is not None else single_server_spans(opts.server, results)
    write_svg(spans, opts.timeline, title=f"dreamgen: {len(results)} job(s)")


def single_server_spans(
    server: str, results: Iterable[GenerationResult]
) -> dict[str, tuple[Span, ...]]:
    """One lane: each result that ran on ``server`` (cache hits and resumed jobs did not)
    as a busy span, in the order the jobs started, with the idle time between them."""
    recorder = SpanRecorder(capacity=1_000_000)
    recorder.add_server(server)
    ran = [
        (r.timings.started, r.timings.finished, r)
        for r in results
        if r.prompt_id is not None
        and r.timings.started is not None
        and r.timings.finished is not None
    ]
    ran.sort(key=lambda t: (t[0], t[1]))
    for started, finished, r in ran:
        model = requirements(r.workflow).model
        recorder.job(server, started, finished, model=model, prompt_id=r.prompt_id)
    return recorder.spans()


def check_folders(output: Path, journal: Path | None, timeline: Path | None = None) -> None:
    """Before anything is posted: the output folder, the journal's and the timeline's must
    be writable.

    Blocking. Raises ``click.UsageError`` (exit status 2) naming the folder.
    """
    folders = [output] if journal is None else [output, journal.parent]
    if timeline is not None:
        folders.append(timeline.absolute().parent)
    try:
        for folder in folders:
            check_writable(folder)
    except StorageError as exc:
        raise click.UsageError(f"{exc}; nothing was sent to the server") from exc


def run_kind(journal: Path, meta: dict[str, Any]) -> str:
    """What a journaled run is, from its journal's record (printed on stderr at the start)."""
    if not meta:
        return f"new batch, recorded in {journal}"
    if meta.get("run") is not None and meta.get("run_done"):
        return (
            f"run again: the batch in {journal} finished; requests without a seed make new "
            "images, those with a seed are done earlier"
        )
    return f"resuming the unfinished batch in {journal}: done items are skipped"


EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


async def _until_signal(coro_factory: Callable[[], Any]) -> Any:
    """SIGINT and SIGTERM cancel the run (its cleanup takes our prompts back), then exit."""
    with stop_on_signals():
        return await coro_factory()


def _stopped(opts: Options, what: str, status: int) -> None:
    click.echo(
        f"{what}: our pending prompts were removed from the server "
        "(and the running one interrupted)",
        err=True,
    )
    if opts.journal is not None:
        click.echo(
            f"the journal {opts.journal} keeps the batch: rerun the same command, or "
            f"`dreamgen resume {opts.journal}`, to finish it",
            err=True,
        )
    sys.exit(status)


def execute(opts: Options, coro_factory: Callable[[], Any]) -> None:
    """Run a coroutine; map outcomes to exit statuses and errors to one readable line."""
    try:
        result = asyncio.run(_until_signal(coro_factory))
    except KeyboardInterrupt:  # Ctrl-C before the handlers were installed
        _stopped(opts, "interrupted", EXIT_INTERRUPTED)
        return
    except SignalExit as exc:
        name = "interrupted" if exc.signum == signal.SIGINT else "stopped by SIGTERM"
        _stopped(opts, name, 128 + exc.signum)
        return
    except ConfigError as exc:  # a bad --server or option value: a usage error
        if opts.debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except DreamgenError as exc:
        if opts.debug:
            raise
        click.echo(f"error: {error_text(exc)}", err=True)
        sys.exit(EXIT_FAILED)
    if isinstance(result, int) and not isinstance(result, bool) and result:
        sys.exit(result)  # a command's own exit status (status: a server is down)
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
