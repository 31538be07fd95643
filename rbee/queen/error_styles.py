"""Each client protocol's own error shape: one error, rendered the way its client's SDK reads it.

    OPENAI     `{"error": {"message", "type", "param", "code"}}`; mid-stream a `data:` event of the same
    ANTHROPIC  `{"type": "error", "error": {"type", "message"}}`; mid-stream an `event: error` of the same;
               a full queue is 529 `overloaded_error`, as Anthropic's API answers when it sheds load
    OLLAMA     `{"error": "message"}`; mid-stream an NDJSON line of the same

Routes and the guard raise QueenErrors that know nothing of protocols; the style of the path renders them.
"""

from __future__ import annotations

import json
from typing import Protocol

from starlette.responses import JSONResponse, Response

from rbee.common.error_responses import envelope, error_response
from rbee.contracts.anthropic import AnthropicError, AnthropicErrorBody

ANTHROPIC_PATHS = frozenset({"/v1/messages", "/v1/messages/count_tokens"})
OVERLOADED = 529
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                    504: "timeout_error", OVERLOADED: "overloaded_error"}


class ErrorStyle(Protocol):
    def response(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> Response: ...

    def event(self, status: int, code: str, message: str) -> bytes:
        """One SSE event that ends a stream which already sent its status."""
        ...


class OpenAIErrors:
    def response(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> Response:
        return error_response(status, message, param=param, code=code, headers=headers)

    def event(self, status: int, code: str, message: str) -> bytes:
        return b"data: " + envelope(status, message, code=code).model_dump_json().encode() + b"\n\n"


def anthropic_status(status: int, code: str | None) -> int:
    """The status Anthropic's API would answer: shedding load (a full queue) is its 529."""
    return OVERLOADED if status == 503 and code == "queue_full" else status


def anthropic_error(status: int, message: str) -> AnthropicError:
    kind = _ANTHROPIC_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    return AnthropicError(error=AnthropicErrorBody(type=kind, message=message))


class AnthropicErrors:
    def response(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> Response:
        status = anthropic_status(status, code)
        return JSONResponse(anthropic_error(status, message).model_dump(), status_code=status, headers=headers)

    def event(self, status: int, code: str, message: str) -> bytes:
        data = anthropic_error(anthropic_status(status, code), message).model_dump_json().encode()
        return b"event: error\ndata: " + data + b"\n\n"


class OllamaErrors:
    def response(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> Response:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    def event(self, status: int, code: str, message: str) -> bytes:
        return json.dumps({"error": message}).encode() + b"\n"


OPENAI: ErrorStyle = OpenAIErrors()
ANTHROPIC: ErrorStyle = AnthropicErrors()
OLLAMA: ErrorStyle = OllamaErrors()


def style_for(path: str) -> ErrorStyle:
    if path.startswith("/api/"):
        return OLLAMA
    return ANTHROPIC if path in ANTHROPIC_PATHS else OPENAI
