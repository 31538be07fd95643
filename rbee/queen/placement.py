"""Where a new worker goes: placement by memory (DESIGN.md decision 6), as a pure function.

    (1) devices that could ever hold the model (total >= need); none -> `ModelTooLarge` with the numbers
    (2) devices with room now: the best fit (least memory left over), preferring hives that already
        hold the file, then the least busy
    (3) else devices where evicting idle workers makes room: evict least-recently-used first, never
        a worker with requests in flight (or one the caller protects); the fewest evictions win
    (4) else nothing: the request waits until memory is really free

Views in, decision out: no I/O, no clock, no logging, so it is fast (see benchmarks/scheduler.py)
and tested on its own.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DeviceView:
    hive: str
    device: str
    total: int
    has_model: bool = False


@dataclass(frozen=True)
class WorkerView:
    id: str
    hive: str
    device: str
    memory: int
    in_flight: int
    last_used: float


@dataclass(frozen=True)
class Placement:
    device: DeviceView | None
    evict: list[str] = field(default_factory=list)


class ModelTooLarge(ValueError):
    def __init__(self, need: int, largest: int) -> None:
        super().__init__(f"needs {need / 2**30:.2f} GiB but the largest device has {largest / 2**30:.2f} GiB")
        self.need = need
        self.largest = largest


def place(need: int, devices: Iterable[DeviceView], workers: Iterable[WorkerView],
          protect: frozenset[str] = frozenset()) -> Placement:
    devices = list(devices)
    fitting = [d for d in devices if d.total >= need]  # (1)
    if not fitting:
        raise ModelTooLarge(need, max((d.total for d in devices), default=0))
    by_device: dict[tuple[str, str], list[WorkerView]] = defaultdict(list)
    for w in workers:
        by_device[(w.hive, w.device)].append(w)

    def used(d: DeviceView) -> int:
        return sum(w.memory for w in by_device[(d.hive, d.device)])

    def busy(d: DeviceView) -> int:
        return sum(w.in_flight for w in by_device[(d.hive, d.device)])

    free_now = [(d, d.total - used(d)) for d in fitting]
    roomy = [(d, free) for d, free in free_now if free >= need]  # (2)
    if roomy:
        best = min(roomy, key=lambda pair: (pair[1] - need, not pair[0].has_model, busy(pair[0])))
        return Placement(best[0])
    options: list[tuple[int, bool, int, DeviceView, list[str]]] = []  # (3)
    for d, free in free_now:
        idle = sorted((w for w in by_device[(d.hive, d.device)] if w.in_flight == 0 and w.id not in protect),
                      key=lambda w: w.last_used)
        evict: list[str] = []
        for w in idle:
            if free >= need:
                break
            evict.append(w.id)
            free += w.memory
        if free >= need:
            options.append((len(evict), not d.has_model, free - need, d, evict))
    if options:
        best_option = min(options, key=lambda o: o[:3])
        return Placement(best_option[3], best_option[4])
    return Placement(None)  # (4)
