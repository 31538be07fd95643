from __future__ import annotations

import pytest

from rbee.queen import keep_alive
from rbee.queen.placement import DeviceView, ModelTooLarge, Part, WorkerView, place

GiB = 2**30


def _dev(name: str, total: float, has_model: bool = False) -> DeviceView:
    return DeviceView("h", name, int(total * GiB), has_model)


def _w(wid: str, device: str, memory: float, in_flight: int = 0, last_used: float = 0.0) -> WorkerView:
    return WorkerView(wid, "h", device, int(memory * GiB), in_flight, last_used)


def test_best_fit_then_has_model() -> None:
    devices = [_dev("big", 24), _dev("small", 8), _dev("tiny", 4)]
    assert place(6 * GiB, devices, []).device == devices[1]
    held = [_dev("a", 8), _dev("b", 8, has_model=True)]
    assert place(6 * GiB, held, []).device == held[1]


def test_too_large_names_the_numbers() -> None:
    with pytest.raises(ModelTooLarge, match=r"needs 40.00 GiB but the largest device has 24.00 GiB"):
        place(40 * GiB, [_dev("a", 24), _dev("b", 8)], [])


def test_evicts_least_recently_used_idle_workers_only() -> None:
    devices = [_dev("gpu", 24)]
    workers = [_w("busy", "gpu", 10, in_flight=1, last_used=0), _w("old", "gpu", 6, last_used=1),
               _w("new", "gpu", 6, last_used=5)]
    decision = place(6 * GiB, devices, workers)
    assert decision.device == devices[0] and decision.evict == ["old"]
    assert place(10 * GiB, devices, workers).evict == ["old", "new"]
    assert place(16 * GiB, devices, workers).device is None  # only by killing the busy one: wait instead
    assert place(6 * GiB, devices, workers, protect=frozenset({"old"})).evict == ["new"]


def test_prefers_the_device_needing_fewest_evictions() -> None:
    devices = [_dev("a", 10), _dev("b", 10)]
    workers = [_w("a1", "a", 3), _w("a2", "a", 3), _w("a3", "a", 3), _w("b1", "b", 8)]
    decision = place(6 * GiB, devices, workers)
    assert decision.device == devices[1] and decision.evict == ["b1"]
    # same number of evictions: the tighter fit wins
    assert place(3 * GiB, devices, workers).evict == ["a1"]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("5m", 300), ("1h30m", 5400), ("90s", 90), ("500ms", 0.5), (0, 0), ("0", 0), (-1, keep_alive.FOREVER),
     ("-1m", keep_alive.FOREVER), (12.5, 12.5), (None, None),
     # longer than a worker's info can count down (found by the fuzzer: GET /v1/workers failed then)
     (1.2e133, keep_alive.FOREVER), (10**400, keep_alive.FOREVER), ("1e400", keep_alive.FOREVER),
     ("99999999999999h", keep_alive.FOREVER), (2.0**40, 2.0**40),
     ("1h" + "0s" * 20, 3600)],  # longer than the parses kept in memory
)
def test_keep_alive_durations(value: str | float | None, seconds: float | None) -> None:
    assert keep_alive.parse(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5 minutes", "m5", True, float("nan"), "nan", "5m" + "x" * 40])
def test_keep_alive_nonsense_is_refused(value: object) -> None:
    for _ in range(2):  # every time: a refusal is not kept as an answer
        with pytest.raises(ValueError, match="keep_alive"):
            keep_alive.parse(value)  # type: ignore[arg-type]


def test_a_gpu_with_room_comes_before_the_cpu() -> None:
    devices = [DeviceView("box", "cpu", 10 * GiB), DeviceView("box", "cuda0", 80 * GiB)]
    assert place(2 * GiB, devices, []).device == devices[1]  # though the CPU would be the tighter fit
    full = [WorkerView("w1", "box", "cuda0", 79 * GiB, 1, 0.0)]
    assert place(2 * GiB, devices, full).device == devices[0]  # the GPU is busy: the CPU has room


def _spread(*parts: tuple[str, float, float]) -> DeviceView:
    """GPUs of one hive as one view: (id, room GiB, size GiB) each."""
    built = tuple(Part(name, int(room * GiB), int(size * GiB)) for name, room, size in parts)
    return DeviceView("h", "+".join(p.device for p in built), sum(p.room for p in built), parts=built)


def test_a_model_larger_than_each_gpu_spreads_over_them_by_size() -> None:
    two = _spread(("cuda0", 24, 24), ("cuda1", 23.75, 24))  # the second holds a runtime more
    cpu = _dev("cpu", 64)
    assert place(40 * GiB, [cpu, two], []).device == two  # GPUs together before the CPU
    # Each GPU must hold its share: 30 GiB splits 22.5/7.5 over a 24 and an 8 GiB card, not 15/15.
    uneven = _spread(("cuda0", 24, 24), ("cuda1", 7.75, 8))
    assert place(30 * GiB, [uneven], []).device == uneven
    with pytest.raises(ModelTooLarge, match=r"GPUs together hold at most 31.75 GiB"):
        place(31.5 * GiB, [uneven], [])  # 7.9 GiB on an 8 GiB card that holds a runtime more: no
    # What workers hold there counts per GPU; a spread worker holds memory on each of its GPUs.
    spread_worker = WorkerView("s", "h", "cuda0+cuda1", int(8 * GiB), 1, 0.0,
                               {"cuda0": int(4 * GiB), "cuda1": int(4 * GiB)})
    assert place(40 * GiB, [two], [spread_worker]).device is None  # busy: wait
    assert place(38 * GiB, [two], [spread_worker]).device == two


def test_a_spread_evicts_only_where_room_is_missing() -> None:
    two = _spread(("cuda0", 24, 24), ("cuda1", 24, 24))
    workers = [_w("old-on-0", "cuda0", 2, last_used=0), _w("on-1", "cuda1", 10, last_used=1),
               _w("busy-on-0", "cuda0", 1, in_flight=1, last_used=2)]
    decision = place(40 * GiB, [two], workers)  # 20 GiB a GPU: cuda0 has 21 free, cuda1 14
    assert decision.device == two and decision.evict == ["on-1"]
