"""A real ``redis-server`` per test module, and ``dreamgen worker`` subprocesses.

Without ``redis-server`` on PATH these tests skip, saying how to install it (CI installs it
and fails when they were skipped).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

REDIS = shutil.which("redis-server")
INSTALL = (
    "redis-server is not installed: `sudo apt-get install redis-server` (Debian/Ubuntu) "
    "or `brew install redis` (macOS) to run the distributed tests"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def redis_server() -> Iterator[str]:
    """A started redis-server on a free loopback port: its base URL (``redis://...``)."""
    if REDIS is None:
        pytest.skip(INSTALL)
    port = _free_port()
    proc = subprocess.Popen(
        [REDIS, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # awaits the server's own "ready" line
        if "Ready to accept connections" in line:
            break
    else:
        pytest.fail(f"redis-server exited with {proc.wait()}")
    try:
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()


@pytest.fixture
def broker_url(redis_server: str) -> str:
    """An empty database of the module's redis-server."""
    url = f"{redis_server}/0"
    with redis.Redis.from_url(url) as conn:
        conn.flushall()
    return url


class Workers:
    """``dreamgen worker`` subprocesses, started ready and stopped at the end of the test."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[str]] = []
        self.logs: dict[int, list[str]] = {}
        self._drains: list[threading.Thread] = []

    def start(self, broker: str, *servers: str, takeover: float = 3.0) -> subprocess.Popen[str]:
        args = [sys.executable, "-m", "dreamgen_async", "worker", "--broker", broker]
        for server in servers:
            args += ["--server", server]
        args += ["--takeover", str(takeover)]
        proc = subprocess.Popen(
            args,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:  # the worker's "ready" line
            seen.append(line)
            if " ready: " in line:
                break
        else:
            pytest.fail("worker exited before it was ready:\n" + "".join(seen))
        self.procs.append(proc)
        self.logs[proc.pid] = seen
        drain = threading.Thread(target=seen.extend, args=(proc.stderr,), daemon=True)
        drain.start()  # a full pipe would block the worker
        self._drains.append(drain)
        return proc

    def kill(self, proc: subprocess.Popen[str]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for drain in self._drains:
            drain.join(5)
        for proc in self.procs:
            if proc.stderr is not None:
                proc.stderr.close()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    started = Workers(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


StartWorker = Callable[..., subprocess.Popen[str]]
