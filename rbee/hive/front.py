"""The hive's front for engines with no key and no TLS of their own (whisper-server; `EngineSource.fronted`).

Such an engine listens on 127.0.0.1 only, and the hive serves it on its own port, which has TLS when the
cluster has a CA:

    ANY /v1/workers/{worker_id}/engine/{path}   -> http://127.0.0.1:{engine port}/{path}

The worker's URL in the hive's report is `https://HIVE:PORT/v1/workers/{id}/engine`, so the queen's proxy
sends it requests as to any worker, with the worker's key; the join token is taken too (the queen holds
both). A request is refused (and forwarded nowhere) when it carries neither, or another worker's key (401);
when its path is not plain segments (`..`, `.`, an empty segment, a percent-escape such as `%2e%2e`, a
scheme: 400); or when its body is over RBEE_MAX_BODY_MB (413, before it is read when it says its length).
Request and response bytes pass unchanged, streamed both ways; hop-by-hop headers and the credential stay
behind.

The queen's deadline comes as X-Rbee-Timeout (seconds left; not a number from 0.1 to 86400: 400): past it the
engine's connection is closed and the answer is a 504 (or, once the answer has begun, its end). An engine that
dies before it answers, or a worker whose engine has stopped (`error`, `stopped`: its port may be another
process's by then, so nothing is forwarded), is a 502 with code `engine_gone`, which the queen takes as the
worker gone (it retries once on another worker, as for a worker on its own machine that drops the connection).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from rbee.common import settings
from rbee.common.error_responses import error_response
from rbee.common.upstream import Answer, Upstream
from rbee.contracts.workers import (
    ENGINE_GONE,
    MAX_TIMEOUT_S,
    MIN_TIMEOUT_S,
    TIMEOUT_HEADER,
    WorkerState,
    timeout_seconds,
)

if TYPE_CHECKING:  # the worker module imports none of this one; typing only
    from rbee.hive.worker import WorkerProcess

log = logging.getLogger(__name__)

ROUTE = r"/v1/workers/[^/]+/engine(?:/.*)?"  # the token guard lets these through: the front checks its own
_GONE = frozenset({WorkerState.ERROR, WorkerState.STOPPED})
_SEGMENT = re.compile(r"[A-Za-z0-9_.~-]+")
_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host",
                  "proxy-authorization", "proxy-authenticate", "authorization", "content-length"})


def hive_url(address: str, port: int, tls: bool) -> str:
    """The hive's own API as the queen reaches it: the base of its fronted workers' URLs."""
    host = f"[{address}]" if ":" in address else address
    return f"{'https' if tls else 'http'}://{host}:{port}"


def engine_path(raw: str) -> str | None:
    """The path to ask the engine for, from what follows `/engine` in the raw request target; None unless it
    is `/` and plain segments (letters, digits, `_.~-`, never `.` or `..`)."""
    if not raw.startswith("/"):
        return None
    segments = raw[1:].split("/")
    if raw == "/" or all(_SEGMENT.fullmatch(s) and s not in (".", "..") for s in segments):
        return raw
    return None


def authorised(headers: Mapping[str, str], worker: WorkerProcess | None, token: str) -> bool:
    """Whether the request carries the worker's own key or the hive's join token."""
    given = headers.get("authorization", "").encode()
    keys = [token] + ([worker.api_key] if worker is not None else [])
    return any(hmac.compare_digest(given, f"Bearer {key}".encode()) for key in keys)


class EngineFront:
    """Forwards requests for fronted workers to their engines on loopback (one connection pool)."""

    def __init__(self, token: str) -> None:
        self._token = token
        self._pool = Upstream(connect_s=5.0)

    async def close(self) -> None:
        await self._pool.close()

    def _refusal(self, request: Request, worker: WorkerProcess | None, worker_id: str) -> Response | None:
        """The answer for a request the front will not forward; None when it may."""
        if not authorised(request.headers, worker, self._token):
            client = request.client.host if request.client else "?"
            log.warning("front: refused %s %s from %s: %s", request.method, request.url.path, client,
                        "wrong key" if request.headers.get("authorization") else "no key")
            return error_response(401, f"Worker {worker_id[:128]} is served only to the queen: its key (or the "
                                       "hive's join token) is required.", code="invalid_api_key")
        if worker is None or not worker.spec.front or worker.port is None:
            state = "" if worker is None else f" through this hive's front (it is {worker.state})"
            return error_response(404, f"There is no worker '{worker_id[:128]}' served{state} on this hive.",
                                  code="not_found")
        if worker.state in _GONE:  # its port may be another process's by now: nothing is forwarded there
            return error_response(502, f"The engine of worker {worker_id[:128]} has stopped ({worker.state}); the "
                                       "queen retries the request on another worker.", code=ENGINE_GONE)
        length = request.headers.get("content-length", "")
        if length and (not length.isdigit() or int(length) > settings.max_body_bytes()):
            return error_response(413, f"The request body ({length[:20]} bytes) is larger than "
                                       f"{settings.max_body_bytes()} bytes (RBEE_MAX_BODY_MB).", code="too_large")
        return None

    async def serve(self, request: Request) -> Response:
        worker_id = request.path_params["worker_id"]
        worker = request.app.state.hive.supervisor.get(worker_id)
        refused = self._refusal(request, worker, worker_id)
        if refused is not None:
            return refused
        assert worker is not None and worker.port is not None
        raw = request.scope.get("raw_path", request.url.path.encode()).decode("latin-1")
        path = engine_path(raw.split("/engine", 1)[1] or "/") if "/engine" in raw else None
        if path is None:
            return error_response(400, "The engine path must be plain segments (no '.', '..', empty segments "
                                       "or percent-escapes).", code="invalid_path")
        raw_timeout = request.headers.get(TIMEOUT_HEADER)
        seconds = None if raw_timeout is None else timeout_seconds(raw_timeout)
        if raw_timeout is not None and seconds is None:
            return error_response(400, f"The {TIMEOUT_HEADER} header must be a number of seconds from "
                                       f"{MIN_TIMEOUT_S} to {MAX_TIMEOUT_S:.0f}, not {raw_timeout[:40]!r}.",
                                  code="invalid_timeout")
        query = request.url.query
        url = f"http://127.0.0.1:{worker.port}{path}" + (f"?{query}" if query else "")
        deadline = None if seconds is None else asyncio.get_running_loop().time() + seconds
        return await self._forward(request, url, deadline)

    async def _forward(self, request: Request, url: str, deadline: float | None) -> Response:
        headers = {k: v for k, v in request.headers.items() if k not in _HOP}
        length = request.headers.get("content-length")
        if length is not None:  # checked against the bound already (_refusal)
            body: bytes | AsyncIterator[bytes] = request.stream()
        else:
            try:
                body = await _bounded(request)
            except _TooLarge:
                return error_response(413, f"The request body is larger than {settings.max_body_bytes()} bytes "
                                           "(RBEE_MAX_BODY_MB).", code="too_large")
        try:
            async with asyncio.timeout_at(deadline):  # a cancelled request closes its connection to the engine
                upstream = await self._pool.request(request.method, url, body, headers,
                                                    length=None if length is None else int(length))
        except TimeoutError:
            log.warning("front: the engine at %s did not answer within the deadline", url.split("?")[0])
            return error_response(504, f"The request's deadline ({TIMEOUT_HEADER}) passed before the engine "
                                       "answered; the engine's connection was closed.", code="deadline_exceeded")
        except (OSError, ClientDisconnect) as exc:
            log.warning("front: the engine at %s did not answer (%s)", url.split("?")[0], type(exc).__name__)
            return error_response(502, "The worker's engine stopped before it answered; the queen retries the "
                                       "request on another worker.", code=ENGINE_GONE)
        kept = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP - {"content-length"}}
        return StreamingResponse(_relay(upstream, deadline, url.split("?")[0]), status_code=upstream.status,
                                 headers=kept)


class _TooLarge(Exception):
    pass


async def _bounded(request: Request) -> bytes:
    """A body sent without a length, read whole up to RBEE_MAX_BODY_MB (`_TooLarge` past it)."""
    limit, body = settings.max_body_bytes(), bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _TooLarge
    return bytes(body)


async def _relay(upstream: Answer, deadline: float | None, where: str) -> AsyncIterator[bytes]:
    """The engine's answer as it arrives, until `deadline`; its connection closed if the client goes away first
    or the deadline passes (its status is sent already: the connection to the client breaks, so a cut answer
    never looks whole)."""
    try:
        while True:
            async with asyncio.timeout_at(deadline):
                chunk = await anext(upstream, b"")
            if not chunk:
                break
            yield chunk
    except TimeoutError:
        log.warning("front: the deadline passed while the engine at %s answered: cut", where)
        raise
    finally:
        if upstream.at_eof:
            upstream.release()
        else:
            upstream.close()
