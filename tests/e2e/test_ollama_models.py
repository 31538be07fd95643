"""Ollama's `/api/pull` and `/api/delete` on a real queen, through the official `ollama` client: rbee's own pull job
against a local server that speaks the hub's protocol, and rbee's own catalog removal."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from tests.conftest import Queen, free_port, queen_env
from tests.fixtures.fake_hub import FakeHub
from tests.fixtures.tiny_gguf import write_tiny_model

REPO = "rbee-test/tiny-GGUF"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("hubmodels")
    return {"tiny-Q4_K_M.gguf": write_tiny_model(folder / "a.gguf").read_bytes(),
            "tiny-Q8_0.gguf": write_tiny_model(folder / "b.gguf", seed=1, dtype="f32").read_bytes()}


@pytest.fixture(scope="module")
def hub(models: dict[str, bytes]) -> Iterator[FakeHub]:
    with FakeHub() as hub:
        hub.add_repo(REPO, models)
        hub.add_repo("rbee-test/slow-GGUF", {"m-Q4_K_M.gguf": models["tiny-Q8_0.gguf"]})
        hub.slow("rbee-test/slow-GGUF", "m-Q4_K_M.gguf", bytes_per_second=200_000)
        yield hub


@pytest.fixture(scope="module")
def queen(tmp_path_factory: pytest.TempPathFactory, llama_server: Path, hub: FakeHub) -> Iterator[Queen]:
    home = tmp_path_factory.mktemp("ollamapull")
    port = free_port()
    q = Queen(home, port, {**queen_env(home, port, llama_server), **hub.env(home)}).start()
    yield q
    assert not q.stop(), "workers outlived their queen"


@pytest.fixture(scope="module")
def client(queen: Queen) -> ollama.Client:
    return ollama.Client(host=queen.url, timeout=120)


def catalog(queen: Queen) -> dict[str, dict[str, object]]:
    return {m["name"]: m for m in httpx.get(f"{queen.url}/v1/catalog", timeout=10).json()}


def test_pull_streams_the_progress_of_rbees_own_job(queen: Queen, client: ollama.Client,
                                                     models: dict[str, bytes]) -> None:
    parts = list(client.pull(f"hf.co/{REPO}:Q8_0", stream=True))
    assert parts[0].status == "pulling manifest" and parts[-1].status == "success"
    progress = [p for p in parts if p.total]
    size = len(models["tiny-Q8_0.gguf"])
    assert progress and {p.digest for p in progress} == {"tiny-Q8_0.gguf"}
    assert progress[-1].status == "pulling tiny-Q8_0.gguf" and progress[-1].completed == progress[-1].total == size
    assert [p.completed for p in progress] == sorted(p.completed or 0 for p in progress)
    jobs = [j for j in httpx.get(f"{queen.url}/v1/jobs", timeout=10).json() if j["kind"] == "model.pull"]
    assert [(j["subject"], j["state"]) for j in jobs] == [(f"{REPO}:Q8_0", "done")]  # the job `rbee model pull` runs
    assert (queen.home / "data" / "models" / REPO / "tiny-Q8_0.gguf").read_bytes() == models["tiny-Q8_0.gguf"]
    assert f"{REPO}:Q8_0" in {m.model for m in client.list().models}
    assert client.generate(model=f"{REPO}:Q8_0", prompt="hi", options={"num_predict": 2}).done
    # the name it was pulled under works on every route, as with Ollama
    assert client.generate(model=f"hf.co/{REPO}:Q8_0", prompt="hi", options={"num_predict": 2}).done
    chat = client.chat(model=f"hf.co/{REPO}:Q8_0", messages=[{"role": "user", "content": "hi"}],
                       options={"num_predict": 2})
    assert chat.done and chat.model == f"{REPO}:Q8_0"
    assert client.show(f"hf.co/{REPO}:Q8_0").capabilities


def test_pull_without_streaming_answers_success_once_done(queen: Queen, client: ollama.Client) -> None:
    with httpx.Client(base_url=queen.url, timeout=120) as http:
        answer = http.post("/api/pull", json={"model": f"huggingface.co/{REPO}:latest", "stream": False})
    assert answer.status_code == 200 and answer.json() == {"status": "success"}
    entry = catalog(queen)[f"{REPO}:Q4_K_M"]  # `:latest` is the default quantization
    assert entry["repo"] == REPO and entry["source"] == "hf"
    assert client.pull(f"{REPO}:Q4_K_M").status == "success"  # rbee's own names work too (already there)


def test_a_pull_that_fails_after_the_200_ends_with_an_error_line(queen: Queen, client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        list(client.pull("hf.co/rbee-test/nope-GGUF:Q4_K_M", stream=True))
    assert "there is no model repo rbee-test/nope-GGUF" in caught.value.error
    with httpx.stream("POST", f"{queen.url}/api/pull", json={"model": "hf.co/rbee-test/nope-GGUF"},
                      timeout=60) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in resp.iter_lines() if line]
    assert lines[0] == {"status": "pulling manifest"} and list(lines[-1]) == ["error"]
    whole = httpx.post(f"{queen.url}/api/pull", json={"model": "hf.co/rbee-test/nope-GGUF", "stream": False},
                       timeout=60)
    assert whole.status_code == 500 and "there is no model repo rbee-test/nope-GGUF" in whole.json()["error"]


@pytest.mark.parametrize(("body", "status", "said"), [
    ({"model": "not a model/at all!"}, 400, "neither a file path nor a Hugging Face name"),
    ({"model": "hf.co/not a repo/x"}, 400, "hf.co/org/repo:QUANT works too"),
    ({"model": "llama3.2"}, 404, "model 'llama3.2' not found: rbee pulls GGUF models from Hugging Face"),
    ({"stream": False}, 400, "model"),
    ({"model": REPO, "stream": "yes"}, 400, "stream"),
])
def test_a_name_a_pull_cannot_find_is_refused_before_it_starts(queen: Queen, body: dict[str, object], status: int,
                                                               said: str) -> None:
    before = len(httpx.get(f"{queen.url}/v1/jobs", timeout=10).json())
    resp = httpx.post(f"{queen.url}/api/pull", json=body, timeout=30)
    assert resp.status_code == status and said in resp.json()["error"], resp.text
    assert len(httpx.get(f"{queen.url}/v1/jobs", timeout=10).json()) == before  # nothing started


def test_the_ollama_client_reads_a_refused_name(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.pull("llama3.2")
    assert caught.value.status_code == 404 and "hf.co/org/repo:QUANT" in caught.value.error


SLOW = "rbee-test/slow-GGUF:Q4_K_M"


def _leave_a_streamed_pull(queen: Queen) -> None:
    with httpx.stream("POST", f"{queen.url}/api/pull", json={"model": f"hf.co/{SLOW}"}, timeout=60) as resp:
        for line in resp.iter_lines():
            progress = json.loads(line)
            if 0 < progress.get("completed", 0) < progress.get("total", 0):
                return  # some bytes came, not all: leave


def _leave_a_whole_pull(queen: Queen) -> None:
    with pytest.raises(httpx.ReadTimeout):  # the download takes seconds: leave after one
        httpx.post(f"{queen.url}/api/pull", json={"model": f"hf.co/{SLOW}", "stream": False},
                   timeout=httpx.Timeout(30, read=1.0))


@pytest.mark.parametrize("leave", [_leave_a_streamed_pull, _leave_a_whole_pull])
def test_a_client_that_leaves_mid_pull_cancels_the_job(queen: Queen, leave: Callable[[Queen], None]) -> None:
    leave(queen)
    job = [j for j in httpx.get(f"{queen.url}/v1/jobs", timeout=10).json() if j["subject"] == SLOW][-1]
    with httpx.stream("GET", f"{queen.url}/v1/jobs/{job['job_id']}/events", timeout=60) as events:
        last = [json.loads(e[5:]) for e in events.iter_lines() if e.startswith("data:")][-1]
    assert last["type"] == "cancelled"
    assert SLOW not in catalog(queen)


def test_delete_removes_the_model_and_its_files(queen: Queen, client: ollama.Client) -> None:
    assert client.pull(f"hf.co/{REPO}:Q8_0").status == "success"
    assert client.generate(model=f"{REPO}:Q8_0", prompt="hi", options={"num_predict": 2}).done  # a worker serves it
    assert client.delete(f"hf.co/{REPO}:Q8_0").status == "success"
    assert f"{REPO}:Q8_0" not in catalog(queen) and f"{REPO}:Q8_0" not in {m.model for m in client.list().models}
    assert not (queen.home / "data" / "models" / REPO / "tiny-Q8_0.gguf").exists()
    assert not [w for w in queen.workers() if w["model"] == f"{REPO}:Q8_0"]
    with pytest.raises(ollama.ResponseError) as caught:
        client.delete(f"hf.co/{REPO}:Q8_0")
    assert caught.value.status_code == 404 and caught.value.error == f"model '{REPO}:Q8_0' not found"


def test_delete_with_a_bad_body_is_400(queen: Queen) -> None:
    resp = httpx.request("DELETE", f"{queen.url}/api/delete", json={"model": ""}, timeout=10)
    assert resp.status_code == 400 and "model" in resp.json()["error"]


def test_the_openapi_spec_lists_pull_and_delete(queen: Queen) -> None:
    paths = httpx.get(f"{queen.url}/openapi.json", timeout=10).json()["paths"]
    assert "post" in paths["/api/pull"] and "delete" in paths["/api/delete"]
    assert paths["/api/pull"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "OllamaPullRequest")
