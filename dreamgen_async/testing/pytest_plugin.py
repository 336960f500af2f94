"""Pytest plugin: the ``comfyui_sim`` fixture (a started :class:`ComfyUISimulator`) and
``comfyui_farm`` (several, for a pool).

Enable it with ``pytest_plugins = ["dreamgen_async.testing.pytest_plugin"]`` in a conftest.py.
Needs pytest-asyncio. The simulator's files live under the test's ``tmp_path``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from dreamgen_async.testing.simulator import ComfyUISimulator, SimulatorConfig, SimulatorFarm


@pytest_asyncio.fixture
async def comfyui_sim(tmp_path: Path) -> AsyncIterator[ComfyUISimulator]:
    """A started simulator on 127.0.0.1 (a free port), stopped after the test."""
    sim = ComfyUISimulator(SimulatorConfig(), root=tmp_path / "comfyui")
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@pytest_asyncio.fixture
async def comfyui_farm(tmp_path: Path) -> AsyncIterator[SimulatorFarm]:
    """An empty :class:`SimulatorFarm`: ``await comfyui_farm.start(SimulatorConfig(...), ...)``
    starts simulators for a pool; all are stopped after the test."""
    async with SimulatorFarm(tmp_path / "farm") as farm:
        yield farm
