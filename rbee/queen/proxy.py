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

import aiohttp
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from rbee.queen.errors import UpstreamError, WorkerUnavailable, envelope, error_response
from rbee.queen.scheduler import Lease

log = logging.getLogger(__name__)

def sse_error(message: str, status: int = 502, code: str = "worker_failed") -> bytes:
    return b"data: " + envelope(status, message, code=code).model_dump_json().encode() + b"\n\n"


class _ForwardedStream(StreamingResponse):
    """A StreamingResponse that always closes its upstream and releases its lease,
    even when the client disconnects before the body starts."""

    def __init__(self, upstream: aiohttp.ClientResponse, lease: Lease, headers: dict[str, str]) -> None:
        self._upstream = upstream
        self._lease = lease
        super().__init__(self._chunks(), status_code=upstream.status, headers=headers)

    async def _chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._upstream.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, OSError) as exc:
            log.warning("worker %s broke mid-stream: %r", self._lease.worker.id, exc)
            yield sse_error(f"The worker serving '{self._lease.worker.spec.model.name}' stopped mid-stream "
                            f"({self._lease.worker.state}); retry the request.")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # close(), not release(): a stream cut short must drop the connection so the worker
            # notices and stops generating.
            if self._upstream.content.at_eof():
                self._upstream.release()
            else:
                self._upstream.close()
            self._lease.release()


class Forwarder:
    """Sends requests to workers over a pool of kept-alive connections (aiohttp: its C parser
    keeps the added latency per request well under a millisecond)."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                # Shorter than llama-server's 5 s keep-alive, so we rarely pick a connection it is closing.
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=3.0),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5.0),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _send(self, url: str, body: bytes, headers: dict[str, str]) -> aiohttp.ClientResponse:
        """POST, retrying once when a pooled keep-alive connection turns out to be closed already."""
        try:
            return await self._client().post(url, data=body, headers=headers)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            return await self._client().post(url, data=body, headers=headers)

    def _headers(self, lease: Lease) -> dict[str, str]:
        return {"x-rbee-worker": lease.worker.id, "x-rbee-hive": lease.worker.hive}

    async def forward(self, lease: Lease, path: str, body: bytes, stream: bool) -> Response:
        """POST `body` unchanged to the worker's `path`; the lease is released when the response ends."""
        worker = lease.worker
        try:
            upstream = await self._send(
                f"{worker.url}{path}", body,
                {"Authorization": f"Bearer {worker.api_key}", "Content-Type": "application/json"},
            )
        except BaseException as exc:
            lease.release()
            if not isinstance(exc, aiohttp.ClientError | OSError):
                raise
            raise WorkerUnavailable(f"Worker {worker.id} for '{worker.spec.model.name}' did not answer "
                                    f"({type(exc).__name__}); it is {worker.state}. Retry the request.") from exc
        headers = self._headers(lease)
        if "Content-Type" in upstream.headers:
            headers["content-type"] = upstream.headers["Content-Type"]
        if stream and upstream.status == 200:
            headers.update({"cache-control": "no-cache", "x-accel-buffering": "no"})
            return _ForwardedStream(upstream, lease, headers)
        try:
            content = await upstream.read()
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(f"Worker {worker.id} broke off its answer ({type(exc).__name__}).") from exc
        finally:
            upstream.release()
            lease.release()
        if upstream.status >= 400:
            return _normalise_error(upstream.status, content, headers)
        return Response(content, status_code=upstream.status, headers=headers)


def _normalise_error(status: int, content: bytes, headers: dict[str, str]) -> Response:
    """llama-server's errors are almost OpenAI's: make `code` a string and keep the message."""
    try:
        message = json.loads(content)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = content.decode(errors="replace")[:500] or f"worker answered HTTP {status}"
    headers.pop("content-type", None)
    return error_response(status, str(message), code="worker_error", headers=headers)
