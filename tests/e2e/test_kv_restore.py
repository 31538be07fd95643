"""KV caches kept across unloads (issue 20), end to end with a real queen, its embedded hive and llama-server
workers of the tiny model (a long trained context): a conversation's worker unloads (keep_alive 0, or evicted
for another model) and saves the conversation's slot; its next turn loads a new worker, which gets the slot
back before the turn runs and reports the restored prompt as cached; without saving, or with the saved file
corrupted or gone, the turn is answered all the same with a normal prefill; /metrics counts it all; the save is
bounded in time when another model waits for the memory; a restarted queen learns what its hive kept; and the
same through a hive installed on another host (tests/fixtures/lan.py)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import Queen, wait_for
from tests.e2e.test_affinity import MODEL, cached, long_model, messages, turn
from tests.e2e.test_observability import _samples, _value
from tests.fixtures.fleet import installed_fleet
from tests.fixtures.lan import Lan, lan_hosts, model_every_host_reads
from tests.fixtures.tiny_gguf import write_tiny_model

__all__ = ["long_model"]  # the fixture, shared with test_affinity.py


def start(make_queen: Callable[..., Queen], **env: str) -> Queen:
    return make_queen(RBEE_WORKER_SLOTS="2", RBEE_WORKER_CONTEXT="8192", **env).start()


def counter(queen: Queen, name: str, **labels: str) -> float:
    return _value(_samples(queen), name, **labels)


def ready(queen: Queen, model: str = MODEL) -> list[str]:
    return [str(w["id"]) for w in queen.workers() if w["state"] == "ready" and w["model"] == model]


def saved_files(queen: Queen) -> list[Path]:
    return sorted((queen.home / "state" / "hive" / "slot-cache").glob("*.bin"))


def first_turn(queen: Queen, model: Path, keep_alive: int | str = "5m") -> int:
    """Turn 1 of conversation "a" (keep_alive 0: its worker unloads right after): its prompt tokens.
    The model is added by its path first, with a prompt too short to be a conversation (nothing to save): a
    conversation's key starts with the model as asked, so its turns all name it alike."""
    warm = httpx.post(f"{queen.url}/v1/completions", timeout=120,
                      json={"model": str(model), "prompt": "hi", "max_tokens": 1})
    assert warm.status_code == 200, warm.text
    resp = turn(queen, "a", messages("a", 1), keep_alive=keep_alive)
    assert resp.status_code == 200, resp.text
    prompt = int(resp.json()["usage"]["prompt_tokens"])
    assert prompt > 200 and cached(resp) < 8
    return prompt


def unloaded_and_saved(queen: Queen, model: Path) -> int:
    prompt = unloaded_and_saved_on(queen, model, "localhost")
    assert len(saved_files(queen)) == 1
    assert counter(queen, "rbee_slot_cache_bytes", hive="localhost") == saved_files(queen)[0].stat().st_size
    return prompt


def unloaded_and_saved_on(queen: Queen, model: Path, hive: str) -> int:
    """Conversation a's turn 1 on `hive`, whose worker then unloads (keep_alive 0) and saves its slot."""
    prompt = first_turn(queen, model, keep_alive=0)
    assert wait_for(lambda: counter(queen, "rbee_slot_saves_total") == 1, 30)  # the unload saved its slot
    assert wait_for(lambda: not ready(queen), 10)
    assert counter(queen, "rbee_slot_cache_bytes", hive=hive) > 0
    return prompt


