"""``dreamgen ... --timeline FILE``: the run's timeline SVG, one lane per server."""

from __future__ import annotations

import asyncio
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from dreamgen_async.testing import ComfyUISimulator, SimulatorConfig, SimulatorFarm

SVG = "{http://www.w3.org/2000/svg}"


async def dreamgen(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dreamgen_async",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "160", "DREAMGEN_TOKEN": "", "DREAMGEN_SERVER": ""},
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def lanes(path: Path) -> dict[str, list[str]]:
    """The SVG's lanes: server -> the classes of its span rectangles (parsing fails if the
    file is not well-formed XML)."""
    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG}svg"
    return {
        g.attrib["data-server"]: [
            r.attrib["class"] for r in g.iter(f"{SVG}rect") if "class" in r.attrib
        ]
        for g in root.iter(f"{SVG}g")
        if g.attrib.get("class") == "lane"
    }


async def test_timeline_of_a_pool_run_has_one_lane_per_server(
    comfyui_farm: SimulatorFarm, tmp_path: Path
) -> None:
    await comfyui_farm.start(SimulatorConfig(), SimulatorConfig())
    servers = [arg for url in comfyui_farm.urls for arg in ("--server", url)]
    picture = tmp_path / "run.svg"
    code, _, err = await dreamgen(
        "txt2img", "a fox", "-n", "8", "--steps", "1", "-o", str(tmp_path / "out"),
        "-q", "--timeline", str(picture), *servers,
    )  # fmt: skip
    assert code == 0, err
    found = lanes(picture)
    assert sorted(found) == sorted(comfyui_farm.urls)
    assert sum(kinds.count("busy") + kinds.count("load") for kinds in found.values()) >= 8


async def test_timeline_of_one_server_is_one_lane_of_its_jobs(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    picture = tmp_path / "one.svg"
    code, _, err = await dreamgen(
        "txt2img", "a fox", "-n", "3", "--steps", "1", "-o", str(tmp_path / "out"),
        "-q", "--no-journal", "--timeline", str(picture), "--server", comfyui_sim.url,
    )  # fmt: skip
    assert code == 0, err
    found = lanes(picture)
    assert list(found) == [comfyui_sim.url]
    assert found[comfyui_sim.url].count("busy") == 3


async def test_timeline_in_a_folder_that_cannot_be_is_a_usage_error(
    comfyui_sim: ComfyUISimulator, tmp_path: Path
) -> None:
    """Checked before anything is posted, like the output folder (a file stands where the
    timeline's folder would be: refused for root too, who ignores permission bits)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, _, err = await dreamgen(
        "txt2img", "a fox", "--steps", "1", "-o", str(tmp_path / "out"), "--no-journal",
        "--timeline", str(blocker / "t.svg"), "--server", comfyui_sim.url,
    )  # fmt: skip
    assert code == 2, err
    assert "a-file" in err
    assert not comfyui_sim.prompts
