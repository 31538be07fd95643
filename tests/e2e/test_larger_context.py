"""A prompt longer than its worker's context, within its model's trained context, is served by a worker with a
larger one (memory allowing); when none can serve it, the 400 names the numbers and the setting to change.
Ollama's `options.num_ctx` asks for such a worker up front. Real queen, llama-server and tiny model (trained
for 2048 tokens); rbee sizes the context itself (RBEE_WORKER_CONTEXT unset), its first workers get 512."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import ollama
import pytest

from rbee.hive.estimate import estimate
from rbee.hive.gguf_info import read_summary
from rbee.queen.context_fit import needed_for
from tests.conftest import Queen

WORDS = "hello there, please look at this code "  # about ten tokens of the tiny model's


def _sized(make_queen: Callable[..., Queen], **env: str) -> Queen:
    """A queen that sizes contexts itself, at most 512 tokens per slot for a model's first workers."""
    queen = make_queen(RBEE_WORKER_MAX_CONTEXT="512", **env)
    del queen.env["RBEE_WORKER_CONTEXT"]
    return queen


def chat(queen: Queen, model: str, repeat: int = 1, stream: bool = False) -> httpx.Response:
    return httpx.post(f"{queen.url}/v1/chat/completions", timeout=120, json={
        "model": model, "messages": [{"role": "user", "content": WORDS * repeat}], "max_tokens": 2,
        "stream": stream})


def contexts(queen: Queen) -> dict[str, int]:
    """Each ready worker's context per slot, by worker id."""
    return {str(w["id"]): int(str(w["context_size"])) for w in queen.workers() if w["state"] == "ready"}


def test_a_longer_prompt_gets_a_worker_with_a_larger_context_and_later_ones_use_the_workers_there(
        make_queen: Callable[..., Queen], tiny_model: Path) -> None:
    queen = _sized(make_queen).start()
    small = chat(queen, str(tiny_model))
    assert small.status_code == 200 and contexts(queen) == {small.headers["x-rbee-worker"]: 512}

    long = chat(queen, "tiny", repeat=100)
    assert long.status_code == 200, long.text
    tokens = long.json()["usage"]["prompt_tokens"]
    assert 512 < tokens < 2048
    big = long.headers["x-rbee-worker"]
    assert contexts(queen) == {small.headers["x-rbee-worker"]: 512, big: min(needed_for(tokens), 2048)}
    assert "a worker with" in queen.log.read_text()  # the queen says why it loaded a second worker

    # later requests use the workers there: a short one either, a long one the large one; none is loaded
    assert chat(queen, "tiny").status_code == 200
    again = chat(queen, "tiny", repeat=100)
    assert again.status_code == 200 and again.headers["x-rbee-worker"] == big
    streamed = chat(queen, "tiny", repeat=100, stream=True)
    assert streamed.status_code == 200 and streamed.headers["x-rbee-worker"] == big
    assert streamed.text.rstrip().endswith("data: [DONE]")
    assert len(contexts(queen)) == 2


def test_a_prompt_over_the_trained_context_is_a_400_naming_the_numbers(make_queen: Callable[..., Queen],
                                                                        tiny_model: Path) -> None:
    queen = _sized(make_queen).start()
    assert chat(queen, str(tiny_model)).status_code == 200
    refused = chat(queen, "tiny", repeat=300)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "context_length_exceeded"
    tokens = int(error["message"].split("request (")[1].split(" tokens")[0])
    assert tokens > 2048 and f"fewer than the prompt's {tokens}" in error["message"]
    assert "512 tokens per slot" in error["message"] and "trained for 2048" in error["message"]
    assert "RBEE_WORKER_CONTEXT" in error["message"] and "models.toml" in error["message"]
    assert list(contexts(queen).values()) == [512]  # nothing was loaded for it


