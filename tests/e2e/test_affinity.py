"""Prefix-cache affinity (issue 20) with a real queen and two replicas of the tiny model (min_replicas 2, a long
trained context): a conversation's later turns go back to the worker whose slot holds its start, and that
worker reports the cached part of the prompt; a saturated preferred worker never makes a request wait; the
counters on /metrics move. Least-loaded alone sends every later turn to the oldest idle worker, so the tests
first spread the conversations over both workers, with requests held in flight."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Queen, wait_for
from tests.e2e.test_observability import _samples, _value
from tests.fixtures.tiny_gguf import write_tiny_model

MODEL = "tiny-long"
SYSTEM = "You are a careful coding agent. Read the code, then change as little as you can. " * 12


@pytest.fixture(scope="module")
def long_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("models") / f"{MODEL}.gguf", context_length=32768, name=MODEL)


def pair(make_queen: Callable[..., Queen], model: Path, slots: int = 2, **env: str) -> tuple[Queen, list[str]]:
    """A queen with two ready workers of `model` (min_replicas 2); their ids, oldest first."""
    queen = make_queen(RBEE_WORKER_SLOTS=str(slots), RBEE_WORKER_CONTEXT="8192", **env)
    (queen.home / "config").mkdir(parents=True)
    (queen.home / "config" / "models.toml").write_text(f'[models."{MODEL}"]\nmin_replicas = 2\n')
    queen.start()
    assert turn(queen, "warm", model=str(model)).status_code == 200  # adds it to the catalog, loads one
    assert wait_for(lambda: len(ready(queen)) == 2, 60), queen.workers()
    return queen, ready(queen)


def ready(queen: Queen) -> list[str]:
    workers = [w for w in queen.workers() if w["state"] == "ready"]
    return [str(w["id"]) for w in sorted(workers, key=lambda w: str(w["started_at"]))]


def in_flight(queen: Queen) -> dict[str, int]:
    return {str(w["id"]): int(str(w["in_flight"])) for w in queen.workers()}


def messages(name: str, turns: int) -> list[dict[str, str]]:
    said = [{"role": "system", "content": SYSTEM}]
    for n in range(turns):
        said += [{"role": "user", "content": f"conversation {name}, request {n}: " + "look at this file " * 20},
                 {"role": "assistant", "content": f"done with {n}"}]
    return said[:-1]


def turn(queen: Queen, name: str, said: list[dict[str, str]] | None = None, model: str = MODEL,
         **extra: object) -> httpx.Response:
    return httpx.post(f"{queen.url}/v1/chat/completions", timeout=120, json={
        "model": model, "messages": said if said is not None else messages(name, 1), "max_tokens": 4, **extra})


@contextlib.contextmanager
def held(queen: Queen, said: list[dict[str, str]]) -> Iterator[str]:
    """A long streamed answer, held in flight (its client reads only its start): the worker it runs on."""
    body = {"model": MODEL, "messages": said, "max_tokens": 5000, "stream": True}
    with httpx.stream("POST", f"{queen.url}/v1/chat/completions", json=body, timeout=120) as resp:
        lines = resp.iter_lines()  # kept: a dropped iterator would close the stream
        assert resp.status_code == 200 and next(lines).startswith("data: ")
        yield resp.headers["x-rbee-worker"]
        assert next(lines) is not None


def cached(resp: httpx.Response) -> int:
    usage = resp.json()["usage"]
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    return int(details.get("cached_tokens") or usage.get("cache_read_input_tokens") or 0)


def test_conversations_keep_their_workers_and_reuse_their_cache(make_queen: Callable[..., Queen],
                                                               long_model: Path) -> None:
    queen, workers = pair(make_queen, long_model)
    names = ["a", "b", "c", "d"]
    first: dict[str, str] = {}
    with contextlib.ExitStack() as stack:  # four first turns in flight at once: two on each worker
        for name in names:
            first[name] = stack.enter_context(held(queen, messages(name, 1)))
    assert sorted(first.values()) == sorted(workers * 2)
    assert wait_for(lambda: sum(in_flight(queen).values()) == 0)
    before = _samples(queen)
    prompts: dict[str, int] = {}
    for turns in (2, 3):  # interleaved: a b c d, a b c d
        for name in names:
            resp = turn(queen, name, messages(name, turns))
            assert resp.status_code == 200 and resp.headers["x-rbee-worker"] == first[name], (name, turns)
            assert cached(resp) > len(SYSTEM) // 8, resp.json()["usage"]  # at least the system prompt
            if turns == 3:  # the same slot: all of turn 2's prompt (llama-server evaluates its last token again)
                assert cached(resp) >= prompts[name] - 1, (name, prompts[name], resp.json()["usage"])
            prompts[name] = int(resp.json()["usage"]["prompt_tokens"])
    after = _samples(queen)
    assert _value(after, "rbee_affinity_hits_total", model=MODEL) - \
        _value(before, "rbee_affinity_hits_total", model=MODEL) == 8
    assert _value(after, "rbee_affinity_misses_total", model=MODEL) >= 4  # the first turns had no prefix held
    assert _value(after, "rbee_prompt_tokens_cached_total", model=MODEL) - \
        _value(before, "rbee_prompt_tokens_cached_total", model=MODEL) > 8 * len(SYSTEM) // 8


def test_a_saturated_preferred_worker_does_not_make_a_request_wait(make_queen: Callable[..., Queen],
                                                                   long_model: Path) -> None:
    queen, workers = pair(make_queen, long_model, slots=1)
    assert turn(queen, "a", messages("a", 1)).headers["x-rbee-worker"] == workers[0]
    misses = _value(_samples(queen), "rbee_affinity_misses_total", model=MODEL)
    with held(queen, messages("a", 2)) as busy:  # the conversation's own worker, all its slots busy
        assert busy == workers[0]
        resp = turn(queen, "a", messages("a", 3))
        assert resp.status_code == 200 and resp.headers["x-rbee-worker"] == workers[1]
        assert in_flight(queen)[workers[0]] == 1  # answered while the preferred worker was still busy
        assert queen.waiting() == 0
    assert _value(_samples(queen), "rbee_affinity_misses_total", model=MODEL) == misses + 1


def _spread(queen: Queen, workers: list[str], first: Callable[[], httpx.Response]) -> str:
    """`first` runs while the oldest worker is busy, so it lands on the other one (returned)."""
    with held(queen, messages("other", 1)) as busy:
        assert busy == workers[0]
        resp = first()
        assert resp.status_code == 200 and resp.headers["x-rbee-worker"] == workers[1]
    assert wait_for(lambda: sum(in_flight(queen).values()) == 0)
    return workers[1]


def test_anthropic_messages_keep_their_worker(make_queen: Callable[..., Queen], long_model: Path) -> None:
    queen, workers = pair(make_queen, long_model, slots=1)

    def ask(turns: int) -> httpx.Response:
        said = messages("a", turns)
        return httpx.post(f"{queen.url}/v1/messages", timeout=120, json={
            "model": MODEL, "system": said[0]["content"], "messages": said[1:], "max_tokens": 4})

    home = _spread(queen, workers, lambda: ask(1))
    resp = ask(2)  # least-loaded would pick the oldest, idle worker
    assert resp.status_code == 200 and resp.headers["x-rbee-worker"] == home
    assert cached(resp) > len(SYSTEM) // 8, resp.json()["usage"]


def test_responses_keep_their_worker(make_queen: Callable[..., Queen], long_model: Path) -> None:
    queen, workers = pair(make_queen, long_model, slots=1)

    def ask(turns: int) -> httpx.Response:
        said = messages("a", turns)
        items = [{**m, "type": "message"} if m["role"] == "assistant" else m for m in said[1:]]
        return httpx.post(f"{queen.url}/v1/responses", timeout=120, json={
            "model": MODEL, "instructions": said[0]["content"], "input": items, "max_output_tokens": 4})

    home = _spread(queen, workers, lambda: ask(1))
    resp = ask(2)
    assert resp.status_code == 200 and resp.headers["x-rbee-worker"] == home, resp.text
    assert cached(resp) > len(SYSTEM) // 8, resp.json()["usage"]


def test_completions_keep_their_worker(make_queen: Callable[..., Queen], long_model: Path) -> None:
    """A raw prompt that grows (an agent speaking /v1/completions, or a FIM client): the chain is cut every
    1024 characters, so a later prompt that starts with the earlier one goes back to its worker."""
    queen, workers = pair(make_queen, long_model, slots=1)
    start = SYSTEM + "".join(f"\nrequest {n}: " + "look at this file " * 20 for n in range(3))

    def ask(more: str) -> httpx.Response:
        return httpx.post(f"{queen.url}/v1/completions", timeout=120, json={
            "model": MODEL, "prompt": start + more, "max_tokens": 4})

    first = None

    def once() -> httpx.Response:
        nonlocal first
        first = ask("")
        return first

    home = _spread(queen, workers, once)
    assert first is not None
    resp = ask("\nrequest 3: and now the tests " * 4)  # least-loaded would pick the oldest, idle worker
    assert resp.status_code == 200 and resp.headers["x-rbee-worker"] == home, resp.text
    assert cached(resp) >= int(first.json()["usage"]["prompt_tokens"]) - 1, resp.json()["usage"]


def test_with_affinity_off_a_later_turn_goes_to_the_least_loaded_worker(make_queen: Callable[..., Queen],
                                                                        long_model: Path) -> None:
    queen, workers = pair(make_queen, long_model, slots=1, RBEE_AFFINITY="0")
    _spread(queen, workers, lambda: turn(queen, "a", messages("a", 1)))
    resp = turn(queen, "a", messages("a", 2))
    assert resp.status_code == 200 and resp.headers["x-rbee-worker"] == workers[0]  # the oldest idle one
    samples = _samples(queen)
    assert _value(samples, "rbee_affinity_hits_total") == _value(samples, "rbee_affinity_misses_total") == 0


def test_a_conversation_whose_slot_went_to_another_is_restored_from_its_workers_host_cache(
        make_queen: Callable[..., Queen], long_model: Path) -> None:
    """One slot a worker, with llama-server's host-memory prompt cache (RBEE_WORKER_CACHE_RAM_MIB): b takes the
    slot that held a, llama-server keeps a's prompt in RAM, and a's next turn goes back there and finds it."""
    queen, workers = pair(make_queen, long_model, slots=1, RBEE_WORKER_CACHE_RAM_MIB="256")
    own = [{"role": "system", "content": "Another project, another agent. Keep every test green. " * 12}]
    first = turn(queen, "a", own + messages("a", 1)[1:])
    assert first.status_code == 200 and first.headers["x-rbee-worker"] == workers[0]
    assert turn(queen, "b", messages("b", 1)).headers["x-rbee-worker"] == workers[0]  # the oldest idle one
    hits = _value(_samples(queen), "rbee_affinity_hits_total", model=MODEL)
    resp = turn(queen, "a", own + messages("a", 2)[1:])
    assert resp.status_code == 200 and resp.headers["x-rbee-worker"] == workers[0]
    assert cached(resp) >= int(first.json()["usage"]["prompt_tokens"]) - 1, resp.json()["usage"]
    assert _value(_samples(queen), "rbee_affinity_hits_total", model=MODEL) == hits + 1
