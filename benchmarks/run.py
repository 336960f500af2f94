"""Run every benchmark and print a Markdown table: ``python benchmarks/run.py [--quick]``.

The simulator runs in its own process (``dreamgen sim``), each client run in another
(``benchmarks/clients.py``), so client and server never share an event loop. Where a figure
is compared between clients, rounds are interleaved (A B A B ...) and medians reported.
Results go to ``benchmarks/results/latest.json`` and ``latest.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
from PIL import Image

import dreamgen_async
from dreamgen_async import ComfyUIClient, FluxWorkflowBuilder

HERE = Path(__file__).parent
PYTHON = sys.executable
#: Where the generator of scenario 2 writes its files when the machine has it (see the README).
TMPFS = "/dev/shm"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pinned(cpu: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that keeps a child process on one core, where the machine has two or
    more and Linux's affinity call: the simulator on one, the client on another, so neither
    moves onto the other's core between rounds (that alone moved figures by 20 %)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < 2:
        return None
    core = cpus[cpu % len(cpus)]
    return lambda: os.sched_setaffinity(0, {core})


@contextmanager
def simulator(step_time: float, node_time: float) -> Iterator[str]:
    """A simulator in its own process (on its own core, see :func:`pinned`); yields its URL."""
    port = free_port()
    with tempfile.TemporaryDirectory() as root:
        proc = subprocess.Popen(
            [PYTHON, "-m", "dreamgen_async", "sim", "--port", str(port), "--root", root,
             "--step-time", str(step_time), "--node-time", str(node_time)],
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=pinned(-1),
        )  # fmt: skip
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline()
            if "listening" not in line:
                raise RuntimeError(f"simulator did not start: {line}")
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(10)


def run_client(
    client: str, url: str, jobs: int, concurrency: int, size: int = 64, *extra: str
) -> Any:
    out = subprocess.run(
        [PYTHON, str(HERE / "clients.py"), client, "--url", url, "--jobs", str(jobs),
         "--concurrency", str(concurrency), "--size", str(size), *extra],
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=pinned(0),
    )  # fmt: skip
    return json.loads(out.stdout)


async def server_busy_seconds(url: str) -> float:
    """Σ (execution_success - execution_start) over the history, in seconds."""
    params = {"max_items": "100000"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/history", params=params) as response,
    ):
        history = await response.json()
    total = 0.0
    for entry in history.values():
        stamps = {event: data.get("timestamp") for event, data in entry["status"]["messages"]}
        if stamps.get("execution_start") and stamps.get("execution_success"):
            total += (stamps["execution_success"] - stamps["execution_start"]) / 1000
    return total


async def clear_history(url: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/history", json={"clear": True}) as response,
    ):
        await response.read()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ---------------------------------------------------------------------------- scenarios


def queue_efficiency(quick: bool) -> list[dict[str, Any]]:
    jobs = 20 if quick else 200
    runs = [("dreamgen", 1), ("dreamgen", 2), ("dreamgen", 8), ("dreamgen", 64)]
    runs += [("generator", 8), ("reference", 8), ("canonical", 1), ("canonical", 8)]
    rows = []
    with simulator(step_time=0.06, node_time=0.004) as url:
        run_client("reference", url, 3, 1)  # warm the server (checkpoint "load", caches)
        for client, concurrency in runs:
            asyncio.run(clear_history(url))
            figures = run_client(client, url, jobs, concurrency)
            busy = asyncio.run(server_busy_seconds(url))
            rows.append(
                {
                    "client": client,
                    "concurrency": concurrency,
                    "jobs": jobs,
                    "wall_s": figures["wall"],
                    "server_busy_s": busy,
                    "per_job_ms": busy / jobs * 1000,
                    "efficiency": busy / figures["wall"],
                }
            )
    return rows


#: The arguments that put a client's files on tmpfs, where the machine has one.
ON_TMPFS: tuple[str, ...] = ("--output-root", TMPFS) if os.path.isdir(TMPFS) else ()

#: Scenario 2's clients: name -> (clients.py client, extra arguments).
OVERHEAD_CLIENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "dreamgen": ("dreamgen", ()),
    "generator": ("generator", ON_TMPFS),
    "generator_disk": ("generator", ("--output-root", tempfile.gettempdir())),
    "reference": ("reference", ()),
    "reference_files": ("reference_files", ON_TMPFS),
}


def client_overhead(quick: bool) -> dict[str, Any]:
    """Scenario 2: each run against a simulator of its own, started afresh (a simulator's
    history grows, and a slower server costs a client more wake-ups per job), in a new order
    each round (A B C, B C A, ...)."""
    jobs, rounds = (300, 1) if quick else (2000, 7)
    names = list(OVERHEAD_CLIENTS)
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for round_ in range(rounds):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            client, extra = OVERHEAD_CLIENTS[name]
            with simulator(step_time=0.0, node_time=0.0) as url:
                run_client("reference", url, 20, 8)  # warm the simulator
                samples[name].append(run_client(client, url, jobs, 64, 64, *extra))
    result: dict[str, Any] = {"jobs": jobs, "rounds": rounds, "concurrency": 64}
    for client, runs in samples.items():
        latencies = [x * 1000 for run in runs for x in run["latencies"] if x is not None]
        result[client] = {
            "jobs_per_s": statistics.median(jobs / r["wall"] for r in runs),
            "cpu_ms_per_job": statistics.median(r["cpu"] / jobs * 1000 for r in runs),
            "cpu_sys_ms_per_job": statistics.median(r["cpu_sys"] / jobs * 1000 for r in runs),
            "cpu_ms_per_job_runs": [r["cpu"] / jobs * 1000 for r in runs],
            "latency_median_ms": statistics.median(latencies) if latencies else None,
            "latency_p99_ms": pct(latencies, 0.99) if latencies else None,
        }
    result["ratios"] = [
        (jobs / d["wall"]) / (jobs / r["wall"])
        for d, r in zip(samples["dreamgen"], samples["reference"], strict=True)
    ]
    result["generator_cpu_ratios"] = [
        g["cpu"] / r["cpu"] for g, r in zip(samples["generator"], samples["reference"], strict=True)
    ]
    result["generator_vs_files_cpu_ratios"] = [
        g["cpu"] / r["cpu"]
        for g, r in zip(samples["generator"], samples["reference_files"], strict=True)
    ]
    return result


def scale(quick: bool) -> dict[str, Any]:
    jobs = 1000 if quick else 10_000
    with simulator(step_time=0.0, node_time=0.0) as url:
        figures = run_client("dreamgen", url, jobs, jobs)
    grown = max(0, figures["peak_rss_kb"] - figures["baseline_rss_kb"])
    return {
        "jobs": jobs,
        "drain_s": figures["wall"],
        "peak_rss_per_job_kb": grown / jobs,
        "baseline_rss_mb": figures["baseline_rss_kb"] / 1024,
        "peak_rss_mb": figures["peak_rss_kb"] / 1024,
        "end_rss_mb": figures["end_rss_kb"] / 1024,
    }


async def large_outputs(quick: bool) -> dict[str, Any]:
    """A photo-like (incompressible) output: img2img of a noise image of SIZE²."""
    size, repeats = (1024, 3) if quick else (2048, 8)
    noise = Image.frombytes("RGB", (size, size), os.urandom(size * size * 3))
    buffer = io.BytesIO()
    noise.save(buffer, format="PNG", compress_level=1)
    with simulator(step_time=0.0, node_time=0.0) as url:
        async with ComfyUIClient(url, timeout=600) as client, aiohttp.ClientSession() as plain:
            uploaded = await client.upload_image(buffer.getvalue(), name="noise.png")
            graph = FluxWorkflowBuilder().build_img2img(uploaded.reference, "big", seed=1)
            result = await client.run(graph.workflow)
            (ref,) = result.images
            params = {"filename": ref.filename, "subfolder": ref.subfolder, "type": ref.type}
            ours, theirs = [], []
            for _ in range(repeats):  # interleaved
                started = time.perf_counter()
                data = await client.download(ref)
                ours.append(time.perf_counter() - started)
                started = time.perf_counter()
                async with plain.get(f"{url}/view", params=params) as response:
                    await response.read()
                theirs.append(time.perf_counter() - started)
    mb = len(data) / 1e6
    return {
        "pixels": size * size,
        "png_mb": mb,
        "dreamgen_mb_s": mb / statistics.median(ours),
        "plain_get_mb_s": mb / statistics.median(theirs),
    }


# ---------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "dreamgen_async": dreamgen_async.__version__,
    }


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['os']}, "
        f"Python {m['python']}, aiohttp {m['aiohttp']}. Command: `{report['command']}`.",
        "",
        "**1. Queue efficiency** (Σ server execution time / wall time; 1.0 = never idle; "
        f"{report['efficiency'][0]['jobs']} img2img jobs at "
        f"~{statistics.median(r['per_job_ms'] for r in report['efficiency']):.0f} ms each)",
        "",
        "| client | concurrency | wall (s) | efficiency |",
        "| --- | --- | --- | --- |",
    ]
    for row in report["efficiency"]:
        lines.append(
            f"| {row['client']} | {row['concurrency']} | {row['wall_s']:.2f} | "
            f"{row['efficiency']:.3f} |"
        )
    o = report["overhead"]
    tmpfs = "tmpfs" if OVERHEAD_CLIENTS["generator"][1] else "disk"
    names = {
        "dreamgen": "dreamgen ComfyUIClient",
        "generator": f"dreamgen DreamGenerator (uploads, files on {tmpfs})",
        "generator_disk": "dreamgen DreamGenerator (uploads, files on disk)",
        "reference": "hand-written reference",
        "reference_files": f"hand-written reference, downloads and files on {tmpfs}",
    }
    ratios = ", ".join(f"{x:.2f}" for x in o["ratios"])
    generator_ratios = ", ".join(f"{x:.2f}" for x in o["generator_cpu_ratios"])
    files_ratios = ", ".join(f"{x:.2f}" for x in o["generator_vs_files_cpu_ratios"])
    reference_cpu = o["reference"]["cpu_ms_per_job"]
    lines += [
        "",
        f"**2. Client overhead and 4. latency** ({o['jobs']} jobs at zero server time, "
        f"concurrency 64, {o['rounds']} rounds in rotated order, a fresh simulator per run, "
        "medians)",
        "",
        "| client | jobs/s | client CPU ms/job (of it: kernel) | / reference | "
        "latency median (ms) | latency p99 (ms) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key, label in names.items():
        row = o[key]
        median = row["latency_median_ms"]
        p99 = row["latency_p99_ms"]
        lines.append(
            f"| {label} | {row['jobs_per_s']:.0f} | {row['cpu_ms_per_job']:.2f} "
            f"({row['cpu_sys_ms_per_job']:.2f}) | {row['cpu_ms_per_job'] / reference_cpu:.2f}x | "
            + (f"{median:.3f} | {p99:.3f} |" if median is not None else "n/a | n/a |")
        )
    lines += [
        "",
        f"ComfyUIClient / reference throughput per round: {ratios}",
        f"DreamGenerator ({tmpfs}) / reference client CPU per round: {generator_ratios} "
        f"(median {statistics.median(o['generator_cpu_ratios']):.2f})",
        f"DreamGenerator ({tmpfs}) / the reference doing the same job, per round: "
        f"{files_ratios} (median {statistics.median(o['generator_vs_files_cpu_ratios']):.2f})",
    ]
    s = report["scale"]
    lines += [
        "",
        f"**3. Scale**: {s['jobs']} jobs submitted at once through one client: drained in "
        f"{s['drain_s']:.1f} s; peak RSS {s['peak_rss_mb']:.0f} MB (from "
        f"{s['baseline_rss_mb']:.0f} MB: {s['peak_rss_per_job_kb']:.2f} KB per queued job); "
        f"RSS after the drain {s['end_rss_mb']:.0f} MB.",
    ]
    g = report["large_outputs"]
    lines += [
        "",
        f"**5. Large outputs**: a {g['pixels'] / 1e6:.1f} MP PNG ({g['png_mb']:.1f} MB): "
        f"`client.download` {g['dreamgen_mb_s']:.0f} MB/s vs a plain aiohttp GET "
        f"{g['plain_get_mb_s']:.0f} MB/s.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes; under a minute")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    started = time.perf_counter()
    report: dict[str, Any] = {
        "command": "python benchmarks/run.py" + (" --quick" if args.quick else ""),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    report["efficiency"] = queue_efficiency(args.quick)
    report["overhead"] = client_overhead(args.quick)
    report["scale"] = scale(args.quick)
    report["large_outputs"] = asyncio.run(large_outputs(args.quick))
    report["duration_s"] = time.perf_counter() - started
    text = markdown(report)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "quick" if args.quick else "latest"
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(text)


if __name__ == "__main__":
    main()
