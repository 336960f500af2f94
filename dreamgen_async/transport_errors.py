"""One table from transport exceptions to ours, and one classifier of what to do about them.

Every HTTP request and every WebSocket handshake goes through :func:`translate` (usually as
``with mapped_errors(url, what):``): aiohttp, OS and timeout exceptions become
:mod:`dreamgen_async.errors`, the original kept as ``__cause__``. The table is read top to
bottom and the first matching row wins, so a row is listed before every row of a base class
(``ClientConnectorCertificateError`` is a ``ClientConnectorError``: TLS must come first, or
a bad certificate would read as "cannot connect"). A test checks that no row hides another.

:func:`classify` then says what a failure is worth: ``"retry"`` the same request,
``"reconnect"`` (open a new connection), or ``"fatal"`` (stop now and say why). The HTTP
retries, the removals and the WebSocket reconnect loop all ask it (their backoff is
:class:`dreamgen_async.retry.Backoff`); nothing else decides. :func:`blames_server`, the
pool's verdict on a failed job (another server, or the job's own fault), is read from it.

This module does no I/O; it imports aiohttp only for its exception types.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, NoReturn

import aiohttp

from dreamgen_async.errors import (
    AuthenticationError,
    ClientClosedError,
    ConnectError,
    DreamgenError,
    NotComfyUIError,
    PromptLost,
    ProtocolError,
    ServerError,
    TLSError,
    TransportError,
)

__all__ = [
    "NOT_PROCESSED_STATUSES",
    "RETRY_STATUSES",
    "TABLE",
    "Row",
    "Verdict",
    "blames_server",
    "classify",
    "error_for_status",
    "mapped_errors",
    "may_have_been_processed",
    "reraise_translated",
    "translate",
]

Verdict = Literal["retry", "reconnect", "fatal"]

#: Statuses that say "come back later": the server (or its proxy) is overloaded or restarting.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: Statuses that prove the request was not processed, so even ``POST /prompt`` may be re-sent.
NOT_PROCESSED_STATUSES = frozenset({429, 503})
#: Paths where any answer but ComfyUI's proves the server is something else.
_COMFYUI_PATHS = frozenset({"/prompt", "/ws"})


def error_for_status(status: int, *, url: str, path: str, body: str = "") -> ServerError:
    """The error for an HTTP status we cannot use (also a WebSocket handshake's status).

    401/403 → :class:`AuthenticationError`; on ``/prompt`` and ``/ws`` a 404 (and on ``/ws``
    a 200: a web page where the socket should be) → :class:`NotComfyUIError`; anything else
    → :class:`ServerError` (its :func:`classify` verdict then depends on the status).
    """
    text = body[:200]
    if status in (401, 403):
        return AuthenticationError(
            f"{url}{path} answered HTTP {status}: the server refused our credentials "
            "(check the token or password; a proxy may also forbid this client)"
            + (f": {text}" if text else ""),
            status=status,
            body=body[:2000],
            url=path,
        )
    if path in _COMFYUI_PATHS and (status == 404 or (path == "/ws" and status == 200)):
        what = "no ComfyUI WebSocket at /ws" if path == "/ws" else "no ComfyUI API at /prompt"
        return NotComfyUIError(
            f"{url} has {what} (HTTP {status}): is this a ComfyUI server?",
            status=status,
            body=body[:2000],
            url=path,
        )
    return ServerError(
        f"{path} answered HTTP {status}" + (f": {text}" if text else ""),
        status=status,
        body=body[:2000],
        url=path,
    )


# ---------------------------------------------------------------------------- the table


@dataclass(frozen=True, slots=True)
class _Where:
    """What was being attempted, for messages: the server's safe URL and e.g. ``GET /queue``."""

    url: str
    what: str
    path: str


@dataclass(frozen=True, slots=True)
class Row:
    """One row of :data:`TABLE`: exceptions of ``kind`` become ``build(exc, where)``."""

    kind: type[BaseException]
    build: Callable[[BaseException, _Where], DreamgenError]
    note: str


def _os_reason(exc: BaseException) -> str:
    os_error = getattr(exc, "os_error", None)
    return str(os_error) if os_error is not None else str(exc) or type(exc).__name__


def _tls_certificate(exc: BaseException, w: _Where) -> DreamgenError:
    cert_error = getattr(exc, "certificate_error", exc)
    return TLSError(
        f"TLS verification of {w.url} failed: {cert_error}; pass ssl= an SSLContext that "
        "trusts its certificate (or ssl=False to skip verification)"
    )


def _tls_other(exc: BaseException, w: _Where) -> DreamgenError:
    return TLSError(f"TLS with {w.url} failed: {_os_reason(exc)} (is it an https server?)")


def _fingerprint(exc: BaseException, w: _Where) -> DreamgenError:
    return TLSError(f"TLS with {w.url} failed: the certificate fingerprint does not match")


def _handshake(exc: BaseException, w: _Where) -> DreamgenError:
    assert isinstance(exc, aiohttp.WSServerHandshakeError)
    if exc.status == 101:  # switched protocols, but not to a WebSocket we can use
        return ProtocolError(f"the WebSocket handshake with {w.url} is invalid: {exc.message}")
    return error_for_status(exc.status, url=w.url, path=w.path)


def _dns(exc: BaseException, w: _Where) -> DreamgenError:
    return ConnectError(f"cannot resolve the host of {w.url}: {_os_reason(exc)}")


def _connect(exc: BaseException, w: _Where) -> DreamgenError:
    return ConnectError(f"cannot connect to {w.url}: {_os_reason(exc)}")


def _connect_timeout(exc: BaseException, w: _Where) -> DreamgenError:
    return ConnectError(f"connecting to {w.url} timed out")


def _read_timeout(exc: BaseException, w: _Where) -> DreamgenError:
    return TransportError(f"{w.what} on {w.url} timed out waiting for the answer")


def _timeout(exc: BaseException, w: _Where) -> DreamgenError:
    return TransportError(f"{w.what} on {w.url} timed out")


def _disconnected(exc: BaseException, w: _Where) -> DreamgenError:
    return TransportError(f"{w.what} on {w.url}: the server closed the connection ({exc})")


def _cut_off(exc: BaseException, w: _Where) -> DreamgenError:
    return TransportError(f"{w.what} on {w.url}: the answer was cut off ({exc})")


def _broken(exc: BaseException, w: _Where) -> DreamgenError:
    return TransportError(f"{w.what} on {w.url}: the connection broke ({exc})")


def _other(exc: BaseException, w: _Where) -> DreamgenError:
    return TransportError(f"{w.what} on {w.url} failed: {type(exc).__name__}: {exc}")


#: Most specific first; the first row whose ``kind`` matches wins.
TABLE: tuple[Row, ...] = (
    Row(aiohttp.ClientConnectorCertificateError, _tls_certificate, "certificate not trusted"),
    Row(aiohttp.ClientSSLError, _tls_other, "TLS handshake failed"),
    Row(aiohttp.ServerFingerprintMismatch, _fingerprint, "pinned fingerprint differs"),
    Row(ssl.SSLCertVerificationError, _tls_certificate, "the same, raised unwrapped"),
    Row(aiohttp.WSServerHandshakeError, _handshake, "WebSocket handshake status"),
    Row(aiohttp.ClientConnectorDNSError, _dns, "name not resolved"),
    Row(aiohttp.ClientConnectorError, _connect, "refused, unreachable"),
    Row(aiohttp.ConnectionTimeoutError, _connect_timeout, "connect timed out"),
    Row(aiohttp.SocketTimeoutError, _read_timeout, "no data within sock_read"),
    Row(aiohttp.ServerTimeoutError, _read_timeout, "other aiohttp timeouts"),
    Row(TimeoutError, _timeout, "total timeout (asyncio.timeout)"),
    Row(aiohttp.ServerDisconnectedError, _disconnected, "closed before the answer"),
    Row(aiohttp.ClientPayloadError, _cut_off, "closed mid-body"),
    Row(aiohttp.ClientConnectionResetError, _broken, "write to a closed connection"),
    Row(aiohttp.ClientOSError, _broken, "reset by peer while reading"),
    Row(ConnectionError, _broken, "reset, broken pipe, unwrapped"),
    Row(aiohttp.ClientError, _other, "anything else aiohttp raises"),
    Row(OSError, _other, "anything else the OS raises"),
)


def translate(exc: BaseException, *, url: str, what: str, path: str = "") -> DreamgenError | None:
    """Our error for a transport exception, or ``None`` if it is none (a bug: let it escape).

    Args:
        exc: What aiohttp, asyncio or the OS raised. Our own errors are returned as they are.
        url: The server's URL, without credentials.
        what: What was attempted, for the message (``"GET /queue"``, ``"WebSocket"``).
        path: The path requested (decides e.g. whether a 404 means "not ComfyUI").
    """
    if isinstance(exc, DreamgenError):
        return exc
    where = _Where(url, what, path)
    for row in TABLE:
        if isinstance(exc, row.kind):
            return row.build(exc, where)
    return None


@contextmanager
def mapped_errors(url: str, what: str, path: str = "") -> Iterator[None]:
    """Raise our error instead of any transport exception raised inside, ``from`` it."""
    try:
        yield
    except DreamgenError:
        raise
    except Exception as exc:
        reraise_translated(exc, url, what, path)


def reraise_translated(exc: Exception, url: str, what: str, path: str = "") -> NoReturn:
    """Raise our error for transport exception ``exc`` (``from`` it), or ``exc`` itself when
    it is not one: :func:`mapped_errors`' ``except`` clause, for a hot path that writes its
    own ``try`` (no context manager built per call)."""
    mapped = translate(exc, url=url, what=what, path=path)
    if mapped is None:
        raise exc
    raise mapped from exc


# ---------------------------------------------------------------------------- the classifier


def classify(exc: BaseException, *, budgeted: bool = False) -> Verdict:
    """What a failure is worth: ``"retry"``, ``"reconnect"`` or ``"fatal"``.

    - ``"fatal"``: repeating cannot help, stop now and surface ``exc``. Authentication refused
      (401/403), not ComfyUI, TLS failures, protocol violations, an oversized body, any other
      unusable status (400, 404, 500...), a closed client, every prompt and input error, and
      anything that is not a transport failure at all.
    - ``"retry"``: the server answered "come back later" (429, 502, 503, 504): send the same
      request again after a backoff (honouring ``Retry-After``).
    - ``"reconnect"``: the connection failed or broke (refused, DNS, reset, closed mid-answer,
      timed out, WebSocket lost): open a new connection after a backoff.

    ``budgeted``: the caller tries again within a time budget against a server it reached
    before (the WebSocket's reconnect and resync, the removal of cancelled jobs). A 5xx answer
    (other than an authentication refusal or "not ComfyUI") is then a server starting or
    restarting, and is ``"retry"`` instead of ``"fatal"``.

    Foreign exceptions (aiohttp, OS) are translated first, so either kind may be passed.
    """
    if not isinstance(exc, DreamgenError):
        mapped = translate(exc, url="", what="")
        if mapped is None:
            return "fatal"
        exc = mapped
    if isinstance(exc, TLSError):
        return "fatal"
    if isinstance(exc, TransportError):  # ConnectError, ConnectionLostError, resets, timeouts
        return "reconnect"
    if isinstance(exc, AuthenticationError | NotComfyUIError | ProtocolError | ClientClosedError):
        return "fatal"
    if isinstance(exc, ServerError) and exc.status in RETRY_STATUSES:
        return "retry"
    if budgeted and isinstance(exc, ServerError) and exc.status >= 500:
        return "retry"
    return "fatal"


#: ``"fatal"`` verdicts that are about the server, not about the request: another server may
#: do better (it is ComfyUI, its TLS works, its client is open, it did not restart).
_FATAL_HERE = (NotComfyUIError, TLSError, ClientClosedError, PromptLost)


def blames_server(exc: BaseException) -> bool:
    """Whether a job that failed with ``exc`` may do better on another server.

    The pool's verdict (it then places the job elsewhere and counts a strike against the
    server), read from :func:`classify` with ``budgeted=True`` (the pool gives a job a few
    placements, against servers it reached before):

    - ``"retry"`` or ``"reconnect"``: the server's fault. The connection failed or broke,
      timed out, or the server answered "come back later" (429, 502-504) or 5xx, on every
      attempt its client made.
    - ``"fatal"``: the job's own fault (a rejected prompt, an execution error, 400/404, an
      oversized answer, credentials refused: the same everywhere) and not a reason to try
      elsewhere — except what is about this server only: it is not ComfyUI, its TLS fails,
      its client was closed, or it lost the prompt (a restart).
    """
    return classify(exc, budgeted=True) != "fatal" or isinstance(exc, _FATAL_HERE)


def may_have_been_processed(exc: BaseException) -> bool:
    """Whether the server may have acted on a request that failed with ``exc``.

    ``False`` only when the failure proves it did not: nothing reached it (connect errors),
    or it said so (429, 503). A re-sent ``POST /prompt`` must first check otherwise.
    """
    if isinstance(exc, ConnectError):
        return False
    return not (isinstance(exc, ServerError) and exc.status in NOT_PROCESSED_STATUSES)