def test_a_larger_context_that_memory_cannot_hold_is_a_400_naming_the_memory(make_queen: Callable[..., Queen],
                                                                              tiny_model: Path) -> None:
    summary, size, slots = read_summary(tiny_model), tiny_model.stat().st_size, 32
    small, large = (estimate(summary, size, context, slots).total for context in (512, 1024))
    queen = _sized(make_queen, RBEE_WORKER_SLOTS=str(slots), RBEE_MEMORY_BUDGET=str((small + large) // 2)).start()
    assert chat(queen, str(tiny_model)).status_code == 200
    refused = chat(queen, "tiny", repeat=60)
    assert refused.status_code == 400, refused.text
    message = refused.json()["error"]["message"]
    assert "exceeds the available context size (512 tokens)" in message
    assert f"at least 1024 tokens per slot needs {large / 2**20:.0f} MiB" in message
    assert f"the largest device has {(small + large) // 2 / 2**20:.0f} MiB" in message
    assert "RBEE_WORKER_SLOTS" in message
    assert list(contexts(queen).values()) == [512]  # the worker there still serves what fits
    assert chat(queen, "tiny").status_code == 200


def test_a_larger_worker_takes_the_place_of_an_idle_smaller_one_when_memory_holds_only_one(
        make_queen: Callable[..., Queen], tiny_model: Path) -> None:
    summary, size, slots = read_summary(tiny_model), tiny_model.stat().st_size, 32
    small, large = (estimate(summary, size, context, slots).total for context in (512, 1024))
    queen = _sized(make_queen, RBEE_WORKER_SLOTS=str(slots), RBEE_MEMORY_BUDGET=str(large + small // 2)).start()
    first = chat(queen, str(tiny_model))
    assert first.status_code == 200
    served = chat(queen, "tiny", repeat=60)
    assert served.status_code == 200, served.text
    assert contexts(queen) == {served.headers["x-rbee-worker"]: 1024}
    assert f"evicting tiny ({first.headers['x-rbee-worker']}, idle)" in queen.log.read_text()


def test_ollama_num_ctx_asks_for_a_worker_of_that_context(make_queen: Callable[..., Queen], tiny_model: Path) -> None:
    queen = _sized(make_queen).start()
    client = ollama.Client(host=queen.url, timeout=120)
    hello = [{"role": "user", "content": "hello there"}]
    assert client.chat(model=str(tiny_model), messages=hello, options={"num_predict": 2}).done
    assert client.chat(model="tiny", messages=hello, options={"num_predict": 2, "num_ctx": 1024}).done
    loaded = sorted(m.context_length or 0 for m in client.ps().models)
    assert loaded == [512, 1024]
    assert client.chat(model="tiny", messages=hello, options={"num_predict": 2, "num_ctx": 256}).done
    assert client.chat(model="tiny", messages=hello, options={"num_predict": 2, "num_ctx": 900}).done
    assert client.chat(model="tiny", messages=hello, options={"num_predict": 2, "num_ctx": 8192}).done  # trained: 2048
    assert sorted(contexts(queen).values()) == [512, 1024, 2048]


@pytest.mark.parametrize("num_ctx", [0, -5, "big", 2**21, 1.5])
def test_a_bad_num_ctx_is_a_400_naming_it(queen: Queen, num_ctx: object) -> None:
    refused = httpx.post(f"{queen.url}/api/chat", timeout=30, json={
        "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "options": {"num_ctx": num_ctx}})
    assert refused.status_code == 400 and "options.num_ctx" in refused.json()["error"]


def test_a_context_set_by_hand_is_kept_and_the_error_names_the_setting(make_queen: Callable[..., Queen],
                                                                        tiny_model: Path) -> None:
    queen = make_queen()
    del queen.env["RBEE_WORKER_CONTEXT"]
    config = queen.home / "config"
    config.mkdir(parents=True)
    (config / "models.toml").write_text('[models."tiny"]\ncontext = 512\n')
    queen.start()
    assert chat(queen, str(tiny_model)).status_code == 200
    refused = chat(queen, "tiny", repeat=100)
    assert refused.status_code == 400
    message = refused.json()["error"]["message"]
    assert "has 512 tokens per slot, set by `context` for this model in models.toml" in message
    assert "trained for 2048" in message
    client = ollama.Client(host=queen.url, timeout=120)  # num_ctx too: the worker there serves it
    assert client.chat(model="tiny", messages=[{"role": "user", "content": "hi"}],
                       options={"num_predict": 2, "num_ctx": 2048}).done
    assert list(contexts(queen).values()) == [512]
