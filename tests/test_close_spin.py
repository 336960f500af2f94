"""``aclose()`` must never wait for done-callbacks without yielding to the event loop.

Since Python 3.12, ``await asyncio.gather(*futures)`` over futures that are all done completes
without giving the loop a turn. A loop like ``while self._tasks: await gather(*self._tasks)``
whose set is shrunk only by done-callbacks (scheduled with ``call_soon``) then spins forever at
100% CPU, and no timeout in that loop can fire. The scenario runs in a subprocess, bounded
from outside, so that the old code makes this test fail instead of hanging the suite.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from _graphs import txt2img

SCENARIO = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path

    from dreamgen_async import AuthenticationError, ComfyUIClient, ReconnectPolicy
    from dreamgen_async.testing import ComfyUISimulator, SimulatorConfig

    GRAPH = json.loads(sys.argv[2])

    async def main(root: Path) -> None:
        async with ComfyUISimulator(SimulatorConfig(), root=root) as sim:
            policy = ReconnectPolicy(max_time=60.0, initial_delay=0.01, max_delay=0.05)
            client = ComfyUIClient(sim.url, token="t", reconnect=policy)
            await client.open()
            sim.hold()
            jobs = [await client.submit(GRAPH, prompt_id=f"p{i}") for i in range(2)]
            sim.fail_next("/ws", 10_000, status=401)  # the token is revoked
            await sim.drop_websockets()
            for job in jobs:
                try:
                    await job.result(timeout=5)
                except AuthenticationError:
                    pass
            # The reader's failure spawned a background delete, finished by now or soon:
            # closing must not spin on it.
            await client.aclose()
        print("closed")

    asyncio.run(main(Path(sys.argv[1])))
    """
)


def test_aclose_after_the_reader_failed_returns(tmp_path: Path) -> None:
    try:
        done = subprocess.run(
            [sys.executable, "-c", SCENARIO, str(tmp_path / "sim"), json.dumps(txt2img())],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError("aclose() never returned (it spins without yielding)") from None
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "closed"
