"""The request side of KV caches kept across unloads, as pure decisions (rbee/queen/kv_resume.py): which saved key
a request restores and which worker it prefers; the load step's preference for the hive holding it
(decide.load); and what the SlotRecord counts for /metrics."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import cast

import pytest

from rbee.contracts.hives import HiveState
from rbee.contracts.slots import SavedSlot, SlotCacheList
from rbee.queen import decide, kv_resume
from rbee.queen.affinity import Affinity, key_of
from rbee.queen.hive_seam import AnyWorker, HiveSeam
from rbee.queen.leases import Lease
from rbee.queen.metrics import SlotCollector
from rbee.queen.scheduler import Scheduler
from rbee.queen.slot_restore import SlotRecord
from tests.queen.test_affinity import chat
from tests.queen.test_scheduler import FakeHive, room, views, worker

CHAIN = (11, 22, 33, 44)


def saved(key: int | str, model: str = "m", at: float = 1.0, size: int = 100) -> SavedSlot:
    return SavedSlot(model=model, key=key if isinstance(key, str) else f"{key:016x}", bytes=size, tokens=10,
                     last_used_at=at)


def record(**hives: list[SavedSlot]) -> SlotRecord:
    found = SlotRecord()
    for hive, slots in hives.items():
        found.note(hive, slots)
    return found


def test_the_longest_saved_prefix_of_the_chain_is_restored_from_its_hives_most_recent_first() -> None:
    held = record(h1=[saved(22, at=5.0)], h2=[saved(22, at=9.0), saved(33)])
    assert kv_resume.plan(CHAIN, 0, "m", held) == kv_resume.Resume(f"{33:016x}", ("h2",), 3)
    held.forget("h2", "m", f"{33:016x}")
    assert kv_resume.plan(CHAIN, 0, "m", held) == kv_resume.Resume(f"{22:016x}", ("h2", "h1"), 2)


def test_nothing_is_restored_when_a_live_slot_holds_as_much_or_another_model_saved_it() -> None:
    held = record(h1=[saved(22)])
    assert kv_resume.plan(CHAIN, 2, "m", held) is None  # a free live slot holds 2 elements already
    assert kv_resume.plan(CHAIN, 3, "m", held) is None
    assert kv_resume.plan(CHAIN, 1, "m", held) is not None
    assert kv_resume.plan(CHAIN, 0, "other", held) is None  # a key saved for one model is not another's
    assert kv_resume.plan((), 0, "m", held) is None
    assert kv_resume.plan(CHAIN, 0, "m", SlotRecord()) is None


def test_keys_that_are_no_chain_element_never_match() -> None:
    held = record(h1=[saved("00000016"), saved("abcdef0123")])  # 8 and 10 hex digits: never a chain's 16
    assert held.keys("m") == {}
    assert kv_resume.plan((11, 0x16, 0xABCDEF0123), 0, "m", held) is None


def test_the_key_recent_reports_for_a_conversation_is_found_for_its_next_turn() -> None:
    table = Affinity()
    table.record("w1", 0, key_of("m", chat("fix the bug")))
    [(slot, key)] = table.recent("w1", 64)
    held = record(h1=[saved(key)])
    later = key_of("m", chat("fix the bug", "done", "now the test")).chain  # the conversation went on
    assert slot == 0 and kv_resume.plan(later, 0, "m", held) == kv_resume.Resume(key, ("h1",), 2)


def test_the_least_loaded_free_worker_on_the_first_holding_hive_is_preferred() -> None:
    resume = kv_resume.Resume("k", ("h2", "h1"), 2)
    free = [kv_resume.Free("a", "h1", 0, 4), kv_resume.Free("b", "h2", 3, 4), kv_resume.Free("c", "h2", 1, 4),
            kv_resume.Free("d", "h2", 4, 4)]
    assert kv_resume.prefer(resume, free) == "c"
    assert kv_resume.prefer(resume, free[:1]) == "a"  # none free on h2: h1's
    assert kv_resume.prefer(resume, [kv_resume.Free("e", "h3", 0, 4)]) is None  # none on a holding hive
    assert kv_resume.prefer(None, free) is None


def test_a_load_goes_to_the_hive_holding_the_cache_when_it_has_room_without_evicting() -> None:
    devices = views(FakeHive("a", gpus=[8]), FakeHive("b", cpu=4))
    assert decide.load(room(2, devices, [])) == decide.Load("a", "cuda0")  # the built-in choice: a GPU
    assert decide.load(room(2, devices, [], prefer="b")) == decide.Load("b", "cpu")
    full = [worker("old", "b", 3)]  # b would have to evict: the built-in choice stands
    assert decide.load(room(2, devices, full, prefer="b")) == decide.Load("a", "cuda0")
    assert decide.load(room(6, devices, [], prefer="b")) == decide.Load("a", "cuda0")  # b can never hold it


def test_the_record_counts_what_metrics_shows() -> None:
    held = record(h1=[saved(1, size=100), saved(2, size=50)], h2=[saved(1, size=7)])
    held.saves, held.restores["failed"] = 3, 2
    families = {f.name: f for f in SlotCollector(held).collect()}
    assert [s.value for s in families["rbee_slot_saves"].samples] == [3]
    assert {s.labels["result"]: s.value for s in families["rbee_slot_restores"].samples} == \
        {"failed": 2, "restored": 0}
    assert {s.labels["hive"]: s.value for s in families["rbee_slot_cache_bytes"].samples} == {"h1": 150, "h2": 7}


class _HangingHive:
    """A hive whose restores never answer (a hive that hangs, or a hostile one holding the request)."""

    alias = "h1"

    def __init__(self, worker: object) -> None:
        self.supervisor = SimpleNamespace(get=lambda worker_id: worker)
        self.asked: list[tuple[str, int, str]] = []

    async def restore_slot(self, worker_id: str, slot: int, key: str) -> None:
        self.asked.append((worker_id, slot, key))
        await asyncio.Event().wait()


async def test_a_restore_that_does_not_answer_in_time_is_counted_failed_and_not_retried(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kv_resume, "RESTORE_WAIT_S", 0.05)
    worker = SimpleNamespace(id="w1", hive="h1", spec=SimpleNamespace(model=SimpleNamespace(name="m")))
    hive = _HangingHive(worker)
    held = record(h1=[saved(22)])
    lease = Lease(cast(AnyWorker, worker), 0.0, cast(Scheduler, None), slot=1, restore=f"{22:016x}")
    started = time.monotonic()
    assert await kv_resume.run(cast(dict[str, HiveSeam], {"h1": hive}), lease, held) is False
    assert time.monotonic() - started < 2.0 and hive.asked == [("w1", 1, f"{22:016x}")]
    assert held.restores == {"restored": 0, "failed": 1} and held.holds("h1", "m", f"{22:016x}")  # only a hint
    assert await kv_resume.run(cast(dict[str, HiveSeam], {"h1": hive}), lease, held) is None  # once per lease


class _ListingHive:
    """What list_saved reads of a hive: its state, registrations and listing (None: it never answers)."""

    def __init__(self, alias: str, saved: list[SavedSlot] | None, registrations: int = 1) -> None:
        self.alias, self.saved, self.registrations = alias, saved, registrations
        self.state = HiveState.READY
        self.asked = 0

    async def slot_cache(self) -> SlotCacheList:
        self.asked += 1
        if self.saved is None:
            await asyncio.Event().wait()
        return SlotCacheList(budget_bytes=1, used_bytes=1, saved=self.saved or [])


async def test_listings_are_taken_once_per_registration_and_a_silent_hive_holds_up_no_other(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kv_resume, "LIST_WAIT_S", 0.05)
    h1, h2 = _ListingHive("h1", [saved(22)]), _ListingHive("h2", None)
    hives = cast(dict[str, HiveSeam], {"h1": h1, "h2": h2})
    held, listed = SlotRecord(), dict[str, int]()
    await kv_resume.list_saved(hives, held, listed)
    assert held.holders("m", f"{22:016x}") == ["h1"] and listed == {"h1": 1}  # h2 is asked again next time
    await kv_resume.list_saved(hives, held, listed)
    assert (h1.asked, h2.asked) == (1, 2)
    h1.registrations, h1.saved = 2, []  # it registered again: its listing is the truth
    await kv_resume.list_saved(hives, held, listed)
    assert held.holders("m", f"{22:016x}") == [] and listed == {"h1": 2}
