"""``dreamgen worker``: run the jobs producers send through a broker (the ``distributed`` extra)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from typing import TYPE_CHECKING

import click

from dreamgen_async.errors import DreamgenError

if TYPE_CHECKING:
    from dreamgen_async.distributed import Worker

__all__ = ["worker"]


async def _serve(worker: Worker) -> None:
    """Serve until SIGTERM or Ctrl-C: then stop taking jobs and leave the prompts in flight
    on their servers (another worker collects them after ``--takeover``)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):  # not on Windows
            loop.add_signal_handler(sig, stop.set)
    await worker.serve(stop=stop)


@click.command()
@click.option(
    "--broker",
    envvar="DREAMGEN_BROKER",
    required=True,
    help="redis://HOST:PORT/DB (also DREAMGEN_BROKER).",
)
@click.option(
    "--server",
    "servers",
    multiple=True,
    required=True,
    help="A ComfyUI server URL; repeat for several (one pool).",
)
@click.option(
    "--takeover",
    type=click.FloatRange(0.5),
    default=60.0,
    show_default=True,
    help="Seconds after which a dead worker's jobs are taken over.",
)
@click.option(
    "--max-jobs",
    type=click.IntRange(1),
    default=256,
    show_default=True,
    help="Jobs held at once (queued client-side).",
)
def worker(broker: str, servers: tuple[str, ...], takeover: float, max_jobs: int) -> None:
    """Run jobs from the broker on the --server ComfyUI servers until stopped."""
    try:
        from dreamgen_async.distributed import Worker
    except ImportError as exc:  # the extra is not installed
        click.echo(
            f"error: {exc.name} is missing: pip install 'dreamgen_async[distributed]'", err=True
        )
        sys.exit(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("taskiq").setLevel(logging.WARNING)
    try:
        asyncio.run(_serve(Worker(broker, servers, takeover=takeover, max_jobs=max_jobs)))
    except KeyboardInterrupt:
        sys.exit(130)
    except DreamgenError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
