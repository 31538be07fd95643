"""What a client sees when the world fails: dead workers, broken engines, bad model files."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import gguf
import httpx
import numpy as np
import psutil
import pytest

from tests.conftest import Queen

CHAT = [{"role": "user", "content": "hello there"}]


def _bogus_architecture_model(path: Path) -> Path:
    """A well-formed GGUF that llama-server refuses: its architecture does not exist."""
    writer = gguf.GGUFWriter(str(path), "no-such-arch")
    writer.add_tensor("x.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_worker_killed_mid_stream_sends_an_error_event_and_the_next_request_respawns(
    make_queen: Callable[..., Queen], tiny_model: Path
) -> None:
    queen = make_queen().start()
    body = {"model": str(tiny_model), "messages": CHAT, "max_tokens": 100000, "stream": True}
    with httpx.stream("POST", f"{queen.url}/v1/chat/completions", json=body, timeout=60) as resp:
        lines = resp.iter_lines()
        assert next(lines).startswith("data:")
        worker = queen.workers()[0]
        os.kill(int(worker["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
        rest = [line[5:].strip() for line in lines if line.startswith("data:")]
    errors = [json.loads(d)["error"] for d in rest if d != "[DONE]" and "error" in json.loads(d)]
    assert len(errors) == 1
    assert "stopped mid-stream" in errors[0]["message"]
    deadline = time.monotonic() + 10
    while queen.workers()[0]["state"] != "error" and time.monotonic() < deadline:
        time.sleep(0.05)
    dead = queen.workers()[0]
    assert dead["state"] == "error" and "exited" in str(dead["error"])
    reply = httpx.post(f"{queen.url}/v1/chat/completions", json={"model": "tiny", "messages": CHAT,
                                                                 "max_tokens": 4}, timeout=60)
    assert reply.status_code == 200
    assert reply.headers["x-rbee-worker"] != dead["id"]


def test_a_worker_that_cannot_start_is_an_error_with_the_cause(
    make_queen: Callable[..., Queen], tmp_path: Path
) -> None:
    queen = make_queen().start()
    model = _bogus_architecture_model(tmp_path / "broken.gguf")
    started = time.monotonic()
    resp = httpx.post(f"{queen.url}/v1/chat/completions", json={"model": str(model), "messages": CHAT},
                      timeout=60)
    assert time.monotonic() - started < 30
    assert resp.status_code == 503
    message = resp.json()["error"]["message"]
    assert "broken" in message and "no-such-arch" in message  # quoted from llama-server's own log
    assert [w["state"] for w in queen.workers()] == ["error"]


def test_a_file_that_is_not_gguf_is_refused_before_any_worker(
    make_queen: Callable[..., Queen], tmp_path: Path
) -> None:
    queen = make_queen().start()
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"this is not a model")
    resp = httpx.post(f"{queen.url}/v1/chat/completions", json={"model": str(junk), "messages": CHAT}, timeout=30)
    assert resp.status_code == 404
    assert "not a GGUF model file" in resp.json()["error"]["message"]
    assert queen.workers() == []


def test_missing_engine_says_how_to_get_one(make_queen: Callable[..., Queen], tiny_model: Path) -> None:
    queen = make_queen(RBEE_LLAMA_SERVER="/nonexistent/llama-server").start()
    resp = httpx.post(f"{queen.url}/v1/chat/completions", json={"model": str(tiny_model), "messages": CHAT},
                      timeout=30)
    assert resp.status_code == 503
    message = resp.json()["error"]["message"]
    assert "/nonexistent/llama-server is not an executable file" in message
    assert "RBEE_LLAMA_SERVER" in message and "rbee engine install" in message


def test_model_file_removed_behind_rbees_back_is_reported_not_served(
    make_queen: Callable[..., Queen], tiny_model: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "vanishing.gguf"
    copy.write_bytes(tiny_model.read_bytes())
    queen = make_queen().start()
    ok = httpx.post(f"{queen.url}/v1/embeddings", json={"model": str(copy), "input": "hi"}, timeout=60)
    assert ok.status_code == 200
    httpx.delete(f"{queen.url}/v1/workers/{queen.workers()[0]['id']}", timeout=30)
    copy.unlink()
    resp = httpx.post(f"{queen.url}/v1/chat/completions", json={"model": "vanishing", "messages": CHAT}, timeout=30)
    assert resp.status_code == 404
    assert "is gone" in resp.json()["error"]["message"]
    assert "vanishing" not in [m["id"] for m in httpx.get(f"{queen.url}/v1/models").json()["data"]]


@pytest.mark.parametrize("path", ["/v1/jobs/job-nope", "/v1/jobs/job-nope/events"])
def test_unknown_job_is_404(queen: Queen, path: str) -> None:
    resp = httpx.get(f"{queen.url}{path}", timeout=10)
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"


def test_workers_die_with_a_killed_queen_and_none_survive_a_restart(
    make_queen: Callable[..., Queen], tiny_model: Path
) -> None:
    queen = make_queen().start()
    ok = httpx.post(f"{queen.url}/v1/chat/completions", timeout=60,
                    json={"model": str(tiny_model), "messages": CHAT, "max_tokens": 2})
    assert ok.status_code == 200
    worker_pid = int(queen.workers()[0]["pid"])  # type: ignore[call-overload]
    assert queen.proc is not None
    os.killpg(queen.proc.pid, signal.SIGKILL)
    queen.proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and psutil.pid_exists(worker_pid):
        if psutil.Process(worker_pid).status() == psutil.STATUS_ZOMBIE:
            break
        time.sleep(0.05)
    assert not psutil.pid_exists(worker_pid) or psutil.Process(worker_pid).status() == psutil.STATUS_ZOMBIE
    queen.start()
    assert queen.workers() == []
    assert not (queen.home / "state" / "hive" / "workers" / "localhost-w1.pid").exists()
