"""ComfyUIPool against two baselines on simulated GPUs of different speeds.

    python benchmarks/pool_bench.py                    # both scenarios (~7 min on 2 cores)
    python benchmarks/pool_bench.py --scenario 120 --runs 3
    python benchmarks/pool_bench.py --quick            # a smoke run (~30 s)

Scenarios: 4 simulated servers with speeds 2x, 1x, 1x, 0.5x, ``model_load_time`` 1 s, 400
(a long batch) or 120 (a short one) txt2img jobs over 3 interleaved checkpoints (A, B, C, A,
B, C, ...), submitted at once. The simulators run in their own process (``dreamgen sim
--servers 4``), started afresh for each strategy (no model loaded). Strategies, all with at
most 2 of our jobs per server:

- ``pool``: :class:`ComfyUIPool` (late binding, model affinity, load and speed);
- ``round-robin``: job *i* to server *i mod 4* (what a client-side balancer does);
- ``jsq``: join-shortest-queue, late-bound: each job, in order, goes to the server with the
  fewest of our jobs as soon as one has a free slot (balancing without affinity).

Reported, from the servers' own history timings: makespan (first submit to last result),
model loads (first loads included) and switches (loads beyond each server's first), each
server's busy fraction, and the lower bound Σ work / Σ speed + one model load; with
``--runs N``, each strategy's median run. Each strategy's timeline (one lane per server:
busy, idle and model-load spans coloured by checkpoint, from the servers' own timings) is
written to ``--timelines`` as ``pool-<jobs>-<strategy>.svg``. With the 400-job scenario, a
last measurement compares the pool's client CPU per job against one ComfyUIClient's, on
zero-time servers.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp

from dreamgen_async import (
    ComfyUIClient,
    ComfyUIPool,
    FluxWorkflowBuilder,
    PromptResult,
    RetryPolicy,
)
from dreamgen_async.timeline import Span, SpanRecorder, write_svg
from dreamgen_async.workflows import PresetName

HERE = Path(__file__).parent
MODELS = ("flux1-schnell.safetensors", "flux1-dev.safetensors", "sd_xl_base_1.0.safetensors")
SPEEDS = (2.0, 1.0, 1.0, 0.5)
seeds = itertools.count(1)


PRESETS: dict[str, PresetName] = {
    MODELS[0]: "flux-schnell",
    MODELS[1]: "flux-dev",
    MODELS[2]: "sdxl",
}


def graph(ckpt: str, steps: int) -> dict[str, Any]:
    """A small txt2img graph (64 px) for ``ckpt``; a new seed each time (no cache hits)."""
    builder = FluxWorkflowBuilder(ckpt, preset=PRESETS[ckpt], steps=steps)
    return builder.build_txt2img("a fox", width=64, height=64, seed=next(seeds)).workflow


@contextmanager
def farm(speeds: tuple[float, ...], step_time: float, load_time: float) -> Iterator[list[str]]:
    """``dreamgen sim --servers N`` in its own process; yields the URLs."""
    with tempfile.TemporaryDirectory() as root:
        cmd = [
            sys.executable, "-m", "dreamgen_async", "sim", "--port", "0", "--root", root,
            "--servers", str(len(speeds)), "--speeds", ",".join(map(str, speeds)),
            "--step-time", str(step_time), "--model-load-time", str(load_time),
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stderr is not None
            urls = []
            for _ in speeds:
                line = proc.stderr.readline()
                if "listening" not in line:
                    raise RuntimeError(f"simulator did not start: {line}")
                urls.append(line.split()[4])
            yield urls
        finally:
            proc.terminate()
            proc.wait(10)


async def history(url: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/history", params={"max_items": "100000"}) as response,
    ):
        data: dict[str, Any] = await response.json()
        return data


# ---------------------------------------------------------------------------- strategies

Run = Callable[[list[str], list[dict[str, Any]]], Awaitable[list[PromptResult]]]
FAST_RETRY = RetryPolicy(attempts=3, initial_delay=0.01, max_delay=0.1)


async def with_pool(urls: list[str], jobs: list[dict[str, Any]]) -> list[PromptResult]:
    async with ComfyUIPool(urls, over_queue=1) as pool:
        return await asyncio.gather(*(pool.run(job) for job in jobs))


async def round_robin(urls: list[str], jobs: list[dict[str, Any]]) -> list[PromptResult]:
    clients = [ComfyUIClient(url, max_in_flight=2) for url in urls]
    for client in clients:
        await client.open()
    try:
        return await asyncio.gather(
            *(clients[i % len(clients)].run(job) for i, job in enumerate(jobs))
        )
    finally:
        for client in clients:
            await client.aclose()


async def join_shortest_queue(urls: list[str], jobs: list[dict[str, Any]]) -> list[PromptResult]:
    clients = [ComfyUIClient(url, max_in_flight=2) for url in urls]
    for client in clients:
        await client.open()
    outstanding = [0] * len(clients)
    freed = asyncio.Event()

    async def one(index: int, job: dict[str, Any]) -> PromptResult:
        try:
            return await clients[index].run(job)
        finally:
            outstanding[index] -= 1
            freed.set()

    try:
        tasks = []
        for job in jobs:
            while min(outstanding) >= 2:
                freed.clear()
                await freed.wait()
            index = outstanding.index(min(outstanding))
            outstanding[index] += 1
            tasks.append(asyncio.create_task(one(index, job)))
        return await asyncio.gather(*tasks)
    finally:
        for client in clients:
            await client.aclose()


STRATEGIES: dict[str, Run] = {
    "pool": with_pool,
    "round-robin": round_robin,
    "jsq": join_shortest_queue,
}


async def measure(
    name: str, jobs: int, step_time: float, steps: int, load_time: float
) -> dict[str, Any]:
    with farm(SPEEDS, step_time, load_time) as urls:
        work = [graph(MODELS[i % len(MODELS)], steps) for i in range(jobs)]
        started = time.time()
        results = await STRATEGIES[name](urls, work)
        makespan = time.time() - started
        assert len({r.prompt_id for r in results}) == jobs
        per_server = []
        plain_work = 0.0
        recorder = SpanRecorder(capacity=jobs)
        for number, (url, speed) in enumerate(zip(urls, SPEEDS, strict=True)):
            entries = [e["sim_timings"] for e in (await history(url)).values()]
            lane = f"server {number + 1} ({speed:g}x)"
            recorder.add_server(lane)
            for t in sorted(entries, key=lambda t: float(t["started"])):
                took = t["finished"] - t["started"]
                recorder.job(
                    lane,
                    t["started"],
                    t["finished"],
                    model=t["model"],
                    loaded=t["model_load"] > 0,
                    plain=took - t["model_load"],
                )
            busy = sum(t["finished"] - t["started"] for t in entries)
            loads = sum(1 for t in entries if t["model_load"] > 0)
            plain_work += sum(
                (t["finished"] - t["started"] - t["model_load"]) * speed for t in entries
            )
            per_server.append(
                {
                    "url": url,
                    "speed": speed,
                    "jobs": len(entries),
                    "loads": loads,
                    "busy": round(busy / makespan, 3),
                }
            )
    bound = plain_work / sum(SPEEDS) + load_time
    loads = sum(s["loads"] for s in per_server)
    return {
        "strategy": name,
        "makespan_s": round(makespan, 2),
        "lower_bound_s": round(bound, 2),
        "vs_bound": round(makespan / bound, 3),
        "model_loads": loads,
        "model_switches": loads - sum(1 for s in per_server if s["loads"]),
        "servers": per_server,
        "started": started,
        "spans": recorder.spans(),
    }


def timeline(run: dict[str, Any], jobs: int, directory: Path) -> Path:
    """Write ``run``'s timeline (its spans, from the servers' own timings) as SVG."""
    spans: dict[str, tuple[Span, ...]] = run["spans"]
    title = (
        f"{run['strategy']}: {jobs} jobs, makespan {run['makespan_s']} s "
        f"({run['vs_bound']}x the lower bound), {run['model_loads']} model loads"
    )
    path = directory / f"pool-{jobs}-{run['strategy']}.svg"
    return write_svg(spans, path, title=title, start=run["started"])


async def overhead(jobs: int, rounds: int = 5) -> dict[str, Any]:
    """Client CPU per job: the pool over 4 zero-time servers vs one client on one.

    ``rounds`` interleaved rounds of each (client, pool, client, pool, ...); the medians are
    compared, since on a shared machine one round can be off by 20 % either way.
    """
    samples: dict[str, list[float]] = {"client": [], "pool": []}
    with farm((1.0,) * 4, 0.0, 0.0) as urls:
        for name in ("client", "pool") * rounds:
            work = [graph(MODELS[0], 1) for _ in range(jobs)]
            cpu = time.process_time()
            if name == "pool":
                async with ComfyUIPool(urls, over_queue=1) as pool:
                    await asyncio.gather(*(pool.run(job) for job in work))
            else:
                async with ComfyUIClient(urls[0], max_in_flight=8) as client:
                    await asyncio.gather(*(client.run(job) for job in work))
            samples[name].append((time.process_time() - cpu) / jobs * 1000)
    client_ms, pool_ms = (statistics.median(samples[k]) for k in ("client", "pool"))
    return {
        "jobs": jobs,
        "rounds": rounds,
        "client_cpu_ms_per_job": round(client_ms, 3),
        "pool_cpu_ms_per_job": round(pool_ms, 3),
        "ratio": round(pool_ms / client_ms, 2),
        "samples_ms": {k: [round(v, 3) for v in vs] for k, vs in samples.items()},
    }


def markdown(report: dict[str, Any]) -> str:
    p = report["params"]
    runs = report["runs"]
    lines = [
        f"{p['jobs']} jobs over {len(MODELS)} interleaved checkpoints, servers at speeds "
        f"{', '.join(f'{s:g}x' for s in SPEEDS)}, model_load_time {p['load_time']} s, "
        f"{p['steps']} steps x {p['step_time']} s at 1x"
        + (f"; each strategy's median of {p['runs']} runs." if p["runs"] > 1 else "."),
        "",
        "| strategy | makespan | lower bound | makespan / bound | model loads (switches) "
        "| busy (2x, 1x, 1x, 0.5x) | jobs per server |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    for r in runs:
        busy = ", ".join(f"{s['busy']:.0%}" for s in r["servers"])
        share = ", ".join(str(s["jobs"]) for s in r["servers"])
        lines.append(
            f"| {r['strategy']} | {r['makespan_s']} s | {r['lower_bound_s']} s | "
            f"{r['vs_bound']} | {r['model_loads']} ({r['model_switches']}) | {busy} | {share} |"
        )
    if p["runs"] > 1:
        for name, ratios in report["all_vs_bound"].items():
            lines += ["", f"{name}, makespan / bound of each run: {', '.join(map(str, ratios))}"]
    pool = runs[0]
    for r in runs[1:]:
        lines.append("")
        lines.append(f"pool vs {r['strategy']}: {r['makespan_s'] / pool['makespan_s']:.1f}x faster")
    o = report.get("overhead")
    if o:
        lines += [
            "",
            f"Client CPU per job on zero-time servers ({o['jobs']} jobs, median of "
            f"{o['rounds']} interleaved rounds): one ComfyUIClient "
            f"{o['client_cpu_ms_per_job']} ms, the pool over 4 servers "
            f"{o['pool_cpu_ms_per_job']} ms (ratio {o['ratio']}).",
        ]
    return "\n".join(lines)


async def scenario(
    jobs: int, load_time: float, steps: int, step_time: float, args: argparse.Namespace
) -> dict[str, Any]:
    """Every strategy ``args.runs`` times (interleaved), each one's median run kept."""
    names = args.strategies.split(",")
    every: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for _ in range(args.runs):
        for name in names:
            result = await measure(name, jobs, step_time, steps, load_time)
            shown = {k: v for k, v in result.items() if k not in ("spans", "started")}
            print(json.dumps(shown), file=sys.stderr)
            every[name].append(result)
    runs = []
    for results in every.values():
        median = sorted(results, key=lambda r: float(r["makespan_s"]))[(len(results) - 1) // 2]
        if args.timelines is not None:
            args.timelines.mkdir(parents=True, exist_ok=True)
            timeline(median, jobs, args.timelines)
        runs.append({k: v for k, v in median.items() if k not in ("spans", "started")})
    params = {
        "jobs": jobs,
        "load_time": load_time,
        "steps": steps,
        "step_time": step_time,
        "runs": args.runs,
    }
    return {
        "params": params,
        "runs": runs,
        "all_vs_bound": {name: [r["vs_bound"] for r in rs] for name, rs in every.items()},
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 jobs, 0.25 s loads")
    parser.add_argument("--scenario", choices=("400", "120", "all"), default="all")
    parser.add_argument("--runs", type=int, default=1, help="Runs of each strategy (median).")
    parser.add_argument("--strategies", default="pool,round-robin,jsq")
    parser.add_argument("--timelines", type=Path, default=HERE / "results", metavar="DIR")
    parser.add_argument("--out", type=Path, default=None, help="Write the JSON report here.")
    args = parser.parse_args()
    if args.quick:
        cases = [(100, 0.25, 4, 0.025)]
    else:
        sizes = {"400": [400], "120": [120], "all": [120, 400]}[args.scenario]
        cases = [(jobs, 1.0, 4, 0.025) for jobs in sizes]
    scenarios = [await scenario(*case, args) for case in cases]
    report: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/pool_bench.py", *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "scenarios": scenarios,
    }
    if args.quick or 400 in [case[0] for case in cases]:
        report["overhead"] = await overhead(300 if args.quick else 1000)
        scenarios[-1]["overhead"] = report["overhead"]
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    print("\n\n".join(markdown(s) for s in scenarios))


if __name__ == "__main__":
    asyncio.run(main())