def test_a_turn_after_an_unload_gets_its_saved_slot_back(make_queen: Callable[..., Queen], long_model: Path) -> None:
    queen = start(make_queen)
    prompt = unloaded_and_saved(queen, long_model)
    resp = turn(queen, "a", messages("a", 2))  # a new worker is loaded for it
    assert resp.status_code == 200, resp.text
    assert cached(resp) >= 0.9 * prompt, (prompt, resp.json()["usage"])  # turn 1's prompt, restored
    assert counter(queen, "rbee_slot_restores_total", result="restored") == 1
    assert counter(queen, "rbee_slot_restores_total", result="failed") == 0
    again = turn(queen, "a", messages("a", 3))  # later turns find it live, where the restore put it
    assert again.status_code == 200 and again.headers["x-rbee-worker"] == resp.headers["x-rbee-worker"]
    assert cached(again) > prompt and counter(queen, "rbee_slot_restores_total", result="restored") == 1
    other = turn(queen, "b", messages("b", 2))  # another conversation: nothing saved for it, nothing restored
    assert other.status_code == 200 and counter(queen, "rbee_slot_restores_total") == 1


def test_a_restarted_queen_restores_what_its_hive_kept(make_queen: Callable[..., Queen], long_model: Path) -> None:
    queen = start(make_queen)
    prompt = unloaded_and_saved(queen, long_model)
    queen.stop()
    queen.start()  # the same home: the embedded hive's saved slots are still on disk, its listing is taken
    assert wait_for(lambda: counter(queen, "rbee_slot_cache_bytes", hive="localhost") > 0, 30)
    resp = turn(queen, "a", messages("a", 2))
    assert resp.status_code == 200 and cached(resp) >= 0.9 * prompt, resp.json()["usage"]
    assert counter(queen, "rbee_slot_restores_total", result="restored") == 1


def test_without_saving_the_turn_after_an_unload_is_a_cold_prefill(make_queen: Callable[..., Queen],
                                                                  long_model: Path) -> None:
    queen = start(make_queen, RBEE_SLOT_CACHE_MIB="0")
    prompt = first_turn(queen, long_model, keep_alive=0)
    assert wait_for(lambda: not ready(queen), 30)
    resp = turn(queen, "a", messages("a", 2))
    assert resp.status_code == 200 and resp.json()["usage"]["prompt_tokens"] > prompt
    assert cached(resp) < 8, resp.json()["usage"]
    samples = _samples(queen)
    assert _value(samples, "rbee_slot_saves_total") == _value(samples, "rbee_slot_restores_total") == 0
    assert saved_files(queen) == []


