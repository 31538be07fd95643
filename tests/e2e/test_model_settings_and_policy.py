"""Per-model settings set through the API (and `rbee model set`), and a user policy file, acting on real
workers of the tiny model."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import Queen, wait_for

CHAT = [{"role": "user", "content": "hello there"}]

# Long prompts go to the newest worker, others to the oldest: a rule the built-in choice (least busy, then
# oldest) would never make, so the worker that answers shows whose choice it was.
POLICY = '''
def rank(request, candidates):
    if request.prompt_tokens > 50:
        return sorted(candidates, key=lambda c: c.worker or "", reverse=True)
    return sorted(candidates, key=lambda c: c.worker or "")
'''


def chat(queen: Queen, model: str, text: str = "hello there", **headers: str) -> httpx.Response:
    return httpx.post(f"{queen.url}/v1/chat/completions", timeout=120, headers=headers,
                      json={"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 4})


def settings_url(queen: Queen, name: str) -> str:
    return f"{queen.url}/v1/settings/models/{name}"


def ready(queen: Queen, model: str = "tiny") -> list[dict[str, object]]:
    return [w for w in queen.workers() if w["model"] == model and w["state"] == "ready"]


def test_settings_set_through_the_api_live_in_models_toml_and_act(make_queen: Callable[..., Queen],
                                                                   tiny_model: Path) -> None:
    queen = make_queen(RBEE_KEEP_ALIVE="1s")
    config = queen.home / "config"
    config.mkdir(parents=True)
    (config / "models.toml").write_text('# my own notes\n[aliases]\nmine = "rbee-test/x-GGUF:Q8_0"  # kept\n')
    queen.start()
    assert chat(queen, str(tiny_model)).status_code == 200  # "tiny" is in the catalog now

    # Bad settings are refused, naming the field, and change nothing.
    for body, field in [({"slots": 0}, "slots"), ({"context": "big"}, "context"), ({"colour": "red"}, "colour"),
                        ({"min_replicas": 3, "max_replicas": 2}, None)]:
        refused = httpx.put(settings_url(queen, "tiny"), json=body, timeout=10)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == field, body
    unknown_hive = httpx.put(settings_url(queen, "tiny"), json={"hive": "nowhere"}, timeout=10)
    assert unknown_hive.status_code == 404 and "Known hives: localhost" in unknown_hive.json()["error"]["message"]
    assert httpx.get(settings_url(queen, "tiny"), timeout=10).json() == {}

    # min_replicas: a worker is started with no request, kept past its keep_alive, and not unloaded.
    queen.cli("model", "set", "tiny", "--slots", "3", "--min-replicas", "1", "--on-hive", "localhost", check=True)
    text = (config / "models.toml").read_text()
    assert "# my own notes" in text and "# kept" in text and "[models.tiny]" in text and "slots = 3" in text
    assert httpx.get(f"{queen.url}/v1/settings/models", timeout=10).json() == {
        "tiny": {"slots": 3, "hive": "localhost", "min_replicas": 1}}
    for w in queen.workers():  # the worker from before the settings: it expires (1 s); a new one comes
        httpx.delete(f"{queen.url}/v1/workers/{w['id']}", timeout=30)
    assert wait_for(lambda: len(ready(queen)) == 1), queen.workers()
    queen.wait_reaper_passes(3)  # three keep_alives
    kept = ready(queen)
    assert len(kept) == 1 and kept[0]["slots"] == 3
    listed = queen.cli("model", "settings", "--json", check=True).stdout
    assert '"min_replicas": 1' in listed

    # Unset it: the worker goes with its keep_alive.
    queen.cli("model", "set", "tiny", "--unset", "min_replicas", check=True)
    assert wait_for(lambda: not ready(queen), 10)
    assert httpx.get(settings_url(queen, "tiny"), timeout=10).json() == {"slots": 3, "hive": "localhost"}

    # Pinned to a device no hive has: a clear refusal that lists the devices there are.
    assert httpx.put(settings_url(queen, "tiny"), json={"device": "cuda7"}, timeout=10).status_code == 200
    refused = chat(queen, "tiny")
    assert refused.status_code == 503
    assert "pinned to device 'cuda7'" in refused.json()["error"]["message"]
    assert "localhost:cpu" in refused.json()["error"]["message"]
    assert httpx.delete(settings_url(queen, "tiny"), timeout=10).json() == {}
    assert "tiny" not in (config / "models.toml").read_text()
    assert chat(queen, "tiny").status_code == 200

    actions = [(e["action"], e["target"]) for e in httpx.get(f"{queen.url}/v1/audit", timeout=10).json()]
    assert actions.count(("model.settings", "tiny")) >= 4


def test_a_user_policy_ranks_workers_and_a_broken_one_falls_back(make_queen: Callable[..., Queen],
                                                                 tiny_model: Path, tmp_path: Path) -> None:
    policy = tmp_path / "policy.py"
    policy.write_text(POLICY)
    queen = make_queen(RBEE_POLICY=str(policy), RBEE_MAX_REPLICAS="2", RBEE_KEEP_ALIVE="-1").start()
    status = httpx.get(f"{queen.url}/v1/status", timeout=10).json()["policy"]
    assert status == {"path": str(policy), "loaded": True, "error": None}
    for _ in range(2):
        job = httpx.post(f"{queen.url}/v1/jobs", json={"kind": "worker.spawn", "model": str(tiny_model)}, timeout=10)
        assert job.status_code == 201
        job_id = job.json()["job_id"]
        job_url = f"{queen.url}/v1/jobs/{job_id}"
        assert wait_for(lambda url=job_url: httpx.get(url, timeout=10).json()["state"] == "done", 60)
    oldest, newest = sorted(str(w["id"]) for w in ready(queen))

    short, long = chat(queen, "tiny"), chat(queen, "tiny", "bees " * 40)
    assert short.status_code == long.status_code == 200
    assert short.headers["x-rbee-worker"] == oldest
    assert long.headers["x-rbee-worker"] == newest  # the policy's choice: built-in would pick the oldest

    # A broken file: reported in the status, requests still served (by the built-in choice).
    before = policy.stat().st_mtime
    policy.write_text("def rank(request, candidates)\n    return candidates\n")
    os.utime(policy, (before + 1, before + 1))
    assert wait_for(lambda: httpx.get(f"{queen.url}/v1/status", timeout=10).json()["policy"]["error"] is not None, 5)
    status = httpx.get(f"{queen.url}/v1/status", timeout=10).json()["policy"]
    assert not status["loaded"] and "SyntaxError" in status["error"] and "line 1" in status["error"]
    served = chat(queen, "tiny", "wasps " * 40)  # a new prompt: no worker holds its prefix (affinity.py)
    assert served.status_code == 200 and served.headers["x-rbee-worker"] == oldest

    # A rank() that raises: the same.
    policy.write_text("def rank(request, candidates):\n    raise RuntimeError('no idea')\n")
    os.utime(policy, (before + 2, before + 2))
    assert wait_for(lambda: httpx.get(f"{queen.url}/v1/status", timeout=10).json()["policy"]["loaded"], 5)
    served = chat(queen, "tiny", "ants " * 40)
    assert served.status_code == 200 and served.headers["x-rbee-worker"] == oldest
    error = httpx.get(f"{queen.url}/v1/status", timeout=10).json()["policy"]["error"]
    assert "RuntimeError: no idea" in error and "line 2" in error
    log = queen.log.read_text()
    assert "policy: the policy file" in log and "SyntaxError" in log and "RuntimeError: no idea" in log
