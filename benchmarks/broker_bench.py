"""What the broker adds: RemoteBackend + ``dreamgen worker`` against the in-process pool.

    python benchmarks/broker_bench.py            # the issue's scenarios (a quiet machine)
    python benchmarks/broker_bench.py --quick    # a smoke run

Needs ``redis-server`` on PATH (started here on a free loopback port, no persistence) and the
``distributed`` extra. The simulators run in their own process (``dreamgen sim --servers N``),
each worker in its own (``dreamgen worker``).

1. **Overhead**: ``--jobs`` (1,000) zero-time txt2img jobs, ``--concurrency`` at a time, over
   2 simulators: (a) one in-process :class:`ComfyUIPool`; (b) :class:`RemoteBackend` with 2
   workers over the same servers. Per job: latency (submit → outputs in hand; median, p95)
   and the producer's CPU; the difference is what the broker adds.
2. **Queue efficiency**: ``--efficiency-jobs`` (400) 0.2 s jobs on 4 simulators, 2 workers,
   every job submitted at once: Σ server busy time (the servers' own history timestamps) /
   (4 × wall time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp

from dreamgen_async import ComfyUIPool, FluxWorkflowBuilder
from dreamgen_async.distributed import RemoteBackend

PYTHON = sys.executable
seeds = iter(range(1, 10**9))


def graph(steps: int) -> dict[str, Any]:
    """A 64 px txt2img graph; a new seed each time (no cache hits)."""
    builder = FluxWorkflowBuilder("flux1-schnell.safetensors", steps=steps)
    return builder.build_txt2img("a fox", width=64, height=64, seed=next(seeds)).workflow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "Ready to accept connections" in line:
                break
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def farm(count: int, step_time: float) -> Iterator[list[str]]:
    """``dreamgen sim --servers N`` in its own process; yields the URLs."""
    with tempfile.TemporaryDirectory() as root:
        cmd = [
            PYTHON, "-m", "dreamgen_async", "sim", "--port", "0", "--root", root,
            "--servers", str(count), "--step-time", str(step_time),
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stderr is not None
            urls = []
            for _ in range(count):
                line = proc.stderr.readline()
                if "listening" not in line:
                    raise RuntimeError(f"simulator did not start: {line}")
                urls.append(line.split()[4])
            yield urls
        finally:
            proc.terminate()
            proc.wait(10)


@contextmanager
def workers(broker: str, urls: list[str], count: int) -> Iterator[None]:
    procs = []
    try:
        for _ in range(count):
            cmd = [PYTHON, "-m", "dreamgen_async", "worker", "--broker", broker]
            for url in urls:
                cmd += ["--server", url]
            proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
            procs.append(proc)
            assert proc.stderr is not None
            for line in proc.stderr:
                if " ready: " in line:
                    break
            else:
                raise RuntimeError("worker did not start")
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(15)


Runner = Callable[[dict[str, Any]], Awaitable[None]]


async def measure(run: Runner, jobs: int, concurrency: int, steps: int) -> dict[str, float]:
    """``jobs`` jobs, ``concurrency`` at a time: latency and producer CPU per job."""
    latencies: list[float] = []
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            started = time.perf_counter()
            await run(graph(steps))
            latencies.append(time.perf_counter() - started)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(jobs)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {
        "jobs_per_s": jobs / wall,
        "latency_median_ms": 1000 * statistics.median(latencies),
        "latency_p95_ms": 1000 * sorted(latencies)[int(0.95 * len(latencies)) - 1],
        "producer_cpu_ms_per_job": 1000 * cpu / jobs,
        "wall_s": wall,
    }


async def pool_runner(urls: list[str]) -> tuple[ComfyUIPool, Runner]:
    pool = ComfyUIPool(urls, over_queue=1)
    await pool.open()

    async def run(workflow: dict[str, Any]) -> None:
        result = await (await pool.submit(workflow)).result()
        await pool.get_outputs(result)

    return pool, run


async def remote_runner(broker: str) -> tuple[RemoteBackend, Runner]:
    backend = RemoteBackend(broker)
    await backend.open()

    async def run(workflow: dict[str, Any]) -> None:
        result = await (await backend.submit(workflow)).result()
        await backend.get_outputs(result)

    return backend, run


async def busy_seconds(url: str) -> float:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/history", params={"max_items": "100000"}) as response,
    ):
        history = await response.json()
    total = 0.0
    for entry in history.values():
        stamps = {event: data.get("timestamp") for event, data in entry["status"]["messages"]}
        if stamps.get("execution_start") and stamps.get("execution_success"):
            total += (stamps["execution_success"] - stamps["execution_start"]) / 1000
    return total


async def overhead(broker: str, jobs: int, concurrency: int) -> dict[str, Any]:
    with farm(2, 0.0) as urls, workers(broker, urls, 2):
        pool, run_pool = await pool_runner(urls)
        try:
            in_process = await measure(run_pool, jobs, concurrency, 1)
        finally:
            await pool.aclose()
        backend, run_remote = await remote_runner(broker)
        try:
            remote = await measure(run_remote, jobs, concurrency, 1)
        finally:
            await backend.aclose()
    added = remote["latency_median_ms"] - in_process["latency_median_ms"]
    cpu = remote["producer_cpu_ms_per_job"] - in_process["producer_cpu_ms_per_job"]
    return {
        "pool": in_process,
        "remote": remote,
        "added_latency_ms": added,
        "added_cpu_ms": cpu,
    }


async def efficiency(broker: str, jobs: int) -> dict[str, Any]:
    steps, step_time = 4, 0.05  # 0.2 s of server time per job
    with farm(4, step_time) as urls, workers(broker, urls, 2):
        backend, run = await remote_runner(broker)
        try:
            wall = time.perf_counter()
            await asyncio.gather(*(run(graph(steps)) for _ in range(jobs)))
            wall = time.perf_counter() - wall
        finally:
            await backend.aclose()
        busy = sum([await busy_seconds(url) for url in urls])
    return {"jobs": jobs, "wall_s": wall, "busy_s": busy, "efficiency": busy / (4 * wall)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--efficiency-jobs", type=int, default=400)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.efficiency_jobs = 100, 40
    with redis_server() as broker:
        report = {
            "machine": f"{platform.machine()} {platform.system()}, Python "
            f"{platform.python_version()}",
            "command": " ".join(sys.argv),
            "overhead": await overhead(broker, args.jobs, args.concurrency),
            "efficiency": await efficiency(broker, args.efficiency_jobs),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
