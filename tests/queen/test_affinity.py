"""Prefix-cache affinity (rbee/queen/affinity.py), the slot a lease names (rbee/queen/leases.py `with_slot`) and
the choice it makes in decide.serve, alone: parsed requests in, preferences out, no processes."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import Any, cast

from rbee.contracts.anthropic import MessagesRequest
from rbee.contracts.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from rbee.contracts.responses import ResponsesRequest
from rbee.contracts.workers import WorkerMode
from rbee.queen import decide
from rbee.queen.affinity import CHUNK, SPILLED, Affinity, Key, Preference, key_of, session_of
from rbee.queen.leases import free_slots, take, with_slot
from rbee.queen.loads import Loads

SYSTEM = {"role": "system", "content": "You are a careful coding agent."}


def chat(*contents: str, system: bool = True) -> ChatCompletionRequest:
    roles = ["user", "assistant"]
    messages = [{"role": roles[i % 2], "content": c} for i, c in enumerate(contents)]
    return ChatCompletionRequest.model_validate({"model": "m", "messages": [SYSTEM] * system + messages})


def key(*contents: str, system: bool = True, session: str | None = None) -> Key:
    return key_of("m", chat(*contents, system=system), session)


def test_a_later_turn_extends_the_chain_of_the_one_before() -> None:
    first, second = key("fix the bug"), key("fix the bug", "done", "now add a test")
    assert len(first.chain) == 2 and len(second.chain) == 4
    assert second.chain[:2] == first.chain
    assert key("fix another bug").chain[0] == first.chain[0]  # the same system prompt: the same element 0
    assert key("fix another bug").chain[1] != first.chain[1]
    assert key_of("other", chat("fix the bug")) != first  # the model is part of the key
    assert first.shared and not key("fix the bug", system=False).shared


def test_the_session_header_tells_apart_sessions_that_start_alike() -> None:
    one, two = key("hello", session="a"), key("hello", session="b")
    assert one.chain[0] == two.chain[0] and one.chain[1] != two.chain[1]
    assert session_of({"x-claude-code-session-id": "abc"}) == "abc"
    assert session_of({"session_id": "s" * 500}) == "s" * 200
    assert session_of({}) is None


def test_every_protocol_gives_a_chain() -> None:
    anthropic = MessagesRequest.model_validate({"model": "m", "max_tokens": 5, "system": "be brief",
                                                "messages": [{"role": "user", "content": "hi"}]})
    responses = ResponsesRequest.model_validate({"model": "m", "instructions": "be brief",
                                                 "input": [{"role": "user", "content": "hi"}]})
    later = ResponsesRequest.model_validate({"model": "m", "instructions": "be brief", "input": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    assert [len(k.chain) for k in (key_of("m", anthropic), key_of("m", responses))] == [2, 2]
    assert key_of("m", later).chain[:2] == key_of("m", responses).chain
    prompt = "x" * (CHUNK * 2 + 10)
    raw = key_of("m", CompletionRequest.model_validate({"model": "m", "prompt": prompt}))
    longer = key_of("m", CompletionRequest.model_validate({"model": "m", "prompt": prompt + "y" * CHUNK}))
    assert len(raw.chain) == 3 and longer.chain[:3] == raw.chain
    assert key_of("m", CompletionRequest.model_validate({"model": "m", "prompt": "short"})) == Key((), False)
    assert key_of("m", CompletionRequest.model_validate({"model": "m", "prompt": ["a" * CHUNK] * 2})).chain == ()
    assert key_of("m", EmbeddingRequest.model_validate({"model": "m", "input": "text"})).chain == ()


def test_the_slot_holding_the_longest_prefix_is_preferred() -> None:
    table = Affinity()
    table.record("w1", 0, key("fix the bug"))
    table.record("w2", 1, key("write docs"))
    free = {"w1": [0, 1], "w2": [0, 1]}
    assert table.prefer(key("fix the bug", "ok", "more"), free) == Preference("w1", 0, depth=2)
    assert table.prefer(key("write docs", "ok", "more"), free) == Preference("w2", 1, depth=2)
    assert table.prefer(key("fix the bug", "ok", "more"), {"w1": [1], "w2": [0]}) == Preference("w1", None,
                                                                                                 depth=2)
    assert table.prefer(key("fix the bug", "ok", "more"), {"w1": [], "w2": [0]}) == Preference(tie="w2")
    assert table.prefer(None, free) == Preference()


def test_conversations_that_share_only_a_system_prompt_are_not_pinned() -> None:
    table = Affinity()
    table.record("w1", 0, key("fix the bug"))
    assert table.prefer(key("something else"), {"w1": [1], "w2": [0, 1]}) == Preference(tie="w1")
    table.record("w1", 1, key("no system", system=False))
    assert table.prefer(key("other", system=False), {"w1": [0], "w2": [0]}) == Preference()  # nothing shared


def test_the_slot_a_lease_gets() -> None:
    table = Affinity()
    table.record("w1", 2, key("a"))
    table.record("w1", 0, key("b"))
    hit = table.prefer(key("a", "x", "y"), {"w1": [0, 1, 2]})
    assert table.slot_for("w1", [0, 1, 2], hit) == 2  # the one holding its prefix
    assert table.slot_for("w1", [0, 1], hit) == 1  # else an empty one
    assert table.slot_for("w1", [0, 2], Preference()) == 2  # else the one given least recently


def test_the_table_is_bounded_and_forgets_stopped_workers() -> None:
    table = Affinity(limit=3)
    for slot, text in enumerate("abcd"):
        table.record("w1", slot, key(text))
    assert len(table) == 3 and table.prefer(key("a", "x", "y"), {"w1": [0, 1, 2, 3]}).worker is None
    assert table.prefer(key("d", "x", "y"), {"w1": [3]}).worker == "w1"
    table.record("w2", 0, key("e"))
    table.forget(["w2"])
    table.record("w2", 0, key("e"))
    assert len(table) == 1 and table.prefer(key("d", "x", "y"), {"w1": [3]}).worker is None
    assert table.prefer(key("e", "x", "y"), {"w2": [0]}).worker == "w2"
    table.record("w2", 0, Key((), False))  # a request that tells nothing: the slot's old chain is gone
    assert len(table) == 0


def test_a_worker_with_a_host_memory_cache_keeps_a_conversation_whose_slot_went_to_another() -> None:
    table = Affinity()
    table.record("w1", 0, key("a"), spill=True)
    table.record("w1", 0, key("b"), spill=True)  # llama-server saves a's prompt into its host-memory cache
    assert table.prefer(key("a", "x", "y"), {"w1": [1], "w2": [0]}) == Preference("w1", None, depth=2)
    assert table.prefer(key("b", "x", "y"), {"w1": [0], "w2": [0]}) == Preference("w1", 0, depth=2)
    assert table.recent("w1", 5) == [(0, f"{key('b').chain[1]:016x}")]  # saves on unload: slots only
    table.record("w1", 1, key("a", "x", "y"), spill=True)  # a resumed from the cache into slot 1
    table.record("w1", 1, key("c"), spill=True)
    assert table.prefer(key("a", "x", "y", "z", "w"), {"w1": [1], "w2": [0]}) == Preference("w1", None, depth=4)
    table.record("w1", 0, key("b", "x", "y"), spill=True)  # b continued on its slot: nothing to keep
    assert len(table) == 3  # slots 0 and 1, and a's latest turn in the cache


def test_without_a_host_memory_cache_a_reused_slot_forgets_its_conversation() -> None:
    table = Affinity()
    table.record("w1", 0, key("a"))
    table.record("w1", 0, key("b"))
    assert table.prefer(key("a", "x", "y"), {"w1": [1], "w2": [0]}) == Preference(tie="w1")


def test_a_workers_cache_holds_at_most_spilled_conversations() -> None:
    table = Affinity()
    for n in range(SPILLED + 2):  # c0 .. c16 leave slot 0 in turn, c17 holds it
        table.record("w1", 0, key(f"c{n}"), spill=True)
    free = {"w1": [1], "w2": [0]}
    assert table.prefer(key("c0", "x", "y"), free) == Preference(tie="w1")  # the oldest, forgotten
    assert table.prefer(key("c1", "x", "y"), free) == Preference("w1", None, depth=2)
    assert len(table) == SPILLED + 1
    table.forget([])
    assert len(table) == 0


def test_recent_lists_a_workers_slots_most_recent_first() -> None:
    table = Affinity()
    table.record("w1", 0, key("a"))
    table.record("w2", 0, key("b"))
    table.record("w1", 1, key("c"))
    recent = table.recent("w1", 5)
    assert [slot for slot, _ in recent] == [1, 0]
    assert recent[1][1] == f"{key('a').chain[1]:016x}" == f"{key('a', 'x', 'y').chain[1]:016x}"  # stable per turn
    assert table.recent("w1", 1) == recent[:1] and table.recent("w3", 5) == []


def test_the_preferred_worker_serves_only_when_it_has_a_free_slot() -> None:
    ready = [decide.Ready("busy", 1, 2, 0.0), decide.Ready("idle", 0, 2, 1.0), decide.Ready("full", 2, 2, 2.0)]
    assert decide.serve(ready, False, True, prefer="busy") == decide.Serve("busy")
    assert decide.serve(ready, False, True, prefer="full") == decide.Serve("idle")  # never waits for it
    assert decide.serve(ready, False, False, prefer="busy") is None
    even = [decide.Ready("old", 0, 2, 0.0), decide.Ready("new", 0, 2, 1.0)]
    assert decide.serve(even, False, True) == decide.Serve("old")
    assert decide.serve(even, False, True, tie="new") == decide.Serve("new")  # a tie goes to the system prompt
    assert decide.serve(ready, False, True, tie="busy") == decide.Serve("idle")  # but never past a lighter load


def test_the_body_names_the_slot() -> None:
    assert json.loads(with_slot(b'{"model": "m"}\n', 3)) == {"model": "m", "id_slot": 3}
    assert json.loads(with_slot(b"{ }", 0)) == {"id_slot": 0}
    assert with_slot(b'{"model": "m", "id_slot": 9}', 1).endswith(b',"id_slot":1}')  # the last key wins there
    assert with_slot(b'{"model": "m"}', None) == b'{"model": "m"}'


def test_a_lease_names_a_free_slot_for_a_generating_request_only() -> None:
    freed: list[str] = []
    scheduler = cast(Any, SimpleNamespace(loads=Loads(), affinity=Affinity(), slot_freed=freed.append,
                                          executor=SimpleNamespace(unload_soon=freed.append)))
    worker = cast(Any, SimpleNamespace(id="w1", started_at=time.time(),
                                       spec=SimpleNamespace(mode=WorkerMode.GENERATE, slots=2, cache_ram_mib=0)))

    def lease(asked: Key | None) -> Any:
        free = free_slots(scheduler, [worker])
        return take(scheduler, worker, 60.0, asked, scheduler.affinity.prefer(asked, free), free)

    first = lease(key("a"))
    assert (first.slot, first.hit) == (0, False)  # a first turn: no prefix held anywhere, a miss
    counting = lease(None)  # counting tokens: no slot, nothing recorded
    assert counting.slot is None and scheduler.loads.peek(worker).busy == {0}
    later = lease(key("a", "x", "y"))  # its slot is busy: the same worker, another slot
    assert (later.slot, later.hit) == (1, True) and lease(key("b")).slot is None  # no slot left to name
    first.release()
    assert scheduler.loads.peek(worker).busy == {1} and freed == [worker]
    assert (lease(key("a", "x", "y", "z", "w")).slot, scheduler.loads.peek(worker).in_flight) == (0, 4)
