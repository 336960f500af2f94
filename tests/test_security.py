"""Security: credentials, Origin, TLS, bounded sizes — against real loopback servers."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from _graphs import txt2img
from aiohttp import web

from dreamgen_async import (
    ComfyUIClient,
    ConnectError,
    ImageRef,
    ResponseTooLargeError,
    RetryPolicy,
    ServerError,
)
from dreamgen_async.testing import ComfyUISimulator

FAST_RETRY = RetryPolicy(attempts=2, initial_delay=0.01, max_delay=0.01)
SECRET = "s3cret-t0ken"


async def test_bearer_token_on_http_and_websocket_and_never_logged(
    comfyui_sim: ComfyUISimulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with ComfyUIClient(comfyui_sim.url, token=SECRET) as client:
        await client.run(txt2img(seed=1), timeout=10)
        comfyui_sim.fail_next("/queue", 1, status=500)
        with pytest.raises(ServerError) as info:
            await client.get_queue()
        assert SECRET not in str(info.value)
        assert SECRET not in repr(client)
    await comfyui_sim.wait_until(lambda: any(r.route == "/ws" for r in comfyui_sim.requests))
    assert comfyui_sim.requests
    for request in comfyui_sim.requests:
        assert request.headers.get("Authorization") == f"Bearer {SECRET}", request.route
        assert "Origin" not in request.headers
    assert any(r.route == "/ws" for r in comfyui_sim.requests)
    assert all(SECRET not in record.getMessage() for record in caplog.records)


async def test_basic_auth_from_the_url_is_never_shown(comfyui_sim: ComfyUISimulator) -> None:
    url = comfyui_sim.url.replace("http://", "http://alice:pa55word@")
    async with ComfyUIClient(url) as client:
        assert "pa55word" not in client.safe_url
        assert "pa55word" not in repr(client)
        await client.get_queue()
    assert comfyui_sim.requests[-1].headers["Authorization"].startswith("Basic ")
    with pytest.raises(ConnectError) as info:
        async with ComfyUIClient("http://alice:pa55word@127.0.0.1:9", retry=FAST_RETRY):
            pass
    assert "pa55word" not in str(info.value)


def test_an_origin_header_is_refused() -> None:
    with pytest.raises(ValueError, match="Origin"):
        ComfyUIClient("http://127.0.0.1:8188", headers={"Origin": "http://evil"})


async def test_tls_is_verified_by_default(tls_sim: ComfyUISimulator, certificate: Path) -> None:
    assert tls_sim.url.startswith("https://")
    with pytest.raises(ConnectError) as info:
        async with ComfyUIClient(tls_sim.url, retry=FAST_RETRY):
            pass
    assert "TLS" in str(info.value) or "certificate" in str(info.value).lower()
    trusted = ssl.create_default_context(cafile=str(certificate / "cert.pem"))
    async with ComfyUIClient(tls_sim.url, ssl=trusted) as client:
        result = await client.run(txt2img(seed=2), timeout=10)
        (image,) = await client.get_output_images(result)
    assert image.data == tls_sim.prompts[result.prompt_id].output_bytes[0]


async def test_a_download_over_the_bound_is_refused(comfyui_sim: ComfyUISimulator) -> None:
    async with ComfyUIClient(comfyui_sim.url, max_download=100) as client:
        result = await client.run(txt2img(seed=3), timeout=10)
        with pytest.raises(ResponseTooLargeError) as info:
            await client.get_output_images(result)
        assert "/view" in str(info.value)


@pytest.fixture
async def endless_server() -> AsyncIterator[str]:
    """Just enough of ComfyUI to connect, and a /view that never ends."""

    async def ws(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        await socket.send_json(
            {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}}}
        )
        async for _ in socket:
            pass
        return socket

    async def view(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(100_000):  # bounded, but far more than any client accepts
            await response.write(b"\0" * 65536)
        return response

    app = web.Application()
    app.router.add_get("/ws", ws)
    app.router.add_get("/view", view)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_an_endless_body_stops_at_the_bound(endless_server: str) -> None:
    async with ComfyUIClient(endless_server, max_download=1 << 20) as client:
        async with asyncio.timeout(10):
            with pytest.raises(ResponseTooLargeError):
                await client.download(ImageRef("x.png"))


async def test_a_giant_websocket_message_costs_a_reconnect_not_a_job(
    comfyui_sim: ComfyUISimulator,
) -> None:
    async with ComfyUIClient(comfyui_sim.url, max_ws_message=64 * 1024) as client:
        comfyui_sim.hold()
        job = await client.submit(txt2img(seed=4))
        await comfyui_sim.send_raw("x" * (128 * 1024))
        await comfyui_sim.wait_until(lambda: comfyui_sim.ws_connections_total == 2)
        comfyui_sim.release()
        result = await job.result(timeout=10)
    assert result.images
