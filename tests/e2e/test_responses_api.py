"""OpenAI's Responses API on a real queen with real llama-server workers, through the official `openai` SDK."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import Queen
from tests.e2e.test_observability import _samples, _value
from tests.e2e.test_security import _create_key


def _client(queen: Queen, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{queen.url}/v1", api_key=key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def client(queen: Queen) -> openai.OpenAI:
    return _client(queen)


@pytest.fixture(scope="module")
def tiny(queen: Queen, tiny_model: Path, client: openai.OpenAI) -> str:
    """The tiny model's catalog name, after a first request by path has added and loaded it."""
    assert client.responses.create(model=str(tiny_model), input="hello there", max_output_tokens=2).output_text
    return "tiny"


def test_create_answers_with_output_text_usage_and_the_workers_headers(tiny: str, client: openai.OpenAI) -> None:
    raw = client.responses.with_raw_response.create(model=tiny, input="hello there", max_output_tokens=12,
                                                    temperature=0)
    assert raw.headers["x-rbee-hive"] == "localhost" and raw.headers["x-rbee-worker"]
    reply = raw.parse()
    assert reply.status == "completed" and reply.output_text.strip()
    assert reply.usage is not None and reply.usage.output_tokens == 12 and reply.usage.input_tokens > 5


def test_streamed_deltas_equal_the_whole_answer(tiny: str, client: openai.OpenAI) -> None:
    whole = client.responses.create(model=tiny, input="hello there", max_output_tokens=20, temperature=0)
    deltas, completed = [], None
    for event in client.responses.create(model=tiny, input="hello there", max_output_tokens=20, temperature=0,
                                         stream=True):
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        elif event.type == "response.completed":
            completed = event.response
    assert "".join(deltas) == whole.output_text
    assert completed is not None and completed.usage is not None and completed.usage.output_tokens == 20


def test_instructions_and_message_input_are_taken(tiny: str, client: openai.OpenAI) -> None:
    reply = client.responses.create(model=tiny, instructions="Be brief.", max_output_tokens=4,
                                    input=[{"role": "user", "content": "hello there"}])
    assert reply.output_text and reply.usage is not None and reply.usage.output_tokens == 4


def test_input_tokens_counts_the_prompt(tiny: str, client: openai.OpenAI) -> None:
    short = client.responses.input_tokens.count(model=tiny, input="hello there")
    longer = client.responses.input_tokens.count(model=tiny, input="hello there " * 20)
    assert 0 < short.input_tokens < longer.input_tokens


def test_an_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="no-such-model", input="hi")
    assert caught.value.code == "model_not_found" and "no-such-model" in caught.value.message


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "tiny"}, "input"),
    ({"model": "tiny", "input": 5}, "input"),
    ({"model": "tiny", "input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
    ({"model": "tiny", "input": "hi", "stream": "yes"}, "stream"),
    ({"input": "hi"}, "model"),
])
def test_a_bad_body_is_400_naming_the_field(queen: Queen, tiny: str, body: dict[str, object], param: str) -> None:
    resp = httpx.post(f"{queen.url}/v1/responses", json=body, timeout=60)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"].split(".")[0] == param  # "input.str": a union


def test_tokens_are_metered_streams_included(queen: Queen, tiny: str, client: openai.OpenAI) -> None:
    before = _samples(queen)
    client.responses.create(model=tiny, input="hello there", max_output_tokens=6)
    for _ in client.responses.create(model=tiny, input="hello there", max_output_tokens=7, stream=True):
        pass
    after = _samples(queen)
    done = _value(after, "rbee_tokens_total", model=tiny, kind="completion")
    assert done == _value(before, "rbee_tokens_total", model=tiny, kind="completion") + 13
    assert _value(after, "rbee_tokens_total", model=tiny, kind="prompt") > _value(
        before, "rbee_tokens_total", model=tiny, kind="prompt") + 10


def test_keys_limits_and_usage_apply(make_queen: Callable[..., Queen], tiny_model: Path) -> None:
    queen = make_queen().start()
    assert _client(queen).responses.create(model=str(tiny_model), input="hi", max_output_tokens=2).output_text
    secret = _create_key(queen, "--name", "codex", "--rpm", "2")
    with pytest.raises(openai.AuthenticationError):
        _client(queen, "rbee-not-a-key").responses.create(model="tiny", input="hi")
    keyed = _client(queen, secret)
    assert keyed.responses.create(model="tiny", input="hi", max_output_tokens=5).output_text
    for _ in keyed.responses.create(model="tiny", input="hi", max_output_tokens=6, stream=True):
        pass
    with pytest.raises(openai.RateLimitError) as limited:
        keyed.responses.create(model="tiny", input="hi", max_output_tokens=2)
    assert 1 <= int(limited.value.response.headers["retry-after"]) <= 60
    rows = {r["model"]: r for r in json.loads(queen.cli("key", "usage", "codex", "--json", check=True).stdout)}
    assert rows["tiny"]["requests"] == 2 and rows["tiny"]["completion_tokens"] == 11