@pytest.mark.parametrize("damage", ["corrupted", "missing"])
def test_a_corrupted_or_missing_save_costs_only_the_cache(make_queen: Callable[..., Queen], long_model: Path,
                                                          damage: str) -> None:
    queen = start(make_queen)
    unloaded_and_saved(queen, long_model)
    [saved] = saved_files(queen)
    if damage == "missing":
        saved.unlink()
    else:
        with saved.open("r+b") as f:  # the same size, other bytes
            f.seek(saved.stat().st_size // 2)
            f.write(b"\xff" * 4096)
    resp = turn(queen, "a", messages("a", 2))
    assert resp.status_code == 200, resp.text
    assert cached(resp) < 8, resp.json()["usage"]
    samples = _samples(queen)
    assert _value(samples, "rbee_slot_restores_total", result="failed") == 1
    assert _value(samples, "rbee_slot_restores_total", result="restored") == 0
    assert _value(samples, "rbee_slot_cache_bytes", hive="localhost") == 0  # the hive deleted it; the queen forgot
    assert saved_files(queen) == []
    assert turn(queen, "a", messages("a", 3)).status_code == 200
    assert counter(queen, "rbee_slot_restores_total") == 1  # not tried again


def test_an_eviction_saves_and_the_evicted_conversation_gets_its_slot_back(
        make_queen: Callable[..., Queen], long_model: Path, tiny_stop_model: Path) -> None:
    queen = start(make_queen, RBEE_MEMORY_BUDGET="500MiB")  # one worker at a time
    prompt = first_turn(queen, long_model)
    other = httpx.post(f"{queen.url}/v1/chat/completions", timeout=120, json={
        "model": str(tiny_stop_model), "messages": messages("x", 1), "max_tokens": 4})
    assert other.status_code == 200 and ready(queen) == [] and len(ready(queen, "tiny-stop")) == 1
    assert counter(queen, "rbee_slot_saves_total") == 1  # saved before the other model was loaded
    resp = turn(queen, "a", messages("a", 2))  # evicts tiny-stop in turn
    assert resp.status_code == 200 and cached(resp) >= 0.9 * prompt, resp.json()["usage"]
    assert counter(queen, "rbee_slot_restores_total", result="restored") == 1


def engine_process(queen: Queen) -> psutil.Process:
    """The one llama-server under the queen."""
    assert queen.proc is not None
    [engine] = [p for p in psutil.Process(queen.proc.pid).children(recursive=True) if "--api-key" not in p.cmdline()
                and "LLAMA_API_KEY" in p.environ()]
    return engine


def engine_of(queen: Queen) -> tuple[str, str]:
    """The one llama-server under the queen: its URL and API key (a client that bypasses the queen)."""
    engine = engine_process(queen)
    args = engine.cmdline()
    return f"http://127.0.0.1:{args[args.index('--port') + 1]}", engine.environ()["LLAMA_API_KEY"]


def test_saving_never_delays_a_waiting_model_by_more_than_its_bound(make_queen: Callable[..., Queen],
                                                                     long_model: Path, tiny_stop_model: Path) -> None:
    """llama-server defers a save while its slot is busy: a long generation sent to the worker directly (the
    queen sees it idle, so it evicts it) keeps conversation a's slot busy, and the bound ends the wait."""
    bound_s = 0.3
    queen = start(make_queen, RBEE_MEMORY_BUDGET="500MiB", RBEE_SLOT_SAVE_TIMEOUT_MS=str(int(bound_s * 1000)))
    first_turn(queen, long_model)  # on slot 0
    assert turn(queen, "b", messages("b", 1)).status_code == 200  # on slot 1
    url, key = engine_of(queen)
    with httpx.stream("POST", f"{url}/v1/completions", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                      json={"prompt": "the river", "max_tokens": 16000, "id_slot": 0, "stream": True}) as busy:
        lines = busy.iter_lines()
        assert busy.status_code == 200 and next(lines).startswith("data: ")
        other = httpx.post(f"{queen.url}/v1/chat/completions", timeout=120, json={
            "model": str(tiny_stop_model), "messages": messages("x", 1), "max_tokens": 4})
    assert other.status_code == 200 and len(ready(queen, "tiny-stop")) == 1
    log = queen.log.read_text()
    assert f"slot 0: not saved within {bound_s:g} s" in log
    [(saved, took)] = re.findall(r"saved (\d) of 2 slot\(s\) of \S+ on localhost in ([\d.]+) s", log)
    assert int(saved) <= 1 and float(took) < bound_s + 0.5, took  # the bound, and a margin for a busy machine


@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lan]:
    with lan_hosts(1, tmp_path_factory.mktemp("lan")) as lan:
        yield lan


def test_a_remote_hive_saves_on_unload_and_restores_for_the_next_turn(
        lan: Lan, tmp_path_factory: pytest.TempPathFactory, llama_server: Path) -> None:
    """The same through a hive installed over SSH on another host (its own API: save-and-stop, restore)."""
    with model_every_host_reads(lambda path: write_tiny_model(path, context_length=32768, name=MODEL), MODEL) as path, \
            installed_fleet(lan, tmp_path_factory.mktemp("keeper"), llama_server, heartbeat_ms=1000) as queen:
        prompt = unloaded_and_saved_on(queen, Path(path), "h1")
        resp = turn(queen, "a", messages("a", 2))
        assert resp.status_code == 200 and resp.headers["x-rbee-hive"] == "h1", resp.text
        assert cached(resp) >= 0.9 * prompt, (prompt, resp.json()["usage"])
        assert counter(queen, "rbee_slot_restores_total", result="restored") == 1
