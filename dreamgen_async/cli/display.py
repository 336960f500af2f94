"""What the ``dreamgen`` batch commands print: one line (or JSON record) per job on stdout,
diagnostics on stderr, a live progress display on a terminal."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import click
from rich.console import Console, Group, RenderableType
from rich.live import Live
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
from rich.table import Table

from dreamgen_async.backend import BackendJob
from dreamgen_async.cli.options import Options
from dreamgen_async.errors import AuthenticationError
from dreamgen_async.generator import BatchProgress, GenerationResult, JobFailure
from dreamgen_async.pool import ComfyUIPool, PoolJob
from dreamgen_async.protocol import Event, Executing
from dreamgen_async.protocol import Progress as StepProgress

__all__ = [
    "Display",
    "ServerRows",
    "Tally",
    "consoles",
    "error_text",
    "partial_warning",
]


def consoles() -> tuple[Console, Console]:
    """(stdout, stderr) consoles that never wrap a line: one record per line in pipes."""
    return Console(soft_wrap=True), Console(stderr=True, soft_wrap=True)


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
        self,
        opts: Options,
        labels: Sequence[str],
        console: Console,
        errors: Console,
        pool: ComfyUIPool | None = None,
    ) -> None:
        self.opts = opts
        self.labels = labels
        self.console = console
        self.errors = errors
        self.live = console.is_terminal and not opts.quiet and not opts.json
        self.progress: Progress | None = None
        self.overall: TaskID | None = None
        self.steps: dict[int, TaskID] = {}
        self.pool = pool
        self.rows = ServerRows(pool) if pool is not None else None
        self._live: Live | None = None

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
            self.overall = self.progress.add_task("jobs", total=len(self.labels))
            if self.rows is None:
                self.progress.start()
            else:  # today's totals, then one row per server of the pool
                self._live = Live(
                    Group(self.progress, self.rows), console=self.console, refresh_per_second=10
                )
                self._live.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._live is not None:
            self._live.stop()
        elif self.progress is not None:
            self.progress.stop()

    def job(self, index: int, job: BackendJob, server: str | None) -> None:
        """A request's backend job was submitted (``on_job`` of the batch)."""
        if self.rows is not None and isinstance(job, PoolJob):
            self.rows.jobs[index] = job

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
            if self.rows is not None:
                self.rows.steps[index] = (event.value, event.max)
            task = self.steps.get(index)
            if task is None:
                task = self.progress.add_task(f"  {self.labels[index]}", total=event.max)
                self.steps[index] = task
            self.progress.update(task, completed=event.value, total=event.max)
        elif isinstance(event, Executing) and event.node is None:
            self.finish(index)

    def finish(self, index: int) -> None:
        if self.rows is not None:
            self.rows.jobs.pop(index, None)
            self.rows.steps.pop(index, None)
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
                    server=outcome.server,
                    resubmitted=outcome.resubmitted,
                )
                if dropped:
                    record["warning"] = dropped
            click.echo(json.dumps(record))
        elif isinstance(outcome, JobFailure):
            message = escape(f"{label}: {error_text(outcome.error)}")  # may hold [brackets]
            self.errors.print(f"[red]error[/red] {message}", highlight=False)
        elif not self.opts.quiet:
            paths = ", ".join(str(p) for p in outcome.paths) or "(no output files)"
            earlier = ", done earlier" if outcome.resumed else ""
            if outcome.resubmitted:
                earlier += ", resubmitted: it may also have run elsewhere"
            self.console.print(
                f"ok {label} -> {paths} (seed {outcome.seed}{earlier})",
                highlight=False,
                markup=False,
            )


class ServerRows:
    """One row per server of a pool (state, loaded model, the running job's step, done and
    failed), rendered afresh at each refresh of the live display."""

    def __init__(self, pool: ComfyUIPool) -> None:
        self.pool = pool
        self.jobs: dict[int, PoolJob] = {}  # the batch's unfinished jobs, by request index
        self.steps: dict[int, tuple[float, float]] = {}  # their last step (value, max)

    def running_step(self, url: str) -> str:
        """The step of our job running on ``url`` ("-" when none of ours runs there)."""
        for index, job in self.jobs.items():
            if job.server == url and job.state == "running":
                value, total = self.steps.get(index, (0, 0))
                return f"step {value:g}/{total:g}" if total else "running"
        return "-"

    def __rich__(self) -> RenderableType:
        table = Table(box=None, pad_edge=False, show_edge=False)
        for column in ("server", "state", "model", "job", "done", "failed"):
            table.add_column(column, justify="right" if column in ("done", "failed") else "left")
        for status in self.pool.servers:
            table.add_row(
                escape(status.url),
                status.state,
                escape(status.loaded_model or "-"),
                self.running_step(status.url),
                str(status.done),
                str(status.failed),
            )
        return table


def error_text(error: BaseException) -> str:
    """An error as one line; a refused login without a token says how to give one."""
    text = str(error)
    if isinstance(error, AuthenticationError) and not os.environ.get("DREAMGEN_TOKEN"):
        text += " (no token was sent: set DREAMGEN_TOKEN to the server's token)"
    return text


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
