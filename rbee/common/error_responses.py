"""OpenAI-shaped error responses, for every daemon (queen and hive)."""

from __future__ import annotations

from starlette.responses import JSONResponse, Response

from rbee.contracts.errors import ErrorBody, ErrorEnvelope

_TYPE_FOR_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def error_type_for_status(status: int) -> str:
    return _TYPE_FOR_STATUS.get(status, "server_error")


def envelope(status: int, message: str, *, param: str | None = None, code: str | None = None) -> ErrorEnvelope:
    """The one place an OpenAI error body is made."""
    return ErrorEnvelope(error=ErrorBody(message=message, type=error_type_for_status(status), param=param,
                                         code=code))


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    body = envelope(status, message, param=param, code=code)
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)
