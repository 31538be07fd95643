"""Moving bytes between a client and a worker.

Streams are forwarded chunk by chunk as the worker writes them, never parsed or buffered.
If the worker fails before the first byte the client gets a JSON error with a real status;
after it, one SSE `data:` error event ends the stream (the status is already sent).
When the client goes away, the upstream request is closed, and llama-server stops
generating for it, which frees its slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from rbee.common.hop import HOP
from rbee.common.upstream import Answer, Upstream
from rbee.contracts.workers import WorkerMode
from rbee.queen import context_fit
from rbee.queen.error_styles import OPENAI, ErrorStyle
from rbee.queen.errors import DeadlineExceeded, PromptTooLong, UpstreamError, WorkerUnavailable
from rbee.queen.scheduler import Lease

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """How a forwarded request ended, told once to whoever counts (usage, limits, metrics, the log)."""

    status: int  # 502 for a stream that broke, was cut, or was left by its client before its last event
    tail: bytes  # the whole body, or the tail of a stream: where its `usage` or `timings` are
    model: str  # the catalog name the worker serves
    hive: str
    worker: str
    ttft_s: float  # until the first byte of the answer (for a whole answer: all of it)
    duration_s: float
    events: int = 0  # SSE events of a stream: about one per generated token
    head: bytes = b""  # a stream's first chunk (Anthropic reports the prompt's tokens there)


OnEnd = Callable[[Outcome], None]

WORKER_CONNECT_S = 1.0  # workers are on this machine or the LAN: a connect that takes longer will not come

class Translation(Protocol):
    """How a worker's answer becomes the client's protocol, where the engine does not speak it (one per request:
    a stream's chunks may split its events). Metering still reads the worker's own bytes."""

    @property
    def media_type(self) -> str | None:
        """The client's, where it differs from the worker's (a class attribute satisfies it)."""
        ...

    def whole(self, content: bytes) -> bytes: ...

    def chunk(self, data: bytes) -> bytes:
        """What to send for the next bytes of the worker's stream (maybe nothing yet)."""
        ...

    def end(self) -> bytes:
        """What to send once the worker's stream ended normally."""
        ...

DEADLINE = (504, "deadline_exceeded", "The request's deadline (X-Rbee-Timeout) passed; generation was stopped.")
SHUTDOWN = (503, "queen_shutting_down", "The queen is shutting down; retry the request in a moment.")


_UNBOUNDED = contextlib.nullcontext()

FINAL_EVENTS = (b"data: [DONE]", b"event: response.completed", b"event: message_stop")
"""The line that starts a worker stream's last event: llama-server's OpenAI streams, its Responses and its
Anthropic Messages (tools/server: server-context.cpp, server-task.cpp)."""


def finished(tail: bytes) -> bool:
    """Whether a stream's tail holds its last event, at a line's start (JSON text holds no raw newline, so a
    generated `data: [DONE]` is no end): a client that leaves after that was served whole."""
    lines = b"\n" + tail
    return any(b"\n" + event in lines for event in FINAL_EVENTS)


class _ForwardedStream(StreamingResponse):
    """A StreamingResponse that always closes its upstream and releases its lease,
    even when the client disconnects before the body starts."""

    def __init__(self, upstream: Answer, lease: Lease, headers: dict[str, str],
                 on_end: OnEnd | None, deadline: float | None, in_flight: set[_ForwardedStream],
                 started: float, errors: ErrorStyle, translation: Translation | None = None) -> None:
        self._upstream = upstream
        self._errors = errors
        self._translation = translation
        self._head = b""
        self._started = started
        self._first: float | None = None
        self._lease = lease
        self._on_end = on_end
        self._in_flight = in_flight
        self.cut_reason: tuple[int, str, str] | None = None
        self._tail: deque[bytes] = deque(maxlen=4)
        self._events = 0
        self._failed = False
        loop = asyncio.get_running_loop()
        self._timer = None if deadline is None else loop.call_at(deadline, self.cut, DEADLINE)
        in_flight.add(self)
        super().__init__(self._chunks(), status_code=upstream.status, headers=headers)

    def cut(self, reason: tuple[int, str, str]) -> None:
        """End the stream early (deadline, shutdown): the worker stops, the client gets an error event."""
        if self.cut_reason is None:
            self.cut_reason = reason
            self._upstream.close()

    def _ended(self) -> None:
        """Report the end once, however the stream ended (finished, broken, cut, or its client gone)."""
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            now = time.monotonic()
            tail = b"".join(self._tail)
            # a client that leaves once the worker's last event reached it (Codex does, at once) was served
            failed = self._failed and (self.cut_reason is not None or not finished(tail))
            on_end(Outcome(502 if failed else 200, tail, self._lease.worker.spec.model.name,
                           self._lease.worker.hive,
                           self._lease.worker.id, (self._first or now) - self._started, now - self._started,
                           self._events, self._head))

    def _translate(self, chunk: bytes) -> bytes:
        """The chunk in the client's protocol; a worker event that cannot be translated ends the stream."""
        assert self._translation is not None
        try:
            return self._translation.chunk(chunk)
        except (ValueError, KeyError, TypeError, IndexError):
            log.warning("worker %s sent an event rbee could not translate", self._lease.worker.id)
            self.cut((502, "upstream_error", "The worker sent an event rbee could not translate for this "
                                             "protocol; retry the request."))
            return b""

    async def _chunks(self) -> AsyncIterator[bytes]:
        self._failed = True  # until the worker's stream ends normally
        try:
            async for chunk in self._upstream:
                if self._first is None:
                    self._first = time.monotonic()
                    self._head = chunk
                self._tail.append(chunk)
                self._events += chunk.count(b"data: ")
                out = chunk if self._translation is None else self._translate(chunk)
                if out:
                    yield out
            self._failed = self.cut_reason is not None
            if self._translation is not None and not self._failed:
                yield self._translation.end()
        except OSError as exc:  # the worker broke off (rbee.common.upstream's errors are OSErrors)
            if self.cut_reason is None:
                log.warning("worker %s broke mid-stream: %r", self._lease.worker.id, exc)
                yield self._errors.event(502, "worker_failed",
                                         f"The worker serving '{self._lease.worker.spec.model.name}' stopped "
                                         f"mid-stream ({self._lease.worker.state}); retry the request.")
        if self.cut_reason is not None:
            status, code, message = self.cut_reason
            yield self._errors.event(status, code, message)
        self._ended()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._respond(receive, send)
        finally:
            # close(), not release(): a stream cut short must drop the connection so the worker
            # notices and stops generating.
            if self._upstream.at_eof:
                self._upstream.release()
            else:
                self._upstream.close()
            self._lease.release()
            self._in_flight.discard(self)
            if self._timer is not None:
                self._timer.cancel()
            self._ended()


    async def _respond(self, receive: Receive, send: Send) -> None:
        """StreamingResponse's stream, which the client leaving stops (and with it the worker's read), as
        starlette's does, but with its disconnect listener in one plain task, not an anyio task group of two:
        less work per stream on the token path."""
        streaming = asyncio.current_task()
        assert streaming is not None
        left = False

        async def listen() -> None:
            nonlocal left
            await self.listen_for_disconnect(receive)
            left = True
            streaming.cancel()

        listener = asyncio.get_running_loop().create_task(listen(), name="client-gone")
        try:
            await self.stream_response(send)
        except asyncio.CancelledError:
            if not left or streaming.uncancel() > 0:  # not (only) the client's leaving: the queen stops
                raise
        finally:
            listener.cancel()


class Forwarder:
    """Sends requests to workers over a pool of kept-alive connections (rbee.common.upstream: an HTTP/1.1 client
    on llhttp, whose sockets give up on a cut link within WORKER_CONNECT_S)."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        # a worker that does not accept within a second (its link cut) is given up for another at once
        self._pool = Upstream(connect_s=WORKER_CONNECT_S, user_timeout_s=WORKER_CONNECT_S)
        self._streams: set[_ForwardedStream] = set()
        self._tls = tls  # workers on TLS hives: certificates from the cluster CA
        self._closing = False

    def end_streams(self) -> int:
        """End every stream in flight with an error event (the queen is stopping), and every stream that
        starts from now on at once; how many were in flight."""
        self._closing = True
        streams = list(self._streams)
        for stream in streams:
            stream.cut(SHUTDOWN)
        return len(streams)

    async def close(self) -> None:
        await self._pool.close()

    async def _open(self, lease: Lease, path: str, body: bytes, stream: bool, request_id: str | None,
                    deadline: float | None, content_type: str = "application/json") -> Answer:
        worker = lease.worker
        headers = {"Authorization": f"Bearer {worker.api_key}", "Content-Type": content_type, **HOP}
        if request_id:
            headers["X-Request-Id"] = request_id
        if deadline is not None:  # the deadline travels with the request: what is left of it
            headers["X-Rbee-Timeout"] = f"{max(0.1, deadline - asyncio.get_running_loop().time()):.3f}"
        if stream:
            # llama-server closes the connection after every streamed answer while still saying keep-alive:
            # asked to close, it says so, and the socket is not pooled only to be found dead by the next request;
            # a spare connection is opened for the next one instead (Upstream.request's `spare`).
            headers["Connection"] = "close"
        try:
            return await self._pool.request("POST", f"{worker.url}{path}", body, headers, worker.tls or self._tls,
                                            spare=stream)
        except OSError as exc:  # refused, reset, cut, TLS refused, or not HTTP
            raise WorkerUnavailable(f"Worker {worker.id} for '{worker.spec.model.name}' did not answer "
                                    f"({type(exc).__name__}); it is {worker.state}. Retry the request.") from exc

    async def _read(self, lease: Lease, upstream: Answer) -> bytes:
        try:
            content = await upstream.read()
        except BaseException as exc:
            upstream.close()  # not back to the pool: the answer was cut off (or its deadline passed)
            if isinstance(exc, OSError):  # broken off, or over upstream.MAX_WHOLE_BYTES
                raise UpstreamError(f"Worker {lease.worker.id} broke off its answer ({type(exc).__name__}).") from exc
            raise
        upstream.release()
        return content

    def _headers(self, lease: Lease, request_id: str | None) -> dict[str, str]:
        headers = {"x-rbee-worker": lease.worker.id, "x-rbee-hive": lease.worker.hive}
        if request_id:
            headers["x-request-id"] = request_id
        return headers

    async def forward(self, lease: Lease, path: str, body: bytes, stream: bool, *, deadline: float | None = None,
                      on_end: OnEnd | None = None, request_id: str | None = None,
                      errors: ErrorStyle = OPENAI, translation: Translation | None = None,
                      content_type: str = "application/json") -> Response:
        """POST `body` unchanged (of `content_type`) to the worker's `path`; the lease is released when the
        response ends.

        `deadline` (event-loop time) bounds the whole exchange: past it the worker's connection is
        closed, which stops its generation, and the client gets a 504 (or, mid-stream, an error event).
        Errors take the shape of `errors`, the client's protocol; a prompt longer than the worker's context
        raises `PromptTooLong` instead (nothing reached the client: a worker with more may serve it).
        """
        started = time.monotonic()
        try:
            # a non-streamed answer arrives whole: bound the wait (no timeout at all without a deadline)
            async with asyncio.timeout_at(deadline) if deadline is not None else _UNBOUNDED:
                upstream = await self._open(lease, path, body, stream, request_id, deadline, content_type)
                if not (stream and upstream.status == 200):
                    content = await self._read(lease, upstream)
        except BaseException as exc:
            lease.release()
            if isinstance(exc, TimeoutError):
                raise DeadlineExceeded(DEADLINE[2]) from exc
            raise
        headers = self._headers(lease, request_id)
        if "content-type" in upstream.headers:
            headers["content-type"] = upstream.headers["content-type"]
        if translation is not None and translation.media_type and upstream.status < 400:
            headers["content-type"] = translation.media_type
        if stream and upstream.status == 200:
            headers.update({"cache-control": "no-cache", "x-accel-buffering": "no"})
            forwarded = _ForwardedStream(upstream, lease, headers, on_end, deadline, self._streams, started,
                                         errors, translation)
            if self._closing:  # a queued request that got its slot while the queen stops
                forwarded.cut(SHUTDOWN)
            return forwarded
        lease.release()
        return _whole(upstream.status, content, lease, headers, started, on_end, errors, translation)


def _whole(status: int, content: bytes, lease: Lease, headers: dict[str, str], started: float,
           on_end: OnEnd | None, errors: ErrorStyle, translation: Translation | None) -> Response:
    """A worker's answer that came whole (not a stream): metered, then as it is, as the client's protocol's
    error, or translated; a prompt too long for the worker's context raises `PromptTooLong` unmetered (a worker
    with a larger context may serve it: inference.py)."""
    said = _worker_message(status, content) if status >= 400 else ""
    too_long = context_fit.exceeded(said) if status == 400 else None
    if too_long is not None:
        raise _prompt_too_long(said, too_long, lease, headers)
    if on_end is not None:
        took = time.monotonic() - started
        on_end(Outcome(status, content, lease.worker.spec.model.name, lease.worker.hive, lease.worker.id, took, took))
    if status >= 400:
        return _normalise_error(status, said, headers, errors, lease.worker.spec.mode)
    if translation is not None:
        try:
            content = translation.whole(content)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise UpstreamError(f"Worker {lease.worker.id} answered with something rbee could not "
                                "translate for this protocol.") from exc
    return Response(content, status_code=status, headers=headers)


def _worker_message(status: int, content: bytes) -> str:
    """The message of a worker's error answer (llama-server's are almost OpenAI's)."""
    try:
        return str(json.loads(content)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return content.decode(errors="replace")[:500] or f"worker answered HTTP {status}"


def _prompt_too_long(said: str, numbers: tuple[int, int], lease: Lease, headers: dict[str, str]) -> PromptTooLong:
    tokens, context = numbers
    headers.pop("content-type", None)
    return PromptTooLong(f"{said} (the worker of '{lease.worker.spec.model.name}' has {context} tokens per slot: "
                         "RBEE_WORKER_CONTEXT, or `context` for this model in models.toml, gives more)",
                         said=said, tokens=tokens, context=context, headers=headers)


def _normalise_error(status: int, message: str, headers: dict[str, str], errors: ErrorStyle,
                     mode: WorkerMode) -> Response:
    """A worker's error, with its message, in the shape of the client's protocol."""
    headers.pop("content-type", None)
    if status == 400 and mode is WorkerMode.TRANSCRIBE:  # whisper-server says "Invalid request"
        return errors.response(400, "The speech worker could not decode the audio: the file looks like WAV, MP3 or "
                               "FLAC but is damaged or in an encoding whisper-server does not read (convert it, "
                               "e.g. `ffmpeg -i IN -ar 16000 OUT.wav`).", param="file", code="invalid_audio",
                               headers=headers)
    if status == 501:  # the engine's "not supported": this model cannot do that (no FIM tokens, say): the caller's
        return errors.response(400, message, param="model", code="model_unsupported", headers=headers)
    return errors.response(status, message, code="worker_error", headers=headers)
