"""GPU + CPU offload within one hive (issue 21 point 0), as pure decisions: the views device_views builds for a
model larger than a hive's GPUs, the layer split estimate.offload plans, and what placement books on each part."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from rbee.contracts.hives import DeviceInfo
from rbee.hive.estimate import OVERHEAD, offload
from rbee.queen import decide
from rbee.queen.device_views import device_views
from rbee.queen.placement import DeviceView, ModelTooLarge, WorkerView, place

GiB = 2**30


@dataclass
class _Hive:
    gpus: list[tuple[str, float]]
    ram: float
    alias: str = "h"
    cpu_free: float | None = None
    _devices: list[DeviceInfo] = field(default_factory=list)

    def devices(self) -> list[DeviceInfo]:
        gpus = [DeviceInfo(id=i, name="card", backend="cuda", engine_name=i.upper(), total_bytes=int(t * GiB))
                for i, t in self.gpus]
        return [*gpus, DeviceInfo(id="cpu", name="CPU", total_bytes=int(self.ram * GiB))]

    def memory_total(self) -> int:
        return int(self.ram * GiB)

    def lent(self) -> dict[str, int]:
        return {}


def _views(hive: _Hive, need: int, layers: int | None = 32, pinned: str | None = None) -> dict[str, DeviceView]:
    return {v.device: v for v in device_views(hive, [], need, 0, pinned, layers)}


def test_the_layer_split_fills_the_gpu_and_leaves_the_rest_in_ram() -> None:
    need, room = 10 * GiB, 4 * GiB
    plan = offload(need, 32, room)
    assert plan is not None and plan.layers == 33  # 32 repeating layers and the output layer
    per_layer = -(-(need - OVERHEAD) // 33)
    assert plan.gpu <= room < plan.gpu + per_layer  # as many layers as fit, not one more
    assert plan.gpu_layers == (room - OVERHEAD) // per_layer == 12
    assert plan.gpu + plan.cpu == need and plan.describe("cuda0") == "cuda0 12/33 layers + cpu 21/33"
    assert offload(need, 32, 11 * GiB) is None  # it all fits: no offload
    assert offload(need, 32, OVERHEAD + per_layer - 1) is None  # not one layer fits
    assert offload(need, None, room) is None  # a header without a layer count: no plan


def test_a_model_larger_than_the_gpu_offloads_instead_of_going_wholly_to_the_cpu() -> None:
    hive = _Hive([("cuda0", 4)], ram=64)
    need = 10 * GiB
    views = _views(hive, need)
    offloaded = views["cuda0+cpu"]
    plan = offload(need, 32, 4 * GiB)
    assert plan is not None
    assert [(p.device, p.share) for p in offloaded.parts] == [("cuda0", plan.gpu), ("cpu", plan.cpu)]
    assert place(need, views.values(), []).device == offloaded  # before the CPU alone, which could hold it
    # A model that fits the GPU goes wholly there: no offload view at all.
    assert "cuda0+cpu" not in _views(hive, 3 * GiB) and place(3 * GiB, _views(hive, 3 * GiB).values(),
                                                                 []).device.device == "cuda0"
    # Forbidden (no layer count given, as for `rbee model set M --no-offload`): the CPU alone.
    assert place(need, _views(hive, need, layers=None).values(), []).device.device == "cpu"


def test_what_an_offloaded_worker_holds_counts_on_the_gpu_and_in_ram() -> None:
    hive = _Hive([("cuda0", 4)], ram=16)
    need = 10 * GiB
    plan = offload(need, 32, 4 * GiB)
    assert plan is not None
    first = WorkerView("w1", "h", "cuda0+cpu", need, 1, 0.0, {"cuda0": plan.gpu, "cpu": plan.cpu})
    views = _views(hive, need).values()
    # A second such worker: the GPU is full and RAM has 16 - 6.x GiB: busy, so it waits (no overcommit).
    assert place(need, views, [first]).device is None
    # Idle, the first one is evicted for it.
    idle = WorkerView("w1", "h", "cuda0+cpu", need, 0, 0.0, {"cuda0": plan.gpu, "cpu": plan.cpu})
    decision = place(need, views, [idle])
    assert decision.device is not None and decision.device.device == "cuda0+cpu" and decision.evict == ["w1"]
    # A CPU worker that takes most of the RAM leaves no room for the offloaded part either.
    ram_hog = WorkerView("c", "h", "cpu", 12 * GiB, 1, 0.0)
    assert place(need, views, [ram_hog]).device is None


def test_a_model_too_large_for_gpu_and_ram_is_refused_with_the_numbers() -> None:
    hive = _Hive([("cuda0", 4)], ram=8)
    with pytest.raises(ModelTooLarge, match=r"needs 20.00 GiB but a hive's GPUs and RAM together hold at most "
                                            r"12.00 GiB"):
        place(20 * GiB, _views(hive, 20 * GiB).values(), [])


def test_two_gpus_too_small_together_offload_over_both() -> None:
    hive = _Hive([("cuda0", 4), ("cuda1", 4)], ram=64)
    need = 12 * GiB
    views = _views(hive, need)
    both = views["cuda0+cuda1+cpu"]
    decision = place(need, views.values(), [])
    assert decision.device == both  # more layers on the GPUs than either card alone holds
    gpu_share = sum(p.share or 0 for p in both.parts if p.device != "cpu")
    assert gpu_share <= 8 * GiB and gpu_share > max(p.share or 0 for p in views["cuda0+cpu"].parts[:1])


def test_a_pinned_gpu_that_is_too_small_offloads_the_rest() -> None:
    hive = _Hive([("cuda0", 4), ("cuda1", 24)], ram=64)
    need = 10 * GiB
    room = decide.Room("m", need, device_views(hive, [], need, 0, "cuda0", 32), [], pinned_device="cuda0")
    chosen = decide.load(room)
    assert isinstance(chosen, decide.Load) and chosen.device == "cuda0+cpu"
    free = decide.load(decide.Room("m", need, device_views(hive, [], need, 0, None, 32), []))
    assert isinstance(free, decide.Load) and free.device == "cuda1"  # unpinned: the GPU that holds it all
