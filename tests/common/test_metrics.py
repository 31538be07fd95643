"""rbee/common/metrics.py ColonyCollector: memory per device and per worker, a spread across hives' included."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from rbee.common.metrics import ColonyCollector
from rbee.common.prom import CollectorRegistry, format_value, generate_latest
from rbee.contracts.workers import WorkerPart, WorkerState

GIB = 2**30


@dataclass
class _Worker:
    id: str
    hive: str
    memory: int
    state: WorkerState = WorkerState.READY
    spec: Any = field(default_factory=lambda: SimpleNamespace(model=SimpleNamespace(name="big")))

    def held(self) -> dict[str, int]:
        return {"cpu": self.memory}


@dataclass
class _Hive:
    alias: str
    workers: list[_Worker]
    lends: dict[str, int]

    @property
    def supervisor(self) -> Any:
        return SimpleNamespace(workers=lambda: self.workers)

    def memory_total(self) -> int:
        return 8 * GIB

    def devices(self) -> list[Any]:
        return [SimpleNamespace(id="cpu", total_bytes=8 * GIB, free_bytes=None)]

    def lent(self) -> dict[str, int]:
        return self.lends


def _scrape(collector: ColonyCollector) -> str:
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry).decode()


def test_a_spread_worker_is_listed_under_each_device_with_its_share_and_bytes() -> None:
    main = _Hive("h1", [_Worker("w1", "h1", 3 * GIB)], {})
    helper = _Hive("h2", [], {"cpu": 3 * GIB})  # its rpc-server's booking for w1's spread
    parts = [WorkerPart(hive="h2", device="cpu", share=0.5, memory_bytes=3 * GIB),
             WorkerPart(hive="h1", device="cpu", share=0.5, memory_bytes=3 * GIB)]
    text = _scrape(ColonyCollector([main, helper], parts=lambda: {"w1": parts}))
    for hive in ("h1", "h2"):
        labels = f'{{device="cpu",hive="{hive}",model="big",worker="w1"}}'
        assert f"rbee_worker_memory_bytes{labels} {format_value(3 * GIB)}" in text
        assert f"rbee_worker_device_share{labels} 0.5" in text
        assert f'rbee_hive_memory_bytes{{device="cpu",hive="{hive}",kind="used"}} {format_value(3 * GIB)}' in text


def test_a_worker_on_one_hive_holds_all_of_itself_there() -> None:
    hive = _Hive("h1", [_Worker("w1", "h1", GIB), _Worker("w2", "h1", GIB, WorkerState.STOPPED)], {})
    text = _scrape(ColonyCollector([hive]))
    assert 'rbee_worker_device_share{device="cpu",hive="h1",model="big",worker="w1"} 1.0' in text
    assert 'worker="w2"' not in text  # a stopped worker holds nothing
    assert f'rbee_hive_memory_bytes{{device="cpu",hive="h1",kind="used"}} {format_value(GIB)}' in text
