"""``dreamgen worker`` subprocesses for the distributed tests."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest


class Workers:
    """``dreamgen worker`` subprocesses, started ready and stopped at the end of the test.

    Started with asyncio (the simulators they talk to run in the test's event loop).
    """

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []
        self.logs: dict[int, list[str]] = {}
        self._drains: list[asyncio.Task[None]] = []

    async def start(
        self, broker: str, *servers: str, takeover: float = 3.0
    ) -> asyncio.subprocess.Process:
        args = ["-m", "dreamgen_async", "worker", "--broker", broker]
        for server in servers:
            args += ["--server", server]
        args += ["--takeover", str(takeover)]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert proc.stderr is not None
        seen: list[str] = []
        self.procs.append(proc)
        self.logs[proc.pid] = seen
        while line := (await proc.stderr.readline()).decode():  # its "ready" line
            seen.append(line)
            if " ready: " in line:
                break
        else:
            pytest.fail("worker exited before it was ready:\n" + "".join(seen))
        self._drains.append(asyncio.create_task(self._drain(proc.stderr, seen)))
        return proc

    @staticmethod
    async def _drain(stream: asyncio.StreamReader, into: list[str]) -> None:
        while line := await stream.readline():  # a full pipe would block the worker
            into.append(line.decode())

    async def kill(self, proc: asyncio.subprocess.Process) -> None:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()

    async def stop_all(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.terminate()
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await asyncio.gather(*self._drains)
