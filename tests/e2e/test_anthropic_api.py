"""Anthropic's Messages API on a real queen with real llama-server workers, through the official `anthropic` SDK."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import anthropic
import httpx
import pytest

from tests.conftest import Queen, wait_for
from tests.e2e.test_observability import _samples, _value
from tests.e2e.test_security import _create_key

GREEDY = {"temperature": 0}
HELLO = [{"role": "user", "content": "hello there"}]
WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def _client(queen: Queen, key: str = "unused") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=queen.url, api_key=key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def client(queen: Queen) -> anthropic.Anthropic:
    return _client(queen)


@pytest.fixture(scope="module")
def tiny(queen: Queen, tiny_model: Path, client: anthropic.Anthropic) -> str:
    """The tiny model's catalog name, after a first request by path has added and loaded it."""
    reply = client.messages.create(model=str(tiny_model), max_tokens=4, messages=HELLO)
    assert reply.content and reply.content[0].type == "text"
    return "tiny"


def test_create_answers_a_message_with_usage_and_the_workers_headers(tiny: str, client: anthropic.Anthropic) -> None:
    raw = client.messages.with_raw_response.create(model=tiny, max_tokens=12, messages=HELLO, extra_body=GREEDY)
    assert raw.headers["x-rbee-hive"] == "localhost" and raw.headers["x-rbee-worker"]
    reply = raw.parse()
    assert reply.type == "message" and reply.role == "assistant" and reply.model == tiny
    assert reply.stop_reason == "max_tokens" and reply.usage.output_tokens == 12
    assert reply.usage.input_tokens + (reply.usage.cache_read_input_tokens or 0) > 5
    assert reply.content[0].type == "text" and reply.content[0].text.strip()


