"""One error, in the shape each protocol's client reads."""

from __future__ import annotations

import json

import pytest

from rbee.queen.error_styles import ANTHROPIC, OPENAI, style_for


@pytest.mark.parametrize(("status", "code", "sent", "kind"), [
    (400, "invalid_request", 400, "invalid_request_error"),
    (401, "invalid_api_key", 401, "authentication_error"),
    (403, "forbidden", 403, "permission_error"),
    (404, "model_not_found", 404, "not_found_error"),
    (413, "request_too_large", 413, "request_too_large"),
    (429, "rate_limit_exceeded", 429, "rate_limit_error"),
    (503, "queue_full", 529, "overloaded_error"),
    (503, "worker_unavailable", 503, "api_error"),
    (504, "deadline_exceeded", 504, "timeout_error"),
])
def test_anthropic_errors(status: int, code: str, sent: int, kind: str) -> None:
    resp = ANTHROPIC.response(status, "what went wrong", code=code, headers={"Retry-After": "2"})
    assert resp.status_code == sent and resp.headers["retry-after"] == "2"
    assert json.loads(bytes(resp.body)) == {"type": "error", "error": {"type": kind, "message": "what went wrong"}}


def test_anthropic_stream_error_is_an_error_event() -> None:
    event = ANTHROPIC.event(502, "worker_failed", "stopped mid-stream")
    name, data = event.decode().rstrip("\n").split("\n")
    assert name == "event: error" and event.endswith(b"\n\n")
    assert json.loads(data[6:]) == {"type": "error", "error": {"type": "api_error", "message": "stopped mid-stream"}}


def test_openai_errors_keep_their_envelope() -> None:
    resp = OPENAI.response(404, "no such model", param="model", code="model_not_found")
    assert json.loads(bytes(resp.body))["error"] == {"message": "no such model", "type": "invalid_request_error",
                                                     "param": "model", "code": "model_not_found"}
    assert OPENAI.event(502, "worker_failed", "x").startswith(b"data: {\"error\"")


def test_each_path_has_its_style() -> None:
    assert style_for("/v1/messages") is ANTHROPIC and style_for("/v1/messages/count_tokens") is ANTHROPIC
    assert style_for("/v1/chat/completions") is OPENAI and style_for("/v1/responses") is OPENAI
