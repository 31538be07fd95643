"""The Ollama API on a real queen with real llama-server workers, through the official `ollama` client."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import ollama
import pytest

from tests.conftest import Queen

HELLO = [{"role": "user", "content": "hello there"}]
GREEDY = {"num_predict": 8, "temperature": 0, "seed": 7}


@pytest.fixture(scope="module")
def client(queen: Queen) -> ollama.Client:
    return ollama.Client(host=queen.url, timeout=120)


@pytest.fixture(scope="module")
def tiny(queen: Queen, tiny_model: Path, client: ollama.Client) -> str:
    """The tiny model's catalog name, after a first request by path has added and loaded it."""
    assert client.chat(model=str(tiny_model), messages=HELLO, options={"num_predict": 2}).done
    return "tiny"


def test_version_tags_show_and_ps(queen: Queen, tiny: str, client: ollama.Client) -> None:
    assert httpx.get(f"{queen.url}/api/version", timeout=10).json()["version"]
    listed = {m.model: m for m in client.list().models}
    assert tiny in listed and listed[tiny].size and listed[tiny].details.format == "gguf"
    shown = client.show(tiny)
    assert shown.modelinfo is not None and shown.modelinfo["llama.context_length"] == 2048
    assert shown.capabilities is not None and "completion" in shown.capabilities
    loaded = {m.model: m for m in client.ps().models}
    assert tiny in loaded and loaded[tiny].size and loaded[tiny].expires_at is not None


def test_chat_answers_with_ollamas_counts(tiny: str, client: ollama.Client) -> None:
    reply = client.chat(model=tiny, messages=HELLO, options=GREEDY)
    assert reply.done and reply.done_reason == "length" and reply.message.role == "assistant"
    assert reply.message.content and reply.eval_count == 8 and (reply.prompt_eval_count or 0) > 5
    assert reply.total_duration and reply.total_duration > 0


def test_chat_streams_line_by_line_the_same_text(queen: Queen, tiny: str, client: ollama.Client) -> None:
    whole = client.chat(model=tiny, messages=HELLO, options=GREEDY).message.content
    parts = list(client.chat(model=tiny, messages=HELLO, options=GREEDY, stream=True))
    assert "".join(p.message.content or "" for p in parts) == whole
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done and parts[-1].eval_count == 8
    with httpx.stream("POST", f"{queen.url}/api/chat", timeout=60,
                      json={"model": tiny, "messages": HELLO, "options": GREEDY}) as resp:
        assert resp.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in resp.iter_lines() if line]
    assert len(lines) == 9 and not any(line["done"] for line in lines[:-1])


def test_generate(tiny: str, client: ollama.Client) -> None:
    reply = client.generate(model=tiny, prompt="hello there", options=GREEDY)
    assert reply.done and reply.response and reply.eval_count == 8
    streamed = "".join(p.response for p in client.generate(model=tiny, prompt="hello there", options=GREEDY,
                                                          stream=True))
    assert streamed == reply.response


def test_embed(tiny: str, client: ollama.Client) -> None:
    reply = client.embed(model=tiny, input=["hello there", "general kenobi"])
    assert len(reply.embeddings) == 2 and len(reply.embeddings[0]) == 64
    older = client.embeddings(model=tiny, prompt="hello there")
    assert list(older.embedding) == pytest.approx(reply.embeddings[0], abs=1e-5)


def test_an_unknown_model_is_404(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model="no-such-model", messages=HELLO)
    assert caught.value.status_code == 404 and "no-such-model" in caught.value.error
    with pytest.raises(ollama.ResponseError) as shown:
        client.show("no-such-model")
    assert shown.value.status_code == 404


def test_images_for_a_text_model_are_a_clear_400(tiny: str, client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model=tiny, messages=[{"role": "user", "content": "what is this", "images": ["aGk="]}])
    assert caught.value.status_code == 400 and "images" in caught.value.error


