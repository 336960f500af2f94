"""The live display of a batch on a pool: today's totals, then one row per server."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from dreamgen_async import Txt2ImgRequest
from dreamgen_async.cli.options import Options
from dreamgen_async.cli.runner import run_requests
from dreamgen_async.testing import SimulatorConfig, SimulatorFarm
from dreamgen_async.workflow_builder import FluxWorkflowBuilder


async def test_live_display_has_a_row_per_server(
    comfyui_farm: SimulatorFarm, tmp_path: Path
) -> None:
    await comfyui_farm.start(SimulatorConfig(step_time=0.1), SimulatorConfig(step_time=0.1))
    screen = Console(file=io.StringIO(), force_terminal=True, width=200, record=True)
    errors = Console(file=io.StringIO(), width=200)
    opts = Options(
        server=comfyui_farm.urls[0],
        servers=tuple(comfyui_farm.urls),
        concurrency=4,
        timeout=None,
        json=False,
        quiet=False,
        debug=False,
    )
    requests = [Txt2ImgRequest(f"a fox {i}", seed=i, steps=3) for i in range(6)]
    labels = [f"fox {i}" for i in range(6)]
    tally = await run_requests(
        opts, requests, labels, tmp_path, FluxWorkflowBuilder(steps=3), (screen, errors)
    )
    assert tally.failed == 0
    text = screen.export_text()
    final = text[text.rindex("done 6") :]  # the last frame: totals, then the servers
    rows = [line for line in final.splitlines() if line.strip().startswith("http://")]
    assert [row.split()[0] for row in rows] == comfyui_farm.urls
    assert all(row.split()[1] == "up" for row in rows)
    done = [int(row.split()[-2]) for row in rows]
    assert sum(done) == 6
    assert all(row.split()[-1] == "0" for row in rows)  # failed
    assert "step " in text  # a running job's step was shown on its server's row
