"""``dreamgen worker``: run the jobs producers send through a broker (the ``distributed`` extra)."""

from __future__ import annotations

import asyncio
import logging
import sys

import click

from dreamgen_async.errors import DreamgenError

__all__ = ["worker"]


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
        asyncio.run(Worker(broker, servers, takeover=takeover, max_jobs=max_jobs).serve())
    except KeyboardInterrupt:
        sys.exit(130)
    except DreamgenError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
