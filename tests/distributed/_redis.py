"""The distributed tests' fixtures (each test module imports them): a real ``redis-server``

Without ``redis-server`` on PATH these tests skip, saying how to install it; with
``DREAMGEN_REQUIRE_REDIS=1`` (CI) they fail instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
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


@pytest.fixture(scope="module", name="redis_server")
def redis_server_fixture() -> Iterator[str]:
    """A started redis-server on a free loopback port: its base URL (``redis://...``)."""
    if REDIS is None:
        if os.environ.get("DREAMGEN_REQUIRE_REDIS"):  # CI: these tests must run
            pytest.fail(INSTALL)
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


@pytest.fixture(name="broker_url")
def broker_url_fixture(redis_server: str) -> str:
    """An empty database of the module's redis-server."""
    url = f"{redis_server}/0"
    with redis.Redis.from_url(url) as conn:
        conn.flushall()
    return url


from _workers import Workers  # noqa: E402


@pytest_asyncio.fixture(name="workers")
async def workers_fixture() -> AsyncIterator[Workers]:
    started = Workers()
    try:
        yield started
    finally:
        await started.stop_all()
