"""Moving bytes between a client and a worker.

Streams are forwarded chunk by chunk as the worker writes them, never parsed or buffered.
If the worker fails before the first byte the client gets a JSON error with a real status;
after it, one SSE `data:` error event ends the stream (the status is already sent).
When the client goes away, the upstream request is closed, and llama-server stops
generating for it, which frees its slot.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import httpx
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from rbee.contracts.errors import ErrorBody, ErrorEnvelope
from rbee.queen.errors import UpstreamError, WorkerUnavailable, error_response, error_type_for_status
from rbee.queen.scheduler import Lease

log = logging.getLogger(__name__)

_PASS_HEADERS = ("content-type",)


def sse_error(message: str, status: int = 502, code: str = "worker_failed") -> bytes:
    body = ErrorEnvelope(error=ErrorBody(message=message, type=error_type_for_status(status), code=code))
    return b"data: " + body.model_dump_json().encode() + b"\n\n"


class _ForwardedStream(StreamingResponse):
    """A StreamingResponse that always closes its upstream and releases its lease,
    even when the client disconnects before the body starts."""

    def __init__(self, upstream: httpx.Response, lease: Lease, headers: dict[str, str]) -> None:
        self._upstream = upstream
        self._lease = lease
        super().__init__(self._chunks(), status_code=upstream.status_code, headers=headers)

    async def _chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._upstream.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            log.warning("worker %s broke mid-stream: %r", self._lease.worker.id, exc)
            yield sse_error(f"The worker serving '{self._lease.worker.spec.model.name}' stopped mid-stream "
                            f"({self._lease.worker.state}); retry the request.")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._upstream.aclose()
            self._lease.release()


class Forwarder:
    def __init__(self) -> None:
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=5.0, read=None, write=60.0, pool=None),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=512),
        )

    async def close(self) -> None:
        await self._client.aclose()

    def _headers(self, lease: Lease) -> dict[str, str]:
        return {"x-rbee-worker": lease.worker.id, "x-rbee-hive": lease.worker.hive}

    async def forward(self, lease: Lease, path: str, body: bytes, stream: bool) -> Response:
        """POST `body` unchanged to the worker's `path`; the lease is released when the response ends."""
        worker = lease.worker
        request = self._client.build_request(
            "POST", f"{worker.url}{path}", content=body,
            headers={"authorization": f"Bearer {worker.api_key}", "content-type": "application/json"},
        )
        try:
            upstream = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            lease.release()
            raise WorkerUnavailable(f"Worker {worker.id} for '{worker.spec.model.name}' did not answer "
                                    f"({type(exc).__name__}); it is {worker.state}. Retry the request.") from exc
        headers = self._headers(lease)
        headers.update({k: v for k, v in upstream.headers.items() if k in _PASS_HEADERS})
        if stream and upstream.status_code == 200:
            headers.update({"cache-control": "no-cache", "x-accel-buffering": "no"})
            return _ForwardedStream(upstream, lease, headers)
        try:
            content = await upstream.aread()
        except httpx.HTTPError as exc:
            raise UpstreamError(f"Worker {worker.id} broke off its answer ({type(exc).__name__}).") from exc
        finally:
            await upstream.aclose()
            lease.release()
        if upstream.status_code >= 400:
            return _normalise_error(upstream.status_code, content, headers)
        return Response(content, status_code=upstream.status_code, headers=headers)


def _normalise_error(status: int, content: bytes, headers: dict[str, str]) -> Response:
    """llama-server's errors are almost OpenAI's: make `code` a string and keep the message."""
    try:
        message = json.loads(content)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = content.decode(errors="replace")[:500] or f"worker answered HTTP {status}"
    headers.pop("content-type", None)
    return error_response(status, str(message), code="worker_error", headers=headers)
