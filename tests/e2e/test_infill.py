"""Fill-in-the-middle on a real queen: `/infill` forwarded to a worker of a model with FIM tokens, and
`suffix` on `/v1/completions` through the `openai` SDK."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import Queen

CODE = {"input_prefix": "def add(a, b):\n    ", "input_suffix": "\n    return c\n"}


def test_infill_fills_the_middle(queen: Queen, tiny_fim_model: Path) -> None:
    resp = httpx.post(f"{queen.url}/infill", json={"model": str(tiny_fim_model), **CODE, "n_predict": 6},
                      timeout=60)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["content"].strip() and body["tokens_predicted"] == 6
    assert resp.headers["x-rbee-worker"]


def test_infill_streams_the_same_text(queen: Queen, tiny_fim_model: Path) -> None:
    ask = {"model": "tiny-fim", **CODE, "n_predict": 8, "temperature": 0}
    whole = httpx.post(f"{queen.url}/infill", json=ask, timeout=60).json()["content"]
    with httpx.stream("POST", f"{queen.url}/infill", json={**ask, "stream": True}, timeout=60) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: ")]
    assert "".join(e["content"] for e in events) == whole and events[-1]["stop"] is True


def test_a_model_without_fim_tokens_says_so(queen: Queen, tiny_model: Path) -> None:
    resp = httpx.post(f"{queen.url}/infill", json={"model": str(tiny_model), **CODE}, timeout=60)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "model_unsupported"
    assert "Infill is not supported by this model" in resp.json()["error"]["message"]


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "tiny-fim", "input_suffix": "x"}, "input_prefix"),
    ({"model": "tiny-fim", "input_prefix": "x", "input_suffix": 3}, "input_suffix"),
    ({"model": "tiny-fim", **CODE, "input_extra": [{"filename": "a.py"}]}, "input_extra.0.text"),
])
def test_a_bad_body_is_400_naming_the_field(queen: Queen, body: dict[str, object], param: str) -> None:
    resp = httpx.post(f"{queen.url}/infill", json=body, timeout=60)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == param


@pytest.fixture(scope="module")
def client(queen: Queen, tiny_fim_model: Path) -> openai.OpenAI:
    made = openai.OpenAI(base_url=f"{queen.url}/v1", api_key="unused", max_retries=0, timeout=120)
    assert made.completions.create(model=str(tiny_fim_model), prompt="x", suffix="y", max_tokens=1).choices
    return made


def test_suffix_on_completions_fills_the_middle(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="tiny-fim", prompt=CODE["input_prefix"], suffix=CODE["input_suffix"],
                                      max_tokens=6, temperature=0)
    assert reply.object == "text_completion" and reply.model == "tiny-fim"
    assert reply.choices[0].text.strip() and reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 6 and reply.usage.prompt_tokens > 5


def test_suffix_streams_the_same_text_as_openai_chunks(client: openai.OpenAI) -> None:
    ask = {"model": "tiny-fim", "prompt": CODE["input_prefix"], "suffix": CODE["input_suffix"], "max_tokens": 8,
           "temperature": 0}
    whole = client.completions.create(**ask)  # type: ignore[call-overload]
    pieces, finishes, usage = [], [], None
    for chunk in client.completions.create(**ask, stream=True, stream_options={"include_usage": True}):  # type: ignore[call-overload]
        usage = chunk.usage or usage
        for choice in chunk.choices:
            pieces.append(choice.text)
            finishes += [choice.finish_reason] if choice.finish_reason else []
    assert "".join(pieces) == whole.choices[0].text and finishes == ["length"]
    assert usage is not None and usage.completion_tokens == 8


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "tiny-fim", "prompt": ["a", "b"], "suffix": "x"}, "prompt"),
    ({"model": "tiny-fim", "prompt": "a", "suffix": 5}, "suffix"),
])
def test_suffix_needs_string_prompts(queen: Queen, client: openai.OpenAI, body: dict[str, object],
                                     param: str) -> None:
    resp = httpx.post(f"{queen.url}/v1/completions", json=body, timeout=60)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == param
