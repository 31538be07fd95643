"""rbee/queen/spread_run.py: a running spread's worker is shown with every device it uses, on any hive; -ngl
leaves the main hive's CPU its share of the layers."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from rbee.contracts.models import ModelEntry
from rbee.contracts.spread_plans import PlannedDevice, SpreadPlan
from rbee.contracts.workers import WorkerInfo, WorkerState
from rbee.queen.spread_run import SpreadRun, Spreads, _main_part, describe, gpu_layers, parts

GIB = 2**30
PLAN = SpreadPlan(model="big", need=6 * GIB, spread=True, reason="", main="h1", helpers=["h2"], devices=[
    PlannedDevice(hive="h2", device="cpu", room=4 * GIB, share=0.25, rpc=True, order=0),
    PlannedDevice(hive="h1", device="cpu", room=8 * GIB, share=0.75, rpc=False, order=None)])


def _info(worker_id: str) -> WorkerInfo:
    return WorkerInfo(id=worker_id, model="big", hive="h1", state=WorkerState.READY, slots=1, context_size=512,
                      started_at=0, memory_bytes=int(4.5 * GIB))


def test_parts_give_each_device_its_share_and_the_memory_booked_there() -> None:
    shown = [(p.hive, p.device, p.share, p.memory_bytes) for p in parts(PLAN)]
    assert shown == [("h2", "cpu", 0.25, int(1.5 * GIB)), ("h1", "cpu", 0.75, int(4.5 * GIB))]


def test_only_a_running_spreads_worker_is_shown_with_parts() -> None:
    spreads = Spreads({})
    hive: Any = SimpleNamespace(alias="h1")
    spreads.runs["w1"] = SpreadRun(id="spread-1", plan=PLAN, main=hive, helpers=[])
    assert [p.hive for p in spreads.shown(_info("w1")).parts] == ["h2", "h1"]
    assert spreads.shown(_info("w2")).parts == []  # one hive's worker: no parts
    assert list(spreads.parts_by_worker()) == ["w1"]


def _sharing(main_cpu: float) -> SpreadPlan:
    return PLAN.model_copy(update={"main_cpu_share": main_cpu})


@pytest.mark.parametrize(("main_cpu", "blocks", "ngl"), [
    (0.5, 2, 2),  # one layer on the helper, and the output layer (llama.cpp's -ngl counts it, and offloads it first)
    (0.5, 30, 16),  # 15 of 30 layers stay on the main CPU
    (0.75, 32, 9),  # 24 stay
    (0.99, 2, 2),  # one layer at least goes off the main CPU, or the helpers would hold the output layer alone
    (0.3, 1, 2),  # one layer: all of it off
])
def test_gpu_layers_leave_the_main_cpu_its_share_of_the_repeating_layers(main_cpu: float, blocks: int,
                                                                        ngl: int) -> None:
    assert gpu_layers(_sharing(main_cpu), blocks) == ngl


def test_gpu_layers_offload_all_without_a_cpu_share_or_a_layer_count() -> None:
    assert gpu_layers(_sharing(0.0), 30) == 999
    assert gpu_layers(_sharing(0.5), None) == 999


TWO_GPUS = SpreadPlan(model="big", need=10 * GIB, spread=True, reason="", main="h1", helpers=["h2"], devices=[
    PlannedDevice(hive="h2", device="cuda0", room=4 * GIB, share=0.4, rpc=True, order=0),
    PlannedDevice(hive="h2", device="cuda1", room=2 * GIB, share=0.2, rpc=True, order=1),
    PlannedDevice(hive="h1", device="cpu", room=4 * GIB, share=0.4, rpc=False, order=None)],
    tensor_split=[0.4, 0.2], main_cpu_share=0.4)


def test_a_helper_lending_two_gpus_shows_each_with_its_share_and_llama_server_gets_both() -> None:
    shown = [(p.hive, p.device, p.share, p.memory_bytes) for p in parts(TWO_GPUS)]
    assert shown == [("h2", "cuda0", 0.4, 4 * GIB), ("h2", "cuda1", 0.2, 2 * GIB), ("h1", "cpu", 0.4, 4 * GIB)]
    entry = ModelEntry(name="big", path="/m.gguf", size_bytes=1, header={"block_count": 10}, added_at=0)
    asked = _main_part(TWO_GPUS, entry, [("127.0.0.1:4001", 2)])  # one rpc-server on h2, lending both GPUs
    assert asked.rpc == ["127.0.0.1:4001"] and asked.rpc_devices == [2] and asked.rpc_device_count() == 2
    assert asked.tensor_split == [0.4, 0.2] and asked.gpus == [] and asked.gpu_layers == 7  # 4 of 10 stay on the CPU
    assert describe(TWO_GPUS) == "h2:cuda0 40% (rpc) + h2:cuda1 20% (rpc) + h1:cpu 40%"
