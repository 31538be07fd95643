"""Prefix-cache affinity across hives (issue 20): two hives installed over SSH on two hosts, a worker of the
tiny model on each; a conversation that started on the younger worker's hive goes back there (through that
hive's front, with the slot named in the body), where plain least-loaded would send it to the oldest worker."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import Queen, wait_for
from tests.e2e.test_affinity import MODEL, cached, messages
from tests.e2e.test_observability import _samples, _value
from tests.fixtures.fleet import installed_fleet
from tests.fixtures.lan import Lan, model_every_host_reads
from tests.fixtures.tiny_gguf import write_tiny_model

pytestmark = pytest.mark.timeout(1200)  # two hive installs, then the lan lock other netns tests share


def chat(queen: Queen, said: list[dict[str, str]], hive: str | None = None, model: str = MODEL) -> httpx.Response:
    return httpx.post(f"{queen.url}/v1/chat/completions", headers={"X-Rbee-Hive": hive} if hive else {},
                      timeout=240, json={"model": model, "messages": said, "max_tokens": 4})


def ready_on(queen: Queen) -> dict[str, str]:
    """The ready workers of the model: hive -> worker id."""
    return {str(w["hive"]): str(w["id"]) for w in queen.workers() if w["state"] == "ready" and w["model"] == MODEL}


def test_a_conversation_goes_back_to_its_worker_on_another_hive(
        lan: Lan, tmp_path_factory: pytest.TempPathFactory, llama_server: Path) -> None:
    with model_every_host_reads(lambda path: write_tiny_model(path, context_length=32768, name=MODEL), MODEL) as path, \
            installed_fleet(lan, tmp_path_factory.mktemp("keeper"), llama_server) as queen:
        for hive in ("h1", "h2"):  # a worker on each hive, h1's the older
            warm = chat(queen, [{"role": "user", "content": "hi"}], hive, model=path)
            assert warm.status_code == 200 and warm.headers["x-rbee-hive"] == hive, warm.text
            assert wait_for(lambda: hive in ready_on(queen), 60), queen.workers()  # noqa: B023
        workers = ready_on(queen)
        first = chat(queen, messages("a", 1), "h2")  # turn 1 pinned to the younger worker's hive
        assert first.status_code == 200 and first.headers["x-rbee-worker"] == workers["h2"], first.text
        before = _value(_samples(queen), "rbee_affinity_hits_total", model=MODEL)
        for turns in (2, 3):  # unpinned: both workers idle, least-loaded would take h1's, the oldest
            resp = chat(queen, messages("a", turns))
            assert resp.status_code == 200, resp.text
            assert (resp.headers["x-rbee-hive"], resp.headers["x-rbee-worker"]) == ("h2", workers["h2"])
            assert cached(resp) >= int(first.json()["usage"]["prompt_tokens"]) - 1, resp.json()["usage"]
        assert _value(_samples(queen), "rbee_affinity_hits_total", model=MODEL) == before + 2
        assert _value(_samples(queen), "rbee_prompt_tokens_cached_total", model=MODEL, hive="h2") > 0
