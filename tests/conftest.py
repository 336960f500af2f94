"""Shared fixtures: the simulator plugin, recorded traces, and a simulator set up like the
server the traces were recorded on (checkpoint ``tiny-sd15.safetensors``, latent2rgb previews).
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from _pytest.terminal import TerminalReporter

from dreamgen_async.testing import ComfyUISimulator, SimulatorConfig, sample_png

pytest_plugins = ["dreamgen_async.testing.pytest_plugin"]

TRACES = Path(__file__).parent / "fixtures" / "traces"


@pytest.fixture(scope="session")
def summary() -> dict[str, Any]:
    """``probe_summary.json``: condensed message orders and error bodies."""
    data: dict[str, Any] = json.loads((TRACES / "probe_summary.json").read_text())
    return data


@pytest_asyncio.fixture
async def recorded_sim(tmp_path: Path) -> AsyncIterator[ComfyUISimulator]:
    """A simulator configured like the recording server, with ``probe_src.png`` uploaded."""
    config = SimulatorConfig(checkpoints=("tiny-sd15.safetensors",), preview_method="latent2rgb")
    async with ComfyUISimulator(config, root=tmp_path / "sim") as sim:
        (sim.input_dir / "probe_src.png").write_bytes(sample_png())
        yield sim


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp session."""
    async with aiohttp.ClientSession() as session:
        yield session


_REPORT_LINES: list[str] = []


@pytest.fixture
def report_line() -> Callable[[str], None]:
    """Record a summary line (chaos, soak) that pytest prints at the end of every run."""
    return _REPORT_LINES.append


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    if _REPORT_LINES:
        terminalreporter.section("reliability summary")
        for line in _REPORT_LINES:
            terminalreporter.write_line(line)


@pytest.fixture
def certificate(tmp_path: Path) -> Path:
    """A self-signed certificate for 127.0.0.1 (``cert.pem``, ``key.pem`` in the folder)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a self-signed certificate")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem"),
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return tmp_path


@pytest_asyncio.fixture
async def tls_sim(certificate: Path) -> AsyncIterator[ComfyUISimulator]:
    """A simulator serving HTTPS and WSS with :func:`certificate`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate / "cert.pem", certificate / "key.pem")
    sim = ComfyUISimulator(root=certificate / "sim")
    await sim.start(ssl_context=context)
    try:
        yield sim
    finally:
        await sim.stop()
