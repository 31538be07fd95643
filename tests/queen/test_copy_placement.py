from __future__ import annotations

import pytest

from rbee.queen.copy_placement import choose, may_copy
from rbee.queen.placement import DeviceView, ModelTooLarge, Part, WorkerView

GiB = 2**30


def _dev(hive: str, total: float, device: str = "cpu", has_model: bool = False) -> DeviceView:
    return DeviceView(hive, device, int(total * GiB), has_model)


def _w(wid: str, hive: str, memory: float, in_flight: int = 0, device: str = "cpu",
       last_used: float = 0.0) -> WorkerView:
    return WorkerView(wid, hive, device, int(memory * GiB), in_flight, last_used)


HOLDER = [_dev("a", 4, has_model=True)]


def test_a_holder_full_of_busy_workers_copies_to_the_roomiest_other_hive() -> None:
    busy = [_w("a1", "a", 3, in_flight=1)]
    others = [_dev("b", 8), _dev("c", 16), _dev("d", 2)]
    choice = choose(2 * GiB, HOLDER, others, busy)
    assert (choice.target, choice.device, choice.stay) == ("c", "cpu", False)
    assert "a has 1.00 GiB of 4.00 GiB free (1 requests in flight)" in choice.reason
    assert "copying it to c" in choice.reason and "14.00 GiB left" in choice.reason


def test_a_gpu_with_room_beats_a_roomier_cpu() -> None:
    others = [_dev("b", 64), _dev("c", 8, device="cuda0"), _dev("c", 32)]
    choice = choose(2 * GiB, HOLDER, others, [_w("a1", "a", 3, in_flight=2)])
    assert (choice.target, choice.device) == ("c", "cuda0")


def test_a_holder_with_an_idle_worker_evicts_there_and_copies_nothing() -> None:
    idle = [_w("a1", "a", 3)]
    choice = choose(2 * GiB, HOLDER, [_dev("b", 16)], idle)
    assert choice.target is None and choice.stay
    assert "evicting idle workers (a1)" in choice.reason


def test_a_worker_protected_only_for_the_grouping_cap_is_waited_for() -> None:
    choice = choose(2 * GiB, HOLDER, [_dev("b", 16)], [_w("a1", "a", 3)], soon=frozenset({"a1"}))
    assert choice.target is None and choice.stay


def test_a_worker_kept_by_min_replicas_or_starting_makes_the_copy() -> None:
    choice = choose(2 * GiB, HOLDER, [_dev("b", 16)], [_w("a1", "a", 3)], protect=frozenset({"a1"}))
    assert choice.target == "b"


def test_a_holder_with_room_now_stays() -> None:
    choice = choose(2 * GiB, HOLDER, [_dev("b", 16)], [])
    assert choice.stay and choice.target is None


def test_no_other_hive_fits_waits_with_the_numbers() -> None:
    others = [_dev("b", 4)]
    workers = [_w("a1", "a", 3, in_flight=1), _w("b1", "b", 3, in_flight=1)]
    choice = choose(2 * GiB, HOLDER, others, workers)
    assert choice.target is None and not choice.stay
    assert choice.reason == ("no hive holding it has room: a has 1.00 GiB of 4.00 GiB free (1 requests in flight); "
                             "b has 1.00 GiB of 4.00 GiB free (1 requests in flight): waiting for memory to free")
    alone = choose(2 * GiB, HOLDER, [], workers[:1])
    assert alone.target is None and alone.reason.endswith("no other hive can take a copy: waiting for memory to free")


def test_an_idle_worker_on_the_other_hive_is_no_room_for_a_copy() -> None:
    choice = choose(2 * GiB, HOLDER, [_dev("b", 4)], [_w("a1", "a", 3, in_flight=1), _w("b1", "b", 3)])
    assert choice.target is None and not choice.stay


def test_a_holder_too_small_copies_to_a_hive_that_can_hold_it() -> None:
    choice = choose(6 * GiB, HOLDER, [_dev("b", 8)], [])
    assert choice.target == "b" and "can ever run it: it needs 6.00 GiB but the largest device has 4.00 GiB" \
        in choice.reason


def test_too_large_everywhere_is_refused_with_the_largest() -> None:
    with pytest.raises(ModelTooLarge, match=r"needs 10.00 GiB but the largest device has 8.00 GiB"):
        choose(10 * GiB, HOLDER, [_dev("b", 8)], [])
    with pytest.raises(ModelTooLarge, match=r"largest device has 4.00 GiB"):
        choose(10 * GiB, HOLDER, [], [])


def test_a_holder_too_small_and_the_other_busy_waits() -> None:
    choice = choose(6 * GiB, HOLDER, [_dev("b", 8)], [_w("b1", "b", 4, in_flight=1)])
    assert choice.target is None and not choice.stay and "can ever run it" in choice.reason


def test_a_replica_goes_where_memory_is_free_not_where_it_would_evict() -> None:
    # every worker of the model is saturated; the holder could evict an idle worker of another model, but a
    # replica never evicts: the other hive with free memory gets the copy
    workers = [_w("m1", "a", 1, in_flight=1), _w("idle", "a", 2.5)]
    choice = choose(1 * GiB, HOLDER, [_dev("b", 4)], workers, replica=True)
    assert choice.target == "b"
    assert choose(1 * GiB, HOLDER, [_dev("b", 4)], workers).stay  # a first load evicts there instead
    roomy = choose(1 * GiB, HOLDER, [_dev("b", 4)], workers[:1], replica=True)
    assert roomy.stay  # the holder has free memory for the replica: no copy
    full = choose(1 * GiB, HOLDER, [_dev("b", 0.5)], workers, replica=True)
    assert full.target is None and not full.stay


def test_pinned_requests_are_never_sent_elsewhere() -> None:
    assert may_copy(None, None)
    assert not may_copy("h1", None)  # X-Rbee-Hive, or the model's own hive: that hive waits (or gets a copy)
    assert not may_copy(None, "cuda0")  # a model pinned to a device stays where its holders are


def test_too_large_everywhere_keeps_the_holders_own_wording() -> None:

    spread = DeviceView("a", "cuda0+cuda1", 16 * GiB, True, (Part("cuda0", 8 * GiB, 8 * GiB),
                                                             Part("cuda1", 8 * GiB, 8 * GiB)))
    with pytest.raises(ModelTooLarge, match=r"GPUs together hold at most 16\.00 GiB"):
        choose(40 * GiB, [spread], [_dev("b", 8)], [])
