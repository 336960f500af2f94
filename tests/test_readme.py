"""Every Python block of README.md runs, as written, against the simulator."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path

import pytest
from _graphs import png_bytes, txt2img

from dreamgen_async.testing import ComfyUISimulator

README = Path(__file__).parent.parent / "README.md"
BLOCK = re.compile(r"(?:<!-- (?P<marker>[^>]*) -->\n)?```python\n(?P<code>.*?)```", re.S)


def python_blocks() -> list[tuple[str, str]]:
    blocks = []
    for match in BLOCK.finditer(README.read_text()):
        marker = match.group("marker") or ""
        if marker.strip() != "no-test":
            blocks.append((marker, match.group("code")))
    return blocks


def test_the_readme_has_runnable_blocks() -> None:
    assert len(python_blocks()) >= 4


@pytest.mark.parametrize(("marker", "code"), python_blocks())
async def test_readme_block_runs(
    comfyui_sim: ComfyUISimulator, tmp_path: Path, marker: str, code: str
) -> None:
    (tmp_path / "cat.png").write_bytes(png_bytes(3, size=64))
    (tmp_path / "frames").mkdir()
    for i in range(3):
        (tmp_path / "frames" / f"f{i}.png").write_bytes(png_bytes(i, size=64))
    (tmp_path / "workflow_api.json").write_text(json.dumps(txt2img()))
    script = tmp_path / "block.py"
    script.write_text(code.replace("http://127.0.0.1:8188", comfyui_sim.url))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, f"{marker}\n{stderr.decode()}"
    assert stdout.strip()
    assert comfyui_sim.accepted_prompt_ids
