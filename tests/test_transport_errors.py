"""The one error table and the one classifier, row by row, with real failures over loopback.

Every failure here really happens: a refused port, a name under ``.invalid``, a self-signed
certificate, a tiny asyncio server that resets or cuts off its answer or never answers, a
WebSocket handshake answered with the wrong status. No mocks: the exception aiohttp raises is
the one the table must translate.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from _graphs import txt2img

import dreamgen_async
from dreamgen_async import (
    AuthenticationError,
    ClientClosedError,
    ComfyUIClient,
    ConnectError,
    ConnectionLostError,
    DreamgenError,
    NotComfyUIError,
    PromptRejected,
    PromptTimeout,
    ProtocolError,
    ReconnectPolicy,
    ResponseTooLargeError,
    RetryPolicy,
    ServerError,
    TLSError,
    TransportError,
)
from dreamgen_async import errors as errors_module
from dreamgen_async.errors import ExecutionError, ExecutionInterrupted, PromptLost
from dreamgen_async.testing import ComfyUISimulator
from dreamgen_async.transport_errors import (
    TABLE,
    Verdict,
    blames_server,
    classify,
    mapped_errors,
    may_have_been_processed,
    translate,
)

FAST_RETRY = RetryPolicy(attempts=2, initial_delay=0.01, max_delay=0.01)
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def test_no_row_hides_a_later_one() -> None:
    """Most specific first: a row after one of its base classes could never match."""
    for i, earlier in enumerate(TABLE):
        for later in TABLE[i + 1 :]:
            assert not issubclass(later.kind, earlier.kind), (
                f"{later.kind.__name__} is listed after its base {earlier.kind.__name__}"
            )


def test_our_errors_pass_through_and_bugs_are_not_translated() -> None:
    ours = ConnectError("x")
    assert translate(ours, url="u", what="w") is ours
    assert translate(KeyError("bug"), url="u", what="w") is None
    with pytest.raises(KeyError), mapped_errors("u", "w"):
        raise KeyError("bug")


# ---------------------------------------------------------------------------- real failures


async def _attempts(server: RawServer) -> tuple[int, int]:
    """Requests the server saw for one ``get_queue()`` without retries, and with FAST_RETRY.

    aiohttp itself re-sends an idempotent request once after a disconnect; the ratio shows
    that our retry policy repeated it on top.
    """
    counts = []
    for policy in (RetryPolicy(attempts=1), FAST_RETRY):
        before = len(server.requests)
        async with ComfyUIClient(server.url, retry=policy) as client:
            with pytest.raises(TransportError):
                await client.get_queue()
        counts.append(len(server.requests) - before)
    return counts[0], counts[1]


async def _raised(coro: Awaitable[object]) -> BaseException:
    """Await ``coro`` and return what it raised (it must raise)."""
    try:
        await coro
    except Exception as exc:
        return exc
    raise AssertionError("expected a failure")


def _assert_row(
    exc: BaseException, kind: type[BaseException], ours: type[DreamgenError], path: str = ""
) -> None:
    """``exc`` (raised by aiohttp/OS) is matched by the row for ``kind``, which gives ``ours``."""
    first = next(row for row in TABLE if isinstance(exc, row.kind))
    assert first.kind is kind, f"{type(exc).__name__} matched {first.kind.__name__}"
    mapped = translate(exc, url="http://server", what="GET /x", path=path)
    assert type(mapped) is ours, mapped


@pytest.fixture
def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed again: nothing listens there


Behaviour = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class RawServer:
    url: str
    requests: list[bytes] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


def _accept_websocket(head: bytes, w: asyncio.StreamWriter) -> None:
    key = next(
        line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
    w.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )


async def _websocket(head: bytes, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """Just enough of a WebSocket: accept, ignore every frame (pings too), answer a close."""
    _accept_websocket(head, w)
    while True:
        frame = await reader.readexactly(2)
        size = frame[1] & 0x7F
        if size == 126:
            size = int.from_bytes(await reader.readexactly(2), "big")
        elif size == 127:
            size = int.from_bytes(await reader.readexactly(8), "big")
        await reader.readexactly(4 + size)  # mask + payload
        if frame[0] & 0x0F == 0x8:
            w.write(b"\x88\x00")
            await w.drain()
            return


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[..., Awaitable[RawServer]]]:
    """Tiny HTTP/1.1 servers on asyncio streams that misbehave on purpose.

    ``GET /ws`` is a minimal real WebSocket (unless ``websocket=False``), so a
    :class:`ComfyUIClient` can open; every other request gets ``behaviour``.
    """
    servers: list[asyncio.Server] = []
    handlers: set[asyncio.Task[None]] = set()

    async def start(behaviour: Behaviour, *, websocket: bool = True) -> RawServer:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            handlers.add(task)
            try:
                while not writer.is_closing():  # keep-alive: one request after another
                    head = await reader.readuntil(b"\r\n\r\n")
                    if websocket and head.startswith(b"GET /ws"):
                        await _websocket(head, reader, writer)
                        return
                    raw.requests.append(head.split(b"\r\n", 1)[0])
                    raw.arrived.set()
                    await behaviour(head, reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()
                handlers.discard(task)

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        servers.append(server)
        raw = RawServer(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        return raw

    yield start
    for server in servers:
        server.close()
    for task in list(handlers):
        task.cancel()
    await asyncio.gather(*handlers, return_exceptions=True)
    for server in servers:
        await server.wait_closed()


async def close_without_answer(
    head: bytes, r: asyncio.StreamReader, w: asyncio.StreamWriter
) -> None:
    w.close()


async def cut_off(head: bytes, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
    await w.drain()
    w.close()


async def reset(head: bytes, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    sock = w.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    w.transport.abort()  # linger 0: the kernel answers with RST


async def never_answer(head: bytes, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await r.read()  # until the client gives up and closes


async def bad_upgrade(head: bytes, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    w.write(b"HTTP/1.1 101 Switching Protocols\r\nContent-Length: 0\r\n\r\n")
    await w.drain()
    w.close()


async def accept_then_reset(head: bytes, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    _accept_websocket(head, w)
    await w.drain()
    await reset(head, r, w)


async def redirect_loop(head: bytes, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    w.write(b"HTTP/1.1 302 Found\r\nLocation: /queue\r\nContent-Length: 0\r\n\r\n")
    await w.drain()


# -- TLS


async def test_an_untrusted_certificate_is_a_tls_error_at_once(tls_sim: ComfyUISimulator) -> None:
    started = time.monotonic()
    with pytest.raises(TLSError) as info:
        async with ComfyUIClient(tls_sim.url, retry=FAST_RETRY):
            pass
    assert "TLS verification" in str(info.value)
    assert "certificate" in str(info.value)
    assert isinstance(info.value.__cause__, aiohttp.ClientConnectorCertificateError)
    assert classify(info.value) == "fatal"
    assert time.monotonic() - started < 2
    _assert_row(info.value.__cause__, aiohttp.ClientConnectorCertificateError, TLSError)


async def test_https_to_a_plain_http_server_is_a_tls_error(comfyui_sim: ComfyUISimulator) -> None:
    with pytest.raises(TLSError) as info:
        async with ComfyUIClient(comfyui_sim.url.replace("http://", "https://")):
            pass
    assert "is it an https server?" in str(info.value)
    assert isinstance(info.value.__cause__, aiohttp.ClientSSLError)
    assert classify(info.value) == "fatal"


async def test_a_pinned_fingerprint_that_differs_is_a_tls_error(
    tls_sim: ComfyUISimulator, http: aiohttp.ClientSession
) -> None:
    exc = await _raised(http.get(tls_sim.url + "/queue", ssl=aiohttp.Fingerprint(b"\0" * 32)))
    _assert_row(exc, aiohttp.ServerFingerprintMismatch, TLSError)


async def test_an_unwrapped_certificate_failure_is_a_tls_error(tls_sim: ComfyUISimulator) -> None:
    context = ssl.create_default_context()
    exc = await _raised(asyncio.open_connection("127.0.0.1", tls_sim.port, ssl=context))
    _assert_row(exc, ssl.SSLCertVerificationError, TLSError)


# -- cannot connect


async def test_a_refused_connection_is_a_connect_error_worth_a_reconnect(unused_port: int) -> None:
    with pytest.raises(ConnectError) as info:
        async with ComfyUIClient(f"http://127.0.0.1:{unused_port}", retry=FAST_RETRY):
            pass
    assert type(info.value) is ConnectError
    assert f"cannot connect to http://127.0.0.1:{unused_port}" in str(info.value)
    assert classify(info.value) == "reconnect"
    assert not may_have_been_processed(info.value)
    _assert_row(info.value.__cause__ or info.value, aiohttp.ClientConnectorError, ConnectError)


async def test_an_unresolvable_name_is_a_connect_error(http: aiohttp.ClientSession) -> None:
    url = "http://dreamgen-test.invalid:8188"
    with pytest.raises(ConnectError) as info:
        async with ComfyUIClient(url, retry=FAST_RETRY):
            pass
    assert "cannot resolve the host of http://dreamgen-test.invalid:8188" in str(info.value)
    assert classify(info.value) == "reconnect"
    _assert_row(info.value.__cause__ or info.value, aiohttp.ClientConnectorDNSError, ConnectError)


async def test_waiting_too_long_for_a_connection_is_a_connect_error(
    raw_server: Callable[..., Awaitable[RawServer]],
) -> None:
    server = await raw_server(never_answer)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        busy = asyncio.create_task(session.get(server.url + "/queue"))
        await server.arrived.wait()  # the one connection is taken
        timeout = aiohttp.ClientTimeout(connect=0.05)
        exc = await _raised(session.get(server.url + "/queue", timeout=timeout))
        busy.cancel()
        await asyncio.gather(busy, return_exceptions=True)
    _assert_row(exc, aiohttp.ConnectionTimeoutError, ConnectError)
    assert classify(exc) == "reconnect"


# -- the connection breaks


async def test_a_connection_closed_before_the_answer_is_retried(
    raw_server: Callable[..., Awaitable[RawServer]],
) -> None:
    server = await raw_server(close_without_answer)
    async with ComfyUIClient(server.url, retry=FAST_RETRY) as client:
        with pytest.raises(TransportError) as info:
            await client.get_queue()
    assert "the server closed the connection" in str(info.value)
    once, retried = await _attempts(server)
    assert retried == 2 * once  # FAST_RETRY: two attempts
    assert classify(info.value) == "reconnect"
    _assert_row(info.value.__cause__ or info.value, aiohttp.ServerDisconnectedError, TransportError)


async def test_an_answer_cut_off_mid_body_is_retried(
    raw_server: Callable[..., Awaitable[RawServer]],
) -> None:
    server = await raw_server(cut_off)
    async with ComfyUIClient(server.url, retry=FAST_RETRY) as client:
        with pytest.raises(TransportError) as info:
            await client.get_queue()
    assert "the answer was cut off" in str(info.value)
    assert len(server.requests) == 2
    assert classify(info.value) == "reconnect"
    _assert_row(info.value.__cause__ or info.value, aiohttp.ClientPayloadError, TransportError)


async def test_a_reset_is_retried_on_http_and_reported_on_the_websocket(
    raw_server: Callable[..., Awaitable[RawServer]],
) -> None:
    server = await raw_server(reset)
    async with ComfyUIClient(server.url, retry=FAST_RETRY) as client:
        with pytest.raises(TransportError) as info:
            await client.get_queue()
    assert "the connection broke" in str(info.value)
    once, retried = await _attempts(server)
    assert retried == 2 * once
    assert classify(info.value) == "reconnect"
    assert may_have_been_processed(info.value)  # a POST /prompt must check before re-sending
    _assert_row(info.value.__cause__ or info.value, aiohttp.ClientOSError, TransportError)

    everything_resets = await raw_server(reset, websocket=False)
    with pytest.raises(TransportError) as ws_info:
        async with ComfyUIClient(everything_resets.url, retry=FAST_RETRY):
            pass
    assert "WebSocket on" in str(ws_info.value)
    assert classify(ws_info.value) == "reconnect"


async def test_an_unwrapped_reset_and_a_write_to_a_closed_socket(
    raw_server: Callable[..., Awaitable[RawServer]],
) -> None:
    server = await raw_server(reset)
    reader, writer = await asyncio.open_connection("127.0.0.1", int(server.url.rsplit(":", 1)[1]))
    writer.write(b"GET /queue HTTP/1.1\r\nHost: x\r\n\r\n")
    exc = await _raised(reader.read())
    writer.close()
    _assert_row(exc, ConnectionError, TransportError)

    drops_sockets = await raw_server(accept_then_reset, websocket=False)
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(drops_sockets.url + "/ws")
        await ws.receive()  # the close
        exc = await _raised(ws.send_str("too late"))
        await ws.close()
    _assert_row(exc, aiohttp.ClientConnectionResetError, TransportError)


# -- timeouts


async def test_no_answer_within_the_timeout_is_retried(
    raw_server: Callable[..., Awaitable[RawServer]],
) -> None:
    server = await raw_server(never_answer)
    async with ComfyUIClient(server.url, retry=FAST_RETRY, timeout=0.2) as client:
        with pytest.raises(TransportError) as info:
            await client.get_queue()
    assert "GET /queue on" in str(info.value)
    assert "timed out" in str(info.value)
    assert len(server.requests) == 2
    assert classify(info.value) == "reconnect"
    _assert_row(info.value.__cause__ or info.value, TimeoutError, TransportError)


async def test_a_silent_socket_read_is_a_timeout(
    raw_server: Callable[..., Awaitable[RawServer]], http: aiohttp.ClientSession
) -> None:
    server = await raw_server(never_answer)
    timeout = aiohttp.ClientTimeout(sock_read=0.05)
    exc = await _raised(http.get(server.url + "/queue", timeout=timeout))
    _assert_row(exc, aiohttp.SocketTimeoutError, TransportError)


async def test_a_websocket_peer_that_never_answers_pings(
    raw_server: Callable[..., Awaitable[RawServer]], http: aiohttp.ClientSession
) -> None:
    server = await raw_server(never_answer)  # its /ws ignores pings
    ws = await http.ws_connect(server.url + "/ws", heartbeat=0.05)
    message = await ws.receive()
    assert message.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSED)
    exc = ws.exception()
    assert exc is not None
    _assert_row(exc, aiohttp.ServerTimeoutError, TransportError)
    assert classify(exc) == "reconnect"
    await ws.close()


# -- WebSocket handshake statuses


@pytest.mark.parametrize(
    ("status", "error", "verdict"),
    [
        (401, AuthenticationError, "fatal"),
        (403, AuthenticationError, "fatal"),
        (404, NotComfyUIError, "fatal"),
        (200, NotComfyUIError, "fatal"),
        (500, ServerError, "fatal"),
        (503, ServerError, "retry"),
    ],
)
async def test_websocket_handshake_statuses(
    comfyui_sim: ComfyUISimulator, status: int, error: type[ServerError], verdict: Verdict
) -> None:
    comfyui_sim.fail_next("/ws", 1, status=status, body="<html>nope</html>")
    with pytest.raises(ServerError) as info:
        async with ComfyUIClient(comfyui_sim.url, token="revoked", retry=FAST_RETRY):
            pass
    assert type(info.value) is error
    assert info.value.status == status
    assert info.value.url == "/ws"
    assert "revoked" not in str(info.value)
    assert classify(info.value) == verdict
    _assert_row(info.value.__cause__ or info.value, aiohttp.WSServerHandshakeError, error, "/ws")


async def test_a_handshake_that_switches_to_no_websocket_is_a_protocol_error(
    raw_server: Callable[..., Awaitable[RawServer]],
) -> None:
    server = await raw_server(bad_upgrade, websocket=False)
    with pytest.raises(ProtocolError) as info:
        async with ComfyUIClient(server.url, retry=FAST_RETRY):
            pass
    assert "handshake" in str(info.value)
    assert classify(info.value) == "fatal"


# -- the catch-all rows


async def test_anything_else_from_aiohttp_is_a_transport_error(
    raw_server: Callable[..., Awaitable[RawServer]], http: aiohttp.ClientSession
) -> None:
    server = await raw_server(redirect_loop)
    exc = await _raised(http.get(server.url + "/queue", max_redirects=2))
    assert isinstance(exc, aiohttp.TooManyRedirects)
    _assert_row(exc, aiohttp.ClientError, TransportError)


async def test_anything_else_from_the_os_is_a_transport_error(tmp_path: Path) -> None:
    exc = await _raised(asyncio.open_unix_connection(str(tmp_path / "no-such-socket")))
    assert isinstance(exc, FileNotFoundError)
    _assert_row(exc, OSError, TransportError)


# ---------------------------------------------------------------------------- HTTP statuses


@pytest.mark.parametrize(
    ("status", "error", "attempts"),
    [
        (401, AuthenticationError, 1),
        (403, AuthenticationError, 1),
        (500, ServerError, 1),
        (503, ServerError, 2),
        (429, ServerError, 2),
    ],
)
async def test_http_statuses_and_what_is_retried(
    comfyui_sim: ComfyUISimulator, status: int, error: type[ServerError], attempts: int
) -> None:
    async with ComfyUIClient(comfyui_sim.url, token="s3cret", retry=FAST_RETRY) as client:
        comfyui_sim.fail_next("/queue", 5, status=status, body="denied")
        with pytest.raises(ServerError) as info:
            await client.get_queue()
    assert type(info.value) is error
    assert info.value.status == status
    assert "s3cret" not in str(info.value)
    assert len(comfyui_sim.requests_to("/queue")) == attempts


async def test_an_authentication_refusal_of_post_prompt_is_not_a_queued_prompt(
    comfyui_sim: ComfyUISimulator,
) -> None:
    async with ComfyUIClient(comfyui_sim.url, retry=FAST_RETRY) as client:
        comfyui_sim.fail_next("/prompt", 5, status=401, body='{"error": "login required"}')
        with pytest.raises(AuthenticationError):
            await client.submit(txt2img(seed=1))
        assert client.in_flight == 0
    assert len(comfyui_sim.requests_to("/prompt", "POST")) == 1


# ---------------------------------------------------------------------------- the classifier


@pytest.mark.parametrize(
    ("exc", "verdict"),
    [
        (AuthenticationError("x", status=401), "fatal"),
        (AuthenticationError("x", status=403), "fatal"),
        (NotComfyUIError("x", status=404), "fatal"),
        (TLSError("x"), "fatal"),
        (ProtocolError("x"), "fatal"),
        (ResponseTooLargeError("x", status=200), "fatal"),
        (ServerError("x", status=500), "fatal"),
        (ServerError("x", status=400), "fatal"),
        (ClientClosedError("x"), "fatal"),
        (PromptRejected(prompt_id="p", error_type="t", error_message="m"), "fatal"),
        (ValueError("a bug, not a failure"), "fatal"),
        (PromptTimeout("x", prompt_id="p"), "fatal"),  # a TimeoutError, but the caller's
        (ServerError("x", status=429), "retry"),
        (ServerError("x", status=502), "retry"),
        (ServerError("x", status=503), "retry"),
        (ServerError("x", status=504), "retry"),
        (ConnectError("x"), "reconnect"),
        (TransportError("x"), "reconnect"),
        (ConnectionLostError("x"), "reconnect"),
        (aiohttp.ServerDisconnectedError(), "reconnect"),
        (TimeoutError(), "reconnect"),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_classify(exc: BaseException, verdict: Verdict) -> None:
    assert classify(exc) == verdict


LOST = PromptLost("gone", prompt_id="p")
EXECUTION = ExecutionError(
    prompt_id="p", node_id="3", node_type="KSampler", exception_type="E", exception_message="m"
)


@pytest.mark.parametrize(
    ("exc", "server"),
    [
        # classify says "retry" or "reconnect" (budgeted): the server's fault.
        (ConnectError("x"), True),
        (ConnectionLostError("x"), True),
        (TransportError("x"), True),
        (ServerError("x", status=500), True),
        (ServerError("x", status=502), True),
        (ServerError("x", status=503), True),
        (ServerError("x", status=429), True),
        # "fatal", but about this server only: another may do better.
        (NotComfyUIError("x", status=404), True),
        (TLSError("x"), True),
        (ClientClosedError("x"), True),
        (LOST, True),
        # "fatal", and the job's own: it would fail anywhere.
        (AuthenticationError("x", status=401), False),
        (ServerError("x", status=400), False),
        (ServerError("x", status=404), False),
        (ResponseTooLargeError("x", status=200), False),
        (ProtocolError("x"), False),
        (PromptRejected(prompt_id="p", error_type="t", error_message="m"), False),
        (EXECUTION, False),
        (ExecutionInterrupted(prompt_id="p"), False),
        (PromptTimeout("x", prompt_id="p"), False),
        (ValueError("a bug, not a failure"), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_which_failure_blames_the_server(exc: BaseException, server: bool) -> None:
    """The pool's verdict is classify's: whatever another attempt could fix, and the fatal
    failures that are about one server; nothing else."""
    assert blames_server(exc) is server
    if classify(exc, budgeted=True) != "fatal":
        assert server


def test_what_proves_a_request_was_not_processed() -> None:
    assert not may_have_been_processed(ConnectError("x"))
    assert not may_have_been_processed(TLSError("x"))
    assert not may_have_been_processed(ServerError("x", status=429))
    assert not may_have_been_processed(ServerError("x", status=503))
    assert may_have_been_processed(ServerError("x", status=502))
    assert may_have_been_processed(ServerError("x", status=504))
    assert may_have_been_processed(TransportError("reset"))


async def test_a_token_revoked_while_jobs_are_in_flight_fails_them_promptly(
    comfyui_sim: ComfyUISimulator,
) -> None:
    policy = ReconnectPolicy(max_time=60.0, initial_delay=0.01, max_delay=0.05)
    async with ComfyUIClient(comfyui_sim.url, token="t", reconnect=policy) as client:
        comfyui_sim.hold()
        jobs = [await client.submit(txt2img(seed=seed)) for seed in (1, 2)]
        comfyui_sim.fail_next("/ws", 10_000, status=401)  # the token is revoked
        await comfyui_sim.drop_websockets()
        for job in jobs:
            with pytest.raises(AuthenticationError):
                await job.result(timeout=3)


# ---------------------------------------------------------------------------- the documented tree


def _tree(text: str) -> dict[str, str | None]:
    """The tree drawn from its ``DreamgenError`` line to a blank line or fence: name → parent."""
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in text[text.index("DreamgenError\n") :].splitlines():
        if not line.strip() or line.strip().startswith("```"):
            break
        column = len(line) - len(line.lstrip("│├└─ "))
        name = line[column:].split()[0]
        while stack and stack[-1][0] >= column:
            stack.pop()
        parents[name] = stack[-1][1] if stack else None
        stack.append((column, name))
    return parents


def test_the_error_tree_is_what_is_exported_and_documented() -> None:
    exported = {
        name
        for name in dreamgen_async.__all__
        if isinstance(getattr(dreamgen_async, name), type)
        and issubclass(getattr(dreamgen_async, name), DreamgenError)
    }
    docstring_tree = _tree(errors_module.__doc__ or "")
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    readme_tree = _tree(readme[readme.index("## Errors") :])
    assert set(docstring_tree) == exported
    assert readme_tree == docstring_tree
    assert set(errors_module.__all__) >= exported
    for name, parent in docstring_tree.items():  # each drawn under its real parent
        cls = getattr(dreamgen_async, name)
        assert cls.__doc__, name
        if parent is not None:
            assert getattr(dreamgen_async, parent) in cls.__bases__, (name, parent)


# ---------------------------------------------------------------------------- POST /prompt once


async def test_a_prompt_whose_answer_was_lost_is_not_queued_twice(
    comfyui_sim: ComfyUISimulator,
) -> None:
    """The first POST times out on our side but the server queues it anyway: the re-send
    checks /queue + /history first, finds it, and does not post again."""
    comfyui_sim.route_latency["/prompt"] = 0.4  # the server answers after our timeout
    slow_retry = RetryPolicy(attempts=3, initial_delay=1.0, max_delay=1.0)
    async with ComfyUIClient(comfyui_sim.url, timeout=0.2, retry=slow_retry) as client:
        job = await client.submit(txt2img(seed=5))
        comfyui_sim.route_latency.clear()
        result = await job.result(timeout=10)
    assert comfyui_sim.accepted_prompt_ids == [result.prompt_id]
    routes = [r.route for r in comfyui_sim.requests if r.route != "/ws"]
    assert routes.count("/prompt") == 1
    assert "/queue" in routes


async def test_a_503_proves_the_prompt_was_not_queued_so_it_is_resent_without_a_check(
    comfyui_sim: ComfyUISimulator,
) -> None:
    async with ComfyUIClient(comfyui_sim.url, retry=FAST_RETRY) as client:
        comfyui_sim.fail_next("/prompt", 1, status=503)
        result = await client.run(txt2img(seed=6), timeout=10)
    assert comfyui_sim.accepted_prompt_ids == [result.prompt_id]
    routes = [r.route for r in comfyui_sim.requests if r.route not in ("/ws", "/history")]
    assert routes[:2] == ["/prompt", "/prompt"]
