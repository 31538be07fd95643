"""What a running queen tells about itself: Prometheus metrics (its own, its hives', the engines') and
request ids that travel to the worker and back."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO, Queen

CHAT = [{"role": "user", "content": "hello there"}]


def _samples(queen: Queen, headers: dict[str, str] | None = None) -> dict[str, list[tuple[dict[str, str], float]]]:
    resp = httpx.get(f"{queen.url}/metrics", timeout=10, headers=headers)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(resp.text):  # parses, so the text is well-formed
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def _value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for got, v in samples.get(name, []) if all(got.get(k) == want for k, want in labels.items()))


def test_request_ids_come_back_and_metrics_count_what_happened(queen: Queen, tiny_model: Path) -> None:
    given = httpx.post(f"{queen.url}/v1/chat/completions", headers={"X-Request-Id": "trace-42"}, timeout=60,
                       json={"model": str(tiny_model), "messages": CHAT, "max_tokens": 5})
    assert given.status_code == 200 and given.headers["x-request-id"] == "trace-42"
    with httpx.stream("POST", f"{queen.url}/v1/chat/completions", timeout=60,
                      json={"model": "tiny", "messages": CHAT, "max_tokens": 7, "stream": True}) as stream:
        made = stream.headers["x-request-id"]
        stream.read()
    assert len(made) == 32 and made != "trace-42"
    bad = httpx.post(f"{queen.url}/v1/chat/completions", headers={"X-Request-Id": "not ok; rm -rf"}, timeout=60,
                     json={"model": "no-such-model", "messages": CHAT})
    assert bad.status_code == 404 and len(bad.headers["x-request-id"]) == 32

    samples = _samples(queen)
    assert _value(samples, "rbee_requests_total", model="tiny", hive="localhost", status="200") >= 2
    assert _value(samples, "rbee_requests_total", model="(unknown)", hive="-", status="404") >= 1
    assert _value(samples, "rbee_tokens_total", model="tiny", kind="completion") >= 12
    assert _value(samples, "rbee_time_to_first_token_seconds_count", model="tiny", hive="localhost") >= 2
    assert _value(samples, "rbee_generation_tokens_per_second_count", model="tiny") >= 1
    assert _value(samples, "rbee_workers", hive="localhost", model="tiny", state="ready") == 1
    assert _value(samples, "rbee_hive_memory_bytes", hive="localhost", kind="total") > 0
    assert _value(samples, "rbee_hive_memory_bytes", hive="localhost", kind="used") > 0
    engine = [labels for name, rows in samples.items() if name.startswith("llamacpp:") for labels, _ in rows]
    assert engine and all(labels["model"] == "tiny" and labels["hive"] == "localhost" for labels in engine)
    assert _value(samples, "llamacpp:tokens_predicted_total", model="tiny") >= 12
    # The Grafana dashboard in the repo reads only metrics that exist.
    dashboard = (REPO / "deploy" / "grafana" / "rbee.json").read_text()
    used = {re.sub(r"_(bucket|count|sum)$", "", m) for m in re.findall(r"\b(rbee_\w+|llamacpp:\w+)", dashboard)}
    exported = {re.sub(r"_(bucket|count|sum|created)$", "", name) for name in samples}
    assert used and used <= exported, used - exported


def test_logs_of_the_queen_and_a_worker_and_following(make_queen: Callable[..., Queen], tiny_model: Path) -> None:
    queen = make_queen()
    queen.cli("queen", "start", check=True)  # in the background, logging to its file, as `rbee` starts it
    try:
        _logs(queen, tiny_model)
    finally:
        queen.cli("queen", "stop", timeout=60)


def _logs(queen: Queen, tiny_model: Path) -> None:
    assert httpx.post(f"{queen.url}/v1/chat/completions", timeout=60,
                      json={"model": str(tiny_model), "messages": CHAT, "max_tokens": 2}).status_code == 200
    shown = queen.cli("logs", "queen", "-n", "200", check=True).stdout
    assert "queen listening on http://" in shown
    worker_id = str(queen.workers()[0]["id"])
    engine_log = queen.cli("logs", "worker", worker_id, "-n", "200", check=True).stdout
    assert "llama" in engine_log.lower() and len(engine_log.splitlines()) > 3
    for bad in ("../../../etc/passwd", "no-such-worker"):
        refused = queen.cli("logs", "worker", bad)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    follower = subprocess.Popen([sys.executable, "-m", "rbee", "logs", "queen", "-f", "-n", "1"], env=queen.env,
                                stdout=subprocess.PIPE, text=True)
    try:
        assert follower.stdout is not None
        assert follower.stdout.readline().strip()  # the last line is out: it follows from here
        assert httpx.post(f"{queen.url}/v1/hives", json={"alias": "followed-box"}).status_code == 201
        deadline = time.monotonic() + 15
        seen = ""
        while "followed-box" not in seen and time.monotonic() < deadline:
            seen += follower.stdout.readline()
        assert "enrolled hive 'followed-box'" in seen
    finally:
        follower.terminate()
        follower.wait(10)


def test_status_watch_draws_hives_memory_workers_and_rates(queen: Queen, tiny_model: Path) -> None:
    assert httpx.post(f"{queen.url}/v1/chat/completions", timeout=60,
                      json={"model": str(tiny_model), "messages": CHAT, "max_tokens": 2}).status_code == 200
    drawn = queen.cli("status", "--watch", "--count", "2", "--interval", "0.3", check=True).stdout
    assert "tokens/s" in drawn and "requests/s" in drawn and "waiting: 0" in drawn
    assert "localhost" in drawn and "ready" in drawn and "tiny" in drawn
    assert "█" in drawn or "░" in drawn  # the memory bar
    assert " / " in drawn and "GB" in drawn


def test_json_logs_on_request(make_queen: Callable[..., Queen]) -> None:
    queen = make_queen(RBEE_LOG_FORMAT="json").start()
    assert httpx.post(f"{queen.url}/v1/hives", json={"alias": "json-box"}).status_code == 201
    queen.stop()
    entries = [json.loads(line) for line in queen.log.read_text().splitlines() if line.strip()]  # every line
    assert any(e["message"].startswith("queen listening on") and e["level"] == "INFO" for e in entries)
    assert any("json-box" in e["message"] and e["logger"] == "rbee.queen.hive_routes" for e in entries)
