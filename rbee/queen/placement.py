"""Where a new worker goes: placement by memory (DESIGN.md decision 6), as a pure function.

    (1) devices that could ever hold the model (total >= need); none -> `ModelTooLarge` with the numbers.
        A view may be a spread over several GPUs of one hive ("cuda0+cuda1"): it holds the model when each
        GPU has room for its share (shares in proportion to the GPUs' sizes, as llama.cpp's --tensor-split)
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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from rbee.contracts.workers import memory_held

CPU = "cpu"  # the device id every hive has; the others are GPUs


@dataclass(frozen=True)
class Part:
    """One GPU of a spread ("cuda0+cuda1"): the room it gives workers, and its size (its share of layers)."""

    device: str
    room: int
    size: int


@dataclass(frozen=True)
class DeviceView:
    hive: str
    device: str
    total: int
    has_model: bool = False
    parts: tuple[Part, ...] = ()  # a model spread over several GPUs of one hive; empty for one device

    def rooms(self) -> dict[str, int]:
        return {p.device: p.room for p in self.parts} if self.parts else {self.device: self.total}

    def shares(self, need: int) -> dict[str, int]:
        """What a worker of `need` bytes would hold on each device."""
        return memory_held(self.device, need, [p.size for p in self.parts])


@dataclass(frozen=True)
class WorkerView:
    id: str
    hive: str
    device: str
    memory: int
    in_flight: int
    last_used: float
    held: Mapping[str, int] | None = None  # memory per device when spread; None: all of it on `device`

    def on(self) -> Mapping[str, int]:
        return self.held or {self.device: self.memory}


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
    fitting = [d for d in devices if all(d.rooms()[k] >= share for k, share in d.shares(need).items())]  # (1)
    if not fitting:
        raise ModelTooLarge(need, max((d.total for d in devices), default=0))
    used: dict[tuple[str, str], int] = defaultdict(int)
    busy: dict[tuple[str, str], int] = defaultdict(int)
    idle: dict[tuple[str, str], list[WorkerView]] = defaultdict(list)
    idle_memory: dict[tuple[str, str], int] = defaultdict(int)
    for w in workers:  # one pass: per-device totals
        for device, memory in w.on().items():
            key = (w.hive, device)
            used[key] += memory
            busy[key] += w.in_flight
            if w.in_flight == 0 and w.id not in protect:
                idle[key].append(w)
                idle_memory[key] += memory
    best: tuple[bool, int, bool, int] | None = None
    chosen: DeviceView | None = None
    for d in fitting:  # (2)
        rooms = d.rooms()
        left = {k: rooms[k] - used[(d.hive, k)] - share for k, share in d.shares(need).items()}
        if min(left.values()) >= 0:
            rank = (d.device == CPU, sum(left.values()), not d.has_model, sum(busy[(d.hive, k)] for k in left))
            if best is None or rank < best:
                best, chosen = rank, d
    if chosen is not None:
        return Placement(chosen)
    options: list[tuple[int, bool, int, DeviceView, list[str]]] = []  # (3)
    for d in fitting:
        shares, rooms = d.shares(need), d.rooms()
        free = {k: rooms[k] - used[(d.hive, k)] for k in shares}
        if any(free[k] + idle_memory[(d.hive, k)] < shares[k] for k in shares):
            continue  # even evicting every idle worker would not make room
        evict: list[str] = []
        candidates = {w.id: w for k in shares for w in idle[(d.hive, k)]}.values()
        for w in sorted(candidates, key=lambda w: w.last_used):
            short = {k for k in shares if free[k] < shares[k]}
            if not short:
                break
            if not short & set(w.on()):
                continue  # it holds nothing where room is missing
            evict.append(w.id)
            for k, memory in w.on().items():
                if k in free:
                    free[k] += memory
        if all(free[k] >= shares[k] for k in shares):
            options.append((len(evict), not d.has_model, sum(free.values()) - need, d, evict))
    if options:
        best_option = min(options, key=lambda o: o[:3])
        return Placement(best_option[3], best_option[4])
    return Placement(None)  # (4)
