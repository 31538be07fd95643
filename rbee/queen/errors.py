"""Errors the queen answers with, each rendered as OpenAI's envelope.

    QueenError                      any error with an HTTP status and an OpenAI `type`
    +-- InvalidRequest (400)        the caller sent something malformed
    +-- ModelNotFound (404)         no hive has that model
    +-- HiveNotFound (404)          `-a ALIAS` names no hive
    +-- NotFound (404)              a job or worker id that does not exist
    +-- Conflict (409)              the operation clashes with work in progress
    +-- ModelTooLargeError (400)    no device could ever hold the model
    +-- PromptTooLong (400)         a prompt longer than its worker's context (llama-server's own 400)
    +-- QueueFull (503)             too many requests waiting, or waiting too long (Retry-After)
    +-- WorkerUnavailable (503)     the world failed: a worker did not start, or died
    +-- DeadlineExceeded (504)      the deadline the client set (X-Rbee-Timeout) passed
    +-- UpstreamError (502)         a worker answered with something unusable
"""

from __future__ import annotations

import logging
import os
import re

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rbee.common.error_responses import envelope, error_response
from rbee.contracts.errors import ErrorEnvelope

log = logging.getLogger(__name__)

class QueenError(Exception):
    status = 500
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.code
        self.headers = headers or {}

    def envelope(self) -> ErrorEnvelope:
        return envelope(self.status, self.message, param=self.param, code=self.code)


class InvalidRequest(QueenError):
    status = 400
    code = "invalid_request"


class ModelNotFound(QueenError):
    status = 404
    code = "model_not_found"


class HiveNotFound(QueenError):
    status = 404
    code = "hive_not_found"


class NotFound(QueenError):
    status = 404
    code = "not_found"


class Conflict(QueenError):
    status = 409
    code = "conflict"


class ModelTooLargeError(QueenError):
    status = 400
    code = "model_too_large"


class PromptTooLong(QueenError):
    """A worker refused a prompt longer than its context per slot, before any byte reached the client:
    `said` is the worker's own message, `tokens` and `context` its numbers (a larger worker may serve it)."""

    status = 400
    code = "context_length_exceeded"

    def __init__(self, message: str, *, said: str, tokens: int, context: int,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message, param="messages", headers=headers)
        self.said, self.tokens, self.context = said, tokens, context

    def explained(self, why: str) -> PromptTooLong:
        """The same refusal, with the worker's message followed by `why` it cannot be served elsewhere."""
        return PromptTooLong(f"{self.said}: {why}", said=self.said, tokens=self.tokens, context=self.context,
                             headers=self.headers)


class QueueFull(QueenError):
    status = 503
    code = "queue_full"


class ClientGone(QueenError):
    status = 499
    code = "client_closed_request"


class WorkerUnavailable(QueenError):
    status = 503
    code = "worker_unavailable"


class DeadlineExceeded(QueenError):
    status = 504
    code = "deadline_exceeded"


class UpstreamError(QueenError):
    status = 502
    code = "upstream_error"


async def handle_queen_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, QueenError)
    return JSONResponse(exc.envelope().model_dump(), status_code=exc.status, headers=exc.headers)


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id(request: Request) -> str:
    """The client's X-Request-Id when it is a sane one, else a new one; it goes to the worker and comes back."""
    given = request.headers.get("x-request-id", "")
    return given if _REQUEST_ID.fullmatch(given) else os.urandom(16).hex()  # 128 random bits, cheaper than uuid4


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    """A bug: its traceback in the log under the request's id, and that id (not its text) for the client."""
    rid = request_id(request)
    log.exception("unexpected error on %s %s (request %s)", request.method, request.url.path, rid, exc_info=exc)
    return error_response(500, f"Internal error ({type(exc).__name__}) in request {rid}; the queen's log has the "
                               "details under that id.", code="internal_error", headers={"x-request-id": rid})


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 500)
    detail = getattr(exc, "detail", None) or "error"
    return error_response(status, str(detail))
