"""The queen's published OpenAPI spec, fuzzed with schemathesis: no input may make it fail (5xx) or crash.

Two 5xx answers are the API working as documented, not failing: 504 `deadline_exceeded` (the
fuzzer sends tiny X-Rbee-Timeout values) and 503 `queue_full` (with Retry-After). Anything else
at 500 or above fails the test, and so does any 4xx that is not its protocol's error.

The fuzzer names models at random, which the queen refuses before any worker sees the request; a second
pass sends every inference route's bodies with a model the queen serves (the tiny model, as a reranker for
rerank, with fill-in-the-middle tokens for /infill), so they reach llama-server and its answers come back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from rbee.queen.openapi import INFERENCE
from tests.conftest import Queen, free_port, queen_env
from tests.e2e.test_observability import _samples, _value

EXPECTED_5XX = {(504, "deadline_exceeded"), (503, "queue_full"),
                (504, "timeout_error"), (529, "overloaded_error")}  # the same two, in Anthropic's shape
EXAMPLES_PER_OPERATION = 40
EXAMPLES_REACHING_A_WORKER = 25
RERANK = {"/v1/rerank", "/rerank", "/v2/rerank"}
REACHING = INFERENCE | {"/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/api/show"}  # name a model


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


@pytest.fixture(scope="module")
def served(fuzzed_queen: Queen, admin_headers: dict[str, str], tiny_rerank_model: Path,
           tiny_fim_model: Path) -> dict[str, str]:
    """The models the queen serves, by the kind of route (loaded once, so the fuzzer's requests find them).
    The admin token: the fuzzer may have made API keys, and then the queen asks for one."""
    rerank = httpx.post(f"{fuzzed_queen.url}/v1/rerank", timeout=60, headers=admin_headers,
                        json={"model": str(tiny_rerank_model), "query": "bee", "documents": ["a bee", "a cat"]})
    infill = httpx.post(f"{fuzzed_queen.url}/infill", timeout=60, headers=admin_headers,
                        json={"model": str(tiny_fim_model), "input_prefix": "def f(", "input_suffix": ")",
                              "n_predict": 2})
    assert rerank.status_code == 200, rerank.text
    assert infill.status_code == 200, infill.text
    models = httpx.get(f"{fuzzed_queen.url}/v1/models", timeout=10, headers=admin_headers).json()["data"]
    names = {m["id"] for m in models}
    assert {"tiny", "tiny-rerank", "tiny-fim"} <= names, names
    return {"rerank": "tiny-rerank", "infill": "tiny-fim", "other": "tiny"}


def _fuzz(queen: Queen, examples: int, check: Callable[[Any], None], paths: set[str] | None = None) -> list[str]:
    """Fuzz the operations of the queen's spec (those on `paths`, or all); the operations fuzzed."""
    schema = schemathesis.openapi.from_url(f"{queen.url}/openapi.json")
    # Shutdown would end the run; a job (Ollama's pull is one) could build an engine or download for minutes.
    schema = schema.exclude(path="/v1/admin/shutdown").exclude(method="POST", path="/v1/jobs") \
        .exclude(method="POST", path="/api/pull")
    tested = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if paths is not None and operation.path not in paths:
            continue

        @given(case=operation.as_strategy())
        @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def fuzz(case: Any) -> None:
            check(case)

        fuzz()
        tested.append(f"{operation.method.upper()} {operation.path}")
    return tested


def test_no_input_makes_the_queen_fail(fuzzed_queen: Queen, admin_headers: dict[str, str]) -> None:
    tested = _fuzz(fuzzed_queen, EXAMPLES_PER_OPERATION, lambda case: _check(case, admin_headers))
    assert len(tested) >= 20
    assert {"POST /v1/messages", "POST /v1/responses", "POST /api/chat", "POST /infill", "POST /v2/rerank",
            "GET /api/tags"} <= set(tested)
    assert httpx.get(f"{fuzzed_queen.url}/health", timeout=5).status_code == 200


def test_no_body_a_worker_reads_makes_the_queen_fail(fuzzed_queen: Queen, admin_headers: dict[str, str],
                                                     served: dict[str, str]) -> None:
    def with_served_model(case: Any) -> None:
        kind = "rerank" if case.path in RERANK else "infill" if case.path == "/infill" else "other"
        case.body["model"] = served[kind]
        _check(case, admin_headers)

    tested = _fuzz(fuzzed_queen, EXAMPLES_REACHING_A_WORKER, with_served_model, REACHING)
    assert sorted(tested) == sorted(f"POST {path}" for path in REACHING)
    assert httpx.get(f"{fuzzed_queen.url}/health", timeout=5).status_code == 200
    for view in ("/v1/workers", "/v1/status", "/api/ps"):  # what the bodies left behind can still be shown
        assert httpx.get(f"{fuzzed_queen.url}{view}", timeout=10, headers=admin_headers).status_code == 200, view
    samples = _samples(fuzzed_queen, admin_headers)  # answered by a worker (some bodies unload theirs: keep_alive 0)
    for model in served.values():
        assert _value(samples, "rbee_requests_total", model=model, hive="localhost", status="200") >= 5, model


def test_the_openapi_spec_covers_every_route(fuzzed_queen: Queen) -> None:
    spec = httpx.get(f"{fuzzed_queen.url}/openapi.json").json()
    assert spec["openapi"] == "3.1.0"
    operations = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert {("POST", "/v1/messages"), ("POST", "/v1/messages/count_tokens"), ("POST", "/v1/responses"),
            ("POST", "/v1/responses/input_tokens"), ("POST", "/v1/chat/completions"), ("POST", "/v1/keys"),
            ("GET", "/v1/audit"),
            ("DELETE", "/v1/catalog/{name}"), ("GET", "/v1/models/{model}")} <= operations
    assert {("POST", "/v1/rerank"), ("POST", "/rerank"), ("POST", "/v2/rerank"), ("POST", "/infill"),
            ("POST", "/api/chat"), ("POST", "/api/generate"), ("POST", "/api/embed"), ("POST", "/api/embeddings"),
            ("POST", "/api/show"), ("GET", "/api/tags"), ("GET", "/api/ps"), ("GET", "/api/version")} <= operations
    for path in ("/v1/messages", "/v1/responses", "/v2/rerank", "/infill", "/api/chat"):  # with their bodies
        assert "$ref" in spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    chat = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert chat["$ref"] == "#/components/schemas/ChatCompletionRequest"
    assert spec["components"]["schemas"]["ChatCompletionRequest"]["properties"]["temperature"]
