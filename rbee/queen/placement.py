"""Where a new worker goes: placement by memory (DESIGN.md decision 6), as a pure function.

    (1) devices that could ever hold the model (total >= need); none -> `ModelTooLarge` with the numbers
    (2) devices with room now: a GPU before the CPU, then the best fit (least memory left over),
        preferring hives that already hold the file, then the least busy
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

CPU = "cpu"  # the device id every hive has; the others are GPUs


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
    used: dict[tuple[str, str], int] = defaultdict(int)
    busy: dict[tuple[str, str], int] = defaultdict(int)
    idle: dict[tuple[str, str], list[WorkerView]] = defaultdict(list)
    idle_memory: dict[tuple[str, str], int] = defaultdict(int)
    for w in workers:  # one pass: per-device totals
        key = (w.hive, w.device)
        used[key] += w.memory
        busy[key] += w.in_flight
        if w.in_flight == 0 and w.id not in protect:
            idle[key].append(w)
            idle_memory[key] += w.memory
    best: tuple[bool, int, bool, int] | None = None
    chosen: DeviceView | None = None
    for d in fitting:  # (2)
        key = (d.hive, d.device)
        left = d.total - used[key] - need
        if left >= 0:
            rank = (d.device == CPU, left, not d.has_model, busy[key])
            if best is None or rank < best:
                best, chosen = rank, d
    if chosen is not None:
        return Placement(chosen)
    options: list[tuple[int, bool, int, DeviceView, list[str]]] = []  # (3)
    for d in fitting:
        key = (d.hive, d.device)
        free = d.total - used[key]
        if free + idle_memory[key] < need:
            continue  # even evicting every idle worker would not make room
        evict: list[str] = []
        for w in sorted(idle[key], key=lambda w: w.last_used):
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
