"""The queen's published OpenAPI spec, fuzzed with schemathesis: no input may make it fail (5xx) or crash.

Two 5xx answers are the API working as documented, not failing: 504 `deadline_exceeded` (the
fuzzer sends tiny X-Rbee-Timeout values) and 503 `queue_full` (with Retry-After). Anything else
at 500 or above fails the test, and so does any 4xx that is not an OpenAI-shaped error.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.conftest import Queen, free_port, queen_env

EXPECTED_5XX = {(504, "deadline_exceeded"), (503, "queue_full"),
                (504, "timeout_error"), (529, "overloaded_error")}  # the same two, in Anthropic's shape
EXAMPLES_PER_OPERATION = 40


@pytest.fixture(scope="module")
def fuzzed_queen(tmp_path_factory: pytest.TempPathFactory, llama_server: Path, tiny_model: Path) -> Iterator[Queen]:
    """A queen with the tiny model loaded; hub calls go to a closed port (there is no internet here)."""
    home = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    queen = Queen(home, port, {**queen_env(home, port, llama_server), "HF_ENDPOINT": "http://127.0.0.1:9"}).start()
    loaded = httpx.post(f"{queen.url}/v1/chat/completions", timeout=60,
                        json={"model": str(tiny_model), "messages": [{"role": "user", "content": "hi"}],
                              "max_tokens": 2})
    assert loaded.status_code == 200
    yield queen
    queen.stop()
    log = queen.log.read_text()
    assert "unexpected error" not in log and "Traceback" not in log, log[-3000:]


@pytest.fixture(scope="module")
def admin_headers(fuzzed_queen: Queen) -> dict[str, str]:
    return {"Authorization": "Bearer " + (fuzzed_queen.home / "config" / "admin.token").read_text().strip()}


def _check(case: Any, headers: dict[str, str]) -> None:
    response = case.call(headers=headers, timeout=30)
    status = response.status_code
    if status < 400:
        return
    try:
        body = response.json()
        error = body["error"]
        anthropic = case.path.startswith("/v1/messages")
        assert not anthropic or (body["type"] == "error" and isinstance(error["type"], str))
        if case.path.startswith("/api/"):  # Ollama's: {"error": "message"}
            assert isinstance(error, str) and error and status < 500, f"{case.method} {case.path}: {status} {error}"
            return
    except (ValueError, KeyError, TypeError, AssertionError):
        pytest.fail(f"{case.method} {case.path} answered {status} without its protocol's error: {response.text[:300]}")
    assert isinstance(error["message"], str) and error["message"]
    if status >= 500:
        kind = error.get("type") if anthropic else error.get("code")
        assert (status, kind) in EXPECTED_5XX, f"{case.method} {case.path}: {status} {error}"


def test_no_input_makes_the_queen_fail(fuzzed_queen: Queen, admin_headers: dict[str, str]) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzzed_queen.url}/openapi.json")
    # Shutdown would end the run; a job (Ollama's pull is one) could build an engine or download for minutes.
    schema = schema.exclude(path="/v1/admin/shutdown").exclude(method="POST", path="/v1/jobs") \
        .exclude(method="POST", path="/api/pull")
    tested = 0
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case: Any) -> None:
            _check(case, admin_headers)

        fuzz()
        tested += 1
    assert tested >= 20
    assert httpx.get(f"{fuzzed_queen.url}/health", timeout=5).status_code == 200


def test_the_openapi_spec_covers_every_route(fuzzed_queen: Queen) -> None:
    spec = httpx.get(f"{fuzzed_queen.url}/openapi.json").json()
    assert spec["openapi"] == "3.1.0"
    operations = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert {("POST", "/v1/messages"), ("POST", "/v1/messages/count_tokens"), ("POST", "/v1/responses"),
            ("POST", "/v1/responses/input_tokens"), ("POST", "/v1/chat/completions"), ("POST", "/v1/keys"),
            ("GET", "/v1/audit"),
            ("DELETE", "/v1/catalog/{name}"), ("GET", "/v1/models/{model}")} <= operations
    chat = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert chat["$ref"] == "#/components/schemas/ChatCompletionRequest"
    assert spec["components"]["schemas"]["ChatCompletionRequest"]["properties"]["temperature"]