def test_a_bad_body_is_400(queen: Queen, tiny: str) -> None:
    resp = httpx.post(f"{queen.url}/api/chat", json={"model": tiny, "messages": []}, timeout=60)
    assert resp.status_code == 400 and "messages" in resp.json()["error"]


PREFIX, SUFFIX = "def add(a, b):\n    ", "\n    return c\n"


@pytest.fixture(scope="module")
def fim(queen: Queen, tiny_fim_model: Path, client: ollama.Client) -> str:
    """The FIM model's catalog name, after a first request by path has added and loaded it."""
    assert client.generate(model=str(tiny_fim_model), prompt="x", suffix="y", options={"num_predict": 1}).done
    return "tiny-fim"


def test_generate_with_suffix_fills_the_middle(queen: Queen, fim: str, client: ollama.Client) -> None:
    options = {"num_predict": 6, "temperature": 0}
    reply = client.generate(model=fim, prompt=PREFIX, suffix=SUFFIX, options=options)
    assert reply.done and reply.done_reason == "length" and reply.eval_count == 6
    assert (reply.prompt_eval_count or 0) > 5 and reply.response.strip()
    infill = httpx.post(f"{queen.url}/infill", timeout=60, json={"model": fim, "input_prefix": PREFIX,
                                                                  "input_suffix": SUFFIX, "n_predict": 6,
                                                                  "temperature": 0}).json()
    assert reply.response == infill["content"]  # the worker's own fill-in-the-middle, not a chat answer
    parts = list(client.generate(model=fim, prompt=PREFIX, suffix=SUFFIX, options=options, stream=True))
    assert "".join(p.response for p in parts) == reply.response
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done and parts[-1].eval_count == 6


def test_suffix_on_a_model_without_fim_tokens_is_a_clear_400(tiny: str, client: ollama.Client) -> None:
    for stream in (False, True):
        with pytest.raises(ollama.ResponseError) as caught:
            list(client.generate(model=tiny, prompt=PREFIX, suffix=SUFFIX, stream=True)) if stream else \
                client.generate(model=tiny, prompt=PREFIX, suffix=SUFFIX)
        assert caught.value.status_code == 400 and "Infill is not supported by this model" in caught.value.error


def test_root_says_ollama_is_running_and_a_browser_still_gets_the_dashboard(queen: Queen) -> None:
    for method in ("GET", "HEAD"):
        probe = httpx.request(method, f"{queen.url}/", timeout=10)
        assert probe.status_code == 200 and probe.headers["content-type"].startswith("text/plain")
        assert probe.text == ("Ollama is running" if method == "GET" else "")
        page = httpx.request(method, f"{queen.url}/", timeout=10,
                             headers={"accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "accept" in page.headers["vary"] and "accept" in probe.headers["vary"]
    assert "<html" in httpx.get(f"{queen.url}/", headers={"accept": "text/html"}, timeout=10).text.lower()


@pytest.mark.parametrize("tool", [{}, {"type": "function"}, {"type": "function", "function": {}}])
def test_a_malformed_tool_is_400_not_the_engine_s_500(queen: Queen, tiny: str, tool: dict[str, object]) -> None:
    # found by the fuzzer: llama-server answers a tool without type, function or name with a 500
    resp = httpx.post(f"{queen.url}/api/chat", timeout=60,
                      json={"model": tiny, "messages": HELLO, "stream": False, "tools": [tool]})
    assert resp.status_code == 400, resp.text
    assert "tools.0" in resp.json()["error"]


def test_a_tool_reaches_the_worker(tiny: str, client: ollama.Client) -> None:
    weather = {"type": "function", "function": {"name": "weather", "description": "the weather in a city",
                                                "parameters": {"type": "object",
                                                               "properties": {"city": {"type": "string"}}}}}
    assert client.chat(model=tiny, messages=HELLO, tools=[weather], options=GREEDY).done