def test_streamed_text_equals_the_whole_answer(tiny: str, client: anthropic.Anthropic) -> None:
    whole = client.messages.create(model=tiny, max_tokens=20, messages=HELLO, extra_body=GREEDY)
    with client.messages.stream(model=tiny, max_tokens=20, messages=HELLO, extra_body=GREEDY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert whole.content[0].type == "text" and text == whole.content[0].text
    assert final.usage.output_tokens == 20 and final.stop_reason == "max_tokens"


def test_stream_is_forwarded_as_anthropic_events(queen: Queen, tiny: str) -> None:
    body = {"model": tiny, "max_tokens": 5, "messages": HELLO, "stream": True}
    with httpx.stream("POST", f"{queen.url}/v1/messages", json=body, timeout=60) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        kinds = [line[7:] for line in resp.iter_lines() if line.startswith("event: ")]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("content_block_delta") == 5


def test_tools_are_accepted(tiny: str, client: anthropic.Anthropic) -> None:
    reply = client.messages.create(model=tiny, max_tokens=8, messages=HELLO, tools=[WEATHER])  # type: ignore[list-item]
    assert reply.stop_reason in ("max_tokens", "tool_use", "end_turn") and reply.content


def test_count_tokens_counts_the_prompt(tiny: str, client: anthropic.Anthropic) -> None:
    short = client.messages.count_tokens(model=tiny, messages=HELLO)  # type: ignore[arg-type]
    longer = client.messages.count_tokens(model=tiny, messages=[{"role": "user", "content": "hello there " * 20}])
    assert 0 < short.input_tokens < longer.input_tokens


def test_an_unknown_model_is_a_not_found_error(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="no-such-model", max_tokens=4, messages=HELLO)  # type: ignore[arg-type]
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "not_found_error" and "no-such-model" in body["error"]["message"]


@pytest.mark.parametrize(("body", "named"), [
    ({"model": "tiny", "messages": HELLO}, "max_tokens"),
    ({"model": "tiny", "max_tokens": 0, "messages": HELLO}, "max_tokens"),
    ({"model": "tiny", "max_tokens": 4, "messages": []}, "messages"),
    ({"model": "tiny", "max_tokens": 4, "messages": [{"role": "", "content": "x"}]}, "messages.0.role"),
    ({"model": "tiny", "max_tokens": 4, "messages": [{"role": "user"}]}, "messages.0.content"),
    ({"max_tokens": 4, "messages": HELLO}, "model"),
])
def test_a_bad_body_is_an_invalid_request_error_naming_the_field(queen: Queen, tiny: str, body: dict[str, object],
                                                                 named: str) -> None:
    resp = httpx.post(f"{queen.url}/v1/messages", json=body, timeout=60)
    assert resp.status_code == 400
    error = resp.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert named in error["error"]["message"]


def test_malformed_json_is_an_invalid_request_error(queen: Queen) -> None:
    resp = httpx.post(f"{queen.url}/v1/messages", content=b"{not json", timeout=60,
                      headers={"content-type": "application/json"})
    assert resp.status_code == 400 and resp.json()["error"]["type"] == "invalid_request_error"


def test_tokens_are_metered(queen: Queen, tiny: str, client: anthropic.Anthropic) -> None:
    before = _value(_samples(queen), "rbee_tokens_total", model=tiny, kind="completion")
    client.messages.create(model=tiny, max_tokens=6, messages=HELLO)
    with client.messages.stream(model=tiny, max_tokens=7, messages=HELLO) as stream:
        stream.until_done()
    samples = _samples(queen)
    assert _value(samples, "rbee_tokens_total", model=tiny, kind="completion") == before + 13


def test_x_api_key_is_a_key_with_its_limits_usage_and_errors(make_queen: Callable[..., Queen],
                                                             tiny_model: Path) -> None:
    queen = make_queen().start()
    assert _client(queen).messages.create(model=str(tiny_model), max_tokens=2, messages=HELLO).content
    secret = _create_key(queen, "--name", "claude", "--rpm", "2")
    with pytest.raises(anthropic.AuthenticationError) as bad:
        _client(queen, "rbee-not-a-key").messages.create(model="tiny", max_tokens=4, messages=HELLO)
    assert isinstance(bad.value.body, dict) and bad.value.body["error"]["type"] == "authentication_error"
    keyed = _client(queen, secret)  # the SDK sends it as x-api-key
    assert keyed.messages.create(model="tiny", max_tokens=5, messages=HELLO).usage.output_tokens == 5
    with keyed.messages.stream(model="tiny", max_tokens=6, messages=HELLO) as stream:
        stream.until_done()
    with pytest.raises(anthropic.RateLimitError) as limited:
        keyed.messages.create(model="tiny", max_tokens=4, messages=HELLO)
    assert isinstance(limited.value.body, dict) and limited.value.body["error"]["type"] == "rate_limit_error"
    assert 1 <= int(limited.value.response.headers["retry-after"]) <= 60
    rows = {r["model"]: r for r in json.loads(queen.cli("key", "usage", "claude", "--json", check=True).stdout)}
    assert rows["tiny"]["requests"] == 2 and rows["tiny"]["completion_tokens"] == 11
    assert rows["tiny"]["prompt_tokens"] > 5


def _waiting(queen: Queen, model: str) -> int:
    status = httpx.get(f"{queen.url}/v1/status", timeout=10).json()
    return int(status["traffic"]["waiting"].get(model, 0))


def test_a_full_queue_is_overloaded_and_a_worker_dying_mid_stream_is_an_error_event(
        make_queen: Callable[..., Queen], tiny_model: Path) -> None:
    queen = make_queen(RBEE_WORKER_SLOTS="1", RBEE_QUEUE_PER_MODEL="1", RBEE_WORKER_CONTEXT="2048").start()
    client = _client(queen)
    assert client.messages.create(model=str(tiny_model), max_tokens=2, messages=HELLO).content
    long = {"model": "tiny", "max_tokens": 2000, "messages": HELLO, "stream": True}
    queued: list[httpx.Response] = []
    with httpx.stream("POST", f"{queen.url}/v1/messages", json=long, timeout=60) as busy:
        lines = busy.iter_lines()
        assert next(lines) == "event: message_start"
        pid = int(queen.workers()[0]["pid"])  # type: ignore[call-overload]
        os.kill(pid, signal.SIGSTOP)  # the only slot stays taken, mid-stream
        try:
            waiter = threading.Thread(target=lambda: queued.append(httpx.post(
                f"{queen.url}/v1/messages", json={**long, "stream": False, "max_tokens": 2}, timeout=60)))
            waiter.start()
            assert wait_for(lambda: _waiting(queen, "tiny") == 1, 10)
            with pytest.raises(anthropic.APIStatusError) as full:
                client.messages.create(model="tiny", max_tokens=2, messages=HELLO)
            assert full.value.status_code == 529 and int(full.value.response.headers["retry-after"]) >= 1
            assert isinstance(full.value.body, dict) and full.value.body["error"]["type"] == "overloaded_error"
        finally:
            os.kill(pid, signal.SIGKILL)
        rest = list(lines)
    waiter.join(60)
    errors = [json.loads(rest[i + 1][6:]) for i, line in enumerate(rest) if line == "event: error"]
    assert len(errors) == 1 and errors[0]["type"] == "error", rest[-6:]
    assert errors[0]["error"]["type"] == "api_error" and "stopped mid-stream" in errors[0]["error"]["message"]
    assert "event: message_stop" not in rest
    assert queued and (queued[0].status_code == 200 or queued[0].json()["type"] == "error")
